"""Text from users and scripts: prompts checked as text, and quoted briefly in errors.

A prompt reaches cfd3d from a shell (bytes decoded by Python; invalid UTF-8 survives as
lone surrogates, ``"\\udcff"``), from a JSON config or from a script. :func:`check_text`
refuses what no prior can read as intended: bytes that are not UTF-8, control characters,
and prompts too long to be a description. :func:`quote` makes any text safe and short for
a one-line message.
"""

from __future__ import annotations

import unicodedata

from cfd3d.errors import ConfigError

MAX_PROMPT_CHARS = 1000
"""The longest prompt accepted (CLIP, Stable Diffusion's text encoder, reads 77 tokens,
about 300 characters of English; the embedded prior 16 words)."""
QUOTE_CHARS = 80
"""At most this many characters of a user's text appear in a message."""


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` for a one-line message: control characters and undecodable bytes escaped
    (``\\n``, ``\\x07``, ``\\udcff``), cut to about ``limit`` characters with a note of
    the full length."""
    shown = "".join(_escape(ch) for ch in text[: limit + 1])
    if len(text) <= limit and len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(text)} characters)"


def _escape(ch: str) -> str:
    if unicodedata.category(ch) in ("Cc", "Cs"):
        return ch.encode("unicode_escape", "backslashreplace").decode("ascii")
    return ch


def check_text(text: str, what: str = "prompt", max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Return ``text`` if it is plain text no longer than ``max_chars``.

    Raises:
        ConfigError: for undecodable bytes, control characters (newlines and tabs
            included) or too many characters; the message quotes at most
            :data:`QUOTE_CHARS` characters.
    """
    if not isinstance(text, str):
        raise ConfigError(f"the {what} must be text, got {type(text).__name__}")
    for index, ch in enumerate(text):
        kind = unicodedata.category(ch)
        if kind == "Cs":
            raise ConfigError(
                f"the {what} holds bytes that are not UTF-8 text (character {index + 1} of "
                f"'{quote(text)}'); pass UTF-8 text"
            )
        if kind == "Cc":
            raise ConfigError(
                f"the {what} holds the control character {_escape(ch)} (character {index + 1} "
                f"of '{quote(text)}'); replace it with a space"
            )
    if len(text) > max_chars:
        raise ConfigError(
            f"the {what} has {len(text)} characters, more than the {max_chars} accepted "
            f"('{quote(text)}'); shorten it"
        )
    return text
