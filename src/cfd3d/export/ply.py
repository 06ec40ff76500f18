"""The standard 3D Gaussian splatting PLY (the layout of Kerbl et al.'s releases, which
common splat viewers read).

One binary little-endian ``vertex`` element, one ``float`` property per value, in this
order: ``x y z`` (centre), ``nx ny nz`` (zeros), ``f_dc_0..2`` (the DC spherical-harmonic
coefficient of red, green, blue), ``f_rest_0..`` (the higher-order coefficients,
channel-major: all of red's, then green's, then blue's; none for degree 0), ``opacity``
(the logit), ``scale_0..2`` (natural log of the standard deviations) and ``rot_0..3``
(the quaternion ``w x y z``, unnormalised). Positions are in cfd3d's world frame (+z up).

:func:`read_gaussian_ply` reads such a file back (``GaussianConfig.init="ply"``): any
binary PLY whose ``vertex`` element has those properties (in any order and scalar type,
other properties and later elements ignored), so the reference 3DGS code's files load too.
A file that is not one says, in one line, what it lacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cfd3d.errors import UserError
from cfd3d.scene.gaussians import MAX_SH_DEGREE, GaussianField, GaussianParameters

REQUIRED_PROPERTIES: tuple[str, ...] = (
    *("x", "y", "z"),
    *(f"f_dc_{k}" for k in range(3)),
    "opacity",
    *(f"scale_{k}" for k in range(3)),
    *(f"rot_{k}" for k in range(4)),
)
"""The vertex properties a 3DGS PLY must have (``f_rest_*`` are optional)."""

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_HEADER = 1 << 16


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


def read_gaussian_ply(path: Path, sh_degree: int) -> GaussianParameters:
    """The Gaussians of the 3DGS PLY file at ``path`` (:func:`parse_gaussian_ply`).

    Raises:
        UserError: the file cannot be read or is not a 3DGS PLY (one line).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read the Gaussians' init_path '{path}' ({exc.strerror or exc}); "
            "give a 3DGS PLY file"
        ) from None
    return parse_gaussian_ply(data, str(path), sh_degree)


def parse_gaussian_ply(data: bytes, name: str, sh_degree: int) -> GaussianParameters:
    """Parse the bytes of a 3DGS PLY file (see the module doc).

    The spherical-harmonic coefficients are fitted to ``sh_degree``: bands the file has
    beyond it are dropped, bands it lacks start at zero.

    Args:
        data: the file's bytes.
        name: how to name the file in errors.
        sh_degree: the spherical-harmonic degree of the field that takes the Gaussians.

    Raises:
        UserError: not a PLY, not binary, no vertex element, missing properties, a
            truncated body or non-finite values; one line saying which.
    """

    def refuse(reason: str) -> UserError:
        return UserError(f"'{name}' is not a 3DGS PLY: {reason}")

    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise refuse("it does not start with 'ply' (not a PLY file)")
    end = data.find(b"end_header", 0, _MAX_HEADER)
    newline = data.find(b"\n", end) if end >= 0 else -1
    if newline < 0:
        raise refuse("its header has no end_header line")
    try:
        lines = data[:newline].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise refuse("its header is not ASCII text") from None
    order = "<"
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in lines[1:-1]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            if words[1] not in _FORMATS:
                raise refuse(f"its format is {words[1]}; 3DGS PLY files are binary")
            order = _FORMATS[words[1]]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            elements[-1][2].append((words[-1], words[1]))
        else:
            raise refuse(f"its header has a line PLY does not define: {line[:60]!r}")
    offset = newline + 1
    vertex = None
    for element, count, properties in elements:  # up to the vertex element
        bad = [kind for _, kind in properties if kind not in _PLY_TYPES]
        if bad:
            raise refuse(f"element {element} has a {bad[0]} property (scalars expected)")
        dtype = np.dtype([(prop, order + _PLY_TYPES[kind]) for prop, kind in properties])
        if element == "vertex":
            vertex = (count, dtype, offset)
            break
        offset += count * dtype.itemsize
    if vertex is None:
        raise refuse("it has no vertex element")
    count, dtype, offset = vertex
    names = set(dtype.names or ())
    missing = [prop for prop in REQUIRED_PROPERTIES if prop not in names]
    if missing:
        raise refuse(
            f"its vertex element lacks {', '.join(missing)} (a 3DGS PLY has x y z, "
            "f_dc_0..2, opacity, scale_0..2, rot_0..3 and optionally f_rest_*)"
        )
    n_rest = sum(1 for prop in names if prop.startswith("f_rest_"))
    rest_counts = [3 * ((d + 1) ** 2 - 1) for d in range(MAX_SH_DEGREE + 1)]
    if n_rest not in rest_counts or any(f"f_rest_{k}" not in names for k in range(n_rest)):
        raise refuse(f"its {n_rest} f_rest_* properties are not f_rest_0.. of an SH degree 0-3")
    if count < 1:
        raise refuse("it holds no Gaussians (vertex count 0)")
    if len(data) < offset + count * dtype.itemsize:
        raise refuse(f"it is truncated (the header promises {count} vertices)")
    table = np.frombuffer(data, dtype=dtype, count=count, offset=offset)

    def columns(*props: str) -> torch.Tensor:
        values = [table[prop].astype(np.float32) for prop in props]
        return torch.from_numpy(np.stack(values, axis=1)) if values else torch.zeros(count, 0)

    means = columns("x", "y", "z")
    dc = columns("f_dc_0", "f_dc_1", "f_dc_2")
    rest = columns(*(f"f_rest_{k}" for k in range(n_rest))).view(count, 3, n_rest // 3)
    sh_file = torch.cat([dc[:, None, :], rest.transpose(1, 2)], dim=1)  # (N, K, 3)
    n_sh = (sh_degree + 1) ** 2
    sh = torch.zeros(count, n_sh, 3)
    keep = min(n_sh, sh_file.shape[1])
    sh[:, :keep] = sh_file[:, :keep]
    values = GaussianParameters(
        means=means,
        log_scales=columns("scale_0", "scale_1", "scale_2"),
        quats=columns("rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logits=columns("opacity")[:, 0],
        sh=sh,
    )
    finite = all(
        bool(torch.isfinite(getattr(values, field)).all())
        for field in ("means", "log_scales", "quats", "opacity_logits", "sh")
    )
    if not finite:
        raise refuse("it holds non-finite values (NaN or infinity)")
    if bool((values.quats.norm(dim=1) == 0.0).any()):
        raise refuse("a rotation quaternion is zero")
    return values
