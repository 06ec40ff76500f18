import pytest
import torch

from cfd3d.diffusion.samplers import ddim_sample, ddim_timesteps
from cfd3d.errors import ConfigError
from cfd3d.playground import ImageConfig, optimise_images
from cfd3d.priors.gmm import shapes_prior


def test_cfd_with_ode_steps_reproduces_the_pf_ode_sample():
    """The seed's central equation: CFD on the clean variable = DDIM from the same noise."""
    prior = shapes_prior(size=4)
    config = ImageConfig(prompt="a simple shape", optimizer="ode", steps=100, batch=6, seed=2)
    run = optimise_images(prior, config, dtype=torch.float64)
    grid = ddim_timesteps(prior.schedule, config.steps)
    _, sigma_max = prior.schedule.alpha_sigma(grid[0])
    cond = prior.condition(config.prompt, batch_size=config.batch)
    reference = ddim_sample(
        lambda x, t: prior.predict_eps(x, t, cond, 1.0), sigma_max * run.noise, prior.schedule, grid
    )
    assert ((run.z - reference).norm() / reference.norm()).item() < 1e-10


def test_sign_error_would_be_caught():
    """Guard for the test above: a different noise gives a different sample."""
    prior = shapes_prior(size=4)
    a = optimise_images(prior, ImageConfig(optimizer="ode", steps=50, seed=0), dtype=torch.float64)
    b = optimise_images(prior, ImageConfig(optimizer="ode", steps=50, seed=1), dtype=torch.float64)
    assert (a.z - b.z).norm() > 1.0


@pytest.mark.parametrize("method", ["cfd", "sds", "fsd"])
def test_adam_runs_are_reproducible_and_reach_a_mode(method):
    prior = shapes_prior(size=4)
    config = ImageConfig(method=method, steps=300, batch=8, seed=5)
    a = optimise_images(prior, config)
    b = optimise_images(prior, config)
    assert torch.equal(a.z, b.z)
    # Every result sits in one mode: its nearest component mean is much closer than the
    # next (SDS keeps jittering under constant-lr Adam, so "in the mode" is not exact).
    dists = torch.cdist(a.z.flatten(1).double(), prior.mixture.means.flatten(1)).sort(1).values
    assert (dists[:, 0] * 2 < dists[:, 1]).all()
    assert a.frames.shape[1:] == (8, 3, 4, 4)


def test_cfd_covers_modes_while_sds_does_not():
    prior = shapes_prior(size=8)
    base = ImageConfig(prompt="a simple shape", steps=300, batch=256, seed=0)
    freqs = {}
    for method in ("cfd", "sds"):
        comp, _ = prior.assign(
            optimise_images(prior, ImageConfig(**{**base.__dict__, "method": method})).z
        )
        freqs[method] = torch.bincount(comp, minlength=3).double() / 256
    weights = prior.weights["a simple shape"]
    assert 0.5 * (freqs["cfd"] - weights).abs().sum() < 0.1
    assert 0.5 * (freqs["sds"] - weights).abs().sum() > 0.15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "dds"}, "unknown method 'dds'; valid: cfd, sds, fsd, vsd, ism, sdi"),
        ({"prior": "sd9"}, "unknown prior 'sd9'; valid: embedded, gmm"),
        ({"steps": 0}, "--steps must be a positive integer"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"optimizer": "lbfgs"}, "valid: adam, ode"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ImageConfig(**kwargs)
