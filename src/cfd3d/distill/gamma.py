"""The clean-flow SDE refresh rate as a pure function of the step.

The CFD reference recipe decays gamma from 1e-2 to 1e-4 over the run; ``gamma = 0``
throughout is the ODE. The decay is geometric (linear in log gamma).
"""

from __future__ import annotations

import math

from cfd3d.noise.sde import check_gamma


def gamma_at(step: int, total_steps: int, start: float = 1e-2, end: float = 1e-4) -> float:
    """Refresh rate for optimisation ``step`` of ``total_steps``: ``start`` -> ``end``."""
    check_gamma(start)
    check_gamma(end)
    if start == 0.0 or end == 0.0:
        return start + (end - start) * step / max(total_steps - 1, 1)
    progress = step / max(total_steps - 1, 1)
    return math.exp(math.log(start) + (math.log(end) - math.log(start)) * progress)
