"""``cfd3d batch PROMPTS --out DIR``: many runs on Dask distributed.

One Dask task per run (:func:`cfd3d.batch.execute.execute`), each in its own folder under
DIR. ``--workers N`` starts a local cluster on 127.0.0.1 (one process and one run per
worker); ``--scheduler ADDRESS`` submits to a running cluster instead, e.g. one worker per
GPU started with ``dask worker ADDRESS --nthreads 1 --resources GPU=1`` and
``CUDA_VISIBLE_DEVICES`` set per worker: when the cluster's workers advertise a ``GPU``
resource, each run asks for one. A worker that dies takes its run with it; the scheduler
starts the run again on another worker, which resumes it from its last checkpoint.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cfd3d.batch.execute import execute, run_record
from cfd3d.batch.plan import RunSpec, read_plan
from cfd3d.batch.report import previous_records, write_index
from cfd3d.errors import ConfigError, UserError
from cfd3d.io import ensure_writable_dir

LOOPBACK = "127.0.0.1"


def _dask():
    try:
        import distributed
    except ImportError:
        raise UserError(
            "cfd3d batch needs Dask distributed; install it with pip install 'cfd3d[batch]'"
        ) from None
    return distributed


@contextmanager
def connect(workers: int = 1, scheduler: str | None = None, timeout: float = 10.0):
    """A Dask client, closed on leaving the ``with`` block: of a new local cluster of
    ``workers`` one-thread worker processes on 127.0.0.1 (no dashboard; shut down with the
    client), or of the running ``scheduler`` (left running).

    Raises:
        UserError: Dask is not installed, or the scheduler does not answer in ``timeout`` s.
    """
    distributed = _dask()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise UserError(
                f"cannot reach the Dask scheduler at '{scheduler}' ({exc}); check the "
                "address, or drop --scheduler to run on this machine"
            ) from None
        with client:
            yield client
        return
    import dask

    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which makes glibc give
    # freed memory back at once: torch's allocations then fault their pages in again and a
    # run takes twice as long (measured: 56 s against 28 s). Leave glibc's own policy; no
    # statistical profiler sampling the run's thread every 10 ms.
    settings = {
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        "distributed.worker.profile.enabled": False,
        # a run per worker thread, the rest queued on the scheduler until a thread frees
        "distributed.scheduler.worker-saturation": 1.0,
    }
    with (
        dask.config.set(settings),
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host=LOOPBACK,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _resources(client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when the cluster's workers advertise GPUs, else none."""
    workers = client.scheduler_info().get("workers", {})
    if any("GPU" in w.get("resources", {}) for w in workers.values()):
        return {"GPU": 1}
    return None


def _check_specs(specs: list[RunSpec]) -> None:
    """Config problems of single runs surface before anything is submitted."""
    for spec in specs:
        if spec.pipeline is None:
            try:
                spec.config()
            except ConfigError as exc:
                raise ConfigError(f"run '{spec.prompt[:60]}': {exc}") from None


def run_plan(
    specs: list[RunSpec],
    root: Path,
    client,
    threads: int | None = None,
    retries: int = 1,
    quiet: bool = True,
) -> list[dict[str, Any]]:
    """Run ``specs`` on ``client``'s cluster, one task per run in ``root/<its folder>``
    (finished runs are skipped, interrupted ones resumed); ``root/index.json`` and
    ``index.html`` are rewritten as runs end. Returns every run's record, in plan order."""
    from tqdm import tqdm

    distributed = _dask()
    earlier = previous_records(root)
    records = {
        s.folder_name(): _with_earlier(run_record(s, root / s.folder_name()), earlier)
        for s in specs
    }
    write_index(root, list(records.values()))
    resources = _resources(client)
    futures = {
        client.submit(
            execute,
            spec,
            str(root),
            threads,
            # One task group for every run ("cfd3d-run-<hex>"): Dask then holds them in
            # its queue and hands each to the next free worker, instead of assigning small
            # per-prompt groups to workers up front (which left a worker idle).
            key=f"cfd3d-run-{spec.digest()}",
            retries=retries,
            resources=resources,
            pure=False,
        ): spec
        for spec in specs
    }
    bar = tqdm(total=len(specs), desc="batch", unit="run", disable=quiet)
    for future in distributed.as_completed(futures):
        spec = futures[future]
        try:
            record = future.result()
        except Exception as exc:  # a crash inside the run, after its retries
            record = run_record(spec, root / spec.folder_name())
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        records[spec.folder_name()] = _with_earlier(record, earlier)
        write_index(root, list(records.values()))
        bar.update(1)
        failed = sum(r["status"] == "failed" for r in records.values())
        bar.set_postfix(failed=failed, refresh=False)
    bar.close()
    return list(records.values())


def run_batch(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    if args.retries < 0:
        raise ConfigError("--retries must be 0 or more")
    defaults: dict[str, Any] = {"prior": args.prior} if args.prior else {}
    specs = read_plan(args.prompts, defaults)
    _check_specs(specs)
    root = ensure_writable_dir(args.out)
    with connect(args.workers, args.scheduler, args.connect_timeout) as client:
        records = run_plan(specs, root, client, args.threads, args.retries, args.quiet)
    _, html = write_index(root, records)
    failed = [r for r in records if r["status"] == "failed"]
    if not args.quiet:
        done = sum(r["status"] == "finished" for r in records)
        print(f"done: {done} of {len(records)} runs finished; contact sheet: {html}")
    if failed:
        first = failed[0]
        raise UserError(
            f"{len(failed)} of {len(records)} runs failed (first: '{first['prompt'][:60]}': "
            f"{str(first.get('error'))[:200]}); see {html}, fix them and rerun the batch"
        )
    return 0


def _with_earlier(record: dict[str, Any], earlier: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A skipped run keeps the wall time an earlier batch measured for it."""
    before = earlier.get(record["name"], {})
    if record.get("skipped") and before.get("wall_s") is not None:
        record["wall_s"] = before["wall_s"]
    return record


def add_batch_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="many runs on Dask distributed, each in its own folder, with a contact sheet",
        description=(
            "Run every line of PROMPTS as a 'cfd3d generate' run on Dask distributed "
            "(pip install 'cfd3d[batch]'). Each run lands in OUT/<prompt-slug>-<hash>, named "
            "from everything that defines it, so rerunning the batch skips finished runs and "
            "resumes interrupted ones from their checkpoints. OUT/index.json and "
            "OUT/index.html (a contact sheet of previews and turntables) list every run's "
            "prompt, method, seed, status and wall time."
        ),
    )
    p.add_argument(
        "prompts",
        type=Path,
        help=(
            "a text file (one prompt a line; '#' starts a comment), or JSONL / CSV with the "
            "keys prompt, seed, prior, method, preset, pipeline, steps, overrides (a JSON "
            'object of config fields, e.g. {"guidance_scale": 5})'
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="the batch folder")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes, one run each at a time, on 127.0.0.1 (default 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: torch's own; set it to cores / workers)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help=(
            "submit to a running Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of "
            "starting local workers; workers started with '--resources GPU=1' get one run "
            "per GPU"
        ),
    )
    p.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to reach --scheduler"
    )
    p.add_argument(
        "--prior",
        default=None,
        help="the prior of runs that do not name one (default: the embedded toy-world prior)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times a run that crashed is started again (it resumes from its checkpoint)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_batch)
