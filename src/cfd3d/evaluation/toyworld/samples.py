"""Judging the embedded prior's own samples: does it draw what it is told?

:func:`judge_singles` names the colour and the shape of DDIM samples of "a {colour}
{shape}" prompts with the probe (:mod:`cfd3d.evaluation.toyworld.classifier`);
:func:`single_prompts` chooses prompts that cover every colour and basic shape;
:func:`prior_from_checkpoint` loads the prior of a ``cfd3d train-prior`` run in progress.
Used by ``benchmarks/toy_prior.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cfd3d.errors import UserError
from cfd3d.evaluation.toyworld.classifier import (
    COLOR_NAMES,
    PROBE_SHAPES,
    Probe,
    classify,
    quantise,
)
from cfd3d.priors.embedded.commands import sample_images
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.tokenizer import WordTokenizer
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.world import BASIC_SHAPES, vocabulary, world_from_dict


def single_prompts(n: int = 16) -> list[tuple[str, str]]:
    """``n`` (colour, shape) prompts; 16 or more cover all colours and basic shapes, each
    combination at most once (colours and shapes cycle with periods 10 and 6)."""
    return [
        (COLOR_NAMES[i % len(COLOR_NAMES)], BASIC_SHAPES[i % len(BASIC_SHAPES)]) for i in range(n)
    ]


def prior_from_checkpoint(path: Path) -> tuple[EmbeddedPrior, int]:
    """The EMA model of a ``cfd3d train-prior`` checkpoint (for judging a run in progress),
    with the world it is trained on (the first world for checkpoints that do not say), and
    its step."""
    if not path.is_file():
        raise UserError(
            f"training checkpoint '{path}' not found; pass the --work folder's checkpoint.pt"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    unet = dict(state["config"]["unet"])
    unet["channels"] = tuple(unet["channels"])
    unet["attention_levels"] = tuple(unet.get("attention_levels", ()))
    config = UNetConfig(**unet)
    model = TinyUNet(config)
    model.load_state_dict(state["ema"])
    model.eval().requires_grad_(False)
    data = state.get("data") or {}
    world = world_from_dict(data["world"]) if "world" in data else None
    tokenizer = WordTokenizer(vocabulary(), config.max_tokens)
    return EmbeddedPrior(model, tokenizer, world=world), int(state["step"])


@dataclass(frozen=True)
class SingleScores:
    """The probe's verdict on samples of single-object prompts.

    Attributes:
        color_acc: fraction of samples whose colour is the prompt's.
        shape_acc: fraction of samples whose shape is the prompt's.
        n: number of samples.
        per_prompt: prompt -> [colour accuracy, shape accuracy].
        seconds: wall time of each prompt's sampling.
    """

    color_acc: float
    shape_acc: float
    n: int
    per_prompt: dict[str, list[float]]
    seconds: list[float]


def judge_singles(
    prior: EmbeddedPrior,
    probe: Probe,
    prompts: list[tuple[str, str]],
    samples: int,
    guidance: float,
    steps: int,
    seed: int,
) -> SingleScores:
    """Judge ``samples`` DDIM samples of each "a {colour} {shape}" prompt with the probe."""
    color_hits, shape_hits, seconds, per_prompt = [], [], [], {}
    for index, (color, shape) in enumerate(prompts):
        prompt = f"a {color} {shape}"
        tic = time.perf_counter()
        images = sample_images(prior, prompt, samples, guidance, steps, seed * 1000 + index)
        seconds.append(time.perf_counter() - tic)
        got_color, got_shape = classify(probe, quantise(images))
        hit_c = (got_color == COLOR_NAMES.index(color)).float()
        hit_s = (got_shape == PROBE_SHAPES.index(shape)).float()
        color_hits.append(hit_c)
        shape_hits.append(hit_s)
        per_prompt[prompt] = [round(float(hit_c.mean()), 3), round(float(hit_s.mean()), 3)]
    return SingleScores(
        color_acc=round(float(torch.cat(color_hits).mean()), 4),
        shape_acc=round(float(torch.cat(shape_hits).mean()), 4),
        n=samples * len(prompts),
        per_prompt=per_prompt,
        seconds=seconds,
    )
