"""The distillation methods by name, with the defaults that make each one itself.

All three share one code path; they differ in where the noise comes from, how the
timestep moves and the weighting ``w(t)``:

============  =======================================  ==============  =================
method        noise                                    timesteps       weighting
============  =======================================  ==============  =================
``cfd``       fixed per trajectory, multi-view          annealed        sigma / alpha
              consistent in 3D (SDE refresh gamma)
``sds``       fresh every step                         uniform random  sigma^2
``fsd``       fixed per camera angle (panorama crop)   annealed        sigma / alpha
============  =======================================  ==============  =================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cfd3d.distill.timesteps import TimestepSchedule
from cfd3d.distill.weighting import Weighting
from cfd3d.errors import ConfigError

MethodName = Literal["cfd", "sds", "fsd"]


@dataclass(frozen=True)
class Method:
    """Defaults of one distillation method.

    Attributes:
        name: the method's name on the command line.
        noise: which noise the method uses (``"consistent"`` = fixed per trajectory and,
            in 3D, consistent across views; ``"fresh"`` = redrawn every step;
            ``"per_view"`` = fixed per camera angle).
        timesteps: the default timestep schedule.
        weighting: the default ``w(t)``.
    """

    name: MethodName
    noise: Literal["consistent", "fresh", "per_view"]
    timesteps: TimestepSchedule
    weighting: Weighting


METHODS: dict[str, Method] = {
    "cfd": Method("cfd", "consistent", TimestepSchedule(kind="annealed"), "sigma_over_alpha"),
    "sds": Method("sds", "fresh", TimestepSchedule(kind="uniform"), "sigma_sq"),
    "fsd": Method("fsd", "per_view", TimestepSchedule(kind="annealed"), "sigma_over_alpha"),
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``, or a :class:`ConfigError` listing the valid ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; valid: {', '.join(METHODS)}")
    return METHODS[name]
