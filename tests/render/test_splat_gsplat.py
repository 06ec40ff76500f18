"""The gsplat fast path: our cameras in gsplat's conventions, the backend choice, and the
twin test of the two rasterisers (CUDA and gsplat only).

The twin test (:func:`test_gsplat_matches_the_torch_reference`) renders random scenes with
both backends and compares the forward images (rgb, opacity, expected depth) and the
gradients of every Gaussian parameter and of the projected centres for random upstream
gradients. Run on an NVIDIA H200 (gsplat 1.5.3 compiled there, torch 2.11 + CUDA 13) on
2026-12-04: all three cases passed, images within 2.2e-4, gradients at cosine >= 0.99999
(docs/benchmarks.md, "GPU checks").
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.generate.config import GenerateConfig, preset_config
from cfd3d.render import splat
from cfd3d.render.splat import (
    SplatConfig,
    SplatRenderer,
    camera_depths,
    gsplat_cameras,
    gsplat_importable,
    project_gaussians,
    resolve_backend,
)
from cfd3d.scene.cameras import spherical_cameras
from cfd3d.scene.gaussians import PARAMETER_NAMES, GaussianConfig, GaussianField


def random_cameras(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g)

    return spherical_cameras(uniform(0, 360), uniform(-30, 60), uniform(1.5, 3.0), uniform(30, 70))


def test_converted_cameras_project_like_our_rasteriser():
    """Points projected by the pinhole formula with the converted viewmat and K land where
    our own projection puts them (to float32 precision), at the same depth."""
    cameras = random_cameras(5)
    height, width = 24, 40
    g = torch.Generator().manual_seed(1)
    means = 0.6 * torch.rand(200, 3, generator=g) - 0.3
    viewmats, ks = gsplat_cameras(cameras, height, width)
    rotation = viewmats[:, :3, :3]
    assert torch.allclose(
        rotation @ rotation.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5
    )
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(5), atol=1e-5)
    # pinhole projection in OpenCV camera coordinates (x right, y down, z forward)
    homogeneous = torch.cat([means, torch.ones(200, 1)], dim=1)
    p = torch.einsum("bij,nj->bni", viewmats, homogeneous)[..., :3]
    assert (p[..., 2] > 0).all()  # every point lies in front of every camera
    u = ks[:, None, 0, 0] * p[..., 0] / p[..., 2] + ks[:, None, 0, 2]
    v = ks[:, None, 1, 1] * p[..., 1] / p[..., 2] + ks[:, None, 1, 2]
    covariance = torch.eye(3).expand(200, 3, 3) * 1e-4
    ours = project_gaussians(means, covariance, torch.full((200,), 0.5), cameras, height, width)
    assert torch.allclose(torch.stack([u, v], dim=-1), ours.means2d, atol=2e-3)
    assert torch.allclose(p[..., 2], ours.depths, atol=1e-5)
    assert torch.allclose(camera_depths(means, cameras), ours.depths, atol=1e-5)


def test_backend_choice(monkeypatch):
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_backend("gsplat", torch.device("cpu"))
    monkeypatch.setattr(splat, "gsplat_importable", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'cfd3d\[gs\]'") as info:
        resolve_backend("gsplat", "cuda")
    assert "\n" not in str(info.value)
    assert resolve_backend("auto", "cuda") == "torch"
    monkeypatch.setattr(splat, "gsplat_importable", lambda: True)
    assert resolve_backend("auto", "cuda:0") == "gsplat"
    assert resolve_backend("torch", "cuda") == "torch"
    with pytest.raises(ConfigError, match="unknown splat backend 'cuda'"):
        SplatConfig(backend="cuda")  # type: ignore[arg-type]


def test_a_gsplat_run_on_the_cpu_exits_2(tmp_path, capsys):
    from cfd3d.cli import main
    from cfd3d.generate.config import save_config

    config = replace(preset_config("toy-gaussians", "a red cube"), splat_backend="gsplat")
    path = tmp_path / "config.json"
    path.write_text(save_config(config.resolved()))
    out = tmp_path / "out"
    code = main(["generate", "--config", str(path), "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "gsplat splat backend needs a CUDA device" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    with pytest.raises(ConfigError, match="unknown splat_backend"):
        GenerateConfig(prompt="a red cube", splat_backend="vulkan")


def random_scene(n: int, seed: int, device: str, sh_degree: int = 1) -> GaussianField:
    g = torch.Generator().manual_seed(seed)
    field = GaussianField(GaussianConfig(count=n, sh_degree=sh_degree), generator=g)
    with torch.no_grad():
        field.log_scales.copy_(torch.log(0.02 + 0.08 * torch.rand(n, 3, generator=g)))
        field.quats.copy_(torch.randn(n, 4, generator=g))
        field.opacity_logits.copy_(2.0 * torch.randn(n, generator=g))
        field.sh.copy_(0.5 * torch.randn(field.sh.shape, generator=g))
    return field.to(device)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.skipif(
    not (torch.cuda.is_available() and gsplat_importable()), reason="needs CUDA and gsplat"
)
@pytest.mark.parametrize(
    ("height", "width", "n", "mode"),
    [(32, 32, 300, "albedo"), (48, 64, 1000, "diffuse"), (64, 40, 2000, "textureless")],
)
def test_gsplat_matches_the_torch_reference(height, width, n, mode):
    """Forward: rgb and opacity within 0.02 at every pixel and 2e-3 on average; depth
    within 1 % where the opacity exceeds 0.5. Backward (random upstream gradients on rgb,
    opacity and depth): every parameter's gradient and the projected centres' gradient
    with cosine similarity >= 0.99 and norms within 5 %. Where the tolerances come from:
    the backends differ only at Gaussians' fringes, where gsplat bounds an opaque Gaussian
    (opacity > 0.35) by 3 σ and ours by its 1/255 cut-off (at most 3.33 σ), so a pixel there
    may miss an alpha of at most 0.99 · exp(-4.5) = 0.011; and in float32 summation order.
    """
    device = "cuda"
    cameras = random_cameras(3, seed=n).to(device)
    outputs, grads = {}, {}
    for backend in ("torch", "gsplat"):
        field = random_scene(n, seed=n, device=device)
        renderer = SplatRenderer(SplatConfig(backend=backend, normals=True))
        out, info = renderer.render_with_info(
            field, cameras, height, width, shading=mode, generator=torch.Generator().manual_seed(0)
        )
        g = torch.Generator().manual_seed(1)
        loss = sum(
            (torch.randn(t.shape, generator=g).to(device) * t).sum()
            for t in (out.rgb, out.opacity, out.depth)
        )
        loss.backward()
        outputs[backend] = out
        grads[backend] = {name: getattr(field, name).grad for name in PARAMETER_NAMES}
        grads[backend]["means2d"] = info.ndc_grad() * info.visible[..., None]
    ref, fast = outputs["torch"], outputs["gsplat"]
    # Every figure is gathered before any is checked, so one run (on a rarely lent GPU)
    # reports them all: `pytest -s` prints them, a failure names them.
    report, failures = {}, []
    for name in ("rgb", "opacity"):
        diff = (getattr(ref, name) - getattr(fast, name)).detach().abs()
        report[f"{name}_max"], report[f"{name}_mean"] = float(diff.max()), float(diff.mean())
        if not (report[f"{name}_max"] < 0.02 and report[f"{name}_mean"] < 2e-3):
            failures.append(name)
    solid = (ref.opacity > 0.5) & (fast.opacity > 0.5)
    relative = ((ref.depth[solid] - fast.depth[solid]) / ref.depth[solid]).detach().abs()
    report["depth_rel_max"] = float(relative.max()) if relative.numel() else 0.0
    if not torch.allclose(ref.depth[solid], fast.depth[solid], rtol=1e-2):
        failures.append("depth")
    for name, value in grads["torch"].items():
        other = grads["gsplat"][name]
        if value is None or other is None:  # colours get none when shading is textureless
            if (value is None) != (other is None):
                failures.append(f"{name} gradient only on one side")
            continue
        similarity, ratio = cosine(value, other), float(other.norm() / value.norm())
        report[f"{name}_grad_cos"], report[f"{name}_grad_norm_ratio"] = similarity, ratio
        if not (similarity >= 0.99 and abs(ratio - 1.0) < 0.05):
            failures.append(f"{name} gradient")
    print(f"gsplat vs torch {height}x{width} n={n} {mode}:", json.dumps(report, indent=None))
    assert not failures, f"outside tolerance: {failures}; {report}"
