"""The MVDream multi-view prior, on a tiny random checkpoint in the published LDM layout."""

from dataclasses import replace

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from cfd3d.distill import cfd_gradient, gradient_loss
from cfd3d.errors import ConfigError, UserError
from cfd3d.priors import ldm
from cfd3d.priors.mvdream import (
    MultiViewAttnProcessor,
    MVDreamConfig,
    MVDreamPrior,
    mvdream_camera_condition,
)
from cfd3d.priors.mvdream_random import random_mvdream_state_dict, save_random_mvdream
from cfd3d.priors.registry import load_prior
from cfd3d.priors.sd_random import save_random_single_file
from cfd3d.scene.cameras import orbit, spherical_cameras
from cfd3d.scene.sampling import CameraSamplerConfig, sample_cameras

T = torch.tensor([500] * 4)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def mv_file(tmp_path_factory):
    return save_random_mvdream(tmp_path_factory.mktemp("tiny-mvdream") / "tiny-4view.pt")


@pytest.fixture(scope="module")
def prior(mv_file):
    return load_prior(str(mv_file), device="cpu")


@pytest.fixture(scope="module")
def single_view(mv_file):
    """The same weights with one view per group and the camera MLP zeroed."""
    single = MVDreamPrior.from_single_file(mv_file, device="cpu", num_frames=1)
    for p in single.unet.class_embedding.parameters():
        p.data.zero_()
    return single


@pytest.fixture(scope="module")
def emb(prior):
    return prior.embed(["a hamburger"] * 4)


def _latents(batch=4, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_loads_the_published_layout_through_the_registry(prior, mv_file):
    assert isinstance(prior, MVDreamPrior)
    assert prior.input_shape == (4, 32, 32)  # MVDream's 32x32 latents
    assert prior.image_size == (64, 64)  # the tiny VAE downsamples 2x (the published one 8x)
    assert prior.dtype == torch.float32
    assert prior.scaling_factor == pytest.approx(0.18215)
    assert prior.schedule.alphas_cumprod[-1].item() == pytest.approx(0.004660, abs=2e-5)
    # The camera MLP is the file's camera_embed (Linear, SiLU, Linear).
    state = ldm.read_state_dict(mv_file)
    embedding = prior.unet.class_embedding
    for ldm_name, layer in (("0", embedding.linear_1), ("2", embedding.linear_2)):
        for leaf in ("weight", "bias"):
            key = f"model.diffusion_model.camera_embed.{ldm_name}.{leaf}"
            assert torch.equal(getattr(layer, leaf), state[key])
    assert isinstance(embedding.act, torch.nn.SiLU)
    # Every self-attention joins the 4 views; cross-attention stays per view.
    processors = prior.unet.attn_processors
    attn1 = [p for name, p in processors.items() if name.endswith("attn1.processor")]
    attn2 = [p for name, p in processors.items() if name.endswith("attn2.processor")]
    assert len(attn1) == len(attn2) == 4  # down, middle and two up transformer blocks
    assert all(isinstance(p, MultiViewAttnProcessor) and p.num_frames == 4 for p in attn1)
    assert not any(isinstance(p, MultiViewAttnProcessor) for p in attn2)


def test_the_tiny_file_has_the_published_key_layout():
    state = random_mvdream_state_dict()
    prefixes = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."}
    assert all(any(k.startswith(p) for p in prefixes) for k in state)
    for key in (
        "model.diffusion_model.camera_embed.0.weight",
        "model.diffusion_model.camera_embed.2.bias",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.conv_in.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.ln_final.weight",
    ):
        assert key in state, key
    assert state["model.diffusion_model.camera_embed.0.weight"].shape == (128, 16)
    assert state["model.diffusion_model.camera_embed.2.weight"].shape == (128, 128)


def test_camera_embedding_changes_the_prediction(prior, emb):
    x = _latents()
    front = prior.eps(x, T, emb, orbit(4, elevation_deg=15.0).c2w)
    above = prior.eps(x, T, emb, orbit(4, elevation_deg=60.0).c2w)
    # The same four latents, all seen from the front instead of from four sides.
    front_only = spherical_cameras(*(torch.full((4,), v) for v in (0.0, 15.0, 1.4, 50.0)))
    all_front = prior.eps(x, T, emb, front_only.c2w)
    assert (front - above).abs().max() > 1e-2 * front.abs().max()
    assert (front - all_front).abs().max() > 1e-2 * front.abs().max()
    # The camera centre's distance is normalised away, as in MVDream.
    far = orbit(4, elevation_deg=15.0, distance=3.0).c2w
    torch.testing.assert_close(prior.eps(x, T, emb, far), front, atol=1e-5, rtol=0)


def test_views_of_one_object_attend_to_each_other(prior, single_view, emb):
    cams = torch.cat([orbit(4).c2w, orbit(4, elevation_deg=30.0).c2w])
    x = _latents(8)
    emb8 = emb.repeat(2, 1, 1)
    t8 = T.repeat(2)
    base = prior.eps(x, t8, emb8, cams)
    x2 = x.clone()
    x2[1] += 0.5 * torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    moved = prior.eps(x2, t8, emb8, cams)
    # Perturbing view 2 of object 0 changes view 1's eps, and no view of object 1.
    assert (moved[0] - base[0]).abs().max() > 1e-3
    assert torch.equal(moved[4:], base[4:])
    # With one view per group the views are independent images.
    alone, alone_moved = (single_view.eps(v, t8, emb8, cams) for v in (x, x2))
    assert torch.equal(alone_moved[0], alone[0]) and torch.equal(alone_moved[2:], alone[2:])


def test_attention_slicing_keeps_the_views_joint(prior, mv_file, emb):
    sliced = MVDreamPrior.from_single_file(mv_file, device="cpu", attention_slicing=True)
    x, cams = _latents(), orbit(4).c2w
    torch.testing.assert_close(
        sliced.eps(x, T, emb, cams), prior.eps(x, T, emb, cams), atol=1e-5, rtol=0
    )


def test_zero_camera_and_one_view_per_group_is_the_plain_sd_unet(single_view, mv_file, emb):
    plain = ldm.unet_from_ldm(ldm.read_state_dict(mv_file), sample_size=32)
    assert plain.class_embedding is None
    x = _latents()
    with torch.no_grad():
        expected = plain(x, T, encoder_hidden_states=emb).sample
    got = single_view.eps(x, T, emb, orbit(4).c2w)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_camera_conversion_matches_the_reference():
    # Produced outside the repository with MVDream's own camera_utils (bytedance/MVDream,
    # blender_coord=True, the cameras it was trained and samples with), rounded to 8 decimals:
    #   get_camera(4, elevation=15, azimuth_start=90)  # scripts/t2i.py's default views
    #   get_camera(4, elevation=30, azimuth_start=20)
    # Rows are row-major flattened 4x4 camera-to-world matrices on the unit sphere.
    c, s = 0.96592581, 0.25881904  # cos 15, sin 15
    views_15 = [
        [0, -s, c, c, 1, 0, 0, 0, 0, c, s, s, 0, 0, 0, 1],
        [-1, 0, 0, 0, 0, -s, c, c, 0, c, s, s, 0, 0, 0, 1],
        [0, s, -c, -c, -1, 0, 0, 0, 0, c, s, s, 0, 0, 0, 1],
        [1, 0, 0, 0, 0, s, -c, -c, 0, c, s, s, 0, 0, 0, 1],
    ]
    a, b, d, e, f = 0.93969262, 0.17101008, 0.29619813, 0.34202015, 0.46984631
    g, h = 0.81379765, 0.86602539
    views_30 = [
        [a, -b, d, d, e, f, -g, -g, 0, h, 0.5, 0.5, 0, 0, 0, 1],
        [-e, -f, g, g, a, -b, d, d, 0, h, 0.5, 0.5, 0, 0, 0, 1],
        [-a, b, -d, -d, -e, -f, g, g, 0, h, 0.5, 0.5, 0, 0, 0, 1],
        [e, f, -g, -g, -a, b, -d, -d, 0, h, 0.5, 0.5, 0, 0, 0, 1],
    ]
    # MVDream azimuth = cfd3d azimuth + 90 degrees; cfd3d cameras at any distance.
    for elevation, azimuths, distance, expected in (
        (15.0, [0.0, 90.0, 180.0, 270.0], 1.4, views_15),
        (30.0, [-70.0, 20.0, 110.0, 200.0], 2.5, views_30),
    ):
        cams = spherical_cameras(
            torch.tensor(azimuths),
            torch.full((4,), elevation),
            torch.full((4,), distance),
            torch.full((4,), 50.0),
        )
        got = mvdream_camera_condition(cams.c2w)
        torch.testing.assert_close(got, torch.tensor(expected), atol=2e-6, rtol=0)


def test_grouped_camera_sampler_feeds_whole_groups(prior):
    cams = sample_cameras(
        CameraSamplerConfig(views_per_group=4), 8, torch.Generator().manual_seed(0)
    )
    az = cams.azimuth.view(2, 4)
    # Each group is MVDream's 4 views 90 degrees apart.
    torch.testing.assert_close(
        (az - az[:, :1]) % 360.0, torch.tensor([[0.0, 90.0, 180.0, 270.0]] * 2), atol=1e-3, rtol=0
    )
    cond = replace(prior.condition("a hamburger", batch_size=8), cameras=cams.c2w)
    assert prior.predict_eps(_latents(8), T.repeat(2), cond, 5.0).shape == (8, 4, 8, 8)


def test_guidance_batches_keep_view_groups_aligned(prior):
    cams = orbit(4).c2w
    cond = replace(prior.condition("a hamburger", "blurry", batch_size=4), cameras=cams)
    x = _latents()
    e_c = prior.eps(x, T, prior.embed(["a hamburger"] * 4), cams)
    e_n = prior.eps(x, T, prior.embed(["blurry"] * 4), cams)
    torch.testing.assert_close(
        prior.predict_eps(x, T, cond, 7.5), e_n + 7.5 * (e_c - e_n), atol=1e-4, rtol=0
    )


def test_encode_is_differentiable_and_decode_returns_images(prior):
    images = torch.rand(4, 3, 32, 32, requires_grad=True)  # resized to 64x64 inside
    z = prior.encode(images)
    assert z.shape == (4, 4, 32, 32)
    z.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    decoded = prior.decode(z.detach())
    assert decoded.shape == (4, 3, 64, 64)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_a_few_cfd_steps_on_four_views(prior):
    cams = orbit(4).c2w
    cond = replace(prior.condition("a hamburger", batch_size=4), cameras=cams)
    image = torch.full((4, 3, 16, 16), 0.5, requires_grad=True)
    optimiser = torch.optim.Adam([image], lr=0.05)
    noise = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    for step in range(2):
        z = prior.encode(image)
        grad = cfd_gradient(prior, z, torch.tensor(900 - 100 * step), cond, 7.5, noise)
        optimiser.zero_grad()
        gradient_loss(z, grad).backward()
        optimiser.step()
    assert not torch.allclose(image.detach(), torch.full_like(image, 0.5))
    assert torch.isfinite(image).all()


def test_a_batch_that_is_not_whole_groups_is_a_config_error(prior, emb):
    with pytest.raises(ConfigError) as info:
        prior.eps(_latents(3), T[:3], emb[:3], orbit(3).c2w)
    assert "groups of 4" in str(info.value) and "\n" not in str(info.value)


def test_missing_cameras_are_a_user_error(prior, emb):
    with pytest.raises(UserError, match="cameras"):
        prior.eps(_latents(), T, emb)


def test_a_stable_diffusion_checkpoint_is_not_an_mvdream_one(tmp_path):
    sd_file = save_random_single_file(tmp_path / "sd2.safetensors", "tiny-sd2")
    with pytest.raises(UserError) as info:
        MVDreamPrior.from_single_file(sd_file, device="cpu")
    message = str(info.value)
    assert "camera embedding" in message and "--prior-mv" in message and "\n" not in message


@pytest.mark.parametrize(
    "kwargs", [{"num_frames": 0}, {"num_frames": 2.0}, {"latent_size": 0}, {"dtype": "int8"}]
)
def test_invalid_config_values_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        MVDreamConfig(**kwargs)


def test_unknown_loader_options_are_config_errors(mv_file):
    with pytest.raises(ConfigError, match="latent_sizes"):
        MVDreamPrior.from_single_file(mv_file, device="cpu", latent_sizes=8)
