"""A small pixel-space eps-prediction UNet with text conditioning.

Text: a 2-layer transformer over word embeddings; its mean-pooled output is added to the
timestep embedding (FiLM on every residual block) and its tokens are attended to by one
cross-attention block at the lowest resolution (and, with ``attention_levels``, at more
levels on the way down and up), so compositions ("a red cube on top of a blue sphere")
can be told apart from their mirror images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the embedded prior's UNet.

    Attributes:
        image_size: input resolution (square).
        patch: pixels are folded into channels in ``patch x patch`` blocks before the
            first level (pixel unshuffle) and unfolded at the end, which makes the
            full-resolution convolutions, the bulk of the cost on a CPU, disappear.
        channels: feature channels per resolution level (each level halves the size).
        blocks_per_level: residual blocks per level on the way down (and up).
        text_width: width of the text encoder and the attention blocks.
        text_layers: transformer layers of the text encoder.
        vocab_size: number of token ids (0 is padding).
        max_tokens: prompt length in tokens.
        groups: GroupNorm groups.
        attention_levels: levels (0 = the first, after the patch fold) that get a self- and
            cross-attention block after their residual blocks, on the way down and on the
            way up, besides the one in the middle; ``()``: the middle only.
        pooled_text: add the mean-pooled text to the timestep embedding (FiLM on every
            block). It carries every word to every pixel alike, which blends the two
            objects of a composition; without it the text enters through cross-attention
            only, where each pixel picks the words it needs.
        image_positions: every attention block adds a learned embedding of each pixel's
            position to its sequence (zero at initialisation, so weights trained without
            it are where fine-tuning with it starts). Without it attention treats the
            pixels as a set: only the convolutions' zero padding tells left from right,
            and "X next to Y, front view" (X on the left) was drawn either way round.
        text_positions_std: standard deviation of the text's position embedding at
            initialisation (the words' is 1). ``0`` starts it at zero, as the v2 prior was
            trained: its positions grew to norms of 0.4-2.9 against the words' 11, so it
            read a prompt as a bag of words and "X next to Y" as "Y next to X".
    """

    image_size: int = 32
    patch: int = 2
    channels: tuple[int, ...] = (64, 128, 192)
    blocks_per_level: int = 1
    text_width: int = 128
    text_layers: int = 2
    vocab_size: int = 64
    max_tokens: int = 16
    groups: int = 8
    attention_levels: tuple[int, ...] = ()
    pooled_text: bool = True
    image_positions: bool = False
    text_positions_std: float = 0.0

    def __post_init__(self) -> None:
        for level in self.attention_levels:
            if not 0 <= level < len(self.channels):
                raise ValueError(
                    f"attention level {level} is outside the UNet's levels 0-"
                    f"{len(self.channels) - 1}"
                )
        if self.text_positions_std < 0:
            raise ValueError(
                f"text_positions_std must not be negative, got {self.text_positions_std}"
            )


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of integer timesteps ``(B,)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` -> tokens ``(B, L, D)``, padding mask ``(B, L)``, pooled ``(B, D)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        width = config.text_width
        self.embed = nn.Embedding(config.vocab_size, width, padding_idx=0)
        position = torch.zeros(1, config.max_tokens, width)
        if config.text_positions_std > 0:  # draws no random numbers otherwise (reproducible v2)
            position.normal_(0.0, config.text_positions_std)
        self.position = nn.Parameter(position)
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.layers = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.null = nn.Parameter(torch.zeros(width))

    def forward(self, ids: torch.Tensor):
        pad = ids == 0
        empty = pad.all(dim=1)
        # A fully padded (unconditional) prompt attends to its first slot only.
        attend_pad = pad.clone()
        attend_pad[:, 0] &= ~empty
        tokens = self.layers(self.embed(ids) + self.position, src_key_padding_mask=attend_pad)
        keep = (~pad).float()[..., None]
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        pooled = torch.where(empty[:, None], self.null.expand_as(pooled), pooled)
        tokens = torch.where(empty[:, None, None], self.null.expand_as(tokens), tokens)
        return tokens, attend_pad, pooled


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class CrossAttention(nn.Module):
    """Self- then cross-attention over an image's pixels, residual."""

    def __init__(
        self, channels: int, text_width: int, groups: int, positions: int | None = None
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.position = (
            None if positions is None else nn.Parameter(torch.zeros(1, positions, channels))
        )
        self.self_attn = nn.MultiheadAttention(channels, 4, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.cross = nn.MultiheadAttention(
            channels, 4, kdim=text_width, vdim=text_width, batch_first=True
        )

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        if self.position is not None:
            seq = seq + self.position
        seq = seq + self.self_attn(seq, seq, seq, need_weights=False)[0]
        q = self.norm2(seq)
        seq = seq + self.cross(q, tokens, tokens, key_padding_mask=pad, need_weights=False)[0]
        return x + seq.transpose(1, 2).reshape(b, c, h, w)


class TinyUNet(nn.Module):
    """eps-prediction UNet: ``(x (B,3,S,S), t (B,), ids (B,L)) -> eps (B,3,S,S)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c0, emb_dim, g = config.channels[0], 4 * config.channels[0], config.groups
        self.text = TextEncoder(config)
        self.time_mlp = nn.Sequential(
            nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.text_proj = nn.Linear(config.text_width, emb_dim) if config.pooled_text else None
        patch_channels = 3 * config.patch**2
        self.stem = nn.Sequential(
            nn.PixelUnshuffle(config.patch), nn.Conv2d(patch_channels, c0, 3, padding=1)
        )
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()

        def attention(level: int) -> CrossAttention:
            side = config.image_size // config.patch // 2**level
            positions = side * side if config.image_positions else None
            return CrossAttention(config.channels[level], config.text_width, g, positions)

        self.down_attn = nn.ModuleDict(
            {str(level): attention(level) for level in config.attention_levels}
        )
        self.up_attn = nn.ModuleDict(
            {str(level): attention(level) for level in config.attention_levels}
        )
        skips, c = [c0], c0
        for level, ch in enumerate(config.channels):
            for _ in range(config.blocks_per_level):
                self.down.append(ResBlock(c, ch, emb_dim, g))
                c = ch
                skips.append(c)
            last = level == len(config.channels) - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1)
            )
            if not last:
                skips.append(c)
        self.mid1 = ResBlock(c, c, emb_dim, g)
        self.attn = attention(len(config.channels) - 1)
        self.mid2 = ResBlock(c, c, emb_dim, g)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, ch in reversed(list(enumerate(config.channels))):
            for _ in range(config.blocks_per_level + 1):
                self.up.append(ResBlock(c + skips.pop(), ch, emb_dim, g))
                c = ch
            self.upsample.append(nn.Upsample(scale_factor=2) if level else nn.Identity())
        self.out = nn.Sequential(
            nn.GroupNorm(g, c),
            nn.SiLU(),
            nn.Conv2d(c, patch_channels, 3, padding=1),
            nn.PixelShuffle(config.patch),
        )
        nn.init.zeros_(self.out[-2].weight)
        nn.init.zeros_(self.out[-2].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        tokens, pad, pooled = self.text(ids)
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]))
        if self.config.pooled_text:
            emb = emb + self.text_proj(pooled)
        emb = F.silu(emb)
        h = self.stem(x)
        hs = [h]
        blocks = iter(self.down)
        for level in range(len(self.config.channels)):
            for k in range(self.config.blocks_per_level):
                h = next(blocks)(h, emb)
                if k == self.config.blocks_per_level - 1 and str(level) in self.down_attn:
                    h = self.down_attn[str(level)](h, tokens, pad)
                hs.append(h)
            if level < len(self.config.channels) - 1:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb), tokens, pad), emb)
        blocks = iter(self.up)
        for i in range(len(self.config.channels)):
            level = len(self.config.channels) - 1 - i
            for _ in range(self.config.blocks_per_level + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), emb)
            if str(level) in self.up_attn:
                h = self.up_attn[str(level)](h, tokens, pad)
            h = self.upsample[i](h)
        return self.out(h)


def grown(config: UNetConfig) -> UNetConfig:
    """``config`` with one more level outside the others: twice the image size, the same
    patch, the first level's channels once more in front, attention at the same levels
    (now counted from the new one)."""
    return replace(
        config,
        image_size=2 * config.image_size,
        channels=(config.channels[0], *config.channels),
        attention_levels=tuple(level + 1 for level in config.attention_levels),
    )


def grow(model: TinyUNet) -> TinyUNet:
    """A UNet of :func:`grown` ``(model.config)`` that starts from ``model``: a start for
    training a prior at twice the resolution from one at the lower.

    The new UNet's levels below its first are the old UNet's levels (their residual
    blocks down and up, attention and downsampling, and the middle, are copied), as are
    the text encoder, the timestep embedding, the patch fold and the output; the new first
    level (its residual blocks down and up and its downsampling) starts afresh. So the
    old UNet's knowledge of shapes, colours, relations and words sits where the image is
    as coarse as it saw it, and training teaches the new level the finer pixels. On the
    shipped 32² prior's world rendered at 64², 150 steps from this start reached a
    noise-prediction loss of 0.057, from a random start 0.118 (the 32² prior's own: 0.009).
    """
    old = model.config
    new = TinyUNet(grown(old))
    shift = {"down": old.blocks_per_level, "downsample": 1, "down_attn": 1, "up_attn": 1}
    state = new.state_dict()
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] in shift:
            parts[1] = str(int(parts[1]) + shift[parts[0]])
        target = ".".join(parts)
        assert state[target].shape == value.shape, (key, target)
        state[target] = value
    new.load_state_dict(state)
    return new
