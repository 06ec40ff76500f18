import pytest
import torch

from cfd3d.diffusion.samplers import ddim_sample, ddim_timesteps, leading_timesteps
from cfd3d.diffusion.schedule import make_schedule
from cfd3d.errors import ConfigError


def test_ddim_solves_the_pf_ode_of_a_gaussian():
    """For data N(mu, s^2 I) the PF-ODE keeps (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2)
    constant, so the sample from x_T is known in closed form."""
    schedule = make_schedule()
    mu, s = 0.7, 0.3

    def eps_fn(x, t):
        alpha, sigma = schedule.alpha_sigma(t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        return sigma * (x - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 8, generator=g, dtype=torch.float64)
    errors = {}
    for n in (250, 1000):
        timesteps = ddim_timesteps(schedule, n)
        a_T, s_T = schedule.alpha_sigma(timesteps[0])
        x_T = a_T * mu + torch.sqrt(a_T**2 * s**2 + s_T**2) * noise
        x0 = ddim_sample(eps_fn, x_T, schedule, timesteps)
        # The last step returns the x0 prediction at t = 0, the posterior mean given x_0's
        # own small noise level sigma_0: the exact solution mapped through that denoiser.
        a_0, s_0 = schedule.alpha_sigma(timesteps[-1])
        x_t0 = a_0 * mu + torch.sqrt(a_0**2 * s**2 + s_0**2) * noise
        expected = mu + a_0 * s**2 * (x_t0 - a_0 * mu) / (a_0**2 * s**2 + s_0**2)
        errors[n] = ((x0 - expected).norm() / expected.norm()).item()
    # DDIM is first order: 4x the steps gives ~4x less error (measured 0.0079 -> 0.0020).
    assert errors[1000] < 0.003
    assert 3.0 < errors[250] / errors[1000] < 5.0


def test_ddim_timesteps_are_decreasing_and_span_the_schedule():
    schedule = make_schedule()
    ts = ddim_timesteps(schedule, 50)
    assert ts[0] == 999 and ts[-1] == 0 and (ts.diff() < 0).all()


def _gaussian_eps_fn(schedule, mu=0.7, s=0.3):
    def eps_fn(x, t):
        alpha, sigma = (v.to(x.dtype)[:, None] for v in schedule.alpha_sigma(t))
        return sigma * (x - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    return eps_fn


@pytest.mark.parametrize(("num_steps", "offset"), [(50, 1), (20, 1), (7, 0), (1000, 0), (3, 1)])
def test_leading_timesteps_are_diffusers_ddim_grid(num_steps, offset):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(steps_offset=offset, timestep_spacing="leading")
    scheduler.set_timesteps(num_steps)
    assert torch.equal(leading_timesteps(num_steps, 1000, offset), scheduler.timesteps)


def test_leading_timesteps_reject_bad_settings():
    with pytest.raises(ConfigError, match=r"1\.\.1000"):
        leading_timesteps(0)
    with pytest.raises(ConfigError, match=r"1\.\.1000"):
        leading_timesteps(1001)
    with pytest.raises(ConfigError, match="steps_offset"):
        leading_timesteps(50, 1000, 21)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_sample_reproduces_diffusers_ddim_scheduler(set_alpha_to_one):
    """Step by step the same update as diffusers' DDIM (eta = 0) on SD's schedule; only the
    last step differs between the two ``set_alpha_to_one`` settings."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=1,
    )
    scheduler.set_timesteps(25)
    schedule = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    eps_fn = _gaussian_eps_fn(schedule)
    x_T = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(eps_fn(x, t.expand(x.shape[0])), t, x).prev_sample
    timesteps = leading_timesteps(25, 1000, 1)
    if not set_alpha_to_one:
        timesteps = torch.cat([timesteps, torch.zeros(1, dtype=torch.long)])
    ours = ddim_sample(eps_fn, x_T, schedule, timesteps, to_x0=set_alpha_to_one)
    # diffusers keeps alphabar in float32 (ours: float64); 25 steps of float32 rounding.
    assert (ours - x).abs().max() < 1e-5
    # The final steps differ by the residual noise sigma_0 ~ 0.03 of alphabar_0: the test
    # would see a wrong ending.
    other = ddim_sample(eps_fn, x_T, schedule, timesteps, to_x0=not set_alpha_to_one)
    assert (other - x).abs().max() > 1e-3


def test_to_x0_false_returns_the_state_at_the_last_timestep():
    schedule = make_schedule()
    eps_fn = _gaussian_eps_fn(schedule)
    calls = []

    def counting(x, t):
        calls.append(int(t[0]))
        return eps_fn(x, t)

    x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    timesteps = torch.tensor([900, 500, 100])
    state = ddim_sample(counting, x_T, schedule, timesteps, to_x0=False)
    assert calls == [900, 500]
    x0 = ddim_sample(eps_fn, x_T, schedule, timesteps)
    a, s = schedule.alpha_sigma(timesteps[-1])
    assert torch.allclose(x0, (state - s * eps_fn(state, timesteps[-1:].expand(4))) / a)
