"""The CLIP tokenizer, built offline from the BPE vocabulary shipped with cfd3d.

Single-file checkpoints carry no tokenizer. Stable Diffusion 1.x (OpenAI CLIP), 2.x and
MVDream (OpenCLIP) all use OpenAI CLIP's byte-level BPE with 49,408 tokens; the package
ships its merge list (``assets/bpe_simple_vocab_16e6.txt.gz``, MIT licence, from OpenAI's
CLIP via the ``open_clip_torch`` wheel) and builds a ``transformers.CLIPTokenizer`` from
it. The vocabulary is, in id order: the 256 byte-level characters, the same with
``</w>`` (end of word), one token per merge, ``<|startoftext|>``, ``<|endoftext|>``.
"""

from __future__ import annotations

import functools
import gzip
import json
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch

VOCAB_ASSET = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SD1_PAD = EOS
"""Stable Diffusion 1.x pads prompts with ``<|endoftext|>`` (id 49407)."""
OPEN_CLIP_PAD = "!"
"""OpenCLIP (SD 2.x, MVDream) pads with id 0, the token ``"!"``."""


def byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in id order.

    Printable Latin-1 bytes stand for themselves; the others map to ``chr(256 + k)`` in
    byte order (GPT-2 / CLIP convention).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], tuple[str, ...]]:
    """CLIP's token -> id table (49,408 entries) and its merges, read from the package."""
    data = (resources.files("cfd3d") / "assets" / VOCAB_ASSET).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = tuple(lines[1 : NUM_MERGES + 1])  # line 0 is a version header
    alphabet = byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet)]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, pad_token: str = SD1_PAD, max_length: int = 77) -> Path:
    """Write CLIP's tokenizer files (``vocab.json``, ``merges.txt``, config) to ``folder``."""
    vocab, merges = clip_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def clip_tokenizer(pad_token: str = SD1_PAD, max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` for CLIP's vocabulary, built without network.

    Args:
        pad_token: :data:`SD1_PAD` (Stable Diffusion 1.x) or :data:`OPEN_CLIP_PAD` (SD 2.x,
            MVDream).
        max_length: the text encoder's context length (``model_max_length``).
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="cfd3d-clip-tokenizer-") as tmp:
        folder = write_clip_tokenizer(Path(tmp), pad_token, max_length)
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def embed_prompts(tokenizer, text_encoder, prompts: Sequence[str], device) -> torch.Tensor:
    """``(B, max_length, D)`` text-encoder states of ``prompts``, padded to the tokenizer's
    ``model_max_length`` (Stable Diffusion's and MVDream's conditioning), without gradient.

    Args:
        tokenizer: a ``CLIPTokenizer``.
        text_encoder: a ``CLIPTextModel``.
        prompts: ``B`` prompts.
        device: where the text encoder runs.
    """
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device))[0]
