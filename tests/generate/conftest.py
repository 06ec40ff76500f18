"""Fixtures of the generate tests: the embedded prior, small ``cpu-demo`` configs, and a
tiny random-weight Stable Diffusion folder written with diffusers and transformers alone
(no cfd3d code), as a third party's checkpoint would be: the project must load what it
did not write itself."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

SMALL_EXPORT = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}


@pytest.fixture(scope="module")
def prior():
    """The shipped embedded prior."""
    from cfd3d.priors.registry import load_prior

    return load_prior("embedded")


@pytest.fixture
def small_cpu_demo():
    """``small_cpu_demo(**overrides)``: the resolved ``cpu-demo`` config of "a red cube"
    with small exports and ``overrides``."""
    from dataclasses import replace

    from cfd3d.generate.config import preset_config

    def make(**overrides):
        base = preset_config("cpu-demo", "a red cube")
        return replace(base, **{**SMALL_EXPORT, **overrides}).resolved()

    return make


@pytest.fixture
def refused_config(tmp_path, capsys, small_cpu_demo):
    """``refused_config(change)``: ``generate --config`` with the ``cpu-demo`` config
    updated by ``change`` (JSON fields) must fail with one ``error:`` line, exit code 2
    and no run folder; returns that line."""
    from cfd3d.cli import main
    from cfd3d.generate.config import save_config

    def refuse(change: dict) -> str:
        data = json.loads(save_config(small_cpu_demo()))
        data.update(change)
        path = tmp_path / "c.json"
        path.write_text(json.dumps(data))
        out = tmp_path / "run"
        code = main(["generate", "--config", str(path), "--out", str(out), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert not out.exists()
        return err

    return refuse


def write_third_party_pipeline(folder: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(1234)
    tok_dir = folder.parent / f"{folder.name}-tokenizer-src"
    tok_dir.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def third_party_sd_folder(tmp_path_factory) -> Path:
    return write_third_party_pipeline(tmp_path_factory.mktemp("their-model") / "model")
