"""View-dependent prompting (DreamFusion): append the camera's view to the prompt."""

from __future__ import annotations

from collections.abc import Sequence


def view_prompt(prompt: str, view: str) -> str:
    """``"a red cube"`` + ``"side"`` -> ``"a red cube, side view"``."""
    return f"{prompt.rstrip(' ,.')}, {view} view"


def view_prompts(prompt: str, views: Sequence[str]) -> list[str]:
    """One view-dependent prompt per camera label."""
    return [view_prompt(prompt, v) for v in views]
