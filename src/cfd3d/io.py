"""Atomic file writes: every file a run produces appears whole or not at all.

A write that fails (a full disk, a kill) leaves the previous version of the file, never a
part of the new one: the bytes go to a temporary file in the same folder, are flushed to
the disk, and only then renamed over the target. A full disk becomes :class:`DiskFullError`
(one line for the user); the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path

from cfd3d.errors import OutputError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``errno`` values of a full disk or an exhausted quota."""


class DiskFullError(OutputError):
    """A write failed because the disk (or the user's quota) is full."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` of a full disk or quota."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written in it.

    Raises:
        OutputError: if the folder cannot be created or written.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder '{folder}' ({exc.strerror or exc}); "
            "choose another folder with --out"
        ) from None
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    Raises:
        DiskFullError: the disk or quota is full; ``path`` keeps its previous content.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        _raise_if_disk_full(exc, target)
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _raise_if_disk_full(exc, target)
        raise
    return target


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to the disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems cannot sync a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def _raise_if_disk_full(exc: BaseException, target: Path) -> None:
    if disk_full(exc):
        raise DiskFullError(
            f"the disk is full: cannot write '{target}' ({os.strerror(exc.errno)}); "  # type: ignore[attr-defined]
            "free some space and run the command again"
        ) from None


def atomic_torch_save(path: str | os.PathLike, obj: object) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (checkpoints, cached datasets)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
