"""The ``cfd3d`` command line.

Each subcommand lives in a small ``_cmd_*`` function; errors a user can cause
(:class:`cfd3d.errors.UserError`, and a full disk) become one line on stderr and exit code
2. A run stopped by a signal exits with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cfd3d import __version__
from cfd3d.errors import StoppedBySignal, UserError
from cfd3d.io import disk_full

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (its default code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def guarded(fn: Callable[[], int | None]) -> int:
    """Run ``fn``; turn a :class:`UserError` or a full disk into one line on stderr and exit
    code 2, a clean stop on a signal into ``128 + signum``."""
    try:
        return fn() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoppedBySignal as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except OSError as exc:
        if not disk_full(exc):
            raise
        name = f" '{exc.filename}'" if exc.filename else ""
        print(
            f"error: the disk is full: cannot write{name} ({exc.strerror}); free some space "
            "and run the command again",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cfd3d",
        description="Text-to-3D by Consistent Flow Distillation (CFD).",
    )
    parser.add_argument("--version", action="version", version=f"cfd3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from cfd3d.playground import add_image_command

    add_image_command(sub)
    from cfd3d.priors.embedded.commands import add_commands as add_prior_commands

    add_prior_commands(sub)
    from cfd3d.generate.command import add_generate_command

    add_generate_command(sub)
    from cfd3d.doctor import add_doctor_command

    add_doctor_command(sub)
    from cfd3d.batch.command import add_batch_command

    add_batch_command(sub)
    from cfd3d.serve.command import add_serve_command

    add_serve_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
