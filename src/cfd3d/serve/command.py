"""``cfd3d serve``: the web app on http://127.0.0.1:7860 (Gradio, ``pip install 'cfd3d[ui]'``).

It listens on the loopback address unless ``--host`` says otherwise (with a warning: anyone
who reaches the port can start runs). No share links, no analytics, nothing downloaded
at start. Ctrl-C or SIGTERM stops the server; a run in progress writes its checkpoint
first, and the same request continues it after a restart.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import signal
import socket
import sys
from pathlib import Path

from cfd3d.errors import ConfigError, UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``localhost``, 127.x, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str, port: int) -> str | None:
    """The warning for a ``host`` that is not loopback (``None`` for one that is)."""
    if is_loopback(host):
        return None
    return (
        f"warning: --host {host} makes the app reachable from the network: anyone who "
        f"reaches port {port} can start runs on this machine"
    )


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken or cannot be bound on ``host``.

    Raises:
        UserError: naming the address and what to do.
    """
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be 1 to 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host '{host}' is not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        if os.name == "posix":  # as the server will: a closed socket's TIME_WAIT is no use
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use; pass another --port, or stop the "
                    "program that uses it"
                ) from None
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _overrides(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        overrides = json.loads(text)
    except ValueError:
        raise ConfigError(
            f"--overrides is not valid JSON: {text!r:.60}; e.g. '{{\"turntable_size\": 256}}'"
        ) from None
    if not isinstance(overrides, dict):
        raise ConfigError("--overrides must be a JSON object of config fields")
    return overrides


def run_serve(args: argparse.Namespace) -> int:
    from cfd3d.generate.command import check_device
    from cfd3d.serve.jobs import JobRunner, Request, ServeSettings

    settings = ServeSettings(
        out=args.out.expanduser().resolve(),
        device=args.device,
        overrides=_overrides(args.overrides),
        preview_every=args.preview_every,
        preview_size=args.preview_size,
    )
    check_device(settings.device)
    runner = JobRunner(settings)
    try:
        runner.resolve(Request("a red cube"))  # bad --overrides fail here, before the start
    except ConfigError as exc:
        raise ConfigError(f"--overrides: {exc}") from None
    check_port(args.host, args.port)
    warning = host_warning(args.host, args.port)
    if warning is not None:
        print(warning, file=sys.stderr)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        from cfd3d.serve.app import build_app
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "gradio":
            raise
        raise UserError(
            "cfd3d serve needs Gradio; install it with pip install 'cfd3d[ui]'"
        ) from None
    settings.out.mkdir(parents=True, exist_ok=True)
    app = build_app(runner)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        app.queue().launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            inbrowser=False,
            show_error=False,
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
            allowed_paths=[str(settings.out)],
            quiet=True,
            prevent_thread_lock=True,
        )
        print(f"cfd3d serve: http://{args.host}:{args.port} (runs in {settings.out})", flush=True)
        app.block_thread()
    finally:
        signal.signal(signal.SIGTERM, previous)
        runner.close()
        app.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cfd3d serve``."""
    p = subparsers.add_parser(
        "serve",
        help="a local web app: type a prompt, watch the run, look at the 3D model",
        description=(
            "Start a web app (Gradio; pip install 'cfd3d[ui]') at http://HOST:PORT: prompt, "
            "prior, method, preset, seed and steps; runs one at a time on the device with "
            "live progress and a preview; the GLB in a 3D viewer, the turntable video and "
            "download links. Each run lands in OUT/<prompt-slug>-<hash>, laid out like "
            "'cfd3d generate --out' (named from its settings: the same settings continue "
            "a cancelled run from its checkpoint). Listens on 127.0.0.1 only, by default."
        ),
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default 127.0.0.1, this machine only; another one "
        "makes the app reachable from the network)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    p.add_argument(
        "--out", type=Path, default=Path("out/serve"), help="folder of the runs (default out/serve)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA if any)")
    p.add_argument(
        "--overrides",
        default=None,
        metavar="JSON",
        help="config fields every run changes, nested as in config.json, e.g. "
        "'{\"turntable_size\": 256}'",
    )
    p.add_argument(
        "--preview-every",
        type=int,
        default=25,
        metavar="N",
        help="steps between two preview renders of a running job (default 25)",
    )
    p.add_argument(
        "--preview-size", type=int, default=96, help="preview side in pixels (default 96)"
    )
    p.set_defaults(run=run_serve)
