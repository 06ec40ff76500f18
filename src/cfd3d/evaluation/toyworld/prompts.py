"""Toy-world prompts that a distilled result is judged against: what each one names.

:func:`parse_prompt` reads single objects, fully named ("a red cube") or underspecified
("a red object", "a torus"); :func:`parse_composition` reads two objects and their
relation ("a red cube on top of a blue sphere"). Also the default prompts of
``benchmarks/toyworld.py``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from cfd3d.errors import UserError
from cfd3d.priors.embedded.world import BASIC_SHAPES
from cfd3d.scene.toy import COLORS, RELATIONS, ToyScene, pair

SINGLE_PROMPTS: tuple[str, ...] = ("a red cube", "a blue cone", "a yellow torus")
UNDERSPECIFIED: tuple[str, ...] = ("a red object", "a torus")
COMPOSITIONS: tuple[str, ...] = (
    "a red cube on top of a blue sphere",
    "a yellow sphere on top of a green cube",
    "a blue cube next to a yellow cylinder",
    "a green sphere next to a red cone",
)
"""Two of each relation, with colours that stay apart when shaded (as
:data:`~cfd3d.evaluation.toyworld.judges.RELATION_SPECS`), so that the pixel segmentation
tells the objects apart."""


def reference_seed(seed: int, text: str) -> int:
    """The seed of the prior's reference samples for ``text`` in a run at ``seed``.

    It depends on the prompt alone, not on which other prompts the run has, so a run of
    the underspecified prompts alone is judged against the same samples as the default
    run. The default prompts keep their places in the default list
    (:data:`SINGLE_PROMPTS` then :data:`UNDERSPECIFIED`: 0-4), the seeds of the default
    runs' figures; any other prompt takes a place in 5-999 from a checksum of its text.
    """
    defaults = (*SINGLE_PROMPTS, *UNDERSPECIFIED)
    if text in defaults:
        index = defaults.index(text)
    else:
        index = len(defaults) + zlib.crc32(text.encode()) % (1000 - len(defaults))
    return 1000 * seed + index


@dataclass(frozen=True)
class Prompt:
    """A toy-world prompt and what it names.

    Attributes:
        text: the prompt.
        color: the named colour, or ``None`` ("a torus").
        shape: the named basic shape, or ``None`` ("a red object").
    """

    text: str
    color: str | None
    shape: str | None

    @property
    def missing(self) -> str | None:
        """``"color"``, ``"shape"`` or ``None``: the attribute the prompt leaves open."""
        if self.color is None:
            return "color"
        return "shape" if self.shape is None else None


def parse_prompt(text: str) -> Prompt:
    """Read "a {colour} {shape}", "a {colour} object" or "a {shape}".

    Raises:
        UserError: for any other prompt.
    """
    words = text.strip().lower().split()
    if len(words) == 3 and words[0] == "a" and words[1] in COLORS:
        if words[2] in BASIC_SHAPES:
            return Prompt(text, words[1], words[2])
        if words[2] == "object":
            return Prompt(text, words[1], None)
    if len(words) == 2 and words[0] == "a" and words[1] in BASIC_SHAPES:
        return Prompt(text, None, words[1])
    raise UserError(
        f"cannot read the prompt {text!r}; use 'a COLOUR SHAPE', 'a COLOUR object' or "
        f"'a SHAPE' with colours {', '.join(COLORS)} and shapes {', '.join(BASIC_SHAPES)}"
    )


@dataclass(frozen=True)
class Composition:
    """A two-object prompt, "a red cube on top of a blue sphere".

    Attributes:
        text: the prompt.
        colors: the first and the second object's colour.
        shapes: their shapes.
        relation: ``"on"`` (the first on top of the second) or ``"next_to"`` (the first on
            the left, seen from the front).
    """

    text: str
    colors: tuple[str, str]
    shapes: tuple[str, str]
    relation: str

    @property
    def missing(self) -> None:
        """Nothing: a composition names everything."""
        return None

    def scene(self) -> ToyScene:
        """The true pair."""
        return pair(self.colors[0], self.shapes[0], self.relation, self.colors[1], self.shapes[1])


def parse_composition(text: str) -> Composition:
    """Read "a {colour} {shape} on top of / next to a {colour} {shape}".

    Raises:
        UserError: for any other prompt, or two objects of one colour (the judge tells
            the objects apart by their colours).
    """
    phrases = "|".join(RELATIONS.values())
    match = re.fullmatch(
        rf"a (\w+) (\w+) ({phrases}) a (\w+) (\w+)", " ".join(text.lower().split())
    )
    if match is not None:
        ca, sa, phrase, cb, sb = match.groups()
        known = {ca, cb} <= COLORS.keys() and {sa, sb} <= set(BASIC_SHAPES)
        if known and ca == cb:
            raise UserError(
                f"the two objects of {text!r} have one colour; the judge tells them apart by "
                "colour, so name two different colours"
            )
        if known:
            relation = next(k for k, v in RELATIONS.items() if v == phrase)
            return Composition(text, (ca, cb), (sa, sb), relation)
    raise UserError(
        f"cannot read the composition {text!r}; use 'a COLOUR SHAPE on top of a COLOUR SHAPE' "
        f"or '... next to ...' with colours {', '.join(COLORS)} and shapes "
        f"{', '.join(BASIC_SHAPES)}"
    )
