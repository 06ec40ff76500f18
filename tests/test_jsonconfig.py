"""The shared JSON-to-config rules that ``generate --config`` and ``train-prior --config`` use."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cfd3d.errors import ConfigError
from cfd3d.jsonconfig import build, merged, typed


@dataclass(frozen=True)
class Inner:
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"low {self.low} exceeds high {self.high}")


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    name: str = "x"
    flag: bool = False
    size: tuple[int, int] = (1, 2)
    widths: tuple[int, ...] = (4,)
    limit: float | None = None
    inner: Inner = field(default_factory=Inner)


def test_typed_converts_json_values() -> None:
    assert typed(float, 3, "k") == 3.0 and isinstance(typed(float, 3, "k"), float)
    assert typed(tuple[int, int], [5, 6], "k") == (5, 6)
    assert typed(tuple[int, ...], [1, 2, 3], "k") == (1, 2, 3)
    assert typed(float | None, None, "k") is None
    assert typed(float | None, 2, "k") == 2.0


@pytest.mark.parametrize(
    ("hint", "value", "message"),
    [
        (int, 2.5, "k must be of type int"),
        (int, True, "k must be of type int"),
        (bool, 1, "k must be of type bool"),
        (str, 3, "k must be of type str"),
        (float, "1", "k must be a number"),
        (float, True, "k must be a number"),
        (float, float("nan"), "k must be a finite number"),
        (tuple[int, int], [1], "k must have 2 entries"),
        (tuple[int, ...], 3, "k must be a list"),
    ],
)
def test_typed_rejects_wrong_types(hint, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        typed(hint, value, "k")


def test_build_fills_defaults_and_nests() -> None:
    config = build(Outer, {"steps": 3, "inner": {"high": 5}}, "config")
    assert config == Outer(steps=3, inner=Inner(high=5.0))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) bogus in config"):
        build(Outer, {"bogus": 1}, "config")
    with pytest.raises(ConfigError, match=r"config\.inner must be a JSON object"):
        build(Outer, {"inner": [1]}, "config")
    with pytest.raises(ConfigError, match=r"low 2\.0 exceeds high 1\.0"):
        build(Outer, {"inner": {"low": 2}}, "config")


def test_merged_keeps_the_fields_it_is_not_given() -> None:
    base = Outer(steps=7, inner=Inner(low=-1.0, high=3.0))
    config = merged(base, {"name": "y", "inner": {"high": 9}}, "train")
    assert config == Outer(steps=7, name="y", inner=Inner(low=-1.0, high=9.0))
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) bogus; valid: steps, name"):
        merged(base, {"bogus": 1}, "train")
    with pytest.raises(ConfigError, match=r"train\.inner\.low must be a number"):
        merged(base, {"inner": {"low": "a"}}, "train")
    with pytest.raises(ConfigError, match=r"low 5\.0 exceeds high 3\.0"):
        merged(base, {"inner": {"low": 5}}, "train")
