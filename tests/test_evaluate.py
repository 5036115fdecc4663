"""Recall@k follows the Flickr/COCO protocol, checked against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_photo
from retrieval.errors import DatasetError
from retrieval.training.datasets import load_dataset
from retrieval.training.evaluate import evaluate
from retrieval.training.metrics import recall_from_similarity


def test_recall_matches_hand_computation():
    # 3 images, 5 captions: captions 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2
    owner = np.array([0, 0, 1, 1, 2])
    sims = np.array([
        [0.9, 0.1, 0.2],  # caption 0: own image ranked 1st
        [0.1, 0.5, 0.3],  # caption 1: own image (0) ranked 3rd
        [0.2, 0.8, 0.1],  # caption 2: own image ranked 1st
        [0.7, 0.6, 0.1],  # caption 3: own image ranked 2nd
        [0.3, 0.4, 0.2],  # caption 4: own image ranked 3rd
    ])
    r = recall_from_similarity(sims, owner, ks=(1, 2, 3))
    # text->image: ranks 1,3,1,2,3 -> R@1 = 2/5, R@2 = 3/5, R@3 = 5/5
    assert r["text_to_image"] == {"R@1": 40.0, "R@2": 60.0, "R@3": 100.0}
    # image->text, ranking captions by column:
    #   image 0: scores 0.9,0.1,0.2,0.7,0.3 -> caption 0 first -> rank 1
    #   image 1: 0.1,0.5,0.8,0.6,0.4 -> caption 2 first -> rank 1
    #   image 2: 0.2,0.3,0.1,0.1,0.2 -> order 1(0.3), 0/4(0.2), ... caption 4 at rank 2 or 3
    r1 = r["image_to_text"]
    assert r1["R@1"] == pytest.approx(200 / 3, abs=0.01)
    assert r1["R@3"] == 100.0


def test_evaluate_on_a_tiny_dataset_with_a_fake_encoder(tmp_path, fake_encoder):
    root = tmp_path / "ds"
    lines = []
    for i in range(4):
        make_photo(root / "images" / f"{i}.jpg", seed=i)
        lines.append({"image": f"{i}.jpg", "split": "dev" if i < 3 else "train", "captions": [f"photo {i}"]})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ds = load_dataset(str(root), split="dev")
    assert len(ds.images) == 3 and ds.caption_image.tolist() == [0, 1, 2]

    # an encoder whose text vectors are exactly its image vectors: perfect recall
    img = fake_encoder.encode_images([__import__("PIL.Image", fromlist=["x"]).open(p).convert("RGB") for p in ds.images])
    fake_encoder.encode_texts = lambda texts: img[[int(t.split()[1]) for t in texts]]
    result = evaluate(fake_encoder, ds, show_progress=False)
    assert result.text_to_image["R@1"] == 100.0 and result.image_to_text["R@1"] == 100.0
    assert (result.images, result.captions) == (3, 3)


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="no captions.jsonl"):
        load_dataset(str(tmp_path))
    (tmp_path / "captions.jsonl").write_text('{"image": "a.jpg", "split": "train", "captions": ["x"]}\n')
    with pytest.raises(DatasetError, match="splits: train"):
        load_dataset(str(tmp_path), split="dev")
