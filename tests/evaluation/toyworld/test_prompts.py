"""cfd3d.evaluation.toyworld.prompts: prompts are read or refused."""

import pytest

from cfd3d.errors import UserError
from cfd3d.evaluation.toyworld.prompts import (
    COMPOSITIONS,
    SINGLE_PROMPTS,
    UNDERSPECIFIED,
    Prompt,
    parse_composition,
    parse_prompt,
    reference_seed,
)


def test_prompts_are_read_or_refused():
    assert parse_prompt("a red cube") == Prompt("a red cube", "red", "cube")
    assert parse_prompt("a red object").missing == "shape"
    assert parse_prompt("a torus").missing == "color"
    assert parse_prompt("a blue cone").missing is None
    for bad in ("a red head", "two red cubes", "a", "a red cube on top of a blue sphere"):
        with pytest.raises(UserError):
            parse_prompt(bad)


def test_compositions_are_read_or_refused():
    c = parse_composition("a Red cube  on top of a blue sphere")
    assert (c.colors, c.shapes, c.relation) == (("red", "blue"), ("cube", "sphere"), "on")
    assert c.scene().name == "red_cube_on_blue_sphere" and c.missing is None
    assert parse_composition("a green cone next to a pink capsule").relation == "next_to"
    for text in COMPOSITIONS:
        assert parse_composition(text).scene().caption() == text
    with pytest.raises(UserError, match="one colour"):
        parse_composition("a red cube on top of a red sphere")
    for bad in ("a red cube", "a red head next to a blue cube", "a red cube under a blue cone"):
        with pytest.raises(UserError, match="cannot read the composition"):
            parse_composition(bad)


def test_reference_seeds_follow_the_prompt_not_the_run():
    defaults = [*SINGLE_PROMPTS, *UNDERSPECIFIED]
    # The default prompts keep the seeds the default runs always had: 1000 * seed + place.
    assert [reference_seed(100, t) for t in defaults] == [100_000 + i for i in range(5)]
    other = reference_seed(100, "a green cylinder")
    assert other == reference_seed(100, "a green cylinder")
    assert 100_005 <= other < 101_000
    assert reference_seed(200, "a green cylinder") - other == 100_000
    assert other != reference_seed(100, "a pink capsule")
