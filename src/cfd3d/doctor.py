"""``cfd3d doctor``: what this machine offers cfd3d, and what each preset would cost on it.

Reports the versions of cfd3d, torch, Python and the optional extras; the CUDA devices and
their memory; which priors are present (the embedded weights with their checksum, the
Stable Diffusion and MVDream checkpoints given with ``--prior`` / ``--prior-mv`` or
configured, and those in the local Hugging Face cache); and for every preset an ESTIMATE of
time and peak memory on this device (:mod:`cfd3d.evaluation.cost`). It never touches the
network and takes a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from cfd3d import __version__
from cfd3d.errors import UserError

if TYPE_CHECKING:
    from cfd3d.evaluation.cost import CostModel, DeviceSpeed, Estimate

EXTRAS = ("diffusers", "transformers", "accelerate", "huggingface_hub")
"""Optional packages (``pip install 'cfd3d[sd]'``) whose versions are reported."""
Status = Literal["ok", "missing", "unusable"]


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device.

    Attributes:
        index: its CUDA index.
        name: the device's name.
        total_mb: its memory.
        free_mb: memory free now (other processes' use included).
    """

    index: int
    name: str
    total_mb: float
    free_mb: float


@dataclass(frozen=True)
class PriorInfo:
    """One prior looked for.

    Attributes:
        kind: ``"embedded"``, ``"stable-diffusion"`` or ``"mvdream"``.
        spec: what was looked for (a path or a hub id), empty when nothing was configured.
        source: where ``spec`` came from (``"built in"``, ``"--prior"``, ``"--prior-mv"``,
            ``"$CFD3D_SD_MODEL"``, ``"default"``, ``"cache"``).
        status: ``"ok"`` (usable), ``"missing"`` or ``"unusable"`` (there, but not what
            the prior loads).
        path: where it was found.
        detail: one line for the user.
    """

    kind: str
    spec: str
    source: str
    status: Status
    path: str | None
    detail: str


@dataclass(frozen=True)
class DoctorReport:
    """Everything ``cfd3d doctor`` reports.

    Attributes:
        versions: package name -> installed version (``None``: not installed); includes
            ``python`` and ``cuda`` (torch's CUDA build, ``None`` for CPU builds).
        cuda_available: whether torch sees a CUDA device.
        devices: the CUDA devices.
        priors: the priors looked for.
        estimate_device: where the estimates apply (``"cuda:0"`` or ``"cpu"``).
        device_speed: what the cost model measured there.
        estimates: one ESTIMATE per preset.
        errors: presets whose estimate failed, with the reason.
        seconds: how long the doctor took.
    """

    versions: dict[str, str | None]
    cuda_available: bool
    devices: tuple[DeviceInfo, ...]
    priors: tuple[PriorInfo, ...]
    estimate_device: str
    device_speed: DeviceSpeed
    estimates: tuple[Estimate, ...]
    errors: tuple[str, ...]
    seconds: float


def package_versions() -> dict[str, str | None]:
    """cfd3d, Python, torch (and its CUDA build) and the optional extras."""
    versions: dict[str, str | None] = {
        "cfd3d": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for name in EXTRAS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cuda_devices() -> tuple[DeviceInfo, ...]:
    """Every CUDA device torch sees, with its free and total memory."""
    if not torch.cuda.is_available():
        return ()
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(
            DeviceInfo(index, torch.cuda.get_device_name(index), total / 2**20, free / 2**20)
        )
    return tuple(devices)


def embedded_status() -> PriorInfo:
    """The shipped embedded prior: present, and matching its stored checksum?"""
    from cfd3d.priors.embedded.weights import checksum_path, default_weights_path, sha256_of

    path = default_weights_path()
    checksum_file = checksum_path(path)

    def info(status: Status, detail: str) -> PriorInfo:
        return PriorInfo("embedded", "embedded", "built in", status, str(path), detail)

    if not path.is_file():
        return info("missing", "weights not found; reinstall cfd3d")
    if not checksum_file.is_file():
        return info("unusable", f"checksum file {checksum_file.name} missing; reinstall cfd3d")
    expected = (checksum_file.read_text().split() or [""])[0]
    if sha256_of(path) != expected:
        return info("unusable", "checksum MISMATCH (corrupted); reinstall or 'cfd3d train-prior'")
    size_mb = path.stat().st_size / 2**20
    return info("ok", f"checksum OK ({size_mb:.1f} MB)")


def _header_keys(path: Path) -> list[str]:
    """The tensor names of a checkpoint without reading its weights: the header of a
    ``.safetensors`` file, the pickled index of a zip checkpoint (memory-mapped).

    Raises:
        UserError: an unreadable file.
    """
    from safetensors import SafetensorError, safe_open

    from cfd3d.priors.ldm import checkpoint_keys

    if path.suffix.lower() != ".safetensors":
        return checkpoint_keys(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise UserError(f"unreadable .safetensors file ({exc})") from None


def describe_checkpoint(
    path: Path, kind: Literal["stable-diffusion", "mvdream", "any"]
) -> tuple[Status, str]:
    """What a local folder or file holds, judged as a prior of ``kind``.

    Reads no weights: the folder layout, a ``.safetensors`` header or the index of a zip
    checkpoint (legacy pickles are not opened).

    Returns:
        ``(status, one line for the user)``.
    """
    from cfd3d.priors.ldm import UNET_PREFIX, is_mvdream, is_single_file
    from cfd3d.priors.stable_diffusion import check_diffusers_folder

    if path.is_dir():
        if kind == "mvdream":
            return "unusable", "a folder; MVDream loads a single-file checkpoint"
        try:
            check_diffusers_folder(path, str(path))
        except UserError as exc:
            return "unusable", str(exc)
        return "ok", "diffusers folder (StableDiffusionPipeline)"
    if not is_single_file(path):
        return "unusable", "not a diffusers folder or a .safetensors/.ckpt file"
    if path.suffix.lower() != ".safetensors" and not zipfile.is_zipfile(path):
        return "ok", "single-file checkpoint (legacy pickle, contents not checked)"
    try:
        keys = _header_keys(path)
    except UserError as exc:
        return "unusable", str(exc)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return "unusable", "not a Stable Diffusion / MVDream checkpoint (no LDM UNet weights)"
    mvdream = is_mvdream(keys)
    if kind == "mvdream" and not mvdream:
        return "unusable", "a Stable Diffusion checkpoint without MVDream's camera embedding"
    if kind == "stable-diffusion" and mvdream:
        return "unusable", "an MVDream checkpoint; pass it with --prior-mv"
    return "ok", "MVDream single file" if mvdream else "Stable Diffusion single file (LDM)"


def _look_up(spec: str, kind: str, source: str) -> PriorInfo:
    from cfd3d.priors.stable_diffusion import locate_model

    found = locate_model(spec)
    if found is None:
        local = "/" not in spec or Path(spec).expanduser().is_absolute() or spec[0] in ".~"
        where = (
            "no such folder or file"
            if local
            else "no such folder or file, and not in the local Hugging Face cache"
        )
        return PriorInfo(kind, spec, source, "missing", None, where)
    status, detail = describe_checkpoint(found, kind)
    return PriorInfo(kind, spec, source, status, str(found), detail)


def stable_diffusion_status(explicit: str | None) -> list[PriorInfo]:
    """The Stable Diffusion model given with ``--prior``, and the ones a run without
    ``--prior`` would try (``$CFD3D_SD_MODEL``, the default id if cached), each looked up
    locally."""
    from cfd3d.priors.stable_diffusion import DEFAULT_MODEL, MODEL_ENV, model_candidates

    infos = []
    if explicit and explicit != "sd":
        infos.append(_look_up(explicit, "stable-diffusion", "--prior"))
    env = os.environ.get(MODEL_ENV, "").strip()
    configured = model_candidates(None)
    for spec in configured:
        source = f"${MODEL_ENV}" if spec == env else "default"
        infos.append(_look_up(spec, "stable-diffusion", source))
    if not configured:
        infos.append(
            PriorInfo(
                "stable-diffusion",
                "",
                "configured",
                "missing",
                None,
                f"none configured for runs without --prior ({MODEL_ENV} unset, "
                f"{DEFAULT_MODEL} not cached); set {MODEL_ENV} to a folder, file or hub id",
            )
        )
    return infos


def cached_checkpoints(skip: set[str]) -> list[PriorInfo]:
    """Stable Diffusion / MVDream checkpoints in the local Hugging Face cache.

    Args:
        skip: paths already reported.
    """
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return []
    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return []
    from cfd3d.priors.ldm import is_single_file

    infos = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        folder = revision.snapshot_path
        candidates = (
            [folder]
            if (folder / "model_index.json").is_file()
            else [f.file_path for f in revision.files if is_single_file(f.file_path)]
        )
        for path in candidates:
            if str(path) in skip:
                continue
            status, detail = describe_checkpoint(path, "any")
            if status == "ok":
                kind = "mvdream" if detail.startswith("MVDream") else "stable-diffusion"
                spec = repo.repo_id if path == folder else f"{repo.repo_id}/{path.name}"
                infos.append(PriorInfo(kind, spec, "cache", status, str(path), detail))
    return infos


def prior_status(prior: str | None, prior_mv: str | None) -> tuple[PriorInfo, ...]:
    """Every prior looked for: embedded, Stable Diffusion, MVDream, the cache."""
    infos = [embedded_status(), *stable_diffusion_status(prior)]
    if prior_mv is not None:
        infos.append(_look_up(prior_mv, "mvdream", "--prior-mv"))
    seen = {i.path for i in infos if i.path}
    infos.extend(cached_checkpoints(seen))
    return tuple(infos)


def estimate_presets(model: CostModel) -> tuple[tuple[Estimate, ...], tuple[str, ...]]:
    """An ESTIMATE for every preset on the cost model's device, and the presets whose
    estimate failed (with the reason)."""
    from cfd3d.generate.config import PRESETS, preset_config

    estimates, errors = [], []
    for name in PRESETS:
        try:
            estimates.append(model.estimate(preset_config(name, "a red cube")))
        except (RuntimeError, UserError) as exc:  # e.g. CUDA out of memory while calibrating
            errors.append(f"{name}: {(str(exc).strip().splitlines() or ['?'])[0][:160]}")
    return tuple(estimates), tuple(errors)


def collect(prior: str | None = None, prior_mv: str | None = None) -> DoctorReport:
    """Run every check (offline)."""
    from cfd3d.evaluation.cost import CostModel

    start = time.perf_counter()
    versions = package_versions()
    devices = cuda_devices()
    device = torch.device("cuda:0" if devices else "cpu")
    model = CostModel(device)  # first: its memory baseline precedes the checks' imports
    priors = prior_status(prior, prior_mv)
    estimates, errors = estimate_presets(model)
    return DoctorReport(
        versions=versions,
        cuda_available=bool(devices),
        devices=devices,
        priors=priors,
        estimate_device=str(device),
        device_speed=model.speed,
        estimates=estimates,
        errors=errors,
        seconds=time.perf_counter() - start,
    )


def report_to_dict(report: DoctorReport) -> dict[str, Any]:
    """The report as JSON-ready data; ``"estimates_note"`` labels the estimates."""
    data = dataclasses.asdict(report)
    data["estimates_note"] = (
        "ESTIMATES from a cost model (cfd3d.evaluation.cost), not measurements; GPU figures "
        "for Stable Diffusion are extrapolated from CPU measurements"
    )
    return data


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _memory(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def format_report(report: DoctorReport) -> str:
    """The report as human-readable lines."""
    v = report.versions
    lines = [
        f"cfd3d {v['cfd3d']} | torch {v['torch']} (CUDA build: {v['cuda'] or 'none'}) | "
        f"Python {v['python']}",
        "extras: "
        + ", ".join(f"{name} {v[name] or 'not installed'}" for name in EXTRAS)
        + ("" if v["diffusers"] else " (Stable Diffusion needs: pip install 'cfd3d[sd]')"),
    ]
    if report.devices:
        lines.append(f"CUDA: available, {len(report.devices)} device(s)")
        lines += [
            f"  cuda:{d.index} {d.name}: {_memory(d.free_mb)} free of {_memory(d.total_mb)}"
            for d in report.devices
        ]
    else:
        lines.append("CUDA: not available (runs use the CPU)")
    lines.append("priors:")
    for p in report.priors:
        where = f"{p.spec} ({p.source})" if p.spec else "-"
        lines.append(f"  {p.status:<8} {p.kind:<16} {where}: {p.detail}")
        if p.path and p.path != p.spec:
            lines.append(f"  {'':<8} {'':<16} at {p.path}")
    speed = report.device_speed
    lines.append(
        f"ESTIMATES for {report.estimate_device} (a cost model, not measurements; "
        f"calibration convolution {speed.conv_gflops:.0f} GFLOP/s in {speed.dtype}):"
    )
    lines.append(f"  {'preset':<12} {'per step':>9} {'per run':>10} {'peak memory':>12}  notes")
    for e in report.estimates:
        lines.append(
            f"  {e.preset:<12} {_duration(e.ms_per_step / 1e3):>9} "
            f"{_duration(e.seconds_per_run):>10} {_memory(e.peak_memory_mb):>12}  "
            + "; ".join(e.notes)
        )
    lines += [f"  estimate failed: {error}" for error in report.errors]
    lines.append(f"doctor took {report.seconds:.1f} s")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = collect(args.prior, args.prior_mv)
    if args.json:
        print(json.dumps(report_to_dict(report), indent=2))
    else:
        print(format_report(report))
    return 0


def add_doctor_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cfd3d doctor``."""
    parser = subparsers.add_parser(
        "doctor",
        help="report versions, devices, priors found, and estimated cost per preset",
        description=(
            "Report the versions of cfd3d, torch, Python and the optional extras, the CUDA "
            "devices and their memory, which priors are present (the embedded weights, Stable "
            "Diffusion and MVDream checkpoints given or configured, and those in the local "
            "Hugging Face cache), and for every preset an ESTIMATE of time per run and peak "
            "memory on this device (a cost model, not a measurement). Offline; a few seconds."
        ),
    )
    parser.add_argument(
        "--prior",
        metavar="PATH",
        default=None,
        help="a Stable Diffusion folder, single file or hub id to check (offline)",
    )
    parser.add_argument(
        "--prior-mv",
        metavar="PATH",
        default=None,
        help="an MVDream single-file checkpoint to check",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=_run)
