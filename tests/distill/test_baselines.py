"""VSD, ISM and SDI: each gradient equals its formula on the Gaussian-mixture prior (whose
eps is exact), written out here step by step, one batch element at a time; the inversion
helpers; VSD's trainable copy on tiny random networks; bad settings."""

import itertools

import pytest
import torch

from cfd3d.distill.inversion import ddim_invert, ddim_step, even_grid, strided_grid
from cfd3d.distill.ism import ISMConfig, ism_gradient
from cfd3d.distill.methods import METHODS, get_method, make_rule
from cfd3d.distill.sdi import SDIConfig, sdi_gradient, sdi_noise
from cfd3d.distill.timesteps import TimestepSchedule, timestep_fraction
from cfd3d.distill.vsd import TrainableCopy, VSDConfig, vsd_gradient
from cfd3d.errors import ConfigError
from cfd3d.priors.gmm import GaussianMixturePrior, shapes_mixture, shapes_prior

T = torch.tensor([900, 400, 50])


@pytest.fixture
def setup():
    prior = shapes_prior(size=4)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    cond = prior.condition("a simple shape", negative_prompt="a green triangle", batch_size=3)
    return prior, z, noise, cond


def _levels(prior, t: int):
    alpha, sigma = prior.schedule.alpha_sigma(torch.tensor([t]))
    return float(alpha), float(sigma)


def _eps(prior, x, t: int, embedding):
    """The prior's exact eps for one element ``x`` ``(C, h, w)`` at integer ``t``."""
    return prior.eps(x[None], torch.tensor([t]), embedding[None])[0]


def _guided(prior, x, t: int, cond, uncond, scale: float):
    e_c, e_u = _eps(prior, x, t, cond), _eps(prior, x, t, uncond)
    return e_u + scale * (e_c - e_u)


def _ddim(prior, x, a: int, b: int, eps):
    alpha_a, sigma_a = _levels(prior, a)
    alpha_b, sigma_b = _levels(prior, b)
    return alpha_b * (x - sigma_a * eps) / alpha_a + sigma_b * eps


# ------------------------------------------------------------------------------ ISM


@pytest.mark.parametrize(("stride", "steps"), [(200, 5), (150, 2)])
def test_ism_gradient_equals_its_formula(setup, stride, steps):
    prior, z, noise, cond = setup
    config = ISMConfig(interval=50, inversion_stride=stride, inversion_steps=steps)
    got = ism_gradient(prior, z, T, cond, 7.5, noise, config)
    for b, t in enumerate(T.tolist()):
        s = max(t - 50, 0)
        start = max(s - stride * steps, 0)  # (150, 2) starts above 0 for t = 900
        alpha0, sigma0 = _levels(prior, start)
        x, cur = alpha0 * z[b] + sigma0 * noise[b], start
        while cur < s:
            nxt = min(cur + stride, s)
            x = _ddim(prior, x, cur, nxt, _eps(prior, x, cur, cond.uncond[b]))
            cur = nxt
        eps_s = _eps(prior, x, s, cond.uncond[b])
        x_t = _ddim(prior, x, s, t, eps_s)
        alpha, sigma = _levels(prior, t)
        expected = (
            sigma / alpha * (_guided(prior, x_t, t, cond.cond[b], cond.uncond[b], 7.5) - eps_s)
        )
        assert torch.allclose(got[b], expected, atol=1e-10), (b, t)


# ------------------------------------------------------------------------------ SDI


def test_sdi_gradient_equals_its_formula(setup):
    prior, z, _, cond = setup
    config = SDIConfig(inversion_steps=4, inversion_guidance=-7.5, eta=0.0)
    got = sdi_gradient(prior, z, T, cond, 7.5, config)
    for b, t in enumerate(T.tolist()):
        grid = [round(t * k / 4) for k in range(5)]
        x = z[b]
        for a, c in itertools.pairwise(grid):
            x = _ddim(prior, x, a, c, _guided(prior, x, a, cond.cond[b], cond.uncond[b], -7.5))
        alpha, sigma = _levels(prior, t)
        kappa = (x - alpha * z[b]) / sigma
        expected = sigma**2 * (_guided(prior, x, t, cond.cond[b], cond.uncond[b], 7.5) - kappa)
        assert torch.allclose(got[b], expected, atol=1e-10), (b, t)


def test_sdi_noise_is_the_noise_the_inverted_state_carries(setup):
    prior, z, _, cond = setup
    x_t, kappa = sdi_noise(prior, z, T, cond, SDIConfig(eta=0.0))
    alpha, sigma = (v[:, None, None, None] for v in prior.schedule.alpha_sigma(T))
    assert torch.allclose(alpha * z + sigma * kappa, x_t)
    # A clean sample of one narrow mode inverts to nearly the noise that generated it:
    # the exact ODE of a point mass is x_t = alpha_t mu + sigma_t kappa with any kappa.
    red = prior.condition("a red square", batch_size=3)
    mu = prior.mixture.means[0].expand(3, -1, -1, -1).to(torch.float64)
    x_t, kappa = sdi_noise(prior, mu, T, red, SDIConfig(inversion_guidance=1.0, eta=0.0))
    assert kappa.abs().max() < 0.05  # pure DDIM from the mode's centre stays on it


def test_sdi_eta_draws_fresh_noise_from_its_generator(setup):
    prior, z, _, cond = setup
    config = SDIConfig(eta=0.3)

    def grad(seed):
        return sdi_gradient(prior, z, T, cond, 7.5, config, torch.Generator().manual_seed(seed))

    assert torch.equal(grad(1), grad(1))
    assert not torch.allclose(grad(1), grad(2))


def test_ddim_step_with_eta_mixes_fresh_noise_in():
    schedule = shapes_prior(size=4).schedule
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    a, b = torch.tensor([100, 300]), torch.tensor([300, 300])
    got = ddim_step(schedule, x, a, b, eps, eta=0.6, generator=torch.Generator().manual_seed(5))
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    alpha_a, sigma_a = (v.float()[:, None, None, None] for v in schedule.alpha_sigma(a))
    alpha_b, sigma_b = (v.float()[:, None, None, None] for v in schedule.alpha_sigma(b))
    x0 = (x - sigma_a * eps) / alpha_a
    expected = alpha_b * x0 + sigma_b * (0.8 * eps + 0.6 * xi)
    assert torch.allclose(got[0], expected[0], atol=1e-5)
    assert torch.allclose(got[1], x[1], atol=1e-5)  # a step to the same timestep: no change


def test_inversion_grids_and_round_trip():
    assert even_grid(torch.tensor([900, 10]), 3).T.tolist() == [[0, 300, 600, 900], [0, 3, 7, 10]]
    assert strided_grid(torch.tensor([850, 150]), 200, 5).T.tolist() == [
        [0, 200, 400, 600, 800, 850],
        [0, 150, 150, 150, 150, 150],
    ]
    assert strided_grid(torch.tensor([850]), 200, 2)[:, 0].tolist() == [450, 650, 850]
    # With a noise prediction that does not depend on x, DDIM inversion then DDIM sampling
    # along the same grid returns the start exactly.
    schedule = shapes_prior(size=4).schedule
    x0 = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    const = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = even_grid(torch.tensor([700]), 7)
    x = ddim_invert(lambda x, t: const, schedule, x0, grid)
    for k in range(7, 0, -1):
        x = ddim_step(schedule, x, grid[k], grid[k - 1], const)
    assert torch.allclose(x, x0)


# ------------------------------------------------------------------------------ VSD


def test_vsd_gradient_equals_its_formula(setup):
    prior, z, noise, cond = setup
    # the copy: the same prompts (embeddings) over wider components
    other = GaussianMixturePrior(shapes_mixture(4, std=0.4), dict(prior.weights))
    got = vsd_gradient(prior, other, z, T, cond, 7.5, noise, copy_guidance=1.0)
    for b, t in enumerate(T.tolist()):
        alpha, sigma = _levels(prior, t)
        x_t = alpha * z[b] + sigma * noise[b]
        pretrained = _guided(prior, x_t, t, cond.cond[b], cond.uncond[b], 7.5)
        copy = _eps(other, x_t, t, cond.cond[b])
        assert torch.allclose(got[b], sigma**2 * (pretrained - copy), atol=1e-10)
    # a copy equal to the prior at the same guidance gives no gradient
    assert vsd_gradient(prior, prior, z, T, cond, 2.0, noise, copy_guidance=2.0).abs().max() == 0


def _tiny_embedded():
    from cfd3d.priors.embedded.prior import EmbeddedPrior
    from cfd3d.priors.embedded.tokenizer import WordTokenizer
    from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig

    words = ("a", "red", "blue", "cube", "sphere")
    config = UNetConfig(
        image_size=8, channels=(16, 32), text_width=32, vocab_size=len(words) + 1, groups=4
    )
    torch.manual_seed(0)
    model = TinyUNet(config)
    for p in model.parameters():  # its output layer starts at zero: make eps visible
        p.data.add_(0.05 * torch.randn_like(p))
    return EmbeddedPrior(model.eval(), WordTokenizer(words, config.max_tokens))


def _cameras(n: int) -> torch.Tensor:
    from cfd3d.scene.cameras import orbit

    return orbit(n, 15.0, 1.4, 50.0).c2w.float()


@pytest.mark.parametrize("rank", [None, 2])
def test_trainable_copy_starts_as_the_prior_and_learns_only_its_own_weights(rank):
    prior = _tiny_embedded()
    before = {k: v.clone() for k, v in prior.model.state_dict().items()}
    copy = TrainableCopy(prior, VSDConfig(lora_rank=rank, lr=1e-2), torch.Generator())
    cond = prior.condition("a red cube", batch_size=2)
    cond = type(cond)(cond.cond, cond.uncond, cond.prompts, cameras=_cameras(2))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([700, 200])
    start, pretrained = copy.predict_eps(x, t, cond, 1.0), prior.predict_eps(x, t, cond, 1.0)
    assert torch.allclose(start, pretrained, atol=1e-5)  # float32 rounding apart
    z = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    losses = [copy.train_step(z, cond, torch.Generator().manual_seed(i)) for i in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.allclose(copy.predict_eps(x, t, cond, 1.0), prior.predict_eps(x, t, cond, 1.0))
    for k, v in prior.model.state_dict().items():  # the pretrained prior is untouched
        assert torch.equal(v, before[k]), k
    if rank is not None:  # only the LoRAs and the camera MLP are trained
        n_lora = sum(p.numel() for p in copy.trainable)
        assert n_lora < sum(p.numel() for p in prior.model.parameters()) / 4
    # the camera matters once trained
    moved = type(cond)(cond.cond, cond.uncond, cond.prompts, cameras=_cameras(2).flip(0))
    assert not torch.allclose(copy.predict_eps(x, t, cond, 1.0), copy.predict_eps(x, t, moved, 1.0))


def test_trainable_copy_state_round_trips():
    prior = _tiny_embedded()
    cond = prior.condition("a blue sphere", batch_size=2)
    z = torch.zeros(2, 3, 8, 8)
    a = TrainableCopy(prior, VSDConfig(lr=1e-2), torch.Generator())
    a.train_step(z, cond, torch.Generator().manual_seed(0))
    b = TrainableCopy(prior, VSDConfig(lr=1e-2), torch.Generator())
    b.load_state_dict(a.state_dict())
    for copy in (a, b):
        copy.train_step(z, cond, torch.Generator().manual_seed(1))
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([5, 9])
    assert torch.equal(a.predict_eps(x, t, cond, 1.0), b.predict_eps(x, t, cond, 1.0))


def test_vsd_lora_on_a_diffusers_unet_targets_its_attention_projections():
    pytest.importorskip("diffusers")
    from cfd3d.distill.vsd import LoRA
    from cfd3d.priors.sd_random import build_random_components
    from cfd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

    parts = build_random_components("tiny")
    prior = StableDiffusionPrior.from_modules(
        StableDiffusionConfig(device="cpu", dtype="float32"),
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler_config=dict(parts.scheduler.config),
    )
    copy = TrainableCopy(prior, VSDConfig(), torch.Generator())
    loras = [n for n, m in copy.network.named_modules() if isinstance(m, LoRA)]
    assert loras and all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in loras)
    assert not any(isinstance(m, LoRA) for m in prior.unet.modules())
    cond = prior.condition("a cube", batch_size=1)
    x, t = torch.randn(1, *prior.input_shape), torch.tensor([500])
    assert torch.allclose(copy.predict_eps(x, t, cond, 1.0), prior.predict_eps(x, t, cond, 1.0))
    assert copy.train_step(torch.zeros(1, *prior.input_shape), cond, torch.Generator()) > 0


def test_vsd_needs_a_network_to_copy(setup):
    prior, *_ = setup
    with pytest.raises(ConfigError, match="VSD needs a prior with a network"):
        make_rule("vsd", prior, 0)


# ---------------------------------------------------------------------- the methods


def test_method_table_and_the_dispatch(setup):
    prior, z, noise, cond = setup
    assert set(METHODS) == {"cfd", "sds", "fsd", "vsd", "ism", "sdi"}
    assert get_method("sdi").timesteps.kind == "linear"
    for name in ("cfd", "sds", "fsd"):
        assert type(make_rule(name, prior, 0)).__name__ == "UpdateRule"
    # the rule inverts with the empty prompt, not with the negative one
    ism = make_rule("ism", prior, 0).gradient(z, T, cond, 7.5, noise, "sigma_over_alpha", 3)
    empty = prior.embed([""]).expand(3, -1)
    assert torch.equal(ism, ism_gradient(prior, z, T, cond, 7.5, noise, inversion_embedding=empty))
    assert not torch.allclose(ism, ism_gradient(prior, z, T, cond, 7.5, noise))
    sdi = make_rule("sdi", prior, 4)
    assert torch.equal(
        sdi.gradient(z, T, cond, 7.5, noise, "sigma_sq", 3),
        sdi.gradient(z, T, cond, 7.5, noise, "sigma_sq", 3),
    )  # its draws are keyed by the step
    assert not torch.equal(
        sdi.gradient(z, T, cond, 7.5, noise, "sigma_sq", 3),
        sdi.gradient(z, T, cond, 7.5, noise, "sigma_sq", 4),
    )


def test_annealed_uniform_timesteps_follow_their_upper_end():
    schedule = get_method("vsd").timesteps
    early = [timestep_fraction(schedule, s, 1001, 0) for s in range(0, 200)]
    late = [timestep_fraction(schedule, s, 1001, 0) for s in range(201, 1001)]
    assert max(early) > 0.9 and max(late) <= 0.5 and min(early + late) >= 0.02
    ism = get_method("ism").timesteps
    assert max(timestep_fraction(ism, s, 1001, 0) for s in range(300, 1001)) <= 0.5
    with pytest.raises(ConfigError, match="unknown timestep schedule"):
        TimestepSchedule(kind="uniform_anneal")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VSDConfig(lora_rank=0), "vsd.lora_rank must be a positive integer"),
        (lambda: VSDConfig(lora_rank=-2), "vsd.lora_rank must be a positive integer"),
        (lambda: VSDConfig(lr=0.0), "vsd.lr must be > 0"),
        (lambda: VSDConfig(camera_dropout=1.5), "vsd.camera_dropout"),
        (lambda: ISMConfig(inversion_steps=0), "ism.inversion_steps must be a positive"),
        (lambda: ISMConfig(interval=-1), "ism.interval must be a positive"),
        (lambda: ISMConfig(inversion_stride=0), "ism.inversion_stride must be a positive"),
        (lambda: SDIConfig(inversion_steps=0), "sdi.inversion_steps must be a positive"),
        (lambda: SDIConfig(eta=-0.1), "sdi.eta must lie in"),
    ],
)
def test_bad_settings_are_config_errors(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert "\n" not in str(info.value)
