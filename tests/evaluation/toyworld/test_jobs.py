"""cfd3d.evaluation.toyworld.jobs: method configs and the cache of finished jobs."""

import sys
import types
import zipfile
from dataclasses import fields, is_dataclass, make_dataclass, replace

import numpy as np
import pytest
import torch

from cfd3d.distill.timesteps import TimestepSchedule
from cfd3d.evaluation.toyworld.composition import Composed
from cfd3d.evaluation.toyworld.jobs import (
    ABLATIONS,
    PRESET,
    Job,
    Result,
    job_configs,
    method_config,
    read_cached,
    write_cached,
)
from cfd3d.evaluation.toyworld.prompts import (
    COMPOSITIONS,
    Composition,
    Prompt,
    parse_composition,
    parse_prompt,
)
from cfd3d.evaluation.toyworld.views import Views
from cfd3d.generate.config import preset_config
from cfd3d.scene.sampling import CameraSamplerConfig


def test_ablation_rows_are_cfd_with_another_noise():
    base = preset_config(PRESET, "a red cube")
    for row, kind in ABLATIONS.items():
        config = method_config(base, row, 7, 3)
        assert config.method == "cfd" and config.noise.kind == kind and config.noise.seed == 7
        cfd = method_config(base, "cfd", 7, 3)
        assert config.timesteps == cfd.timesteps and config.weighting == cfd.weighting
    assert method_config(base, "cfd", 7, 3).noise.kind == "integral"


def test_a_presets_own_schedule_reaches_its_method_and_no_other():
    schedule = TimestepSchedule(kind="annealed", knots=((0.0, 0.9), (1.0, 0.1)))
    base = replace(preset_config(PRESET, "a red cube"), timesteps=schedule, weighting="unit")
    cfd, fixed, sds = (method_config(base, m, 7, 3) for m in ("cfd", "cfd-fixed", "sds"))
    assert cfd.timesteps == fixed.timesteps == schedule
    assert cfd.weighting == fixed.weighting == "unit"
    default = method_config(preset_config(PRESET, "a red cube"), "sds", 7, 3)
    assert sds.timesteps == default.timesteps != schedule
    assert sds.weighting == default.weighting != "unit"


def test_a_job_can_distil_from_another_priors_cameras():
    base = preset_config(PRESET, "a red cube")
    prompt = parse_prompt("a red cube")
    overhead = CameraSamplerConfig(elevation_deg=(-10.0, 90.0), fovy_deg=(50.0, 50.0))
    assert job_configs(Job(base, "cfd", prompt, 100, 3, 32))[0][1].cameras == base.cameras
    assert job_configs(Job(base, "sds", prompt, 100, 3, 32, cameras=overhead))[0][1].cameras == (
        overhead
    )
    staged = job_configs(Job(base, "cfd", prompt, 100, 3, 32, "toy", overhead))
    assert len(staged) == 2 and all(config.cameras == overhead for _, config in staged)


def _library_runs() -> list:
    """What a cached job holds: a composition's result and its truth, with every class."""
    composition = parse_composition(COMPOSITIONS[0])
    composed = Composed(
        pixels=torch.arange(4).reshape(2, 2),
        crops=torch.rand(2, 2, 3, 4, 4),
        centroids=torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, float("nan")]]),
    )
    views = Views(
        albedo=torch.rand(2, 4, 4, 3),
        opacity=torch.rand(2, 4, 4),
        probe=torch.rand(2, 3, 4, 4),
        world=torch.rand(3, 3, 4, 4),
        figure=np.arange(48, dtype=np.uint8).reshape(4, 4, 3),
        composed=composed,
    )
    result = Result("cfd", composition, 100, views, None, 1.0, 2.0, 3.0, 4.0)
    single = Result(
        "sds",
        parse_prompt("a red cube"),
        101,
        replace(views, composed=None),
        0.5,
        0.0,
        1.0,
        2.0,
        3.0,
    )
    return [(result, views), (single, None)]


def _as_script_classes(value, classes: dict[type, type]):
    """``value`` rebuilt with the script's twins of the library's classes."""
    if type(value) in classes:
        kwargs = {
            f.name: _as_script_classes(getattr(value, f.name), classes) for f in fields(value)
        }
        return classes[type(value)](**kwargs)
    if isinstance(value, (list, tuple)):
        return type(value)(_as_script_classes(v, classes) for v in value)
    return value


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    if is_dataclass(a):
        for f in fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("module", ["__main__", "toyworld_benchmark"])
def test_a_cache_entry_pickled_by_the_script_is_read_as_the_librarys(tmp_path, monkeypatch, module):
    # Before these classes moved into the library, benchmarks/toyworld.py pickled them under
    # its own module: "__main__" when run as a program, "toyworld_benchmark" in the tests.
    runs = _library_runs()
    script = types.ModuleType(module)
    twins = {}
    for cls in (Result, Views, Prompt, Composition, Composed):
        twin = make_dataclass(cls.__name__, [(f.name, f.type) for f in fields(cls)], frozen=True)
        twin.__module__ = module
        setattr(script, cls.__name__, twin)
        twins[cls] = twin
    monkeypatch.setitem(sys.modules, module, script)
    path = tmp_path / "entry.pt"
    write_cached(path, _as_script_classes(runs, twins))
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert f"{module}\nResult".encode() in pickled and b"cfd3d.evaluation" not in pickled
    # a later process: the module holds no such classes any more
    monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    with pytest.raises(AttributeError):
        torch.load(path, weights_only=False)
    _assert_same(read_cached(path), runs)


def test_a_cache_entry_of_the_library_is_read_back(tmp_path):
    runs = _library_runs()
    write_cached(tmp_path / "entry.pt", runs)
    _assert_same(read_cached(tmp_path / "entry.pt"), runs)
    assert read_cached(tmp_path / "missing.pt") is None
