"""Short texts for training the heads: the noun phrases of each image's captions, with their features.

Users type "a black dog" or "kitty" as often as sentences, and a head trained on Flickr sentences
alone meets such texts only at search time. Each short text ("dog", "a brown dog") has a key, and an
image counts as described by every key its captions' phrases give (``phrases.image_phrases``), so a
batch can hold many right images for one text: the loss is a softmax over the batch's images with
all of them as targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..encoders import Encoder
from ..encoders.heads import feature_extractors
from ..errors import DatasetError
from .datasets import Dataset
from .features import FeatureSet, cache_folder, caption_features, compute_caption_tokens
from .phrases import image_phrases


@dataclass
class ShortTexts:
    """Short texts of a split: their base features (a FeatureSet without images), each text's key, which
    keys describe each image (``image_keys``, (N, K) bool) and each image's own texts (``texts_of``)."""

    feats: FeatureSet
    keys: list[str]
    key_of: torch.Tensor  # (P,) int64
    image_keys: torch.Tensor  # (N, K) bool
    texts_of: list[torch.Tensor]  # per image, the ids of texts whose key describes it (possibly empty)
    strings: list[str]  # the texts themselves

    @property
    def texts(self) -> int:
        """How many short texts there are."""
        return int(self.key_of.shape[0])

    def positives(self, texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(len(texts), len(images)) bool: which of ``images`` each text describes."""
        return self.image_keys[images][:, self.key_of[texts]].T


def short_text_table(dataset: Dataset, min_images: int = 5) -> tuple[list[str], list[str], list[int], list[set[int]]]:
    """(keys, texts, key of each text, keys of each image) over keys that describe >= ``min_images`` images."""
    caps_of: list[list[str]] = [[] for _ in dataset.images]
    for caption, i in zip(dataset.captions, dataset.caption_image.tolist()):
        caps_of[i].append(caption)
    per_image = [image_phrases(c) for c in caps_of]
    count: dict[str, int] = {}
    for found in per_image:
        for key in found:
            count[key] = count.get(key, 0) + 1
    keys = sorted(k for k, n in count.items() if n >= min_images)
    key_id = {k: n for n, k in enumerate(keys)}
    texts: list[str] = []
    text_id: dict[str, int] = {}
    key_of: list[int] = []
    image_keys: list[set[int]] = []
    for found in per_image:
        mine = set()
        for key, says in found.items():
            if key not in key_id:
                continue
            mine.add(key_id[key])
            for text in says:
                if text not in text_id:
                    text_id[text] = len(texts)
                    texts.append(text)
                    key_of.append(key_id[key])
        image_keys.append(mine)
    return keys, texts, key_of, image_keys


def compute_short_texts(encoder: Encoder, dataset: Dataset, cache_dir: str | None = None, min_images: int = 5,
                        tokens: bool = False, show_progress: bool = True) -> ShortTexts:
    """The short texts of ``dataset``'s captions with their base features (and token states), cached."""
    keys, texts, key_of, image_keys = short_text_table(dataset, min_images)
    if not texts:
        raise DatasetError(f"no noun phrase of these captions describes {min_images} or more images")
    key_t = torch.tensor(key_of, dtype=torch.long)
    membership = torch.zeros(len(dataset.images), len(keys), dtype=torch.bool)
    for i, mine in enumerate(image_keys):
        membership[i, list(mine)] = True
    texts_of = [torch.nonzero(membership[i][key_t]).flatten() for i in range(len(dataset.images))]
    owner = np.asarray([int(torch.nonzero(membership[:, k]).flatten()[0]) for k in key_of], np.int64)
    pseudo = Dataset(dataset.root, dataset.images, texts, owner,
                     f"{dataset.split or 'all'}-short")
    folder = cache_folder(encoder, pseudo, cache_dir)
    _, text_fn, image_dims, text_dims, ib, tb = feature_extractors(encoder)
    caption_tokens = compute_caption_tokens(encoder, pseudo, cache_dir, show_progress) if tokens else None
    feats = FeatureSet({}, caption_features(text_fn, pseudo, folder, show_progress), torch.from_numpy(owner),
                       image_dims, text_dims, ib, tb, caption_tokens)
    return ShortTexts(feats, keys, key_t, membership, texts_of, texts)
