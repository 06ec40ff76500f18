"""Distillation update rules (CFD, SDS, FSD), the surrogate loss and timestep schedules.

Every rule is a pure function returning the gradient on the prior input ``z``; the loss
:func:`cfd3d.distill.loss.gradient_loss` hands exactly that gradient to autograd.
"""

from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.fsd import fsd_gradient
from cfd3d.distill.loss import gradient_loss
from cfd3d.distill.sds import sds_gradient
from cfd3d.distill.weighting import WEIGHTINGS, timestep_weight

__all__ = [
    "WEIGHTINGS",
    "cfd_gradient",
    "fsd_gradient",
    "gradient_loss",
    "sds_gradient",
    "timestep_weight",
]
