"""Single-file LDM checkpoints, the offline CLIP tokenizer and where the SD model comes from.

The tiny random checkpoints are written twice from the same seeded weights: as a diffusers
folder (``save_random_pipeline``) and as one LDM-layout file (``save_random_single_file``,
whose diffusers -> LDM renaming is this project's own code, independent of diffusers'
LDM -> diffusers converters that :mod:`cfd3d.priors.ldm` uses). Loading either must give
the same prior.
"""

import argparse
import os

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import save_file

from cfd3d.errors import UserError
from cfd3d.priors import ldm
from cfd3d.priors import stable_diffusion as sd
from cfd3d.priors.registry import load_prior
from cfd3d.priors.sd_random import (
    build_random_components,
    ldm_state_dict,
    save_random_pipeline,
    save_random_single_file,
)
from cfd3d.priors.tokenizers import OPEN_CLIP_PAD, SD1_PAD, clip_tokenizer

TINY = {"image_size": 16}  # LDM files do not record the image size; the tiny models use 16


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, no model from the environment, an empty Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(sd.MODEL_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same tiny weights as diffusers folders and as single files (SD 1 and SD 2)."""
    root = tmp_path_factory.mktemp("tiny-ldm")
    return {
        "sd2-folder": save_random_pipeline(root / "sd2", "tiny-sd2"),
        "sd2-v-folder": save_random_pipeline(root / "sd2v", "tiny-sd2", "v_prediction"),
        "sd2-file": save_random_single_file(root / "tiny-sd2.safetensors", "tiny-sd2"),
        "sd1-folder": save_random_pipeline(root / "sd1", "tiny-sd1"),
        "sd1-file": save_random_single_file(root / "tiny-sd1.ckpt", "tiny-sd1"),
    }


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


# ---- the tokenizer -----------------------------------------------------------------------

# Reference ids of OpenAI's CLIP tokenizer (vocabulary of openai/clip-vit-base-patch32, the
# same BPE as ViT-L/14 and OpenCLIP ViT-H/14):
# - "a photo of a cat" / "a photo of a dog": elixir-nx/bumblebee,
#   test/bumblebee/text/clip_tokenizer_test.exs;
# - "a painting of a cat" and "bozuman" (clip.tokenize output, zero-padded to 77):
#   nishio/external_brain_in_markdown, pages/CLIP.md.
REFERENCE_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "a painting of a cat": [49406, 320, 3086, 539, 320, 2368, 49407],
    "bozuman": [49406, 647, 4091, 786, 49407],
}


def test_tokenizer_reproduces_clip_ids_offline():
    tokenizer = clip_tokenizer()
    assert tokenizer.vocab_size == 49408
    for prompt, ids in REFERENCE_IDS.items():
        assert tokenizer(prompt).input_ids == ids, prompt
    # CLIP lower-cases and collapses white space.
    assert tokenizer("A  Photo of a CAT").input_ids == REFERENCE_IDS["a photo of a cat"]


def test_padding_follows_sd1_and_open_clip():
    ids = REFERENCE_IDS["a painting of a cat"]
    sd2 = clip_tokenizer(OPEN_CLIP_PAD)("a painting of a cat", padding="max_length").input_ids
    assert len(sd2) == 77 and sd2 == ids + [0] * (77 - len(ids))  # as clip.tokenize pads
    sd1 = clip_tokenizer(SD1_PAD)("a painting of a cat", padding="max_length").input_ids
    assert sd1 == ids + [49407] * (77 - len(ids))


# ---- LDM -> diffusers modules ------------------------------------------------------------


@pytest.mark.parametrize("preset,layout", [("tiny-sd2", "sd2"), ("tiny-sd1", "sd1")])
def test_ldm_modules_equal_the_originals(preset, layout):
    parts = build_random_components(preset, seed=3)
    state = ldm_state_dict(parts, layout, seed=3)
    rebuilt = {
        "unet": ldm.unet_from_ldm(state, sample_size=8),
        "vae": ldm.vae_from_ldm(state),
        "text_encoder": ldm.text_encoder_from_ldm(state)[0],
    }
    for name, module in rebuilt.items():
        original = getattr(parts, name).state_dict()
        converted = module.state_dict()
        assert converted.keys() == original.keys(), name
        assert all(torch.equal(converted[k], original[k]) for k in original), name
    assert rebuilt["unet"].config.use_linear_projection == (layout == "sd2")
    assert rebuilt["unet"].config.sample_size == 8
    # SD 2 conditions on the penultimate layer: the file's last block is dropped.
    assert rebuilt["text_encoder"].config.num_hidden_layers == 2
    assert rebuilt["text_encoder"].config.hidden_act == (
        "gelu" if layout == "sd2" else "quick_gelu"
    )


def test_unet_extra_keys_are_ignored_or_mapped():
    parts = build_random_components("tiny-sd2")
    state = ldm_state_dict(parts, "sd2")
    camera = {
        "camera_embed.0.weight": torch.randn(128, 16),
        "camera_embed.0.bias": torch.zeros(128),
    }
    state.update({ldm.UNET_PREFIX + k: v for k, v in camera.items()})
    assert ldm.is_mvdream(state)
    plain = ldm.unet_from_ldm(state, sample_size=8)  # the camera MLP is not a SD parameter
    assert not any("class_embedding" in k for k in plain.state_dict())
    mapped = ldm.unet_from_ldm(
        {**state, ldm.UNET_PREFIX + "camera_embed.2.weight": torch.randn(128, 128)}
        | {ldm.UNET_PREFIX + "camera_embed.2.bias": torch.zeros(128)},
        extra_keys={
            "camera_embed.0.weight": "class_embedding.linear_1.weight",
            "camera_embed.0.bias": "class_embedding.linear_1.bias",
            "camera_embed.2.weight": "class_embedding.linear_2.weight",
            "camera_embed.2.bias": "class_embedding.linear_2.bias",
        },
        sample_size=8,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=16,
    )
    assert torch.equal(mapped.class_embedding.linear_1.weight, camera["camera_embed.0.weight"])
    with pytest.raises(UserError, match="lacks 4 tensor"):  # asked for, not mapped
        ldm.unet_from_ldm(
            state, class_embed_type="projection", projection_class_embeddings_input_dim=16
        )


# ---- the single file through the public path ---------------------------------------------


def _compare(a, b) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 800])
    images = torch.rand(2, 3, 16, 16, generator=gen)
    emb_a, emb_b = a.embed(["a hamburger", ""]), b.embed(["a hamburger", ""])
    assert (emb_a - emb_b).abs().max() <= 1e-5
    assert (a.eps(x, t, emb_a) - b.eps(x, t, emb_b)).abs().max() <= 1e-5
    assert (a.encode(images) - b.encode(images)).abs().max() <= 1e-5
    assert a.input_shape == b.input_shape and a.image_size == b.image_size


@pytest.mark.parametrize("layout", ["sd2", "sd1"])
def test_single_file_equals_the_diffusers_folder(models, layout):
    from_file = load_prior(str(models[f"{layout}-file"]), **TINY)
    from_folder = load_prior(str(models[f"{layout}-folder"]))
    assert from_file.source == models[f"{layout}-file"]
    assert from_file.prediction_type == "epsilon"
    assert torch.allclose(from_file.schedule.alphas_cumprod, from_folder.schedule.alphas_cumprod)
    _compare(from_file, from_folder)


def test_v_prediction_single_file(models):
    from_file = load_prior(str(models["sd2-file"]), prediction_type="v_prediction", **TINY)
    from_folder = load_prior(str(models["sd2-v-folder"]))
    assert from_file.prediction_type == "v_prediction"
    _compare(from_file, from_folder)


@pytest.mark.parametrize(
    "name,layout,expected",
    [
        ("v2-1_768-ema-pruned.safetensors", "open_clip", ("v_prediction", 768)),
        ("768-v-ema.ckpt", "open_clip", ("v_prediction", 768)),
        ("v2-1_512-ema-pruned.safetensors", "open_clip", ("epsilon", 512)),
        ("512-base-ema.ckpt", "open_clip", ("epsilon", 512)),
        ("v1-5-pruned-emaonly.safetensors", "clip", ("epsilon", 512)),
        ("sd15-finetune-768.safetensors", "clip", ("epsilon", 768)),
        ("my-sd15-vpred.safetensors", "clip", ("v_prediction", 512)),
    ],
)
def test_single_file_defaults_from_the_name(tmp_path, name, layout, expected):
    assert sd.single_file_defaults(tmp_path / name, layout) == expected


def test_lightning_checkpoint_with_pickled_objects_loads_without_running_them(models, tmp_path):
    state = ldm.read_state_dict(models["sd1-file"])
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    path = tmp_path / "lightning.ckpt"
    torch.save(
        {"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1e-4), "epoch": 3}, path
    )
    assert ldm.read_state_dict(path).keys() == state.keys()
    torch.save({"state_dict": state, "payload": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        ldm.read_state_dict(tmp_path / "evil.ckpt")  # os.* globals stay blocked
    assert not marker.exists()


# ---- bad inputs --------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are not weights")
    with pytest.raises(UserError, match="cannot read checkpoint") as exc:
        load_prior(str(path))
    assert "expected a Stable Diffusion 1.x/2.x or MVDream checkpoint" in _one_line(exc)


def test_random_safetensors_is_not_an_sd_checkpoint(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"layer.weight": torch.randn(3, 3), "layer.bias": torch.randn(3)}, str(path))
    with pytest.raises(UserError, match=r"is not a Stable Diffusion .* keys start with: layer"):
        load_prior(str(path))
    with pytest.raises(UserError) as exc:
        ldm.read_state_dict(path)
    _one_line(exc)


def test_truncated_file(models, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(models["sd2-file"].read_bytes()[:5000])
    with pytest.raises(UserError, match="re-download it if it is truncated") as exc:
        load_prior(str(path), **TINY)
    _one_line(exc)


def test_checkpoint_without_vae(models, tmp_path):
    state = ldm.read_state_dict(models["sd2-file"])
    path = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith(ldm.VAE_PREFIX)}, str(path))
    with pytest.raises(UserError, match=r"VAE \(first_stage_model\.\*\) lacks") as exc:
        load_prior(str(path), **TINY)
    _one_line(exc)


def test_inpainting_checkpoint(models, tmp_path):
    state = ldm.read_state_dict(models["sd2-file"])
    key = ldm.UNET_PREFIX + "input_blocks.0.0.weight"
    state[key] = torch.cat([state[key], state[key], state[key][:, :1]], dim=1)  # 9 channels
    path = tmp_path / "inpainting.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match="9-channel UNet") as exc:
        load_prior(str(path), **TINY)
    _one_line(exc)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"tried: .*gone\.safetensors \(no such folder or file\)"):
        load_prior(str(tmp_path / "gone.safetensors"))
    with pytest.raises(UserError, match=r"checkpoint file .* not found") as exc:
        ldm.read_state_dict(tmp_path / "gone.safetensors")
    _one_line(exc)


def test_environment_variable_pointing_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv(sd.MODEL_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as exc:
        load_prior("sd")
    message = _one_line(exc)
    assert f"${sd.MODEL_ENV}={tmp_path / 'nowhere'} (no such folder or file)" in message
    for hint in ("--prior PATH", ".safetensors", "mirror", "HF_HUB_OFFLINE"):
        assert hint in message


def test_nothing_configured(tmp_path):
    with pytest.raises(UserError, match=r"no --prior given, \$CFD3D_SD_MODEL unset") as exc:
        load_prior("sd")
    _one_line(exc)


# ---- which model: model_candidates / locate_model ----------------------------------------


def _fake_cached_snapshot(repo: str, files: dict[str, str]):
    import huggingface_hub.constants

    root = os.path.join(
        huggingface_hub.constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--")
    )
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "refs", "main"), "w") as handle:
        handle.write("0123abcd")
    snapshot = os.path.join(root, "snapshots", "0123abcd")
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(snapshot, name)), exist_ok=True)
        with open(os.path.join(snapshot, name), "w") as handle:
            handle.write(text)
    return snapshot


def test_candidates_order_and_cached_default(monkeypatch, models):
    assert sd.model_candidates(None) == []  # the withdrawn default only when cached
    monkeypatch.setenv(sd.MODEL_ENV, str(models["sd2-file"]))
    assert sd.model_candidates("my/mirror") == ["my/mirror"]  # named: nothing else
    assert sd.model_candidates(sd.DEFAULT_MODEL) == [str(models["sd2-file"]), sd.DEFAULT_MODEL]
    assert sd.model_candidates(str(models["sd2-file"])) == [str(models["sd2-file"])]
    snapshot = _fake_cached_snapshot(sd.DEFAULT_MODEL, {"model_index.json": "{}"})
    assert sd.model_candidates(None) == [str(models["sd2-file"]), sd.DEFAULT_MODEL]
    assert str(sd.locate_model(sd.DEFAULT_MODEL)) == snapshot


def test_locate_model_never_downloads(models):
    assert sd.locate_model(str(models["sd2-file"])) == models["sd2-file"]
    assert sd.locate_model(str(models["sd2-folder"])) == models["sd2-folder"]
    assert sd.locate_model("someone/not-cached") is None
    assert sd.locate_model("someone/not-cached/model.safetensors") is None
    snapshot = _fake_cached_snapshot("someone/mirror", {"v2-1_512.safetensors": "x"})
    found = sd.locate_model("someone/mirror/v2-1_512.safetensors")
    assert str(found) == os.path.join(snapshot, "v2-1_512.safetensors")
    assert sd.locate_model("not a model") is None


def test_environment_variable_selects_the_model(monkeypatch, models):
    monkeypatch.setenv(sd.MODEL_ENV, str(models["sd2-file"]))
    prior = load_prior("sd", **TINY)
    assert prior.source == models["sd2-file"]
    # The preset's (withdrawn, uncached) default id falls through to the variable too.
    assert load_prior(sd.DEFAULT_MODEL, **TINY).source == models["sd2-file"]
    # An explicit value that exists wins over the variable.
    assert load_prior(str(models["sd1-folder"])).source == models["sd1-folder"]


def test_mvdream_files_are_not_loaded_as_stable_diffusion(models, tmp_path):
    state = ldm.read_state_dict(models["sd2-file"])
    state[ldm.MVDREAM_CAMERA_PREFIX + "0.weight"] = torch.randn(8, 16)
    path = tmp_path / "mv.safetensors"
    save_file(state, str(path))
    assert ldm.is_mvdream(ldm.checkpoint_keys(path))
    assert not ldm.is_mvdream(ldm.checkpoint_keys(models["sd2-file"]))
    with pytest.raises(UserError, match="MVDream checkpoint"):
        sd.StableDiffusionPrior(sd.StableDiffusionConfig(model=str(path), image_size=16))


def test_registry_sends_mvdream_files_to_the_mvdream_loader(models, tmp_path, monkeypatch):
    from cfd3d.priors import mvdream

    state = ldm.read_state_dict(models["sd2-file"])
    state[ldm.MVDREAM_CAMERA_PREFIX + "0.weight"] = torch.randn(8, 16)
    path = tmp_path / "mv.safetensors"
    save_file(state, str(path))
    calls = []
    monkeypatch.setattr(
        mvdream.MVDreamPrior,
        "from_single_file",
        classmethod(lambda cls, p, **options: calls.append((p, options)) or "mvdream"),
    )
    assert load_prior(str(path), device="cpu") == "mvdream"
    assert calls == [(path, {"device": "cpu"})]
    assert load_prior(str(models["sd2-file"]), **TINY).source == models["sd2-file"]
