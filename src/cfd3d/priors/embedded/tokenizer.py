"""A word-level tokenizer with a small closed vocabulary (the toy world's words).

It reads ASCII letters (any case), whitespace between words, commas (a token) and the
punctuation of :data:`IGNORED` (skipped); any other character (a digit, an accented
letter, an emoji, an undecodable byte) is an error rather than a silent drop, as is an
unknown word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cfd3d.errors import UserError
from cfd3d.text import quote

PAD, UNKNOWN_HINT = "<pad>", "run 'cfd3d prior-vocab' to list the words the embedded prior knows"
_WORD = re.compile(r"[a-z]+|,")
IGNORED = ".!?;:'\"-()"
"""Punctuation the tokenizer skips."""
_READ = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ, " + IGNORED)


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

    def unknown_characters(self, prompt: str) -> list[str]:
        """The characters of ``prompt`` it cannot read, in order of first appearance."""
        return list(dict.fromkeys(ch for ch in prompt if ch not in _READ and not ch.isspace()))

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, max_length)`` long ids, 0-padded. The empty prompt is all padding.

        Raises:
            UserError: naming unknown characters or words (at most a few of them), or for
                prompts longer than ``max_length``; the prompt is quoted briefly.
        """
        index = {w: i + 1 for i, w in enumerate(self.words)}
        rows = []
        for prompt in prompts:
            characters = self.unknown_characters(prompt)
            if characters:
                names = ", ".join(f"'{quote(ch)}'" for ch in characters[:5])
                raise UserError(
                    f"the embedded prior cannot read the character(s) {names} in "
                    f"'{quote(prompt)}'; it reads letters a-z, spaces and punctuation"
                )
            unknown = self.unknown_words(prompt)
            if unknown:
                names = ", ".join(f"'{quote(w, 20)}'" for w in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise UserError(
                    f"the embedded prior does not know the word(s) {names}{more} in "
                    f"'{quote(prompt)}'; {UNKNOWN_HINT}"
                )
            ids = [index[w] for w in self.split(prompt)]
            if len(ids) > self.max_length:
                raise UserError(
                    f"prompt '{quote(prompt)}' has {len(ids)} words; the embedded prior takes "
                    f"at most {self.max_length}"
                )
            rows.append(ids + [0] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).view(len(rows), self.max_length)
