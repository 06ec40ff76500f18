"""The 3DGS PLY export, read back by a reader written from the published layout only
(and by trimesh, a third party's PLY reader)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import trimesh

from cfd3d.errors import UserError
from cfd3d.export.ply import (
    REQUIRED_PROPERTIES,
    gaussians_to_ply,
    parse_gaussian_ply,
    read_gaussian_ply,
)
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


# ----------------------------------------------------------------------- reading back


def write_ply(columns: dict[str, np.ndarray], *, order: str = "<", before: str = "") -> bytes:
    """A binary PLY of one vertex element (property types from the arrays' dtypes), with
    ``before`` header lines (and no data) for elements ahead of it."""
    names = {"f4": "float", "f8": "double", "u1": "uchar", "i4": "int"}
    dtype = np.dtype([(k, order + v.dtype.str[1:]) for k, v in columns.items()])
    table = np.empty(len(next(iter(columns.values()))), dtype=dtype)
    for key, value in columns.items():
        table[key] = value
    fmt = "binary_little_endian" if order == "<" else "binary_big_endian"
    header = [
        "ply",
        f"format {fmt} 1.0",
        "comment written by a test",
        *([before] if before else []),
        f"element vertex {len(table)}",
        *(f"property {names[v.dtype.str[1:]]} {k}" for k, v in columns.items()),
        "end_header",
    ]
    return ("\n".join(header) + "\n").encode() + table.tobytes()


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_our_ply_reads_back_exactly(sh_degree):
    field = random_field(sh_degree)
    values = parse_gaussian_ply(gaussians_to_ply(field), "model.ply", sh_degree)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(values, name), getattr(field, name).detach()), name
    copy = GaussianField(GaussianConfig(count=7, sh_degree=sh_degree))
    copy.set_parameters(values)
    assert copy.count == 50 and torch.equal(copy.colors(), field.colors())


def test_a_reference_style_ply_loads_whatever_its_order_types_and_extras():
    """The reference 3DGS code writes degree 3 (45 f_rest); other writers reorder
    properties, use doubles, big-endian bodies, extra properties and elements."""
    gen = np.random.default_rng(0)
    n = 20
    columns = {name: gen.normal(size=n).astype("f8") for name in REQUIRED_PROPERTIES[::-1]}
    columns.update({f"f_rest_{k}": gen.normal(size=n).astype("f4") for k in range(45)})
    columns["red"] = gen.integers(0, 255, n).astype("u1")
    data = write_ply(columns, order=">", before="element camera 0\nproperty float fx")
    values = parse_gaussian_ply(data, "scene.ply", sh_degree=1)
    assert torch.allclose(values.means[:, 0], torch.from_numpy(columns["x"]).float())
    assert torch.allclose(values.quats[:, 3], torch.from_numpy(columns["rot_3"]).float())
    assert values.sh.shape == (n, 4, 3)  # bands above degree 1 dropped
    green_first = torch.from_numpy(columns["f_rest_15"]).float()  # green's first coefficient
    assert torch.allclose(values.sh[:, 1, 1], green_first)
    padded = parse_gaussian_ply(write_ply({k: columns[k] for k in REQUIRED_PROPERTIES}), "x", 2)
    assert padded.sh.shape == (n, 9, 3) and not padded.sh[:, 1:].any()


def ply_with(**changes) -> bytes:
    gen = np.random.default_rng(1)
    columns = {name: gen.normal(size=4).astype("f4") for name in REQUIRED_PROPERTIES}
    for name, value in changes.items():
        if value is None:
            del columns[name]
        else:
            columns[name] = value
    return write_ply(columns)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"solid cube\nfacet normal 0 0 1\n", "does not start with 'ply' (not a PLY file)"),
        (b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n", "format is ascii"),
        (b"ply\nformat binary_little_endian 1.0\n", "no end_header"),
        (b"ply\nformat binary_little_endian 1.0\nend_header\n", "no vertex element"),
        (ply_with(opacity=None, rot_2=None), "lacks opacity, rot_2"),
        (ply_with(f_rest_0=np.zeros(4, "f4")), "f_rest_* properties are not"),
        (ply_with()[:-5], "truncated"),
        (ply_with(x=np.array([0, np.nan, 0, 0], "f4")), "non-finite"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement face 1\n"
            b"property list uchar int vertex_indices\nelement vertex 1\nend_header\n",
            "element face has a list property",
        ),
    ],
)
def test_a_file_that_is_not_a_3dgs_ply_is_one_line(data, needle):
    with pytest.raises(UserError) as info:
        parse_gaussian_ply(data, "in.ply", 0)
    message = str(info.value)
    assert needle in message
    assert message.startswith("'in.ply' is not a 3DGS PLY: ") and "\n" not in message


def test_a_mesh_ply_names_what_it_lacks(tmp_path):
    path = tmp_path / "mesh.ply"
    trimesh.creation.box().export(path)
    with pytest.raises(UserError, match="lacks f_dc_0, f_dc_1, f_dc_2, opacity, scale_0"):
        read_gaussian_ply(path, 0)
    with pytest.raises(UserError, match="cannot read the Gaussians' init_path"):
        read_gaussian_ply(tmp_path / "missing.ply", 0)
