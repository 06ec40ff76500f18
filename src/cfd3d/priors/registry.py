"""Priors by name: the one place that turns a ``--prior`` value into a :class:`Prior`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cfd3d.errors import ConfigError
from cfd3d.priors.base import Prior
from cfd3d.priors.gmm import shapes_prior

CONFIGURED_SD = "sd"
"""Prior name for the configured Stable Diffusion model (``$CFD3D_SD_MODEL``, else the
default id when it is in the local cache; see
:func:`cfd3d.priors.stable_diffusion.model_candidates`)."""


def _embedded() -> Prior:
    from cfd3d.priors.embedded.prior import EmbeddedPrior

    return EmbeddedPrior.load()


PRIORS: dict[str, Callable[[], Prior]] = {
    "embedded": _embedded,
    "gmm": shapes_prior,
}


TEXT_TO_IMAGE = ("embedded",)
"""The built-in priors that draw images from text (``gmm`` is the 2-D playground's)."""


def check_text_to_image(name: str) -> None:
    """Refuse a built-in prior that is not a text-to-image model (for ``generate``).

    Raises:
        ConfigError: naming the prior and the ones that work.
    """
    if name in PRIORS and name not in TEXT_TO_IMAGE:
        raise ConfigError(
            f"prior '{name}' is not a text-to-image model (it is for 'cfd3d image'); use "
            f"{', '.join(TEXT_TO_IMAGE)}, '{CONFIGURED_SD}' or a Stable Diffusion model"
        )


def is_stable_diffusion(name: str) -> bool:
    """Whether ``name`` denotes a Stable Diffusion (or MVDream) checkpoint: ``"sd"``, a hub
    id, a folder or a single file."""
    from cfd3d.priors.ldm import is_single_file

    if name == CONFIGURED_SD or is_single_file(name):
        return True
    return "/" in name or os.sep in name or Path(name).expanduser().exists()


def _load_single_file(path: Path, options: dict) -> Prior | None:
    """An MVDream prior if the file holds MVDream's camera embedding, else ``None``."""
    from cfd3d.priors.ldm import checkpoint_keys, is_mvdream, is_single_file

    if not (path.is_file() and is_single_file(path)) or not is_mvdream(checkpoint_keys(path)):
        return None
    from cfd3d.priors.mvdream import MVDreamPrior

    return MVDreamPrior.from_single_file(path, **options)


def load_prior(name: str, **stable_diffusion_options) -> Prior:
    """Build the prior called ``name``.

    ``name`` is a built-in name, ``"sd"`` (the configured Stable Diffusion model), a
    Stable Diffusion hub id / diffusers folder, or a single-file checkpoint
    (``.safetensors``/``.ckpt``), which is dispatched by its content: one with MVDream's
    camera embedding (``model.diffusion_model.camera_embed.*``) becomes
    ``MVDreamPrior.from_single_file(path, **options)``, any other a Stable Diffusion prior.
    Keyword options go to :class:`cfd3d.priors.stable_diffusion.StableDiffusionConfig`
    (or to the MVDream loader).

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
        UserError: for a Stable Diffusion model that cannot be found or loaded.
    """
    if name in PRIORS:
        return PRIORS[name]()
    if is_stable_diffusion(name):
        from cfd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

        mvdream = _load_single_file(Path(name).expanduser(), stable_diffusion_options)
        if mvdream is not None:
            return mvdream
        model = None if name == CONFIGURED_SD else name
        return StableDiffusionPrior(StableDiffusionConfig(model=model, **stable_diffusion_options))
    raise ConfigError(
        f"unknown prior '{name}'; valid: {', '.join(PRIORS)}, '{CONFIGURED_SD}' (the model in "
        "$CFD3D_SD_MODEL), or a Stable Diffusion diffusers folder, single .safetensors/.ckpt "
        "file or hub id"
    )
