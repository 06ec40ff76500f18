"""The toy world the embedded prior learns: scenes, their renders and their captions.

Every training image is a ground-truth toy scene (:mod:`cfd3d.scene.toy`) rendered by the
project's volume renderer from the camera distribution that distillation uses
(:class:`~cfd3d.scene.sampling.CameraSamplerConfig` defaults), with the same shading
(:data:`WORLD_SHADING`, a random point light plus ambient, or flat albedo) on the same
white background. Three families:

* one primitive: :data:`BASIC_SHAPES` x all :data:`~cfd3d.scene.toy.COLORS`;
* a head (a ball with a pale face on its front): the view-dependent family, where 3D
  consistency and Janus failures show;
* two primitives in a relation ("a red cube on top of a blue sphere", "... next to ...",
  the first on the left as seen from the front).

Captions are drawn afresh each time an image is used (:func:`caption`): sometimes with a
DreamFusion view phrase (", front view"), and for single primitives sometimes without the
shape ("a red object") or the colour ("a torus"), so that underspecified prompts have
several valid answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cfd3d.errors import ConfigError
from cfd3d.render.shading import ShadingConfig
from cfd3d.scene.sampling import CameraSamplerConfig, sample_cameras, view_labels
from cfd3d.scene.toy import COLORS, FACE_RGB, RELATIONS, ToyScene, pair, single, softened

BASIC_SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus", "capsule")
"""Shapes of the single-primitive and composition families (the head is its own family)."""

WORLD_SHADING = ShadingConfig(mode="diffuse", ambient=0.35, diffuse=0.65, light_jitter=0.3)
"""Lighting of the toy world; distillation with the embedded prior renders with it too."""

VIEW_WORDS: tuple[str, ...] = ("front", "side", "back", "overhead")


def vocabulary() -> tuple[str, ...]:
    """Every word a toy-world caption can contain, in a fixed order."""
    words = ["a", ",", "view", "object", "head", "on", "top", "of", "next", "to"]
    words += list(COLORS) + list(BASIC_SHAPES) + list(VIEW_WORDS)
    return tuple(words)


@dataclass(frozen=True)
class WorldConfig:
    """What the training set contains.

    Attributes:
        image_size: render size in pixels (square).
        p_head: fraction of images showing a head.
        p_pair: fraction of images showing two primitives.
        p_albedo: fraction rendered with flat albedo instead of the point light.
        p_view: probability that a caption carries its view phrase.
        p_view_pair: the same for a pair's caption. "X next to Y" puts X on the left only
            as seen from the front; without the view the caption leaves left and right
            open, so a world that captions pairs with their view more often teaches it.
        p_no_shape: probability that a single primitive's caption omits the shape.
        p_no_color: probability that a single primitive's (or head's) caption omits the
            colour.
        n_samples: renderer samples per ray.
        views_per_scene: consecutive images showing one scene from different cameras
            (rendered as one batch).
        cameras: the cameras the images are seen from. The prior is not told the camera,
            so what it learns about an object's size and the views it can draw come from
            this distribution; distilling from the prior works best with the same one.
        pair_cameras: the cameras two-primitive scenes are seen from (default
            ``cameras``). "X next to Y" puts X on the left from the front and on the right
            from the back, so a prior must learn word order and view together; a world
            that shows pairs from the front only (a first training phase) teaches the
            order alone, which a second phase on all views keeps.
        face_rgb: albedo of a head's face.
    """

    image_size: int = 32
    p_head: float = 0.12
    p_pair: float = 0.33
    p_albedo: float = 0.2
    p_view: float = 0.5
    p_view_pair: float = 0.5
    p_no_shape: float = 0.15
    p_no_color: float = 0.15
    n_samples: int = 64
    views_per_scene: int = 4
    cameras: CameraSamplerConfig = field(default_factory=CameraSamplerConfig)
    face_rgb: tuple[float, float, float] = FACE_RGB
    pair_cameras: CameraSamplerConfig | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "n_samples", "views_per_scene"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "p_head",
            "p_pair",
            "p_albedo",
            "p_view",
            "p_view_pair",
            "p_no_shape",
            "p_no_color",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if len(self.face_rgb) != 3 or not all(0.0 <= c <= 1.0 for c in self.face_rgb):
            raise ConfigError(f"face_rgb must be 3 values in [0, 1], got {self.face_rgb}")


def world_from_dict(data: dict[str, Any]) -> WorldConfig:
    """The :class:`WorldConfig` that ``dataclasses.asdict`` wrote (as stored in a prior's
    weights); keys it lacks keep their defaults, which is how the first prior's world,
    stored before ``cameras`` and ``face_rgb`` existed, reads back.

    Raises:
        ConfigError: unknown keys or invalid values.
    """
    names = {f.name for f in WorldConfig.__dataclass_fields__.values()}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown world setting(s): {', '.join(unknown)}")
    values = dict(data)
    try:
        for name in ("cameras", "pair_cameras"):
            if values.get(name) is not None:
                cameras = {
                    k: tuple(v) if isinstance(v, list) else v for k, v in values[name].items()
                }
                values[name] = CameraSamplerConfig(**cameras)
        if "face_rgb" in values:
            values["face_rgb"] = tuple(values["face_rgb"])
        return WorldConfig(**values)
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise ConfigError(f"invalid world settings ({exc})") from None


@dataclass(frozen=True)
class Item:
    """One training image's content: the scene and the view it was seen from."""

    scene: ToyScene
    view: str


def random_scene(config: WorldConfig, gen: torch.Generator) -> ToyScene:
    """A scene drawn from the world's families."""
    colors = list(COLORS)

    def pick(options: list[str] | tuple[str, ...]) -> str:
        return options[int(torch.randint(0, len(options), (), generator=gen))]

    u = float(torch.rand((), generator=gen))
    if u < config.p_head:
        return single(pick(colors), "head", config.face_rgb)
    if u < config.p_head + config.p_pair:
        ca, sa = pick(colors), pick(BASIC_SHAPES)
        cb, sb = pick(colors), pick(BASIC_SHAPES)
        while (cb, sb) == (ca, sa):
            cb, sb = pick(colors), pick(BASIC_SHAPES)
        return pair(ca, sa, pick(list(RELATIONS)), cb, sb)
    return single(pick(colors), pick(BASIC_SHAPES))


def caption(item: Item, config: WorldConfig, gen: torch.Generator) -> str:
    """A caption for ``item``, drawn afresh (see the module docstring)."""

    def chance(p: float) -> bool:
        return float(torch.rand((), generator=gen)) < p

    scene = item.scene
    p_view = config.p_view
    if len(scene.primitives) == 2:
        text = scene.caption()
        p_view = config.p_view_pair
    else:
        prim = scene.primitives[0]
        no_color = chance(config.p_no_color)
        no_shape = prim.shape != "head" and not no_color and chance(config.p_no_shape)
        shape = "object" if no_shape else prim.shape
        text = f"a {shape}" if no_color else f"a {prim.color} {shape}"
    if chance(p_view):
        text = f"{text}, {item.view} view"
    return text


SOFT_SEED = 7_777_777
"""Offset of the seed of the sharpness draws of :func:`render_world` from its ``seed``."""


def render_world(
    config: WorldConfig,
    n: int,
    seed: int,
    cameras: CameraSamplerConfig | None = None,
    progress: bool = False,
    sharpness: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, list[Item]]:
    """Render ``n`` toy-world images, seen from ``cameras`` (default: the world's, and its
    ``pair_cameras`` for two-primitive scenes where it sets them).

    ``sharpness`` (low, high), for judges rather than priors: each scene's surface is as
    soft as a sharpness (:class:`~cfd3d.scene.toy.ToyFieldConfig`) drawn log-uniformly
    from it (from a generator of its own: the scenes and cameras are those of the crisp
    world), instead of the world's crisp default.

    Returns:
        ``(n, 3, S, S)`` uint8 images and their :class:`Item` descriptions.
    """
    from tqdm import tqdm

    from cfd3d.render.volume import RendererConfig, VolumeRenderer

    renderer = VolumeRenderer(RendererConfig(n_samples=config.n_samples, shading=WORLD_SHADING))
    pair_cameras = cameras or config.pair_cameras or config.cameras
    cameras = cameras or config.cameras
    gen = torch.Generator().manual_seed(seed)
    soft_gen = torch.Generator().manual_seed(seed + SOFT_SEED)
    size = config.image_size
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    items: list[Item] = []
    per_scene = config.views_per_scene
    with tqdm(total=n, desc="rendering the toy world", disable=not progress, unit="img") as bar:
        for start in range(0, n, per_scene):
            k = min(per_scene, n - start)
            scene = random_scene(config, gen)
            if sharpness is not None:
                scene = softened(scene, sharpness, soft_gen)
            seen_from = pair_cameras if len(scene.primitives) == 2 else cameras
            camera = sample_cameras(seen_from, k, gen)
            albedo = float(torch.rand((), generator=gen)) < config.p_albedo
            with torch.no_grad():
                out = renderer(
                    scene,
                    camera,
                    size,
                    size,
                    shading="albedo" if albedo else "diffuse",
                    generator=gen,
                )
            pixels = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 3, 1, 2)
            images[start : start + k] = pixels
            items += [Item(scene, label) for label in view_labels(camera)]
            bar.update(k)
    return images, items
