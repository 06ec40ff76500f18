"""The distillation methods by name, with the defaults that make each one itself, and the
one dispatch every step goes through (:func:`make_rule`).

All share one code path (render -> noise -> prior input ``z`` -> a rule's gradient on
``z``); they differ in where the noise comes from, how the timestep moves, the weighting
``w(t)`` and the rule:

============  ======================================  ===================  ==============
method        noise                                   timesteps            weighting
============  ======================================  ===================  ==============
``cfd``       fixed per trajectory, multi-view        annealed             sigma / alpha
              consistent in 3D (SDE refresh gamma)
``sds``       fresh every step                        uniform random       sigma^2
``fsd``       fixed per camera angle (panorama crop)  annealed             sigma / alpha
``vsd``       fresh; a trainable copy of the prior    uniform, upper end   sigma^2
              gives the second score                  0.98 -> 0.5 at 20 %
``ism``       DDIM inversion of the render (uncond.)  uniform, upper end   sigma / alpha
              from fresh noise at t ~ 0               0.98 -> 0.5 by 30 %
``sdi``       DDIM inversion of the render            linear 0.98 -> 0.02  sigma^2
============  ======================================  ===================  ==============

``cfd``, ``sds`` and ``fsd`` take the clean-flow rule (:mod:`cfd3d.distill.cfd`) with
their noise; ``vsd``, ``ism`` and ``sdi`` their own rules (:mod:`cfd3d.distill.vsd`,
:mod:`cfd3d.distill.ism`, :mod:`cfd3d.distill.sdi`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.ism import ISMConfig, ism_gradient
from cfd3d.distill.sdi import SDIConfig, sdi_gradient
from cfd3d.distill.timesteps import TimestepSchedule
from cfd3d.distill.vsd import TrainableCopy, VSDConfig, vsd_gradient
from cfd3d.distill.weighting import Weighting
from cfd3d.errors import ConfigError
from cfd3d.priors.base import Condition, Prior

MethodName = Literal["cfd", "sds", "fsd", "vsd", "ism", "sdi"]
RuleName = Literal["clean_flow", "vsd", "ism", "sdi"]

VSD_KNOTS: tuple[tuple[float, float], ...] = ((0.0, 0.98), (0.2, 0.98), (0.2, 0.5), (1.0, 0.5))
"""ProlificDreamer's range of ``t``: up to 0.98 for the first 5k of 25k steps, then 0.5."""
ISM_KNOTS: tuple[tuple[float, float], ...] = ((0.0, 0.98), (0.3, 0.5), (1.0, 0.5))
"""LucidDreamer's range of ``t``: the upper end from 0.98 to 0.5 over the warm-up (1.5k
of 5k steps)."""


@dataclass(frozen=True)
class Method:
    """Defaults of one distillation method.

    Attributes:
        name: the method's name on the command line.
        noise: which noise the method uses (``"consistent"`` = fixed per trajectory and,
            in 3D, consistent across views; ``"fresh"`` = redrawn every step;
            ``"per_view"`` = fixed per camera angle; ``"inverted"`` = from DDIM inversion
            of the render).
        timesteps: the default timestep schedule.
        weighting: the default ``w(t)``.
        rule: the update rule (see :func:`make_rule`).
    """

    name: MethodName
    noise: Literal["consistent", "fresh", "per_view", "inverted"]
    timesteps: TimestepSchedule
    weighting: Weighting
    rule: RuleName = "clean_flow"


METHODS: dict[str, Method] = {
    "cfd": Method("cfd", "consistent", TimestepSchedule(kind="annealed"), "sigma_over_alpha"),
    "sds": Method("sds", "fresh", TimestepSchedule(kind="uniform"), "sigma_sq"),
    "fsd": Method("fsd", "per_view", TimestepSchedule(kind="annealed"), "sigma_over_alpha"),
    "vsd": Method(
        "vsd",
        "fresh",
        TimestepSchedule(kind="uniform_annealed", knots=VSD_KNOTS),
        "sigma_sq",
        "vsd",
    ),
    "ism": Method(
        "ism",
        "inverted",
        TimestepSchedule(kind="uniform_annealed", knots=ISM_KNOTS),
        "sigma_over_alpha",
        "ism",
    ),
    "sdi": Method("sdi", "inverted", TimestepSchedule(kind="linear"), "sigma_sq", "sdi"),
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``, or a :class:`ConfigError` listing the valid ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; valid: {', '.join(METHODS)}")
    return METHODS[name]


# ---------------------------------------------------------------------------- rules

_RULE_STREAM = 0x5EED_0003  # distinct from the step loop's streams (cfd3d.generate.run)


class UpdateRule:
    """A method's gradient on the prior input, with whatever state it keeps.

    Args:
        prior: the pretrained prior.
        seed: keys the rule's own random draws, per step (a resumed run repeats them).
    """

    def __init__(self, prior: Prior, seed: int) -> None:
        self.prior = prior
        self.seed = seed

    def generator(self, step: int) -> torch.Generator:
        """The CPU generator of the rule's random draws at ``step``."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) ^ _RULE_STREAM)

    def gradient(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        condition: Condition,
        guidance_scale: float,
        noise: torch.Tensor,
        weighting: Weighting,
        step: int,
    ) -> torch.Tensor:
        """``(B, C, h, w)`` gradient on ``z`` (detached) at optimisation ``step``.

        Args:
            z: ``(B, C, h, w)`` the renders in the prior's input space.
            t: ``(B,)`` integer timesteps.
            condition: prompt conditioning with the views' cameras.
            guidance_scale: classifier-free guidance scale.
            noise: ``(B, C, h, w)`` the method's noise source's draw for this step.
            weighting: ``w(t)``.
            step: the optimisation step.
        """
        return cfd_gradient(self.prior, z, t, condition, guidance_scale, noise, weighting)

    def state_dict(self) -> dict:
        """What a checkpoint must hold to resume the rule (empty for stateless rules)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class VSDRule(UpdateRule):
    """VSD: the gradient against the trainable copy, then one step of the copy."""

    def __init__(self, prior: Prior, seed: int, config: VSDConfig) -> None:
        super().__init__(prior, seed)
        self.config = config
        self.copy = TrainableCopy(prior, config, torch.Generator().manual_seed(seed))

    def gradient(self, z, t, condition, guidance_scale, noise, weighting, step):
        grad = vsd_gradient(
            self.prior,
            self.copy,
            z,
            t,
            condition,
            guidance_scale,
            noise,
            self.config.copy_guidance,
            weighting,
        )
        self.copy.train_step(z.detach(), condition, self.generator(step))
        return grad

    def state_dict(self) -> dict:
        return {"vsd_copy": self.copy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.copy.load_state_dict(state["vsd_copy"])


class ISMRule(UpdateRule):
    """ISM: inversion from the noise source's draw at ``t ~ 0`` to ``s``, then to ``t``,
    with the empty prompt's predictions (as the reference, whatever the negative prompt)."""

    def __init__(self, prior: Prior, seed: int, config: ISMConfig) -> None:
        super().__init__(prior, seed)
        self.config = config
        self.empty = prior.embed([""])

    def gradient(self, z, t, condition, guidance_scale, noise, weighting, step):
        empty = self.empty.expand(z.shape[0], *self.empty.shape[1:])
        return ism_gradient(
            self.prior, z, t, condition, guidance_scale, noise, self.config, weighting, empty
        )


class SDIRule(UpdateRule):
    """SDI: the noise from DDIM inversion of the render (the noise source is unused)."""

    def __init__(self, prior: Prior, seed: int, config: SDIConfig) -> None:
        super().__init__(prior, seed)
        self.config = config

    def gradient(self, z, t, condition, guidance_scale, noise, weighting, step):
        return sdi_gradient(
            self.prior,
            z,
            t,
            condition,
            guidance_scale,
            self.config,
            self.generator(step),
            weighting,
        )


def make_rule(
    method: str,
    prior: Prior,
    seed: int,
    vsd: VSDConfig | None = None,
    ism: ISMConfig | None = None,
    sdi: SDIConfig | None = None,
) -> UpdateRule:
    """The update rule of ``method`` for ``prior``, built once per run.

    Args:
        method: a method name (:data:`METHODS`).
        prior: the pretrained prior.
        seed: the run's seed.
        vsd, ism, sdi: the methods' settings (``None``: reference defaults).

    Raises:
        ConfigError: an unknown method, or VSD on a prior without a network.
    """
    rule = get_method(method).rule
    if rule == "vsd":
        return VSDRule(prior, seed, vsd or VSDConfig())
    if rule == "ism":
        return ISMRule(prior, seed, ism or ISMConfig())
    if rule == "sdi":
        return SDIRule(prior, seed, sdi or SDIConfig())
    return UpdateRule(prior, seed)
