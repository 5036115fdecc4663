"""Short texts from captions (issue 24): noun phrases, their keys, and which images each short text describes."""

from __future__ import annotations

import pytest

from retrieval.encoders.base import SHORT_TEXT_WORDS
from retrieval.errors import DatasetError
from retrieval.training.datasets import load_dataset
from retrieval.training.phrases import image_phrases, phrases
from retrieval.training.short_texts import compute_short_texts, short_text_table

from conftest import FLICKR8K, FakeEncoder


@pytest.mark.parametrize("caption, expected", [
    ("A black dog is running after a white dog in the snow .", ["black dog", "white dog", "snow"]),
    ("Two dogs chase each other across the snowy ground .", ["two dogs", "snowy ground"]),
    ("A little baby plays croquet .", ["little baby"]),
    ("The little boy is playing with a croquet hammer and ball beside the car .",
     ["little boy", "croquet hammer", "car"]),
    ("Black dog chasing brown dog through snow", ["black dog"]),
    ("", []),
])
def test_noun_phrases_of_a_caption(caption, expected):
    assert [" ".join(p.words) for p in phrases(caption)] == expected


def test_an_images_keys_and_texts():
    found = image_phrases(["A black dog runs in the snow .", "The dog is wet ."])
    assert found == {"black dog": ["black dog", "a black dog"], "dog": ["dog", "a dog"], "snow": ["snow"]}
    assert all(len(t.split()) <= SHORT_TEXT_WORDS for texts in found.values() for t in texts)


@pytest.mark.skipif(not (FLICKR8K / "captions.jsonl").is_file(), reason="Flickr8k not found")
def test_each_short_text_describes_the_images_whose_captions_say_it():
    ds = load_dataset(str(FLICKR8K), "train").subset(300)
    keys, texts, key_of, image_keys = short_text_table(ds, min_images=5)
    assert "dog" in keys and "man" in keys and len(texts) == len(key_of)
    dog = keys.index("dog")
    captions_of = [[c for c, i in zip(ds.captions, ds.caption_image) if i == n] for n in range(len(ds.images))]
    says_dog = [any(" dog " in f" {c.lower()} " for c in caps) for caps in captions_of]
    has_key = [dog in mine for mine in image_keys]
    assert sum(has_key) >= 50
    assert all(s for s, h in zip(says_dog, has_key) if h)  # every image the key describes says "dog"
    assert sum(h for s, h in zip(says_dog, has_key) if s) >= 0.8 * sum(says_dog)
    counts = {k: sum(k in mine for mine in image_keys) for k in range(len(keys))}
    assert min(counts.values()) >= 5  # rare keys are left out
    with pytest.raises(DatasetError, match="no noun phrase"):
        compute_short_texts(FakeEncoder(), ds.subset(3), min_images=10, show_progress=False)
