"""The bundled towers' traced inference graphs give the eager modules' outputs, bit for bit."""

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
    traced_texts = default_encoder.encode_texts(texts)
    traced_images = default_encoder.encode_images(images)
    base = getattr(default_encoder, "base", default_encoder)
    assert base.text_tower._traced._graphs and base.image_tower._traced._graphs  # the traced path ran

    monkeypatch.setenv("IMGSEARCH_NO_TRACE", "1")
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
