"""The noise-source interface shared by integral noise and its ablations.

A :class:`NoiseSource` produces, for a batch of rendered views, the trajectory noise
``eps~(theta, c)`` of the clean flow (Yan et al., CFD) at the prior's input resolution.
The distillation loop calls it once per step and calls :meth:`NoiseSource.refresh` once
per step for the clean-flow SDE; :meth:`NoiseSource.state_dict` and
:meth:`NoiseSource.load_state_dict` make a resumed run bit-identical to an uninterrupted one.

Randomness is counter-based: each call draws from a generator seeded by
``(seed, step, index of the call within the step)``, and seeded base maps and texel tiles
from ``(seed, what they are)``, so results do not depend on which device or in which order
things were first computed, and the only state is the refresh history.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from cfd3d.errors import ConfigError
from cfd3d.noise.config import NoiseConfig
from cfd3d.noise.sde import check_gamma, sde_refresh
from cfd3d.noise.texels import STREAM_CALL, STREAM_MAP, RefreshClock, mix_seed
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras


def check_resolution(render: RenderOutput, height: int, width: int) -> tuple[int, int]:
    """``(H // height, W // width)``, or :class:`ConfigError` if the noise size does not
    divide the render size."""
    render_h, render_w = render.resolution
    if render_h % height or render_w % width:
        raise ConfigError(
            f"noise resolution {height}x{width} must divide the render resolution "
            f"{render_h}x{render_w}; render at a multiple of the prior's input size"
        )
    return render_h // height, render_w // width


class RefreshedMap:
    """A seeded N(0, 1) map that follows the clean-flow SDE refresh lazily.

    Args:
        shape: shape of the map.
        seed: seed of its base values (drawn on the CPU, so identical on every device).
        clock: the refresh clock it follows.
    """

    def __init__(self, shape: tuple[int, ...], seed: int, clock: RefreshClock):
        generator = torch.Generator().manual_seed(seed)
        self.values = torch.randn(shape, generator=generator)
        self.clock = clock
        self.epoch = 0
        self.log_decay = 0.0

    def current(self, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        """The map after all refreshes so far, on ``device`` (innovations from ``generator``)."""
        self.values = self.values.to(device)
        if self.epoch != self.clock.epoch or self.log_decay != self.clock.log_decay:
            decay = self.clock.factor(self.epoch, self.log_decay)
            self.values = sde_refresh(self.values, 1.0 - decay * decay, generator)
            self.epoch, self.log_decay = self.clock.epoch, self.clock.log_decay
        return self.values

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "epoch": self.epoch, "log_decay": self.log_decay}

    def load_state_dict(self, state: dict) -> None:
        self.values = state["values"].to(self.values.device).clone()
        self.epoch = int(state["epoch"])
        self.log_decay = float(state["log_decay"])


class NoiseSource(abc.ABC):
    """Trajectory noise for distillation, one variant per subclass (see ``NOISE_SOURCES``).

    Args:
        config: the noise configuration (``config.kind`` names the subclass).
        shape: ``(C, h, w)`` of the prior's input (``Prior.input_shape``).

    Use per optimisation step ``step``::

        eps = noise(render, cameras, step)   # (B, C, h, w), after rendering the views
        ...                                  # the update rule uses eps
        noise.refresh(gamma(step))           # clean-flow SDE; gamma = 0 is the ODE
    """

    kind: ClassVar[str]

    def __init__(self, config: NoiseConfig, shape: tuple[int, int, int]):
        channels, height, width = (int(v) for v in shape)
        if channels < 1 or height < 1 or width < 1:
            raise ConfigError(f"noise shape (C, h, w) must be positive, got {tuple(shape)}")
        self.config = config
        self.shape = (channels, height, width)
        self.clock = RefreshClock()
        self._step = -1
        self._calls_in_step = 0

    def __call__(self, render: RenderOutput, cameras: Cameras, step: int) -> torch.Tensor:
        """Noise for the rendered views.

        Args:
            render: ``B`` rendered views of ``H x W`` pixels; ``h`` and ``w`` must divide
                ``H`` and ``W``. Integral noise needs ``opacity`` and ``depth``.
            cameras: the ``B`` cameras of the views.
            step: the optimisation step (non-decreasing between calls); with the call's
                index inside the step it keys the call's random draws.

        Returns:
            ``(B, C, h, w)`` float32 noise on the render's device, without gradient; i.i.d.
            N(0, 1) over pixels and channels within each view.

        Raises:
            ConfigError: a render without the fields this noise needs, or a resolution the
                noise size does not divide.
        """
        if len(cameras) != render.batch_size:
            raise ValueError(f"{len(cameras)} cameras for {render.batch_size} rendered views")
        check_resolution(render, self.shape[1], self.shape[2])
        generator = self._call_generator(int(step), render.rgb.device)
        with torch.no_grad():  # the noise is a constant of the update, never differentiated
            return self.sample(render, cameras, generator)

    def _call_generator(self, step: int, device: torch.device) -> torch.Generator:
        if step < self._step:
            raise ValueError(
                f"noise called for step {step} after step {self._step}; steps must not go back "
                "(load a state_dict to resume)"
            )
        if step != self._step:
            self._step, self._calls_in_step = step, 0
        seed = mix_seed(self.config.seed, STREAM_CALL, step, self._calls_in_step)
        self._calls_in_step += 1
        return torch.Generator(device=device).manual_seed(seed)

    @abc.abstractmethod
    def sample(
        self, render: RenderOutput, cameras: Cameras, generator: torch.Generator
    ) -> torch.Tensor:
        """``(B, C, h, w)`` noise for validated inputs; fresh draws come from ``generator``."""

    def refresh(self, gamma: float) -> None:
        """One clean-flow SDE refresh ``n <- sqrt(1 - gamma) n + sqrt(gamma) xi`` of all the
        fixed noise (texel field and background alike); ``gamma = 0`` is the ODE.

        Raises:
            ConfigError: ``gamma`` outside [0, 1].
        """
        self.clock.advance(check_gamma(gamma))

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically (tensors on the CPU)."""
        return {
            "kind": self.kind,
            "shape": self.shape,
            "clock": self.clock.state_dict(),
            "step": self._step,
            "calls_in_step": self._calls_in_step,
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by :meth:`state_dict` of a source with the same config."""
        if state["kind"] != self.kind or tuple(state["shape"]) != self.shape:
            raise ConfigError(
                f"noise state is for {state['kind']} noise of shape {tuple(state['shape'])}, "
                f"not {self.kind} noise of shape {self.shape}"
            )
        self.clock.load_state_dict(state["clock"])
        self._step = int(state["step"])
        self._calls_in_step = int(state["calls_in_step"])
        self._load_extra_state(state["extra"])

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        del state

    def map_seed(self, *what: int) -> int:
        """Seed of a seeded base map identified by the integers ``what``."""
        return mix_seed(self.config.seed, STREAM_MAP, *what)
