"""Random bytes and long strings as prompts, random values in config files: every one is
accepted or refused with one short line (a ConfigError/UserError), never a traceback."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from cfd3d.errors import ConfigError, UserError
from cfd3d.export.formats import check_format
from cfd3d.generate.config import GenerateConfig, config_from_dict, config_to_dict
from cfd3d.priors.registry import load_prior

MESSAGE_CHARS = 400
"""Longest error line accepted: a sentence plus a quote of at most 80 characters."""


def _random_prompt(rng: random.Random) -> str:
    kind = rng.choice(["bytes", "words", "long", "unicode"])
    if kind == "bytes":
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        return raw.decode("utf-8", "surrogateescape")  # what Python makes of argv bytes
    if kind == "words":
        words = ["a", "red", "cube", "blue", "torus", ",", "front", "view", "the", "green"]
        return " ".join(rng.choice(words) for _ in range(rng.randrange(1, 30)))
    if kind == "long":
        return "a red cube " * rng.randrange(50, 3000)
    return "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(1, 30)))


def _check_message(exc: BaseException) -> None:
    text = str(exc)
    assert "\n" not in text and len(text) <= MESSAGE_CHARS, text[:500]


def test_random_prompts_are_embedded_or_refused_in_one_short_line():
    rng = random.Random(17)
    prior = load_prior("embedded")
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(300):
        prompt = _random_prompt(rng)
        try:
            config = GenerateConfig(prompt=prompt)
            prior.condition(config.prompt, config.negative_prompt, 1)
        except UserError as exc:
            _check_message(exc)
            outcomes["refused"] += 1
        else:
            assert prompt.isascii() and prompt.isprintable()
            outcomes["accepted"] += 1
    assert min(outcomes.values()) > 10, outcomes


def _mutate(value, rng: random.Random):
    """``value`` with one leaf replaced by an odd JSON value."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        return {**value, key: _mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        return [*value[:index], _mutate(value[index], rng), *value[index + 1 :]]
    odd = [
        None,
        True,
        -1,
        0,
        -1e308,
        float("nan"),
        float("inf"),
        "",
        "\udcff",
        "low",
        "x" * 5000,
        [],
        [1, "a"],
        {},
        {"k": 1},
        2**70,
    ]
    return rng.choice(odd)


def test_a_long_unknown_mesh_format_is_one_short_line():
    with pytest.raises(ConfigError, match="unknown mesh format") as caught:
        check_format("x" * 5000)
    _check_message(caught.value)
    assert "5000 characters" in str(caught.value)


def test_random_config_values_are_accepted_or_one_line():
    rng = random.Random(23)
    base = json.loads(json.dumps(config_to_dict(GenerateConfig(prompt="a red cube").resolved())))
    refused = 0
    for _ in range(400):
        data = _mutate(base, rng)
        text = json.dumps(data)  # through JSON, as a config file would be
        try:
            config_from_dict(json.loads(text))
        except ConfigError as exc:
            _check_message(exc)
            refused += 1
    assert refused > 200


@pytest.mark.parametrize(
    "prompt", [b"a red \xff\xfe cube", b"a red\x07 cube " * 300], ids=["invalid-utf8", "long"]
)
def test_odd_prompt_bytes_from_a_shell_are_one_line(prompt, tiny, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cfd3d.cli", "generate", prompt, "--out", str(tmp_path / "o")],
        capture_output=True,
        env=tiny.env(),
        timeout=120,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) <= MESSAGE_CHARS, err
    assert not (tmp_path / "o").exists()
