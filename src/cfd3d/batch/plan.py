"""What a batch runs: the runs of a PROMPTS file and the folder each one lands in.

A PROMPTS file is one of

* plain text: one prompt a line (blank lines and lines starting with ``#`` are skipped);
* JSON lines (``.jsonl``): one object a line with the keys of :class:`RunSpec`
  (``prompt`` required; ``seed``, ``method``, ``preset``, ``pipeline``, ``steps``,
  ``overrides`` optional);
* CSV (``.csv``): a header row with those column names (``overrides`` as a JSON object).

Every run lands in ``DIR/<slug>-<hash>``: the slug is the prompt's first words, the hash
covers everything that defines the run, so the same line always maps to the same folder
(a rerun finds its finished and interrupted runs) and two different runs never share one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cfd3d.errors import ConfigError, UserError
from cfd3d.generate.config import (
    GenerateConfig,
    config_from_dict,
    config_to_dict,
    default_preset,
    preset_config,
)

SPEC_KEYS: tuple[str, ...] = (
    "prompt",
    "seed",
    "prior",
    "method",
    "preset",
    "pipeline",
    "steps",
    "overrides",
)


@dataclass(frozen=True)
class RunSpec:
    """One run of a batch.

    Attributes:
        prompt: the text prompt.
        seed: the run's seed.
        prior: the prior (``"embedded"``, ``"sd"``, a hub id, folder or single file).
        method: the distillation method (``None``: the preset's).
        preset: the preset (``None``: the prior's default, as ``cfd3d generate`` picks it).
        pipeline: a staged pipeline's name instead of a single run (``None``: single run).
        steps: the run's steps (a pipeline's steps per stage); ``None``: the preset's.
        overrides: config fields to change, nested as in ``config.json``
            (e.g. ``{"guidance_scale": 5, "voxel": {"resolution": 32}}``); single runs only.
    """

    prompt: str
    seed: int = 0
    prior: str = "embedded"
    method: str | None = None
    preset: str | None = None
    pipeline: str | None = None
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """The canonical JSON of the run: what names its folder."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """10 hex digits of the hash of :meth:`key`: unique per run."""
        return hashlib.sha256(self.key().encode("utf-8")).hexdigest()[:10]

    def folder_name(self) -> str:
        """``<slug>-<10 hex digits>``: readable, unique per run, stable across reruns."""
        words = re.findall(r"[a-z0-9]+", self.prompt.lower())
        slug = "-".join(words)[:40].strip("-") or "run"
        return f"{slug}-{self.digest()}"

    def config(self) -> GenerateConfig:
        """The resolved config of a single run (not of a pipeline); config errors raise
        :class:`ConfigError` here, before anything runs."""
        preset = self.preset or default_preset(self.prior, None)
        config = replace(preset_config(preset, self.prompt), prior=self.prior, seed=self.seed)
        if self.method is not None:
            config = replace(config, method=self.method, noise=None, timesteps=None, weighting=None)
        if self.steps is not None:
            config = replace(config, steps=self.steps)
        if self.overrides:
            config = config_from_dict(_merged(config_to_dict(config), self.overrides))
        return config.resolved()


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, nested dicts merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def spec_from_mapping(data: Any, where: str) -> RunSpec:
    """A :class:`RunSpec` from one JSONL object / CSV row; ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object with a 'prompt'; got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(SPEC_KEYS)}"
        )
    values = {k: v for k, v in data.items() if v not in (None, "")}
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: 'prompt' must be non-empty text")
    for name in ("seed", "steps"):
        if name in values:
            values[name] = _integer(values[name], name, where)
    if "steps" in values and values["steps"] <= 0:
        raise ConfigError(f"{where}: 'steps' must be a positive integer")
    for name in ("prior", "method", "preset", "pipeline"):
        if name in values and not isinstance(values[name], str):
            raise ConfigError(f"{where}: '{name}' must be a name (text)")
    overrides = values.get("overrides", {})
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except ValueError:
            raise ConfigError(f"{where}: 'overrides' is not valid JSON") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'overrides' must be an object of config fields")
    if values.get("pipeline") and (overrides or "preset" in values):
        raise ConfigError(
            f"{where}: 'overrides' and 'preset' apply to single runs; a pipeline brings its own"
        )
    values["overrides"] = overrides
    return RunSpec(**values)


def _integer(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: '{name}' must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: '{name}' must be an integer, not {value!r:.40}") from None
    if number != value and str(number) != str(value).strip():
        raise ConfigError(f"{where}: '{name}' must be an integer, not {value!r:.40}")
    return number


def read_plan(path: Path, defaults: dict[str, Any] | None = None) -> list[RunSpec]:
    """The runs of a PROMPTS file (text, ``.jsonl`` or ``.csv``), in file order, without
    duplicates (a line repeated runs once). ``defaults`` (e.g. ``{"prior": ...}`` from the
    command line) fill the keys a line leaves out.

    Raises:
        UserError: when the file cannot be read, a line is malformed or nothing is in it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"prompts file '{path}' not found; pass a text, JSONL or CSV file"
        ) from None
    except IsADirectoryError:
        raise UserError(
            f"'{path}' is a folder; pass a text, JSONL or CSV file of prompts"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not UTF-8 text; save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl(text, path)
    elif suffix == ".csv":
        rows = _csv(text, path)
    else:
        rows = [
            (f"{path}:{number}", {"prompt": line.strip()})
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    specs = [spec_from_mapping({**(defaults or {}), **row}, where) for where, row in rows]
    unique = _unique(specs)
    if not unique:
        raise UserError(f"'{path}' holds no runs; write one prompt a line")
    return unique


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    seen: set[str] = set()
    out = []
    for spec in specs:
        if spec.key() not in seen:
            seen.add(spec.key())
            out.append(spec)
    return out


def _jsonl(text: str, path: Path) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON ({exc.args[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:{number}: expected an object with a 'prompt'")
        rows.append((f"{path}:{number}", data))
    return rows


def _csv(text: str, path: Path) -> list[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "prompt" not in reader.fieldnames:
        raise ConfigError(f"{path}: the first row must name the columns, 'prompt' among them")
    rows = []
    for number, row in enumerate(reader, start=2):
        if None in row:
            raise ConfigError(f"{path}:{number}: more fields than columns (quote the prompt)")
        rows.append((f"{path}:{number}", row))
    return rows
