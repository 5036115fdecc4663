"""Composition rewrites of a split's captions (``negatives``) with their token states, as hard negatives.

Both the fusion reranker and the heads train against them: a twin keeps its caption's words, so only
reading the photo tells them apart (NegCLIP, Yuksekgonul et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..encoders import Encoder
from ..errors import DatasetError
from .datasets import Dataset
from .features import CaptionTokens, FeatureSet, compute_caption_tokens
from .negatives import KINDS, twin_table


@dataclass
class TwinCaptions:
    """Composition rewrites of a split's captions as extra hard negatives: token states of every twin, and
    for each caption the rows of its twins (``of[j]``, empty where no rule applies)."""

    tokens: CaptionTokens
    of: list[list[int]]

    @property
    def count(self) -> int:
        """How many twins there are."""
        return int(self.tokens.offsets.shape[0]) - 1

    def as_features(self) -> FeatureSet:
        """The twins as a text-only FeatureSet (token states only), for ``heads.embed_captions``."""
        return FeatureSet({}, {}, torch.zeros(self.count, dtype=torch.long), {}, {}, "", "", self.tokens)


def twin_captions(encoder: Encoder, dataset: Dataset, cache_dir: str | None = None, kinds: tuple[str, ...] = KINDS,
                  show_progress: bool = True) -> TwinCaptions:
    """Every rule's rewrite of every caption of ``dataset`` (its own captions only), with token states (cached)."""
    table = twin_table(dataset.captions, kinds)
    flat, owner, of = [], [], []
    for j, twins in enumerate(table):
        of.append(list(range(len(flat), len(flat) + len(twins))))
        flat += twins
        owner += [int(dataset.caption_image[j])] * len(twins)
    if not flat:
        raise DatasetError("no caption of this split has a composition rewrite (colours, roles, counts, nouns)")
    twins_set = Dataset(dataset.root, dataset.images, flat, np.asarray(owner, np.int64),
                        f"{dataset.split or 'all'}-twins")
    return TwinCaptions(compute_caption_tokens(encoder, twins_set, cache_dir, show_progress), of)
