"""cfd3d's DDIM through the Stable Diffusion prior gives diffusers' own pipeline's images.

Random weights hide convention errors from shape checks; matching ``StableDiffusionPipeline``
pixel for pixel (same folder, same initial latents, same prompts, DDIM, CFG with a negative
prompt) pins the VAE scaling factor, the CFG formula, the text encoder's output layer, the
v -> eps conversion and the timestep grid. The control cases show that each wrong
convention would move the images by far more than the tolerance.
"""

from collections.abc import Callable

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DDIMScheduler, StableDiffusionPipeline

from cfd3d.diffusion.guidance import classifier_free_guidance
from cfd3d.diffusion.samplers import ddim_sample, leading_timesteps
from cfd3d.priors.base import Condition
from cfd3d.priors.registry import load_prior
from cfd3d.priors.sd_random import save_random_pipeline
from cfd3d.priors.stable_diffusion import StableDiffusionPrior

PROMPTS = ["a hamburger", "a cat"]
NEGATIVE = "blurry"
GUIDANCE = 7.5
STEPS = 20
# float32 throughout; measured max differences 4e-7 (eps) and 1.1e-6 (v) in [0, 1] pixels.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-match")
    return {
        kind: save_random_pipeline(root / kind, "tiny", prediction_type=kind)
        for kind in ("epsilon", "v_prediction")
    }


def _diffusers_images(folder, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's images and timesteps, with an explicit DDIM scheduler."""
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = pipe(
        PROMPTS,
        negative_prompt=[NEGATIVE] * len(PROMPTS),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        eta=0.0,
        latents=latents.clone(),
        height=size,
        width=size,
        output_type="pt",
    ).images
    return images, pipe.scheduler.timesteps.clone()


def _sd_timesteps(prior: StableDiffusionPrior, scheduler_config) -> torch.Tensor:
    """diffusers' DDIM grid, ending at alphabar_0 (``set_alpha_to_one=False``)."""
    assert not scheduler_config["set_alpha_to_one"]
    grid = leading_timesteps(STEPS, prior.schedule.num_timesteps, scheduler_config["steps_offset"])
    return torch.cat([grid, torch.zeros(1, dtype=torch.long)])


def _cfd3d_images(
    prior: StableDiffusionPrior,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    to_x0: bool = False,
) -> torch.Tensor:
    z = ddim_sample(eps_fn, latents, prior.schedule, timesteps, to_x0=to_x0)
    return prior.decode(z)


def _embed_layer(prior: StableDiffusionPrior, prompts: list[str], layer: int) -> torch.Tensor:
    tokens = prior.tokenizer(
        prompts,
        padding="max_length",
        max_length=prior.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    out = prior.text_encoder(tokens.input_ids, output_hidden_states=True)
    return out.hidden_states[layer]


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ddim_through_the_prior_reproduces_stable_diffusion_pipeline(folders, kind):
    folder = folders[kind]
    latents = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected, diffusers_timesteps = _diffusers_images(folder, latents)

    prior = load_prior(str(folder))
    assert isinstance(prior, StableDiffusionPrior) and prior.prediction_type == kind
    scheduler_config = dict(DDIMScheduler.load_config(folder, subfolder="scheduler"))
    timesteps = _sd_timesteps(prior, scheduler_config)
    assert torch.equal(timesteps[:-1], diffusers_timesteps)
    condition = prior.condition(PROMPTS, negative_prompt=NEGATIVE)

    def guided(x, t):
        return prior.predict_eps(x, t, condition, GUIDANCE)

    images = _cfd3d_images(prior, latents, timesteps, guided)
    assert images.shape == expected.shape == (len(PROMPTS), 3, 16, 16)
    # The comparison means something: the images vary and are mostly not clipped.
    assert expected.std() > 0.05
    assert ((expected <= 0) | (expected >= 1)).float().mean() < 0.1
    assert (images - expected).abs().max() < TOLERANCE

    # Each wrong convention moves the images by more than 10x the tolerance.
    def eps_raw(x, t, emb):
        """The UNet's raw output, ``v`` for v-prediction models (no conversion)."""
        return prior.unet(x, t, encoder_hidden_states=emb).sample

    def cfg_with(eps_of, cond, uncond, formula=classifier_free_guidance):
        def fn(x, t):
            t = t.expand(x.shape[0])
            return formula(eps_of(x, t, cond), eps_of(x, t, uncond), GUIDANCE)

        return fn

    def text_plus_formula(e_c, e_u, s):
        return e_c + s * (e_c - e_u)

    no_negative = prior.condition(PROMPTS)
    penultimate = Condition(
        cond=_embed_layer(prior, PROMPTS, -2),
        uncond=_embed_layer(prior, [NEGATIVE] * len(PROMPTS), -2),
        prompts=tuple(PROMPTS),
    )
    controls = {
        "negative prompt ignored": _cfd3d_images(
            prior, latents, timesteps, lambda x, t: prior.predict_eps(x, t, no_negative, GUIDANCE)
        ),
        "cond + s (cond - uncond)": _cfd3d_images(
            prior,
            latents,
            timesteps,
            cfg_with(prior.eps, condition.cond, condition.uncond, text_plus_formula),
        ),
        "penultimate text layer": _cfd3d_images(
            prior, latents, timesteps, lambda x, t: prior.predict_eps(x, t, penultimate, GUIDANCE)
        ),
        "grid shifted by one": _cfd3d_images(prior, latents, timesteps + 1, guided),
        "latents not unscaled": prior.decode(
            ddim_sample(guided, latents, prior.schedule, timesteps, to_x0=False)
            * prior.scaling_factor
        ),
    }
    if kind == "v_prediction":
        controls["v used as eps"] = _cfd3d_images(
            prior, latents, timesteps, cfg_with(eps_raw, condition.cond, condition.uncond)
        )
    for name, wrong in controls.items():
        assert (wrong - expected).abs().max() > 10 * TOLERANCE, name
