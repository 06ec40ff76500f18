"""The embedded prior's parts on tiny random models: tokenizer, UNet, weights, training."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from torch import nn

from cfd3d.errors import UserError
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.tokenizer import WordTokenizer
from cfd3d.priors.embedded.training import TrainConfig, learning_rate, train
from cfd3d.priors.embedded.unet import TextEncoder, TinyUNet, UNetConfig, grow, grown
from cfd3d.priors.embedded.weights import CHECKSUM_NAME, load_weights, write_weights

WORDS = ("a", "red", "blue", "cube", "sphere", "on", "top", "of", ",", "front", "view")
TINY = UNetConfig(
    image_size=8, channels=(16, 32), text_width=32, vocab_size=len(WORDS) + 1, groups=4
)


def test_tokenizer_ids_padding_and_commas():
    tok = WordTokenizer(WORDS, max_length=6)
    ids = tok.encode(["a red cube, front view", ""])
    assert ids.tolist() == [[1, 2, 4, 9, 10, 11], [0] * 6]
    assert tok.encode(["A  RED cube!"]).tolist() == [[1, 2, 4, 0, 0, 0]]


def test_tokenizer_names_unknown_words_and_points_to_the_vocab_command():
    tok = WordTokenizer(WORDS)
    with pytest.raises(UserError, match=r"'dragon', 'purple'.*cfd3d prior-vocab"):
        tok.encode(["a purple dragon"])
    with pytest.raises(UserError, match="at most 3"):
        WordTokenizer(WORDS, max_length=3).encode(["a red cube on top"])


def test_unet_shapes_and_text_dependence():
    torch.manual_seed(0)
    model = TinyUNet(TINY)
    # Zero-initialised output: perturb it so the text path is visible.
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    tok = WordTokenizer(WORDS, max_length=TINY.max_tokens)
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([10, 500, 900])
    ids = tok.encode(
        ["a red cube on top of a blue sphere", "a blue sphere on top of a red cube", ""]
    )
    out = model(x, t, ids)
    assert out.shape == x.shape
    swapped = model(x, t, ids[[1, 0, 2]])
    assert not torch.allclose(out[0], swapped[0])  # word order matters


def test_attention_at_more_levels_reads_the_text_there_and_round_trips(tmp_path):
    config = UNetConfig(**{**TINY.__dict__, "attention_levels": (0,)})
    torch.manual_seed(0)
    model = TinyUNet(config)
    plain = TinyUNet(TINY)
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(("down_attn.0.", "up_attn.0.")) for k in extra)
    assert set(plain.state_dict()) <= set(model.state_dict())  # the first prior still loads
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    tok = WordTokenizer(WORDS, max_length=TINY.max_tokens)
    ids = tok.encode(["a red cube on top of a blue sphere", "a blue sphere on top of a red cube"])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([300, 300])
    out = model(x, t, ids)
    # the new blocks read the tokens: with them removed the prediction changes
    model.down_attn["0"].cross.out_proj.weight.data.zero_()
    model.down_attn["0"].cross.out_proj.bias.data.zero_()
    assert out.shape == x.shape and not torch.allclose(out, model(x, t, ids))
    path = tmp_path / "embedded_prior.safetensors"
    write_weights(model, {"vocabulary": list(WORDS), "schedule": "scaled_linear"}, path)
    assert EmbeddedPrior.load(path).model.config.attention_levels == (0,)
    with pytest.raises(ValueError, match="attention level 5"):
        UNetConfig(**{**TINY.__dict__, "attention_levels": (5,)})


def test_image_positions_start_at_zero_and_break_the_mirror_symmetry(tmp_path):
    """Weights made without image positions are a UNet with them at zero (the same
    function); with positions the attention knows where a pixel is, which moves the
    prediction; the setting round-trips through the weights file."""
    config = UNetConfig(**{**TINY.__dict__, "attention_levels": (0,), "image_positions": True})
    torch.manual_seed(0)
    plain = TinyUNet(UNetConfig(**{**config.__dict__, "image_positions": False}))
    for p in plain.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    model = TinyUNet(config)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert sorted(missing) == ["attn.position", "down_attn.0.position", "up_attn.0.position"]
    assert model.down_attn["0"].position.shape == (1, 16, 16)  # 8 px / patch 2 = 4 x 4
    assert model.attn.position.shape == (1, 4, 32)  # the middle: 2 x 2
    tok = WordTokenizer(WORDS, max_length=TINY.max_tokens)
    ids = tok.encode(["a red cube on top of a blue sphere"])
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([300])
    torch.testing.assert_close(model(x, t, ids), plain(x, t, ids), atol=1e-6, rtol=0)
    model.down_attn["0"].position.data.normal_(0.0, 1.0)
    assert not torch.allclose(model(x, t, ids), plain(x, t, ids), atol=1e-4)
    path = tmp_path / "embedded_prior.safetensors"
    write_weights(model, {"vocabulary": list(WORDS), "schedule": "scaled_linear"}, path)
    loaded = EmbeddedPrior.load(path).model
    assert loaded.config.image_positions
    torch.testing.assert_close(loaded(x, t, ids), model(x, t, ids), atol=1e-2, rtol=0)


def test_text_positions_start_at_the_words_scale_only_when_asked():
    """``text_positions_std`` 0 (the v2 recipe) starts the text positions at zero and draws
    no random numbers, so the v2 prior's training still reproduces; above 0 the positions
    start at that scale, and the encoder tells "X on top of Y" from "Y on top of X" at once."""

    def draws(config: UNetConfig) -> torch.Tensor:
        torch.manual_seed(0)
        TextEncoder(config)
        return torch.random.get_rng_state()

    # The encoder's other modules alone, built as before the setting existed.
    torch.manual_seed(0)
    nn.Embedding(TINY.vocab_size, TINY.text_width, padding_idx=0)
    layer = nn.TransformerEncoderLayer(
        TINY.text_width, nhead=4, dim_feedforward=2 * TINY.text_width, dropout=0.0, batch_first=True
    )
    nn.TransformerEncoder(layer, TINY.text_layers, enable_nested_tensor=False)
    assert torch.equal(draws(TINY), torch.random.get_rng_state())
    assert not torch.equal(draws(replace(TINY, text_positions_std=1.0)), draws(TINY))
    torch.manual_seed(0)
    plain = TinyUNet(TINY)
    assert not plain.text.position.any()
    torch.manual_seed(0)
    ordered = TinyUNet(UNetConfig(**{**TINY.__dict__, "text_positions_std": 1.0}))
    std = ordered.text.position.std().item()
    assert 0.8 < std < 1.2
    tok = WordTokenizer(WORDS, max_length=TINY.max_tokens)
    ids = tok.encode(["a red cube on top of a blue sphere", "a blue sphere on top of a red cube"])
    pooled_plain = plain.text(ids)[2]
    pooled_ordered = ordered.text(ids)[2]
    # Without positions a mean-pooled bag of words is blind to the order; with them it is not.
    torch.testing.assert_close(pooled_plain[0], pooled_plain[1], atol=1e-5, rtol=0)
    assert (pooled_ordered[0] - pooled_ordered[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="text_positions_std"):
        UNetConfig(**{**TINY.__dict__, "text_positions_std": -1.0})


def test_without_pooled_text_the_words_reach_the_pixels_through_attention_only(tmp_path):
    config = UNetConfig(**{**TINY.__dict__, "pooled_text": False})
    torch.manual_seed(0)
    model = TinyUNet(config)
    assert not any(k.startswith("text_proj.") for k in model.state_dict())
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    tok = WordTokenizer(WORDS, max_length=TINY.max_tokens)
    ids = tok.encode(["a red cube", "a blue sphere"])
    x, t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1), torch.tensor([300, 300])
    out = model(x, t, ids)
    assert not torch.allclose(out[0], out[1])  # the prompt still matters...
    model.attn.cross.out_proj.weight.data.zero_()
    model.attn.cross.out_proj.bias.data.zero_()
    out = model(x, t, ids)
    assert torch.allclose(out[0], out[1], atol=1e-6)  # ...only through cross-attention
    path = tmp_path / "embedded_prior.safetensors"
    write_weights(model, {"vocabulary": list(WORDS), "schedule": "scaled_linear"}, path)
    loaded = EmbeddedPrior.load(path).model
    assert loaded.config.pooled_text is False
    assert torch.allclose(loaded(x, t, ids), model(x, t, ids), atol=1e-2)


def test_a_grown_unet_keeps_the_old_levels_below_a_new_first_one(tmp_path):
    """``grow``: one level more outside the others at twice the image size; every old
    weight reappears at its level's new index (so the old attention is where the image is
    as coarse as it was), the new first level starts afresh, and it round-trips."""
    torch.manual_seed(0)
    small = UNetConfig(image_size=16, channels=(16, 32), text_width=32, groups=4)
    old = TinyUNet(replace(small, attention_levels=(1,), blocks_per_level=2))
    new = grow(old)
    assert new.config == grown(old.config)
    assert new.config.image_size == 32 and new.config.channels == (16, 16, 32)
    assert new.config.attention_levels == (2,)
    before, after = old.state_dict(), new.state_dict()
    renamed = {
        "down.2.conv1.weight": "down.0.conv1.weight",  # two blocks a level
        "down.3.conv2.weight": "down.1.conv2.weight",
        "downsample.1.weight": "downsample.0.weight",
        "down_attn.2.self_attn.in_proj_weight": "down_attn.1.self_attn.in_proj_weight",
        "up_attn.2.cross.in_proj_weight": "up_attn.1.cross.in_proj_weight",
        "up.3.conv1.weight": "up.3.conv1.weight",  # the old levels' up blocks come first
        "stem.1.weight": "stem.1.weight",
        "out.2.weight": "out.2.weight",
        "mid1.conv1.weight": "mid1.conv1.weight",
    }
    for key, source in renamed.items():
        assert torch.equal(after[key], before[source]), key
    fresh = [k for k in after if k.startswith(("down.0.", "down.1.", "downsample.0."))]
    fresh = [k for k in fresh if k.endswith("conv1.weight") and k in before]
    assert fresh and all(not torch.equal(after[k], before[k]) for k in fresh)
    x, t, ids = torch.randn(2, 3, 32, 32), torch.tensor([10, 700]), torch.randint(1, 20, (2, 16))
    assert new(x, t, ids).shape == x.shape
    write_weights(new, {"vocabulary": ["a"]}, tmp_path / "w.safetensors")
    assert load_weights(tmp_path / "w.safetensors")[0].config == new.config


def test_weights_round_trip_and_checksum(tmp_path):
    torch.manual_seed(1)
    model = TinyUNet(TINY)
    path = tmp_path / "embedded_prior.safetensors"
    write_weights(model, {"vocabulary": list(WORDS), "schedule": "scaled_linear"}, path)
    prior = EmbeddedPrior.load(path)
    assert prior.tokenizer.words == WORDS
    assert prior.input_shape == (3, 8, 8)
    for name, tensor in model.state_dict().items():
        assert torch.allclose(prior.model.state_dict()[name], tensor.half().float())
    # corrupt one byte -> clear error naming the fix
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"corrupted.*cfd3d train-prior"):
        load_weights(path)


def test_missing_weights_or_checksum(tmp_path):
    with pytest.raises(UserError, match=r"not found.*restore"):
        load_weights(tmp_path / "embedded_prior.safetensors")
    write_weights(TinyUNet(TINY), {"vocabulary": list(WORDS)}, tmp_path / "w.safetensors")
    (tmp_path / "w.sha256").unlink()
    with pytest.raises(UserError, match="checksum file"):
        load_weights(tmp_path / "w.safetensors")


def test_weights_of_two_names_share_a_folder(tmp_path):
    """Each file's checksum is ``<stem>.sha256``: writing a second file beside the first
    does not make the first one read as corrupted."""
    torch.manual_seed(0)
    first, second = TinyUNet(TINY), TinyUNet(TINY)
    write_weights(first, {"vocabulary": list(WORDS)}, tmp_path / "a.safetensors")
    write_weights(second, {"vocabulary": list(WORDS)}, tmp_path / "b.safetensors")
    assert {p.name for p in tmp_path.glob("*.sha256")} == {"a.sha256", "b.sha256"}
    for name, model in (("a", first), ("b", second)):
        loaded = load_weights(tmp_path / f"{name}.safetensors")[0].state_dict()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded[key], value.half().float())


def test_a_checksum_written_under_the_shared_name_is_still_found(tmp_path):
    """Weights written before checksums took their file's stem kept them in
    ``embedded_prior.sha256``, naming the file; they still load, and a wrong one fails."""
    path = tmp_path / "old.safetensors"
    write_weights(TinyUNet(TINY), {"vocabulary": list(WORDS)}, path)
    (tmp_path / "old.sha256").rename(tmp_path / CHECKSUM_NAME)
    load_weights(path)
    (tmp_path / CHECKSUM_NAME).write_text(f"{'0' * 64}  old.safetensors\n")
    with pytest.raises(UserError, match="corrupted"):
        load_weights(path)
    (tmp_path / CHECKSUM_NAME).write_text(f"{'0' * 64}  other.safetensors\n")
    with pytest.raises(UserError, match="checksum file"):
        load_weights(path)


def test_learning_rate_schedule():
    config = TrainConfig(steps=1000, warmup=100, lr=1e-3)
    assert learning_rate(config, 0) == pytest.approx(1e-5)
    assert learning_rate(config, 99) == pytest.approx(1e-3)
    assert learning_rate(config, 999) == pytest.approx(1e-4, rel=1e-3)


def test_training_learns_and_resumes_identically(tmp_path):
    tok = WordTokenizer(WORDS, max_length=TINY.max_tokens)
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(16, 3, 8, 8, dtype=torch.uint8)
    images[:8, 0] = 220  # "red" images
    images[8:, 2] = 220  # "blue" images
    images += torch.randint(0, 20, images.shape, generator=g, dtype=torch.uint8)

    def captioner(i, gen):
        return "a red cube" if i < 8 else "a blue cube"

    config = TrainConfig(
        steps=40, batch_size=8, lr=3e-3, warmup=5, dataset_size=16, checkpoint_every=20, unet=TINY
    )
    full = train(config, images, captioner, tok)
    # interrupted after 15 steps (checkpoint written on stop), then resumed
    ckpt = tmp_path / "train.pt"
    train(config, images, captioner, tok, ckpt, stop_at=15)
    resumed = train(config, images, captioner, tok, ckpt)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # it learned something: eps loss on held-out noise beats the untrained model
    torch.manual_seed(5)
    x0 = images.float() / 127.5 - 1
    t = torch.full((16,), 300)
    noise = torch.randn_like(x0)
    abar = 0.7
    x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * noise
    ids = tok.encode([captioner(i, None) for i in range(16)])
    fresh = TinyUNet(TINY)
    trained_loss = (full(x_t, t, ids) - noise).pow(2).mean()
    untrained_loss = (fresh(x_t, t, ids) - noise).pow(2).mean()
    assert trained_loss < 0.8 * untrained_loss


def test_the_same_weights_are_written_as_the_same_bytes(tmp_path):
    # safetensors writes its metadata in hash order, which changes from process to
    # process; the weights' checksum must not
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig\n"
        "from cfd3d.priors.embedded.weights import weights_to_bytes\n"
        "torch.manual_seed(0)\n"
        "model = TinyUNet(UNetConfig(image_size=8, channels=(8, 16), text_width=16, groups=4))\n"
        "meta = {k: k for k in 'abcdefghijklmnop'}\n"
        "sys.stdout.buffer.write(weights_to_bytes(model, meta))\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
        for _ in range(3)
    ]
    assert runs[0] == runs[1] == runs[2]
    path = tmp_path / "embedded_prior.safetensors"
    path.write_bytes(runs[0])
    with safe_open(str(path), framework="pt") as handle:  # still a valid file
        assert json.loads(handle.metadata()["p"]) == "p"
        assert len(list(handle.keys())) > 0
