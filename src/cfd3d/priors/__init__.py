"""Text-to-image priors behind one protocol (:class:`cfd3d.priors.base.Prior`)."""

from cfd3d.priors.base import Condition, Prior

__all__ = ["Condition", "Prior"]
