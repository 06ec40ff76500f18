"""Distillation update rules (CFD, SDS, FSD, VSD, ISM, SDI), the surrogate loss and
timestep schedules.

Every rule is a pure function returning the gradient on the prior input ``z``; the loss
:func:`cfd3d.distill.loss.gradient_loss` hands exactly that gradient to autograd. A run
reaches the rules through :func:`cfd3d.distill.methods.make_rule`.
"""

from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.fsd import fsd_gradient
from cfd3d.distill.ism import ISMConfig, ism_gradient
from cfd3d.distill.loss import gradient_loss
from cfd3d.distill.sdi import SDIConfig, sdi_gradient
from cfd3d.distill.sds import sds_gradient
from cfd3d.distill.vsd import VSDConfig, vsd_gradient
from cfd3d.distill.weighting import WEIGHTINGS, timestep_weight

__all__ = [
    "WEIGHTINGS",
    "ISMConfig",
    "SDIConfig",
    "VSDConfig",
    "cfd_gradient",
    "fsd_gradient",
    "gradient_loss",
    "ism_gradient",
    "sdi_gradient",
    "sds_gradient",
    "timestep_weight",
    "vsd_gradient",
]
