"""The standard 3D Gaussian splatting PLY (the layout of Kerbl et al.'s releases, which
common splat viewers read).

One binary little-endian ``vertex`` element, one ``float`` property per value, in this
order: ``x y z`` (centre), ``nx ny nz`` (zeros), ``f_dc_0..2`` (the DC spherical-harmonic
coefficient of red, green, blue), ``f_rest_0..`` (the higher-order coefficients,
channel-major: all of red's, then green's, then blue's; none for degree 0), ``opacity``
(the logit), ``scale_0..2`` (natural log of the standard deviations) and ``rot_0..3``
(the quaternion ``w x y z``, unnormalised). Positions are in cfd3d's world frame (+z up).
"""

from __future__ import annotations

import numpy as np
import torch

from cfd3d.scene.gaussians import GaussianField


def ply_property_names(sh_degree: int) -> list[str]:
    """The per-vertex property names of a PLY of ``sh_degree``, in file order."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *(f"f_dc_{k}" for k in range(3)),
        *(f"f_rest_{k}" for k in range(n_rest)),
        "opacity",
        *(f"scale_{k}" for k in range(3)),
        *(f"rot_{k}" for k in range(4)),
    ]


def gaussians_to_ply(field: GaussianField) -> bytes:
    """The Gaussians as the bytes of a 3DGS PLY file (see the module doc)."""
    with torch.no_grad():
        n = field.count
        sh = field.sh.detach().float().cpu()
        rest = sh[:, 1:, :].transpose(1, 2).reshape(n, -1)  # channel-major
        columns = torch.cat(
            [
                field.means.detach().float().cpu(),
                torch.zeros(n, 3),
                sh[:, 0, :],
                rest,
                field.opacity_logits.detach().float().cpu()[:, None],
                field.log_scales.detach().float().cpu(),
                field.quats.detach().float().cpu(),
            ],
            dim=1,
        )
    names = ply_property_names(field.config.sh_degree)
    assert columns.shape[1] == len(names)
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            f"element vertex {n}",
            *(f"property float {name}" for name in names),
            "end_header",
        ]
    )
    body = np.ascontiguousarray(columns.numpy(), dtype="<f4").tobytes()
    return (header + "\n").encode("ascii") + body
