"""A word-level tokenizer with a small closed vocabulary (the toy world's words)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cfd3d.errors import UserError

PAD, UNKNOWN_HINT = "<pad>", "run 'cfd3d prior-vocab' to list the words the embedded prior knows"
_WORD = re.compile(r"[a-z]+|,")


@dataclass(frozen=True)
class WordTokenizer:
    """Maps prompts to fixed-length id sequences.

    Attributes:
        words: the vocabulary (index 0 is padding, so ids start at 1).
        max_length: sequence length; longer prompts are an error, not truncated.
    """

    words: tuple[str, ...]
    max_length: int = 16

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 1

    def split(self, prompt: str) -> list[str]:
        """Lower-case words and commas; other punctuation is ignored."""
        return _WORD.findall(prompt.lower())

    def unknown_words(self, prompt: str) -> list[str]:
        known = set(self.words)
        return sorted({w for w in self.split(prompt) if w not in known})

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, max_length)`` long ids, 0-padded. The empty prompt is all padding.

        Raises:
            UserError: naming unknown words, or for prompts longer than ``max_length``.
        """
        index = {w: i + 1 for i, w in enumerate(self.words)}
        rows = []
        for prompt in prompts:
            unknown = self.unknown_words(prompt)
            if unknown:
                names = ", ".join(repr(w) for w in unknown)
                raise UserError(
                    f"the embedded prior does not know the word(s) {names} in '{prompt}'; "
                    f"{UNKNOWN_HINT}"
                )
            ids = [index[w] for w in self.split(prompt)]
            if len(ids) > self.max_length:
                raise UserError(
                    f"prompt '{prompt}' has {len(ids)} words; the embedded prior takes at most "
                    f"{self.max_length}"
                )
            rows.append(ids + [0] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).view(len(rows), self.max_length)
