"""The 3DGS PLY export, read back by a reader written from the published layout only
(and by trimesh, a third party's PLY reader)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import trimesh

from cfd3d.export.ply import gaussians_to_ply
from cfd3d.scene.gaussians import GaussianConfig, GaussianField

PLY_TYPES = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4", "uint": "<u4"}


def read_3dgs_ply(data: bytes) -> dict[str, np.ndarray]:
    """Parse a binary little-endian PLY with one vertex element of scalar properties."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    names, types, count = [], [], None
    for line in lines[2:-1]:
        words = line.split()
        if words[0] == "element":
            assert words[1] == "vertex" and count is None
            count = int(words[2])
        elif words[0] == "property":
            types.append(PLY_TYPES[words[1]])
            names.append(words[2])
    assert count is not None
    dtype = np.dtype(list(zip(names, types, strict=True)))
    assert len(data) - end == count * dtype.itemsize
    table = np.frombuffer(data, dtype=dtype, offset=end, count=count)
    return {name: table[name] for name in names}


def random_field(sh_degree: int) -> GaussianField:
    g = torch.Generator().manual_seed(sh_degree)
    field = GaussianField(GaussianConfig(count=50, sh_degree=sh_degree), g)
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return field


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_the_ply_holds_every_gaussian_in_the_3dgs_layout(sh_degree):
    field = random_field(sh_degree)
    table = read_3dgs_ply(gaussians_to_ply(field))
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    expected = [
        *["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"],
        *(f"f_rest_{k}" for k in range(n_rest)),
        *["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"],
    ]
    assert list(table) == expected

    def column(*names: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([table[n] for n in names], axis=1).copy())

    assert torch.equal(column("x", "y", "z"), field.means.detach())
    assert torch.equal(column("nx", "ny", "nz"), torch.zeros(50, 3))
    assert torch.equal(column("f_dc_0", "f_dc_1", "f_dc_2"), field.sh.detach()[:, 0])
    assert torch.equal(column("opacity")[:, 0], field.opacity_logits.detach())
    assert torch.equal(column("scale_0", "scale_1", "scale_2"), field.log_scales.detach())
    assert torch.equal(column("rot_0", "rot_1", "rot_2", "rot_3"), field.quats.detach())
    if n_rest:
        rest = column(*(f"f_rest_{k}" for k in range(n_rest))).view(50, 3, -1)
        # channel-major: f_rest_0.. are red's coefficients 1.., then green's, then blue's
        assert torch.equal(rest.transpose(1, 2), field.sh.detach()[:, 1:])


def test_a_third_party_reader_sees_the_centres():
    field = random_field(0)
    cloud = trimesh.load(io.BytesIO(gaussians_to_ply(field)), file_type="ply")
    assert np.allclose(np.asarray(cloud.vertices), field.means.detach().numpy())
