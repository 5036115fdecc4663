"""HFDualEncoder on tiny random CLIP / SigLIP / SigLIP 2 checkpoints built offline in tmp dirs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the hub from tests

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from retrieval.encoders.base import Encoder  # noqa: E402
from retrieval.encoders.hf import HFDualEncoder  # noqa: E402
from retrieval.errors import EncoderSpecError  # noqa: E402

TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
WORDS = "a an the of on in at with and photo picture cat dog car tree sky red blue green grass beach".split()
KINDS = ["clip", "siglip", "siglip2"]


# --------------------------------------------------------------------------- tiny fixtures
def _clip_tokenizer():
    """A byte-level BPE CLIPTokenizer over single letters (no merges): every word is spellable."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(letters)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(letters)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _siglip_tokenizer():
    """A WordLevel tokenizer shaped like SigLIP's: appends </s>, pads with </s>, input_ids only."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="</s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=64, model_input_names=["input_ids"])


def _build(kind: str, seed: int = 0):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig,
                              SiglipImageProcessor, SiglipModel)

    torch.manual_seed(seed)
    if kind == "clip":
        config = CLIPConfig(
            text_config=dict(TOWER, vocab_size=100, max_position_embeddings=77,
                             bos_token_id=0, eos_token_id=1, pad_token_id=1),
            vision_config=dict(TOWER, image_size=30, patch_size=2),
            projection_dim=16)
        processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
        return CLIPModel(config), _clip_tokenizer(), processor
    text = dict(TOWER, vocab_size=100, max_position_embeddings=64, bos_token_id=None, eos_token_id=1, pad_token_id=1)
    if kind == "siglip":
        # Text tower narrower than the vision tower, with a head projecting to 32: the
        # embedding width is the head's projection_size, not the text hidden size.
        text.update(hidden_size=24, projection_size=32)
        config = SiglipConfig(text_config=text, vision_config=dict(TOWER, image_size=30, patch_size=2))
        return SiglipModel(config), _siglip_tokenizer(), SiglipImageProcessor(size={"height": 30, "width": 30})
    if kind == "siglip2":
        from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

        config = Siglip2Config(text_config=text, vision_config=dict(TOWER, num_patches=16, patch_size=4))
        processor = Siglip2ImageProcessor(patch_size=4, max_num_patches=64)
        return Siglip2Model(config), _siglip_tokenizer(), processor
    raise ValueError(kind)


def _save(folder: Path, *parts) -> Path:
    for part in parts:
        part.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders holding tiny random checkpoints + tokenizer + image processor, per kind."""
    root = tmp_path_factory.mktemp("hf_tiny")
    return {kind: _save(root / kind, *_build(kind)) for kind in KINDS}


@pytest.fixture(scope="session")
def encoders(tiny_models) -> dict[str, HFDualEncoder]:
    return {kind: HFDualEncoder(str(folder), device="cpu") for kind, folder in tiny_models.items()}


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (64, 32), (30, 30), (17, 23), (80, 80)]
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    out[3] = out[3].convert("L")  # a grayscale one
    return out


def _unit(x: np.ndarray) -> bool:
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- loading
def test_loads_from_folder(tiny_models, kind, capsys):
    enc = HFDualEncoder(str(tiny_models[kind]), device="cpu")
    assert isinstance(enc, Encoder)
    assert enc.spec == f"hf:{tiny_models[kind]}"
    assert enc.fingerprint.startswith("hf:" + type(enc.model).__name__ + ":")
    assert enc.dim == {"clip": 16, "siglip": 32, "siglip2": 32}[kind]
    assert enc.image_size == {"clip": 30, "siglip": 30, "siglip2": 32}[kind]
    assert enc.max_length == {"clip": 77, "siglip": 64, "siglip2": 64}[kind]
    assert enc.padding == (True if kind == "clip" else "max_length")
    assert capsys.readouterr().out == ""  # loading prints nothing to stdout


# --------------------------------------------------------------------------- encoding
def test_encode_images_shape_dtype_norm(encoders, kind, images):
    enc = encoders[kind]
    x = enc.preprocess(images[0])
    assert tuple(x.shape) == (3, enc.image_size, enc.image_size)
    v = enc.encode_images(images)
    assert v.shape == (len(images), enc.dim) and v.dtype == np.float32
    assert _unit(v)
    assert enc.encode_images([]).shape == (0, enc.dim)


def test_encode_texts_shape_dtype_norm(encoders, kind):
    enc = encoders[kind]
    texts = ["a cat", "a red car on the beach", "", "photo of a dog " * 40]  # last one gets truncated
    t = enc.encode_texts(texts)
    assert t.shape == (len(texts), enc.dim) and t.dtype == np.float32
    assert _unit(t)
    assert enc.encode_texts([]).shape == (0, enc.dim)


def test_same_image_twice_is_deterministic(encoders, kind, images):
    enc = encoders[kind]
    a = enc.encode_images([images[1]])
    b = enc.encode_images([images[1]])
    np.testing.assert_array_equal(a, b)


def test_batch_equals_one_by_one(encoders, kind, images):
    enc = encoders[kind]
    batch = enc.encode_images(images)
    single = np.concatenate([enc.encode_images([im]) for im in images])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    texts = ["a cat", "a red car on the beach with a dog", "sky"]
    np.testing.assert_allclose(enc.encode_texts(texts),
                               np.concatenate([enc.encode_texts([t]) for t in texts]), atol=1e-5)


def test_matches_model_forward_embeddings(encoders, images):
    """Cross-check against the model's own forward (image_embeds/text_embeds) on processor inputs."""
    for kind in ("clip", "siglip"):
        enc = encoders[kind]
        pixels = enc.image_processor(images=[im.convert("RGB") for im in images[:2]],
                                     return_tensors="pt")["pixel_values"]
        tokens = enc.tokenizer(["a cat", "a dog"], padding=enc.padding, max_length=enc.max_length,
                               truncation=True, return_tensors="pt")
        inputs = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            out = enc.model(pixel_values=pixels, **inputs)
        np.testing.assert_allclose(enc.encode_images(images[:2]), out.image_embeds.numpy(), atol=1e-5)
        np.testing.assert_allclose(enc.encode_texts(["a cat", "a dog"]), out.text_embeds.numpy(), atol=1e-5)


def test_siglip2_matches_native_patch_pipeline(encoders):
    """On a square image the (3,S,S) round trip gives what the NaFlex processor feeds the model."""
    enc = encoders["siglip2"]
    rng = np.random.default_rng(1)
    s = enc.image_size
    square = Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
    inputs = enc.image_processor(images=square, return_tensors="pt")
    with torch.inference_mode():
        ref = enc.model.get_image_features(**inputs).pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_images([square]), ref, atol=1e-5)


# --------------------------------------------------------------------------- region tokens
REGIONS = {"clip": 1 + 15 * 15, "siglip": 15 * 15, "siglip2": 8 * 8}  # (+CLS) + patches


def test_encode_pixels_with_regions_shapes_and_vectors(encoders, kind, images):
    enc = encoders[kind]
    pixels = torch.stack([enc.preprocess(im) for im in images[:3]])
    vectors, regions = enc.encode_pixels_with_regions(pixels)
    assert vectors.dtype == np.float32 and vectors.shape == (3, enc.dim)
    np.testing.assert_array_equal(vectors, enc.encode_pixels(pixels))  # same forward pass, same numbers
    assert regions.dtype == np.float16 and regions.shape == (3, REGIONS[kind], 32)
    assert np.isfinite(regions).all()
    one_v, one_r = enc.encode_pixels_with_regions(pixels[1])  # a single (3, H, W) image
    assert one_v.shape == (1, enc.dim) and one_r.shape == (1, REGIONS[kind], 32)
    np.testing.assert_allclose(one_r.astype(np.float32), regions[1:2].astype(np.float32), atol=2e-2)


def test_regions_are_post_layernorm_tower_states(encoders, images):
    """CLIP: the CLS region, projected, is the image embedding (post-LN applied to all tokens);
    SigLIP: regions are the tower's own (already normed) last_hidden_state."""
    clip, siglip = encoders["clip"], encoders["siglip"]
    pixels = torch.stack([clip.preprocess(im) for im in images[:2]])
    _, regions = clip.encode_pixels_with_regions(pixels)
    with torch.inference_mode():
        ref = clip.model.get_image_features(pixel_values=pixels).pooler_output
        cls = clip.model.visual_projection(torch.from_numpy(regions[:, 0].astype(np.float32)))
        raw = clip.model.vision_model(pixel_values=pixels).last_hidden_state
        normed = clip.model.vision_model.post_layernorm(raw)
    np.testing.assert_allclose(cls.numpy(), ref.numpy(), atol=2e-2)
    np.testing.assert_allclose(regions.astype(np.float32), normed.numpy(), atol=1e-2)
    pixels = torch.stack([siglip.preprocess(im) for im in images[:2]])
    _, regions = siglip.encode_pixels_with_regions(pixels)
    with torch.inference_mode():
        ref = siglip.model.vision_model(pixel_values=pixels).last_hidden_state
    np.testing.assert_allclose(regions.astype(np.float32), ref.numpy(), atol=1e-2)


def test_region_key(tiny_models, encoders, tmp_path):
    keys = {kind: enc.region_key for kind, enc in encoders.items()}
    assert all(k.startswith("hf-patches:") for k in keys.values())
    assert len(set(keys.values())) == len(keys)
    assert HFDualEncoder(str(tiny_models["clip"]), device="cpu").region_key == keys["clip"]
    # The text tower and projection do not change the regions; the vision tower does.
    from transformers import AutoModel

    dst = tmp_path / "clip_other_text"
    shutil.copytree(tiny_models["clip"], dst)
    model = AutoModel.from_pretrained(dst)
    with torch.no_grad():
        model.text_projection.weight[0, 0] += 0.5
    model.save_pretrained(dst)
    assert HFDualEncoder(str(dst), device="cpu").region_key == keys["clip"]
    with torch.no_grad():
        model.vision_model.post_layernorm.weight[0] += 0.5
    model.save_pretrained(dst)
    assert HFDualEncoder(str(dst), device="cpu").region_key != keys["clip"]


# --------------------------------------------------------------------------- fingerprint
def test_fingerprint_stable_across_loads(tiny_models, encoders, kind):
    again = HFDualEncoder(str(tiny_models[kind]), device="cpu")
    assert again.fingerprint == encoders[kind].fingerprint


def test_fingerprint_changes_with_weights(tiny_models, encoders, tmp_path):
    from transformers import AutoModel

    src = tiny_models["clip"]
    dst = tmp_path / "clip_perturbed"
    shutil.copytree(src, dst)
    model = AutoModel.from_pretrained(dst)
    with torch.no_grad():
        model.visual_projection.weight[0, 0] += 0.5
    model.save_pretrained(dst)
    changed = HFDualEncoder(str(dst), device="cpu")
    assert changed.fingerprint != encoders["clip"].fingerprint


def test_fingerprint_changes_with_preprocessing(tiny_models, encoders, tmp_path):
    from transformers import AutoImageProcessor

    dst = tmp_path / "siglip_other_mean"
    shutil.copytree(tiny_models["siglip"], dst)
    processor = AutoImageProcessor.from_pretrained(dst)
    processor.image_mean = [0.4, 0.4, 0.4]
    processor.save_pretrained(dst)
    changed = HFDualEncoder(str(dst), device="cpu")
    assert changed.fingerprint != encoders["siglip"].fingerprint


def test_model_kinds_have_distinct_fingerprints(encoders):
    assert len({enc.fingerprint for enc in encoders.values()}) == len(encoders)


# --------------------------------------------------------------------------- failures
def test_missing_folder_raises(tmp_path):
    with pytest.raises(EncoderSpecError, match="no such folder"):
        HFDualEncoder(str(tmp_path / "nope"), device="cpu")


def test_empty_folder_raises(tmp_path):
    with pytest.raises(EncoderSpecError, match="cannot load"):
        HFDualEncoder(str(tmp_path), device="cpu")


def test_unknown_hub_id_offline_raises():
    with pytest.raises(EncoderSpecError, match="offline") as info:
        HFDualEncoder("imgsearch-tests/no-such-model", device="cpu", local_files_only=True)
    assert "\n" not in str(info.value)


def test_folder_without_image_processor_or_with_a_broken_tokenizer_says_which(tiny_models, tmp_path):
    no_processor, bad_tokenizer = tmp_path / "no_processor", tmp_path / "bad_tokenizer"
    shutil.copytree(tiny_models["clip"], no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    shutil.copytree(tiny_models["clip"], bad_tokenizer)
    (bad_tokenizer / "tokenizer.json").write_text("{ not json")
    for folder, message in ((no_processor, "no usable image processor"), (bad_tokenizer, "no usable tokenizer")):
        with pytest.raises(EncoderSpecError, match=message) as info:
            HFDualEncoder(str(folder), device="cpu")
        assert "\n" not in str(info.value)


def test_non_dual_encoder_raises(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderSpecError, match="not an image-text dual encoder"):
        HFDualEncoder(str(tmp_path / "bert"), device="cpu")


# --------------------------------------------------------------------------- the hf: spec end to end
def test_hf_spec_indexes_and_searches_through_the_cli(tiny_models, tmp_path, capsys):
    """`--model hf:<folder>` indexes a folder and finds a photo by itself; another encoder is refused."""
    import json as _json

    from conftest import make_photo
    from ui.cli import main

    photos = tmp_path / "photos"
    for i in range(5):
        make_photo(photos / f"p{i}.png", seed=i)
    db = tmp_path / "db"
    spec = f"hf:{tiny_models['clip']}"
    assert main(["index", str(photos), "--db", str(db), "--model", spec, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--image", str(photos / "p3.png"), "--db", str(db), "-k", "1", "--json"]) == 0
    hits = _json.loads(capsys.readouterr().out)
    assert Path(hits[0]["path"]).name == "p3.png" and hits[0]["score"] > 0.999
    assert main(["search", "a cat", "--db", str(db), "--model", f"hf:{tiny_models['siglip']}"]) == 1
    assert "rebuild" in capsys.readouterr().err
    # patch-token regions are not stored for hf: encoders by default (no bundled reranker reads them)
    assert main(["info", "--db", str(db), "--json"]) == 0
    assert _json.loads(capsys.readouterr().out)["regions"]["count"] == 0
