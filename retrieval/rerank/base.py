"""The reranker protocol: image-text matching scores for a few (text, image) pairs."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Reranker(Protocol):
    """Scores (text, image) pairs with a cross-attention fusion model (image-text matching).

    Images come in as *regions*: per-image token arrays (R, C) that ``encode_regions`` makes
    from pictures. ``region_key`` names the region extractor; an index stores regions under the
    encoder's ``region_key`` at index time, and a reranker whose ``region_key`` matches reads
    them instead of decoding the photo again.

    The final rerank score is ``itm + alpha * similarity`` (``similarity``: the dual encoder's
    cosine), ``alpha`` chosen on a dev split; a reranker may give image->text (caption ranking)
    its own weight as ``caption_alpha`` (see ``caption_alpha_of``).
    """

    spec: str
    fingerprint: str
    region_key: str
    alpha: float

    def encode_regions(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float16 region tokens (n, R, C)."""
        ...

    def itm_scores(self, texts: Sequence[str], regions: np.ndarray) -> np.ndarray:
        """Matching logits (float32, higher = better match) for aligned pairs.

        ``texts`` has n entries and ``regions`` is (n, R, C); either may also be a single
        entry (1 text, or regions (1, R, C)) that is paired with every entry of the other.
        """
        ...


def caption_alpha_of(reranker: Reranker) -> float:
    """The alpha for ranking captions: ``caption_alpha`` where the reranker has one, else ``alpha``."""
    return float(getattr(reranker, "caption_alpha", reranker.alpha))


def fuse(itm: np.ndarray, similarity: np.ndarray, alpha: float) -> np.ndarray:
    """The final rerank score: ITM logit + alpha * dual-encoder cosine."""
    return np.asarray(itm, np.float32) + np.float32(alpha) * np.asarray(similarity, np.float32)
