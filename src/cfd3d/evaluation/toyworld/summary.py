"""Per-method summaries of the toy-world benchmark: the numbers of its JSON.

One prompt's results become a detail dict (:func:`single_detail` for fully named objects,
:func:`underspecified_detail` for underspecified ones, :func:`composition_detail` for
compositions, plus :func:`probe_detail`: probe FID and probe CLIP against the prior's
samples); :func:`summarise` averages them over one method's prompts. :func:`sampler_tv_band`
is the mode TV that a perfect sampler scores with as many results.
"""

from __future__ import annotations

import numpy as np
import torch

from cfd3d.evaluation.probe import (
    frechet_distance,
    probe_clip,
    probe_features,
    probe_probabilities,
)
from cfd3d.evaluation.toyworld.classifier import (
    COLOR_NAMES,
    PROBE_SHAPES,
    class_names,
    vote,
)
from cfd3d.evaluation.toyworld.composition import judge_composition
from cfd3d.evaluation.toyworld.jobs import Result
from cfd3d.evaluation.toyworld.prompts import Composition
from cfd3d.evaluation.toyworld.setting import HOLE_MIN_PIXELS
from cfd3d.evaluation.toyworld.views import (
    Views,
    diversity,
    diversity_se,
    hole_pixels,
    mask_iou,
    mean_color,
)
from cfd3d.scene.toy import COLORS


def frequencies(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=n_classes).double() / max(len(labels), 1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def sampler_tv_band(
    freq: torch.Tensor, n: int, draws: int = 2000, reference: int | None = None
) -> dict[str, float]:
    """The mode TV that a perfect sampler of ``freq`` scores with ``n`` results: the 5 %,
    50 % and 95 % quantiles over ``draws`` sets of ``n`` classes drawn from ``freq``.

    ``reference``: the number of samples ``freq`` was estimated from. Mode TV compares a
    method's results with such an estimate, not with the prior's exact shares, so each draw
    then also draws a reference of that many classes from ``freq`` and scores the distance
    between the two (the band of a perfect sampler judged as a method is); ``None`` treats
    ``freq`` as exact.
    """
    gen = torch.Generator().manual_seed(0)
    labels = torch.multinomial(freq.double(), n * draws, replacement=True, generator=gen)
    if reference is None:
        refs = [freq] * draws
    else:
        drawn = torch.multinomial(freq.double(), reference * draws, replacement=True, generator=gen)
        refs = [frequencies(row, len(freq)) for row in drawn.view(draws, reference)]
    tvs = torch.tensor(
        [
            total_variation(frequencies(row, len(freq)), ref)
            for row, ref in zip(labels.view(draws, n), refs, strict=True)
        ]
    )
    q = torch.quantile(tvs.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {
        "p05": round(float(q[0]), 4),
        "p50": round(float(q[1]), 4),
        "p95": round(float(q[2]), 4),
    }


EMPTY_COLOR_ERR = 1.0
"""The colour error of an empty result: the largest possible (albedos lie in [0, 1])."""


def mean_or_none(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def mean_se(errors: list[float | None]) -> float | None:
    """The standard error of the mean of independent estimates with standard ``errors``
    (``None`` if any is unknown or there are none)."""
    if not errors or any(e is None for e in errors):
        return None
    return round(float(np.sqrt(np.sum(np.square(errors)))) / len(errors), 4)


def share_se(outcomes: list[bool]) -> float | None:
    """The binomial standard error ``sqrt(p (1 - p) / n)`` of the share ``p`` of ``outcomes``
    that are true (``None`` for none)."""
    if not outcomes:
        return None
    p = float(np.mean(outcomes))
    return round(float(np.sqrt(p * (1.0 - p) / len(outcomes))), 4)


def hole_rate(pixels: list[int]) -> float | None:
    """The share of ``pixels`` (:func:`hole_pixels` of results) that count as a hole."""
    return mean_or_none([float(p >= HOLE_MIN_PIXELS) for p in pixels])


def hole_detail(runs: list[Result], truth: Views | None = None) -> dict:
    """For a torus prompt: each result's enclosed background pixels seen from above
    (:func:`hole_pixels`) and the share of results with a hole of at least
    :data:`HOLE_MIN_PIXELS` (``hole_rate``); the ground truth's pixels when given. Empty
    for other prompts."""
    if runs[0].prompt.shape != "torus":
        return {}
    pixels = [hole_pixels(r.views.overhead) for r in runs if r.views.overhead is not None]
    detail = {
        "hole_pixels": pixels,
        "hole_rate": hole_rate(pixels),
    }
    if truth is not None and truth.overhead is not None:
        detail["hole_pixels_truth"] = hole_pixels(truth.overhead)
    return detail


def single_detail(runs: list[Result], truth: Views) -> dict:
    """Per-seed mask IoU and colour error of one fully named prompt, and their means."""
    target = torch.tensor(COLORS[runs[0].prompt.color])
    seeds = []
    for r in runs:
        colour = mean_color(r.views)
        err = EMPTY_COLOR_ERR if colour is None else float((colour - target).abs().mean())
        seeds.append(
            {
                "seed": r.seed,
                "mask_iou": round(mask_iou(r.views, truth), 4),
                "mesh_iou": r.mesh_iou,
                "mesh_iou_placed": r.mesh_iou_placed,
                "color_err": round(err, 4),
                "empty": colour is None,
            }
        )
    return {
        "mask_iou": mean_or_none([s["mask_iou"] for s in seeds]),
        "mesh_iou": mean_or_none([s["mesh_iou"] for s in seeds if s["mesh_iou"] is not None]),
        "mesh_iou_placed": mean_or_none(
            [s["mesh_iou_placed"] for s in seeds if s["mesh_iou_placed"] is not None]
        ),
        "color_err": mean_or_none([s["color_err"] for s in seeds]),
        "empty_results": sum(int(s["empty"]) for s in seeds),
        "diversity": round(diversity([r.views for r in runs]), 4),
        "seeds": seeds,
        **hole_detail(runs, truth),
    }


def probe_detail(runs: list[Result], probe: torch.nn.Module, reference: torch.Tensor) -> dict:
    """``probe_fid`` and ``probe_clip`` of one prompt's results against the probe features
    ``reference`` ``(M, D)`` of the prior's samples (:mod:`cfd3d.evaluation.probe`): the
    Fréchet distance of the features of all results' world views (all seeds pooled) and
    the mean probability of the prompt's named attributes on them, each also per seed."""
    prompt = runs[0].prompt
    named = (
        None if prompt.color is None else COLOR_NAMES.index(prompt.color),
        None if prompt.shape is None else PROBE_SHAPES.index(prompt.shape),
    )
    renders = torch.cat([r.views.world for r in runs])
    per_seed_fid = [frechet_distance(probe_features(probe, r.views.world), reference) for r in runs]
    per_seed_clip = [probe_clip(probe_probabilities(probe, r.views.world), named) for r in runs]
    return {
        "probe_fid": round(frechet_distance(probe_features(probe, renders), reference), 4),
        "probe_fid_seed_std": round(float(np.std(per_seed_fid)), 4),
        "probe_fid_seeds": [round(v, 4) for v in per_seed_fid],
        "probe_clip": round(probe_clip(probe_probabilities(probe, renders), named), 4),
        "probe_clip_seed_std": round(float(np.std(per_seed_clip)), 4),
        "probe_clip_seeds": [round(v, 4) for v in per_seed_clip],
    }


def underspecified_detail(
    runs: list[Result], probe: torch.nn.Module, prior_freq: torch.Tensor
) -> dict:
    """The probe's classes of the missing attribute on each result's world views (shares;
    ``classes`` counts each result's majority), the total variation of the mean shares from
    the prior's ``prior_freq``, and how often the named attribute is right on those views
    (``known_acc``)."""
    prompt = runs[0].prompt
    missing = prompt.missing
    known = "shape" if missing == "color" else "color"
    names, known_names = class_names(missing), class_names(known)
    known_index = known_names.index(prompt.shape if known == "shape" else prompt.color)
    shares, labels, known_hits, seeds = [], [], [], []
    for r in runs:
        color, shape = probe_probabilities(probe, r.views.world)
        probabilities, known_probabilities = (
            (color, shape) if missing == "color" else (shape, color)
        )
        shares.append(frequencies(probabilities.argmax(-1), len(names)))
        labels.append(vote(probabilities))
        known_votes = known_probabilities.argmax(-1)
        known_hits.append(float((known_votes == known_index).double().mean()))
        seeds.append({"seed": r.seed, missing: names[labels[-1]]})
    freq = torch.stack(shares).mean(dim=0)
    counts = torch.bincount(torch.tensor(labels), minlength=len(names))
    return {
        "classified": missing,
        "classes": {n: int(c) for n, c in zip(names, counts.tolist(), strict=True) if c},
        "class_shares": {
            n: round(float(f), 4) for n, f in zip(names, freq.tolist(), strict=True) if f > 0
        },
        "mode_tv": round(total_variation(freq, prior_freq), 4),
        "known_acc": round(float(np.mean(known_hits)), 4),
        "diversity": round(diversity([r.views for r in runs]), 4),
        "diversity_se": round_or_none(diversity_se([r.views for r in runs])),
        "seeds": seeds,
        **hole_detail(runs),
    }


def composition_detail(runs: list[Result], probe: torch.nn.Module) -> dict:
    """Per-seed verdicts (:func:`judge_composition`) of one composition's results and the
    shares right: all parts (``comp_acc``), each object's colour and shape, the relation."""
    prompt = runs[0].prompt
    assert isinstance(prompt, Composition)
    seeds = []
    for r in runs:
        assert r.views.composed is not None
        verdict = judge_composition(r.views.composed, prompt, probe)
        seeds.append({"seed": r.seed, **verdict})
    return {
        "comp_acc": mean_or_none([float(s["comp_right"]) for s in seeds]),
        "comp_present_acc": mean_or_none([float(v) for s in seeds for v in s["present"]]),
        "comp_shape_acc": mean_or_none([float(v) for s in seeds for v in s["shape"]]),
        "comp_relation_acc": mean_or_none([float(s["relation"]) for s in seeds]),
        "diversity": round(diversity([r.views for r in runs]), 4),
        "seeds": seeds,
    }


def composition_truth(
    truths: dict[str, Views], compositions: list[Composition], probe: torch.nn.Module
) -> dict:
    """The composition judge on the ground truth: per composition its verdict, and the
    shares right over them (what ``comp_acc`` of a perfect result would be)."""
    verdicts = {}
    for c in compositions:
        composed = truths[c.text].composed
        assert composed is not None
        verdicts[c.text] = judge_composition(composed, c, probe)
    values = list(verdicts.values())
    return {
        "comp_right": mean_or_none([float(v["comp_right"]) for v in values]),
        "present": mean_or_none([float(p) for v in values for p in v["present"]]),
        "shape": mean_or_none([float(p) for v in values for p in v["shape"]]),
        "relation": mean_or_none([float(v["relation"]) for v in values]),
        "relation_swapped": mean_or_none([float(v["relation_swapped"]) for v in values]),
        "per_prompt": verdicts,
    }


def summarise(
    results: list[Result],
    truths: dict[str, Views],
    probe: torch.nn.Module,
    prior_freq: dict[str, torch.Tensor],
    prior_features: dict[str, torch.Tensor],
    crop_probe: torch.nn.Module | None = None,
) -> dict:
    """The JSON of one method's results; ``crop_probe`` names the shapes of compositions'
    objects (:func:`~cfd3d.evaluation.toyworld.composition.train_crop_probe`; default:
    ``probe``)."""
    by_prompt: dict[str, list[Result]] = {}
    for r in results:
        by_prompt.setdefault(r.prompt.text, []).append(r)
    per_prompt = {}
    for text, runs in by_prompt.items():
        if isinstance(runs[0].prompt, Composition):
            per_prompt[text] = composition_detail(runs, crop_probe or probe)
            continue
        if runs[0].prompt.missing is None:
            per_prompt[text] = single_detail(runs, truths[text])
        else:
            per_prompt[text] = underspecified_detail(runs, probe, prior_freq[text])
        per_prompt[text].update(probe_detail(runs, probe, prior_features[text]))
    singles = [d for d in per_prompt.values() if "mask_iou" in d]
    unders = {t: d for t, d in per_prompt.items() if "mode_tv" in d}
    comps = [d for d in per_prompt.values() if "comp_acc" in d]
    seeds = [s for d in singles for s in d["seeds"]]
    comp_seeds = [s for d in comps for s in d["seeds"]]
    noise = sum(r.noise_ms for r in results)
    step = sum(r.step_ms for r in results)
    details = [d for d in per_prompt.values() if "probe_fid" in d]
    holes = [p for d in per_prompt.values() for p in d.get("hole_pixels", [])]
    return {
        "probe_fid": mean_or_none([d["probe_fid"] for d in details]),
        "probe_fid_seed_std": mean_or_none([d["probe_fid_seed_std"] for d in details]),
        "probe_clip": mean_or_none([d["probe_clip"] for d in details]),
        "probe_clip_seed_std": mean_or_none([d["probe_clip_seed_std"] for d in details]),
        "mask_iou": mean_or_none([s["mask_iou"] for s in seeds]),
        "mesh_iou": mean_or_none([s["mesh_iou"] for s in seeds if s["mesh_iou"] is not None]),
        "mesh_iou_placed": mean_or_none(
            [s["mesh_iou_placed"] for s in seeds if s["mesh_iou_placed"] is not None]
        ),
        "color_err": mean_or_none([s["color_err"] for s in seeds]),
        "diversity": mean_or_none([d["diversity"] for d in singles]),
        "diversity_underspecified": mean_or_none([d["diversity"] for d in unders.values()]),
        "diversity_underspecified_se": mean_se([d["diversity_se"] for d in unders.values()]),
        "mode_tv": {t: d["mode_tv"] for t, d in unders.items()},
        "torus_hole_rate": hole_rate(holes),
        "torus_runs": len(holes),
        "comp_acc": mean_or_none([float(s["comp_right"]) for s in comp_seeds]),
        "comp_acc_se": share_se([bool(s["comp_right"]) for s in comp_seeds]),
        "comp_present_acc": mean_or_none([float(v) for s in comp_seeds for v in s["present"]]),
        "comp_shape_acc": mean_or_none([float(v) for s in comp_seeds for v in s["shape"]]),
        "comp_relation_acc": mean_or_none([float(s["relation"]) for s in comp_seeds]),
        "noise_share": round(noise / step, 4) if step > 0 else 0.0,
        "wall_s": round(sum(r.distill_s + r.eval_s for r in results), 1),
        "distill_s_per_run": round(float(np.mean([r.distill_s for r in results])), 2),
        "empty_results": sum(int(not bool((r.views.opacity > 0.5).any())) for r in results),
        "per_prompt": per_prompt,
    }
