"""Score texts against one photo, as a search would: why a photo matched, or how two phrasings compare.

Without a reranker the score is the one a text search gives the photo (``Hit.score``): the cosine of
text and photo vectors, less the photo's hubness penalty where the encoder ships a correction. With
one, it is the fused score a reranked search orders its top results by: ITM logit + alpha * that score.
No index is needed: the photo is decoded and embedded as indexing does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .encoders import Encoder
from .errors import ImageLoadError, QueryError
from .images import load_image
from .query import ImageInput, clean_text
from .rerank import Reranker, fuse

MAX_TEXTS = 1000  # texts scored against one photo in one call


@dataclass(frozen=True)
class ScorePair:
    """One photo and the texts to score against it (a line of a ``--pairs`` file)."""

    image: str  # as given
    path: str  # where it is read from
    texts: tuple[str, ...]


def clean_texts(texts: Sequence[str]) -> list[str]:
    """Texts as search reads them (whitespace runs made one space, cut to the query limit); none, or an
    empty one, raises QueryError."""
    if isinstance(texts, str) or not len(texts):
        raise QueryError("no texts to score: give at least one text")
    if len(texts) > MAX_TEXTS:
        raise QueryError(f"too many texts for one photo: {len(texts)} (at most {MAX_TEXTS})")
    out = [clean_text(t) for t in texts]
    empty = [n for n, t in enumerate(out, 1) if not t]
    if empty:
        raise QueryError(f"text {empty[0]} is empty: every text needs some words")
    return out


class Scorer:
    """Scores texts against photos with a search's encoder (and reranker): the numbers a search ranks by."""

    def __init__(self, encoder: Encoder, reranker: Reranker | None = None, hubness: bool = True) -> None:
        self.encoder = encoder
        self.reranker = reranker
        self.hubness = getattr(encoder, "hubness", None) if hubness else None

    def load(self, image: ImageInput) -> Image.Image:
        """A photo (path, bytes, file object or PIL image) decoded as indexing decodes it, RGB."""
        if not isinstance(image, Image.Image):
            image = load_image(image, target_size=self.encoder.image_size)
        return image.convert("RGB")

    def embed(self, picture: Image.Image, rerank: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The photo's vector, and (``rerank``) the reranker's regions, from one forward pass where they share towers."""
        rr = self.reranker
        key = getattr(self.encoder, "region_key", None)
        if rerank and rr is not None and key and key == rr.region_key:
            vectors, regions = self.encoder.encode_pixels_with_regions(self.encoder.preprocess(picture)[None])
            return vectors[0], regions
        vector = self.encoder.encode_images([picture])[0]
        return vector, (rr.encode_regions([picture]) if rerank and rr is not None else None)

    def similarity(self, vector: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The search score of each text for a photo vector: cosine less the photo's hubness penalty."""
        sims = self.encoder.encode_texts(list(texts)) @ np.asarray(vector, np.float32)
        hub = self.hubness
        if hub is not None and "image" in hub.sides:
            sims = sims - hub.penalties("image", np.asarray(vector, np.float32)[None])[0]
        return sims.astype(np.float32)

    def score(self, image: ImageInput, texts: Sequence[str], rerank: bool = False) -> np.ndarray:
        """Scores (float32, one per text, higher = better) of ``texts`` against one photo.

        ``rerank``: the reranker's final fused score, ITM logit + alpha * the search score. (A reranked search
        reads the photo's regions from the index, stored as int8, so its logits differ from these by the
        quantisation only: tests/test_score.py bounds it.)
        """
        texts = clean_texts(texts)
        if rerank and self.reranker is None:
            raise QueryError("no reranker is loaded (pass --rerank-model, or install the bundled one)")
        vector, regions = self.embed(self.load(image), rerank)
        sims = self.similarity(vector, texts)
        if not rerank:
            return sims
        itm = self.reranker.itm_scores(texts, regions)
        return fuse(itm, sims, self.reranker.alpha)


def read_pairs(path: str | os.PathLike) -> list[ScorePair]:
    """The lines of a pairs file, ``{"image": path, "texts": [...]}`` each; relative image paths are read
    from the file's folder. A line that is not such an object, or names no file, raises QueryError
    naming the line; nothing is scored before the whole file has been read."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors write one) is not JSON
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise QueryError(f"{path}: is a folder, not a JSONL file") from None
    except UnicodeDecodeError:
        raise QueryError(f"{path}: not a UTF-8 text file (one JSON object a line)") from None
    except OSError as e:
        raise QueryError(f"{path}: cannot read ({e.strerror or e})") from None
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise QueryError(f"{where}: not JSON ({str(e).splitlines()[0][:80]})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"].strip():
            raise QueryError(f'{where}: expected {{"image": "path", "texts": ["...", ...]}}')
        texts = obj.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise QueryError(f'{where}: "texts" must be a list of strings')
        try:
            clean_texts(texts)
        except QueryError as e:
            raise QueryError(f"{where}: {e}") from None
        image = obj["image"]
        full = os.path.join(base, os.path.expanduser(image))
        if not os.path.isfile(full):
            raise QueryError(f"{where}: no such image file: {image}")
        pairs.append(ScorePair(image, full, tuple(texts)))
    if not pairs:
        raise QueryError(f"{path}: no pairs (one {{\"image\", \"texts\"}} object a line)")
    return pairs
