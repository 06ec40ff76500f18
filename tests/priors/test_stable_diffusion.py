"""The Stable Diffusion adapter, on tiny random-weight pipelines saved in diffusers format."""

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from cfd3d.distill import cfd_gradient, gradient_loss
from cfd3d.errors import UserError
from cfd3d.priors.registry import load_prior
from cfd3d.priors.sd_random import save_random_pipeline
from cfd3d.priors.stable_diffusion import (
    StableDiffusionConfig,
    StableDiffusionPrior,
)


@pytest.fixture(autouse=True)
def _no_configured_model(monkeypatch):
    """Tests name their model; none comes from the environment or the network."""
    monkeypatch.delenv("CFD3D_SD_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny eps- and v-prediction pipelines with the same (seeded) weights."""
    root = tmp_path_factory.mktemp("tiny-sd")
    return {
        kind: save_random_pipeline(root / kind, "tiny", prediction_type=kind)
        for kind in ("epsilon", "v_prediction")
    }


@pytest.fixture(scope="module")
def eps_folder(folders):
    return folders["epsilon"]


@pytest.fixture(params=["epsilon", "v_prediction"])
def sd_folder(request, folders):
    return folders[request.param]


def test_loads_like_a_user_checkpoint(sd_folder):
    prior = load_prior(str(sd_folder))
    assert isinstance(prior, StableDiffusionPrior)
    assert prior.input_shape == (4, 8, 8)
    assert prior.image_size == (16, 16)
    assert prior.dtype == torch.float32  # CPU
    scheduler = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert prior.prediction_type == scheduler["prediction_type"]
    # Stable Diffusion's scaled-linear schedule, read from the scheduler config.
    assert prior.schedule.alphas_cumprod[-1].item() == pytest.approx(0.004660, abs=2e-5)


def test_v_prediction_is_converted_to_eps(tmp_path):
    eps_prior = StableDiffusionPrior(
        StableDiffusionConfig(str(save_random_pipeline(tmp_path / "e", "tiny")))
    )
    v_prior = StableDiffusionPrior(
        StableDiffusionConfig(str(save_random_pipeline(tmp_path / "v", "tiny", "v_prediction")))
    )
    # Same seed -> same weights: the raw UNet outputs agree, so v_prior.eps must be the
    # v -> eps conversion of eps_prior's raw output.
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 800])
    emb = eps_prior.embed(["a cat", "a dog"])
    raw = eps_prior.eps(x, t, emb)
    alpha, sigma = (v.float()[:, None, None, None] for v in v_prior.schedule.alpha_sigma(t))
    assert torch.allclose(v_prior.eps(x, t, emb), sigma * x + alpha * raw, atol=1e-5)


def test_encode_is_differentiable_and_decode_returns_images(eps_folder):
    prior = load_prior(str(eps_folder))
    images = torch.rand(2, 3, 32, 32, requires_grad=True)  # resized to 16x16 inside
    z = prior.encode(images)
    assert z.shape == (2, 4, 8, 8)
    z.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    decoded = prior.decode(z.detach())
    assert decoded.shape == (2, 3, 16, 16)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_guidance_and_negative_prompt(eps_folder):
    prior = load_prior(str(eps_folder))
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    cond = prior.condition("a hamburger", negative_prompt="blurry")
    e_c = prior.eps(x, t, prior.embed(["a hamburger"]))
    e_n = prior.eps(x, t, prior.embed(["blurry"]))
    assert torch.allclose(prior.predict_eps(x, t, cond, 7.5), e_n + 7.5 * (e_c - e_n), atol=1e-4)


def test_perp_neg_without_and_with_negatives(eps_folder):
    prior = load_prior(str(eps_folder))
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    cond = prior.condition("a dog, front view")
    plain = prior.predict_eps(x, t, cond, 5.0)
    back = prior.embed(["a dog, back view"])
    off = replace(cond, perp_neg=((back, torch.zeros(1)),))
    assert torch.allclose(prior.predict_eps(x, t, off, 5.0), plain, atol=1e-5)
    perp = prior.predict_eps(x, t, replace(cond, perp_neg=((back, torch.ones(1)),)), 5.0)
    # The correction is orthogonal to the positive direction.
    e_u = prior.eps(x, t, cond.uncond)
    d_pos = (prior.eps(x, t, cond.cond) - e_u).flatten()
    assert (
        torch.dot((perp - plain).flatten(), d_pos).abs()
        < 1e-3 * d_pos.norm() * (perp - plain).norm()
    )
    assert not torch.allclose(perp, plain)


def test_a_few_cfd_steps_end_to_end(eps_folder):
    prior = load_prior(str(eps_folder))
    image = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    optimiser = torch.optim.Adam([image], lr=0.05)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = prior.condition("a hamburger")
    for step in range(3):
        z = prior.encode(image)
        grad = cfd_gradient(prior, z, torch.tensor(900 - 100 * step), cond, 7.5, noise)
        optimiser.zero_grad()
        gradient_loss(z, grad).backward()
        optimiser.step()
    assert not torch.allclose(image.detach(), torch.full_like(image, 0.5))
    assert torch.isfinite(image).all()


def test_playground_runs_on_a_diffusers_folder(eps_folder, tmp_path):
    from cfd3d.cli import main

    code = main(
        [
            "image",
            "a cat",
            "--prior",
            str(eps_folder),
            "--steps",
            "3",
            "--quiet",
            "--batch",
            "1",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    assert (tmp_path / "o" / "final.png").exists()


# ---- errors a user can cause -------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match=r"tried: .*nope \(no such folder or file\)"):
        load_prior(str(tmp_path / "nope"))


def test_not_a_diffusers_folder(tmp_path):
    (tmp_path / "weights.ckpt").write_bytes(b"\0")
    with pytest.raises(UserError, match=r"no model_index.json"):
        load_prior(str(tmp_path))


def test_missing_component(eps_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(eps_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(UserError, match=r"missing the diffusers component folder.*vae"):
        load_prior(str(broken))


def test_unsupported_architecture(eps_folder, tmp_path):
    sdxl = tmp_path / "sdxl"
    shutil.copytree(eps_folder, sdxl)
    index = json.loads((sdxl / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (sdxl / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"StableDiffusionXLPipeline.*supported priors: 'embedded'"):
        load_prior(str(sdxl))


def test_uncached_hub_id_fails_fast_with_an_actionable_line(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    for offline in ("1", "0"):
        start = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "cfd3d.cli",
                "image",
                "a cat",
                "--prior",
                "someone/not-a-real-model",
                "--out",
                str(tmp_path / "o"),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**env, "HF_HUB_OFFLINE": offline},
            timeout=60,
        )
        assert time.monotonic() - start < 30
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert (
            len(lines) == 1
            and "--prior PATH" in lines[0]
            and "huggingface-cli download" in lines[0]
        )
