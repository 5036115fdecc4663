"""BlipReranker (``hf-blip:``) on a tiny random BLIP ITM checkpoint built offline in a tmp dir."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the hub from tests

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from retrieval.errors import EncoderSpecError  # noqa: E402
from retrieval.rerank.base import Reranker, fuse  # noqa: E402
from retrieval.rerank.blip import BlipReranker  # noqa: E402

WORDS = "a an the of on in at with and photo picture cat dog car tree sky red blue green grass beach".split()
TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
REGIONS = 1 + (32 // 8) ** 2  # CLS + 4x4 patches
TEXTS = ["a cat", "a red car on the beach", "dog", "the blue sky with a green tree", "zebra photo"]


def _tokenizer(folder: Path):
    """A BERT WordPiece tokenizer over a tiny vocab file (BLIP's text side is BERT)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizer(str(vocab), model_max_length=40)


def _build(folder: Path, seed: int = 0, cls=None) -> Path:
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    tokenizer = _tokenizer(folder)
    config = BlipConfig(
        text_config=dict(TOWER, vocab_size=len(tokenizer), max_position_embeddings=40, pad_token_id=0,
                         bos_token_id=2, sep_token_id=3, encoder_hidden_size=32),
        # BlipVisionConfig's default initializer_range is 1e-10: the random tower would emit
        # all-zero regions and the ITM score would not depend on the image at all.
        vision_config=dict(TOWER, image_size=32, patch_size=8, initializer_range=0.02),
        projection_dim=16, image_text_hidden_size=16)
    torch.manual_seed(seed)
    model = (cls or BlipForImageTextRetrieval)(config).eval()
    if hasattr(model, "itm_head"):
        with torch.no_grad():  # random init gives near-zero logits; widen them so comparisons mean something
            torch.nn.init.normal_(model.itm_head.weight, std=2.0)
    model.save_pretrained(folder)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("blip_tiny") / "itm")


@pytest.fixture(scope="module")
def reranker(folder) -> BlipReranker:
    return BlipReranker(str(folder), device="cpu")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (64, 32), (32, 32), (17, 23), (80, 80)]
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    out[3] = out[3].convert("L")
    return out


def _reference(rr: BlipReranker, texts, images) -> np.ndarray:
    """What BlipForImageTextRetrieval.forward(use_itm_head=True) gives for aligned pairs."""
    inputs = rr.tokenizer(list(texts), padding=True, return_tensors="pt")
    pixels = rr.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        logits = rr.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          pixel_values=pixels, use_itm_head=True).itm_score
    return (logits[:, 1] - logits[:, 0]).numpy()


def _fp32_regions(rr: BlipReranker, images) -> np.ndarray:
    pixels = rr.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return rr.model.vision_model(pixel_values=pixels).last_hidden_state.numpy()


# --------------------------------------------------------------------------- loading
def test_loads_from_folder(folder, reranker):
    assert isinstance(reranker, Reranker)
    assert reranker.spec == f"hf-blip:{folder}"
    assert reranker.fingerprint.startswith("blip:") and reranker.region_key.startswith("blip:")
    assert reranker.fingerprint != reranker.region_key
    assert reranker.alpha == 1.0
    assert reranker.max_length == 40


def test_reload_is_stable_and_alpha_settable(folder, reranker):
    again = BlipReranker(str(folder), device="cpu")
    assert (again.fingerprint, again.region_key) == (reranker.fingerprint, reranker.region_key)
    again.alpha = 0.25
    assert again.alpha == 0.25 and reranker.alpha == 1.0


def test_other_weights_change_fingerprint(tmp_path, reranker):
    other = BlipReranker(str(_build(tmp_path / "other", seed=1)), device="cpu")
    assert other.fingerprint != reranker.fingerprint and other.region_key != reranker.region_key


# --------------------------------------------------------------------------- regions and scores
def test_encode_regions_shape_dtype(reranker, images):
    regions = reranker.encode_regions(images)
    assert regions.dtype == np.float16 and regions.shape == (len(images), REGIONS, 32)
    np.testing.assert_allclose(regions.astype(np.float32), _fp32_regions(reranker, images), atol=1e-2)
    assert reranker.encode_regions([]).shape == (0, REGIONS, 32)


def test_scores_match_model_forward(reranker, images):
    scores = reranker.itm_scores(TEXTS, _fp32_regions(reranker, images))
    assert scores.dtype == np.float32 and scores.shape == (len(TEXTS),)
    ref = _reference(reranker, TEXTS, images)
    assert np.ptp(ref) > 0.05  # the pairs really score differently
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    # Through the stored float16 regions: the same up to half-precision rounding.
    np.testing.assert_allclose(reranker.itm_scores(TEXTS, reranker.encode_regions(images)), ref, atol=2e-2)


def test_broadcasting_matches_explicit_pairs(reranker, images):
    regions = reranker.encode_regions(images)
    n = len(images)
    one_text = reranker.itm_scores(["a red car"], regions)
    explicit = reranker.itm_scores(["a red car"] * n, regions)
    assert one_text.shape == (n,)
    assert np.ptp(one_text) > 0.05  # the score depends on the image
    np.testing.assert_allclose(one_text, explicit, atol=1e-5)
    one_image = reranker.itm_scores(TEXTS, regions[2:3])
    explicit = reranker.itm_scores(TEXTS, np.repeat(regions[2:3], len(TEXTS), axis=0))
    assert one_image.shape == (len(TEXTS),)
    assert np.ptp(one_image) > 0.05  # ... and on the text
    np.testing.assert_allclose(one_image, explicit, atol=1e-5)
    assert reranker.itm_scores(["a cat"], regions[:1]).shape == (1,)


def test_internal_batches_match_one_by_one(reranker, images, monkeypatch):
    rr = reranker
    monkeypatch.setattr(rr, "batch_size", 2)
    regions = rr.encode_regions(images)
    batched = rr.itm_scores(TEXTS, regions)
    single = np.concatenate([rr.itm_scores([t], regions[i:i + 1]) for i, t in enumerate(TEXTS)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_deterministic(reranker, images):
    a = reranker.itm_scores(TEXTS, reranker.encode_regions(images))
    b = reranker.itm_scores(TEXTS, reranker.encode_regions(images))
    np.testing.assert_array_equal(a, b)
    sim = np.linspace(0.1, 0.5, len(TEXTS), dtype=np.float32)
    np.testing.assert_array_equal(fuse(a, sim, reranker.alpha), fuse(b, sim, reranker.alpha))


def test_bad_inputs(reranker, images):
    regions = reranker.encode_regions(images[:3])
    assert reranker.itm_scores([], regions[:0]).shape == (0,)
    with pytest.raises(ValueError, match="cannot pair"):
        reranker.itm_scores(["a", "b"], regions)
    with pytest.raises(ValueError, match="channels"):
        reranker.itm_scores(["a"], np.zeros((1, REGIONS, 320), np.float16))
    with pytest.raises(ValueError, match=r"\(n, R, C\)"):
        reranker.itm_scores(["a"], regions[0])


# --------------------------------------------------------------------------- failures
def test_empty_folder_raises(tmp_path):
    with pytest.raises(EncoderSpecError, match="cannot load hf-blip:") as info:
        BlipReranker(str(tmp_path), device="cpu")
    assert "\n" not in str(info.value)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(EncoderSpecError, match="no such folder"):
        BlipReranker(str(tmp_path / "nope"), device="cpu")


def test_unknown_hub_id_offline_raises():
    with pytest.raises(EncoderSpecError, match="offline") as info:
        BlipReranker("imgsearch-tests/no-such-blip", device="cpu", local_files_only=True)
    assert "\n" not in str(info.value)


def test_blip_without_itm_head_raises(tmp_path):
    from transformers import BlipForConditionalGeneration

    folder = _build(tmp_path / "captioner", cls=BlipForConditionalGeneration)
    with pytest.raises(EncoderSpecError, match="itm_head"):
        BlipReranker(str(folder), device="cpu")


def test_non_blip_model_raises(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, **TOWER, max_position_embeddings=16)).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderSpecError, match="not a BLIP"):
        BlipReranker(str(tmp_path / "bert"), device="cpu")
