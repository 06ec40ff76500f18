"""Loading and saving the embedded prior's weights (safetensors + a stored checksum)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from cfd3d.errors import ConfigError, UserError
from cfd3d.io import atomic_write_bytes, atomic_write_text
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.world import WorldConfig, world_from_dict

WEIGHTS_NAME = "embedded_prior.safetensors"
CHECKSUM_NAME = "embedded_prior.sha256"
RESTORE_HINT = (
    "restore the file from the package (pip install --force-reinstall cfd3d, or "
    "'git checkout -- src/cfd3d/assets/' in a clone) or retrain it with 'cfd3d train-prior'"
)


def default_weights_path() -> Path:
    """Where the shipped weights live inside the installed package."""
    return Path(str(resources.files("cfd3d") / "assets" / WEIGHTS_NAME))


def checksum_path(path: Path) -> Path:
    """Where the checksum of the weights at ``path`` lives: ``<stem>.sha256`` beside them
    (``embedded_prior.sha256`` for the shipped file), so weights of several names can share
    a folder. A file written before this rule, whose checksum sits in
    ``embedded_prior.sha256`` and names it, is still found there."""
    own = _own_checksum_path(path)
    shared = path.with_name(CHECKSUM_NAME)
    if own.is_file() or not shared.is_file():
        return own
    named = shared.read_text().split()
    return shared if len(named) >= 2 and named[1] == path.name else own


def _own_checksum_path(path: Path) -> Path:
    """``<stem>.sha256`` beside ``path``: where :func:`write_weights` puts its checksum."""
    return path.with_name(f"{path.stem}.sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_to_bytes(model: TinyUNet, metadata: dict[str, object]) -> bytes:
    """Serialise ``model`` (as float16) with its config and ``metadata`` (JSON strings)."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    header = {"unet_config": json.dumps(asdict(model.config))}
    header.update({k: json.dumps(v) for k, v in metadata.items()})
    return _sorted_metadata(save(tensors, metadata=header))


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata in sorted key order: the library
    writes it in hash order, which differs from process to process, so the same weights
    would get another checksum each time they are written."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format keeps the tensor data 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def write_weights(model: TinyUNet, metadata: dict[str, object], path: Path) -> str:
    """Write weights atomically and their checksum beside them (:func:`checksum_path`);
    return the checksum."""
    atomic_write_bytes(path, weights_to_bytes(model, metadata))
    checksum = sha256_of(path)
    atomic_write_text(_own_checksum_path(path), f"{checksum}  {path.name}\n")
    return checksum


def load_weights(path: Path | None = None) -> tuple[TinyUNet, dict[str, object]]:
    """Load and verify the embedded prior's weights.

    Raises:
        UserError: if the file is missing, does not match its stored checksum, or cannot
            be read; the message says how to restore it.
    """
    path = Path(path) if path is not None else default_weights_path()
    checksum_file = checksum_path(path)
    if not path.is_file():
        raise UserError(f"embedded prior weights not found at '{path}'; {RESTORE_HINT}")
    if not checksum_file.is_file():
        raise UserError(f"checksum file '{checksum_file}' is missing; {RESTORE_HINT}")
    expected = checksum_file.read_text().split()[0] if checksum_file.read_text().strip() else ""
    if sha256_of(path) != expected:
        raise UserError(
            f"embedded prior weights at '{path}' are corrupted (checksum mismatch); {RESTORE_HINT}"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        config_dict = json.loads(header["unet_config"])
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(
            f"cannot read embedded prior weights '{path}' ({exc}); {RESTORE_HINT}"
        ) from None
    config_dict["channels"] = tuple(config_dict["channels"])
    if "attention_levels" in config_dict:
        config_dict["attention_levels"] = tuple(config_dict["attention_levels"])
    model = TinyUNet(UNetConfig(**config_dict))
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    metadata = {k: json.loads(v) for k, v in header.items() if k != "unet_config"}
    return model.eval().requires_grad_(False), metadata


def read_world(path: Path | None = None) -> WorldConfig:
    """The toy world that the weights at ``path`` (default: the shipped ones) were trained
    on, read from their metadata without loading the tensors.

    Raises:
        UserError: the file is missing or unreadable, or records an invalid world.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise UserError(f"embedded prior weights not found at '{path}'; {RESTORE_HINT}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        world = json.loads(header["world_config"]) if "world_config" in header else None
        size = json.loads(header["unet_config"]).get("image_size", 32)
    except (OSError, KeyError, ValueError, AttributeError, SafetensorError) as exc:
        raise UserError(
            f"cannot read embedded prior weights '{path}' ({exc}); {RESTORE_HINT}"
        ) from None
    return world_from_metadata(world, size, path)


def world_from_metadata(world: object, image_size: int, path: Path | None) -> WorldConfig:
    """The :class:`WorldConfig` of weights whose metadata holds ``world`` (its
    ``world_config``; weights written before the world was recorded read back as the
    default world at their image size).

    Raises:
        UserError: an invalid recorded world.
    """
    try:
        return (
            world_from_dict(world)
            if isinstance(world, dict)
            else WorldConfig(image_size=image_size)
        )
    except ConfigError as exc:
        raise UserError(f"embedded prior weights at '{path}': {exc}; retrain them") from None
