"""cfd3d.evaluation.toyworld.summary: per-prompt details and the mode TV band."""

from dataclasses import replace

import pytest
import torch

from cfd3d.evaluation.toyworld.classifier import majority
from cfd3d.evaluation.toyworld.jobs import Result
from cfd3d.evaluation.toyworld.prompts import parse_prompt
from cfd3d.evaluation.toyworld.setting import HOLE_MIN_PIXELS
from cfd3d.evaluation.toyworld.summary import (
    EMPTY_COLOR_ERR,
    frequencies,
    hole_detail,
    mean_se,
    sampler_tv_band,
    share_se,
    single_detail,
    total_variation,
)
from cfd3d.scene.toy import COLORS


def test_an_empty_result_is_a_colour_failure_and_counted(flat_views):
    full = torch.zeros(2, 8, 8)
    full[:, 2:6, 2:6] = 1.0
    red = torch.tensor(COLORS["red"])
    truth = flat_views(full, red)
    prompt = parse_prompt("a red cube")

    def result(views, seed):
        return Result("cfd", prompt, seed, views, 0.5, 0.0, 1.0, 1.0, 1.0)

    detail = single_detail(
        [result(truth, 1), result(flat_views(torch.zeros(2, 8, 8), red), 2)], truth
    )
    assert [s["color_err"] for s in detail["seeds"]] == [0.0, EMPTY_COLOR_ERR]
    assert detail["color_err"] == pytest.approx(0.5) and detail["empty_results"] == 1


def test_the_hole_rate_counts_torus_results_with_a_hole_large_enough(flat_views):
    def overhead(hole: int) -> torch.Tensor:
        """A solid square seen from above with a hole of ``hole`` pixels in one row."""
        top = torch.zeros(HOLE_MIN_PIXELS + 20, HOLE_MIN_PIXELS + 20)
        top[2:-2, 2:-2] = 1.0
        top[5, 4 : 4 + hole] = 0.0
        return top

    blank = flat_views(torch.zeros(2, 8, 8), torch.tensor(COLORS["yellow"]))
    torus = parse_prompt("a yellow torus")
    runs = [
        Result("cfd", torus, seed, replace(blank, overhead=overhead(n)), None, 0.0, 1.0, 1.0, 1.0)
        for seed, n in enumerate([0, HOLE_MIN_PIXELS - 1, HOLE_MIN_PIXELS, HOLE_MIN_PIXELS + 3])
    ]
    detail = hole_detail(runs, replace(blank, overhead=overhead(HOLE_MIN_PIXELS + 5)))
    assert detail["hole_pixels"] == [0, HOLE_MIN_PIXELS - 1, HOLE_MIN_PIXELS, HOLE_MIN_PIXELS + 3]
    assert detail["hole_rate"] == 0.5 and detail["hole_pixels_truth"] == HOLE_MIN_PIXELS + 5
    assert hole_detail([replace(runs[0], prompt=parse_prompt("a red cube"))]) == {}


def test_a_perfect_samplers_mode_tv_band():
    # the figure: 8 samples of "a red object" (31 / 41 / 15 % ...) give TV 0.29 on
    # average, 0.14-0.46 from 5 to 95 %
    band = sampler_tv_band(torch.tensor([0.31, 0.41, 0.15, 0.05, 0.04, 0.04]), 8)
    assert 0.1 < band["p05"] < band["p50"] < band["p95"] < 0.5
    assert sampler_tv_band(torch.tensor([1.0, 0.0]), 8) == {"p05": 0, "p50": 0, "p95": 0}


def test_the_band_counts_the_references_own_noise():
    # mode TV is measured against 64 of the prior's samples, not its exact shares: a perfect
    # sampler judged that way lands further out, the more so the smaller the reference
    freq = torch.tensor([0.02, 0.36, 0.23, 0.14, 0.14, 0.11])
    exact = sampler_tv_band(freq, 16)
    wide = sampler_tv_band(freq, 16, reference=16)
    against_64 = sampler_tv_band(freq, 16, reference=64)
    assert exact["p95"] < against_64["p95"] < wide["p95"]
    assert exact["p50"] < against_64["p50"] < wide["p50"]
    assert sampler_tv_band(torch.tensor([1.0, 0.0]), 8, reference=64)["p95"] == 0


def test_total_variation_and_majority():
    p = frequencies(torch.tensor([0, 0, 1, 2]), 4)
    assert p.tolist() == [0.5, 0.25, 0.25, 0.0]
    assert total_variation(p, p) == 0.0
    assert total_variation(p, torch.tensor([0.0, 0.0, 0.0, 1.0]).double()) == 1.0
    assert majority(torch.tensor([2, 1, 2, 1, 0]), 3) == 1  # a tie goes to the smaller


def test_standard_errors_of_a_share_and_of_a_mean_of_estimates():
    assert share_se([True, False] * 4) == pytest.approx(0.1768, abs=1e-4)  # sqrt(.25 / 8)
    assert share_se([True] * 8) == 0.0 and share_se([]) is None
    assert share_se([True] * 3 + [False]) == pytest.approx((0.75 * 0.25 / 4) ** 0.5, abs=1e-4)
    # two independent estimates: the mean's error is sqrt(a^2 + b^2) / 2
    assert mean_se([0.03, 0.04]) == pytest.approx(0.025)
    assert mean_se([0.03, None]) is None and mean_se([]) is None
