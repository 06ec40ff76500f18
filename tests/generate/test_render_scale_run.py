"""Empty-space skipping and deferred back-propagation inside `cfd3d generate` runs
(issue 12): the same gradients as one-pass steps, bit-identical resume, the resolution
schedule, and one-line errors for bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cfd3d.cli import main
from cfd3d.generate.config import save_config
from cfd3d.generate.run import Run, step_generator
from cfd3d.render.occupancy import OccupancyConfig
from cfd3d.scene.sampling import sample_cameras


def _grads(run: Run) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in run.field.parameters()])


@pytest.mark.parametrize("occupancy", [None, OccupancyConfig(resolution=32)])
def test_a_deferred_step_has_the_one_pass_gradient(prior, occupancy, small_cpu_demo):
    """One chunk of all rays draws the random numbers the one-pass render draws, so the two
    steps see the same render and the prior the same image; the gradients agree to float
    summation order."""
    runs = {}
    for mode in ("never", "always"):
        config = small_cpu_demo(deferred_backward=mode, occupancy=occupancy, chunk_rays=2 * 32 * 32)
        run = Run(config, prior)
        run.take_step()
        runs[mode] = run
    one_pass, deferred = _grads(runs["never"]), _grads(runs["always"])
    assert one_pass.norm() > 0
    assert float((deferred - one_pass).norm() / one_pass.norm()) <= 1e-4


def test_sparsity_joins_the_gradient_of_both_paths(prior, small_cpu_demo):
    """The opacity penalty reaches the field on the one-pass and the deferred path alike,
    and moves the gradient by what it adds: λ · d(Σ opacity)/dθ."""
    grads = {}
    for sparsity in (0.0, 0.5):
        for mode in ("never", "always"):
            config = small_cpu_demo(
                deferred_backward=mode, chunk_rays=2 * 32 * 32, sparsity=sparsity
            )
            run = Run(config, prior)
            run.take_step()
            grads[sparsity, mode] = _grads(run)
    for sparsity in (0.0, 0.5):
        one_pass, deferred = grads[sparsity, "never"], grads[sparsity, "always"]
        assert float((deferred - one_pass).norm() / one_pass.norm()) <= 1e-4
    run = Run(small_cpu_demo(), prior)  # the penalty's own gradient, from the same render
    gen = step_generator(run.config.seed, 0)
    cameras = sample_cameras(run.config.cameras, run.config.views_per_step, gen)
    out = run.render(cameras, 32, run.shading_for(gen), gen)
    (0.5 * out.opacity.sum()).backward()
    added = grads[0.5, "never"] - grads[0.0, "never"]
    assert added.norm() > 0
    assert float((added - _grads(run)).norm() / added.norm()) <= 1e-3


def test_auto_defers_when_a_step_has_more_rays_than_a_chunk(prior, small_cpu_demo):
    run = Run(small_cpu_demo(chunk_rays=2048, render_schedule=((3, 64),)), prior)
    assert not run.config.defers_backward(run.config.render_size_at(0))  # 2 x 32² = 2048
    assert run.config.defers_backward(run.config.render_size_at(3))  # 2 x 64² > 2048
    assert run.config.render_sizes == (32, 64)


def test_skipping_deferred_run_resumes_bit_identically(prior, small_cpu_demo):
    config = small_cpu_demo(
        occupancy=OccupancyConfig(resolution=24, update_every=2, warmup_steps=2),
        deferred_backward="always",
        chunk_rays=700,
        render_schedule=((2, 64),),
        steps=5,
    )
    straight = Run(config, prior)
    for _ in range(5):
        straight.take_step()
    first = Run(config, prior)
    for _ in range(3):
        first.take_step()
    state = first.state_dict()
    assert "occupancy" in state
    resumed = Run(config, prior)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.take_step()
    for key, value in straight.field.state_dict().items():
        assert torch.equal(value, resumed.field.state_dict()[key]), key
    assert torch.equal(straight.occupancy.mask, resumed.occupancy.mask)
    assert not bool(straight.occupancy.mask.all())  # the grid did skip something


def _one_line_exit_2(tmp_path: Path, capsys, config: dict) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    code = main(["generate", "--config", str(path), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"chunk_rays": 0}, "chunk_rays"),
        ({"chunk_rays": 2.5}, "chunk_rays"),
        ({"termination": 1.5}, "termination"),
        ({"termination": 0}, "termination"),
        ({"occupancy": {"resolution": 0}}, "resolution"),
        ({"occupancy": {"resolution": "big"}}, "resolution"),
        ({"deferred_backward": "sometimes"}, "deferred_backward"),
        ({"render_schedule": [[10, 64], [5, 128]]}, "render_schedule"),
        ({"render_schedule": [[10, 48]]}, "multiple"),
        ({"sparsity": -0.1}, "sparsity must be >= 0"),
        ({"sparsity": float("nan")}, "sparsity"),
    ],
)
def test_bad_render_settings_are_one_line(change, needle, tmp_path, capsys, small_cpu_demo):
    data = json.loads(save_config(small_cpu_demo()))
    data.update(change)
    err = _one_line_exit_2(tmp_path, capsys, data)
    assert needle in err
