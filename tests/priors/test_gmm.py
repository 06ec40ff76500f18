import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.priors.gmm import shapes_prior
from cfd3d.priors.registry import load_prior


def _log_marginal(prior, x, t, emb):
    alpha, sigma = prior.schedule.alpha_sigma(t)
    mu = prior.mixture.means.flatten(1)
    var = alpha[:, None] ** 2 * prior.mixture.stds**2 + sigma[:, None] ** 2
    flat = x.flatten(1)
    sq = ((flat[:, None, :] - alpha[:, None, None] * mu[None]) ** 2).sum(-1)
    return torch.logsumexp(emb - 0.5 * flat.shape[1] * var.log() - 0.5 * sq / var, dim=1)


def test_eps_is_minus_sigma_times_the_exact_score():
    prior = shapes_prior(size=6)
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 20, 250, 500, 800, 999])
    emb = prior.embed(["a simple shape", "a red square", "", "a blue disc", "", "a simple shape"])
    (score,) = torch.autograd.grad(_log_marginal(prior, x, t, emb).sum(), x)
    _, sigma = prior.schedule.alpha_sigma(t)
    eps = prior.eps(x.detach(), t, emb)
    assert torch.allclose(eps, -sigma[:, None, None, None] * score, atol=1e-10)


def test_guidance_combines_prompt_and_negative_prompt():
    prior = shapes_prior(size=4)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([500, 500])
    cond = prior.condition("a red square", negative_prompt="a blue disc", batch_size=2)
    eps_c = prior.eps(x, t, prior.embed(["a red square"] * 2))
    eps_n = prior.eps(x, t, prior.embed(["a blue disc"] * 2))
    guided = prior.predict_eps(x, t, cond, 4.0)
    assert torch.allclose(guided, eps_n + 4.0 * (eps_c - eps_n))
    assert torch.allclose(prior.predict_eps(x, t, cond, 1.0), eps_c)


def test_condition_batches_per_element_prompts():
    prior = shapes_prior(size=4)
    cond = prior.condition(["a red square", "a blue disc", "a red square"])
    assert cond.cond.shape == (3, 3)
    assert torch.equal(cond.cond[0], cond.cond[2])
    assert torch.equal(cond.uncond[0], prior.embed([""])[0])


def test_samples_follow_the_mixture():
    prior = shapes_prior(size=4)
    g = torch.Generator().manual_seed(0)
    z, comp = prior.sample("a simple shape", 4000, generator=g)
    freq = torch.bincount(comp, minlength=3).double() / 4000
    assert torch.allclose(freq, prior.weights["a simple shape"], atol=0.03)
    assigned, dist = prior.assign(z)
    assert torch.equal(assigned, comp)
    assert dist.mean().item() == pytest.approx(1.0, abs=0.05)


def test_unknown_prompt_lists_known_prompts():
    with pytest.raises(ConfigError, match="known prompts: 'a blue disc'"):
        shapes_prior().condition("a purple elephant")


def test_unknown_prior_name():
    with pytest.raises(ConfigError, match="valid: embedded, gmm"):
        load_prior("sd-9000")
