"""Timestep schedules: pure functions ``(step, total_steps) -> fraction of T``.

A fraction ``f`` in (0, 1) maps to the integer timestep ``schedule.index(f)`` of the prior
(0.98 -> 979 for T = 1000). CFD needs a monotonically decreasing schedule: the optimisation
steps play the role of the ODE's time steps.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from cfd3d.errors import ConfigError

TimestepKind = Literal["uniform", "annealed", "linear", "sqrt", "dreamtime", "uniform_annealed"]
TIMESTEP_KINDS: tuple[str, ...] = (
    "uniform",
    "annealed",
    "linear",
    "sqrt",
    "dreamtime",
    "uniform_annealed",
)

# The CFD reference recipe (stage 1, Stable Diffusion): 0.98 -> 0.69 at 10 % of the run,
# -> 0.40 at 50 %, -> 0.21 at the end (2.5k / 12.5k / 25k of 25k steps).
PAPER_KNOTS: tuple[tuple[float, float], ...] = ((0.0, 0.98), (0.1, 0.69), (0.5, 0.40), (1.0, 0.21))


@dataclass(frozen=True)
class TimestepSchedule:
    """How the diffusion timestep moves over the optimisation.

    Attributes:
        kind: ``"uniform"`` random in [t_min, t_max] every step (SDS); ``"annealed"``
            piecewise-linear through ``knots`` (the CFD paper); ``"linear"`` from t_max to
            t_min; ``"sqrt"`` t_max - (t_max - t_min) sqrt(progress) (HiFA); ``"dreamtime"``
            time-prioritised decreasing schedule (Huang et al. 2023); ``"uniform_annealed"``
            random in [t_min, u(progress)] every step, with the upper end ``u``
            piecewise-linear through ``knots`` (ProlificDreamer's and LucidDreamer's
            annealed ranges).
        t_max: largest timestep fraction.
        t_min: smallest timestep fraction.
        knots: ``(progress, fraction)`` pairs for ``"annealed"`` and
            ``"uniform_annealed"``; progress runs 0 -> 1 (two knots at one progress make
            a jump).
        dreamtime_m1, dreamtime_m2, dreamtime_s1, dreamtime_s2: DreamTime's prior weight,
            flat on [m2, m1] with Gaussian tails of widths s1 (above) and s2 (below), as
            fractions of T.
    """

    kind: TimestepKind = "annealed"
    t_max: float = 0.98
    t_min: float = 0.02
    knots: tuple[tuple[float, float], ...] = field(default=PAPER_KNOTS)
    dreamtime_m1: float = 0.8
    dreamtime_m2: float = 0.5
    dreamtime_s1: float = 0.3
    dreamtime_s2: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in TIMESTEP_KINDS:
            raise ConfigError(
                f"unknown timestep schedule '{self.kind}'; valid: {', '.join(TIMESTEP_KINDS)}"
            )
        if not 0.0 < self.t_min <= self.t_max < 1.0:
            raise ConfigError(
                f"timestep fractions need 0 < t_min <= t_max < 1, got {self.t_min}, {self.t_max}"
            )
        progress = [k[0] for k in self.knots]
        if progress[0] != 0.0 or progress[-1] != 1.0 or sorted(progress) != progress:
            raise ConfigError(f"annealing knots must run from progress 0 to 1, got {self.knots}")


def timestep_fraction(schedule: TimestepSchedule, step: int, total_steps: int, seed: int = 0):
    """The timestep fraction for optimisation ``step`` (0-based) of ``total_steps``.

    A pure function: the random ``"uniform"`` schedule draws from a generator seeded by
    ``(seed, step)``, so a resumed run sees the same timesteps.
    """
    progress = step / max(total_steps - 1, 1)
    if schedule.kind in ("uniform", "uniform_annealed"):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        u = torch.rand((), generator=gen, dtype=torch.float64).item()
        upper = schedule.t_max
        if schedule.kind == "uniform_annealed":
            upper = max(schedule.t_min, piecewise_linear(schedule.knots, progress))
        return schedule.t_min + (upper - schedule.t_min) * u
    if schedule.kind == "annealed":
        return piecewise_linear(schedule.knots, progress)
    if schedule.kind == "linear":
        return schedule.t_max + (schedule.t_min - schedule.t_max) * progress
    if schedule.kind == "sqrt":
        return schedule.t_max - (schedule.t_max - schedule.t_min) * math.sqrt(progress)
    return _dreamtime(schedule, progress)


def piecewise_linear(knots: tuple[tuple[float, float], ...], x: float) -> float:
    """The linear interpolant through ``(x, y)`` ``knots`` (x non-decreasing) at ``x``,
    constant beyond the first and last knot."""
    x = max(x, knots[0][0])
    for (x0, y0), (x1, y1) in itertools.pairwise(knots):
        if x <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-12)
    return knots[-1][1]


def _dreamtime(schedule: TimestepSchedule, progress: float, resolution: int = 1000) -> float:
    """DreamTime: t(p) such that the prior weight's mass above t equals ``p``."""
    s = schedule
    ts = torch.linspace(s.t_min, s.t_max, resolution, dtype=torch.float64)
    weight = torch.where(
        ts > s.dreamtime_m1,
        torch.exp(-((ts - s.dreamtime_m1) ** 2) / (2 * s.dreamtime_s1**2)),
        torch.where(
            ts < s.dreamtime_m2,
            torch.exp(-((ts - s.dreamtime_m2) ** 2) / (2 * s.dreamtime_s2**2)),
            torch.ones_like(ts),
        ),
    )
    mass_above = weight.flip(0).cumsum(0).flip(0)
    mass_above = mass_above / mass_above[0]
    index = int(torch.argmin((mass_above - progress).abs()))
    return float(ts[index])
