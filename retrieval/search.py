"""Search an indexed store: text->image, image->image and image->text."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import BinaryIO, Union

import numpy as np
from PIL import Image

from .encoders import Encoder
from .encoders.hubness import CANDIDATES as HUB_CANDIDATES
from .errors import EmptyIndexError, ImgSearchError
from .images import load_image
from .rerank import DEFAULT_RERANK_K, Reranker, fuse
from .rerank.base import caption_alpha_of
from .store import Store

ImageInput = Union[str, "os.PathLike[str]", bytes, BinaryIO, Image.Image]
MAX_QUERY_CHARS = 1000
PENALTY_CACHE_MAX = 1_000_000  # hubness penalties remembered before starting afresh


class QueryError(ImgSearchError):
    """A query that cannot be searched (empty, say)."""


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed image, and the caption that matched where the hit is a caption."""

    path: str
    score: float
    image_id: int
    caption: str | None = None
    caption_id: int | None = None
    source: str | None = None
    match: float | None = None  # the reranker's match probability, where the hit was reranked

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Searcher:
    """Answers queries against ``store`` with ``encoder`` (which must be the one that built it).

    With a ``reranker``, searches asked to ``rerank`` rescore their top ``rerank_k`` results
    with it (``itm + alpha * cosine``); the rest follow in their original order. ``hubness``:
    rank with the encoder's hubness correction where it has one (False: by plain cosine).
    """

    def __init__(self, encoder: Encoder, store: Store, reranker: "Reranker | None" = None,
                 rerank_k: int = DEFAULT_RERANK_K, *, hubness: bool = True) -> None:
        store.check_encoder(encoder.fingerprint, encoder.spec)
        self.encoder = encoder
        self.store = store
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.hubness = getattr(encoder, "hubness", None) if hubness else None
        self._penalty_cache: dict[tuple[str, int], float] = {}
        self._penalty_gen: tuple[int, int] | None = None

    # -- query embedding --------------------------------------------------------------------

    def embed_text(self, query: str) -> np.ndarray:
        """A text query -> its (dim,) vector; empty queries raise QueryError."""
        text = " ".join(str(query).split())[:MAX_QUERY_CHARS]
        if not text:
            raise QueryError("empty query: type some words to search for")
        return self.encoder.encode_texts([text])[0]

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """A query image (path, bytes, file object or PIL image) -> its (dim,) vector."""
        return self.encoder.encode_images([self.load_query_image(image)])[0]

    def embed_picture(self, picture: Image.Image, with_regions: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """A decoded query picture's vector, and (``with_regions``) the reranker's regions for it where the
        encoder gives those in the same forward pass (else None: ``rerank_captions`` computes them)."""
        key = getattr(self.encoder, "region_key", None)
        if with_regions and self.reranker is not None and key and key == self.reranker.region_key:
            vectors, regions = self.encoder.encode_pixels_with_regions(self.encoder.preprocess(picture)[None])
            return vectors[0], regions
        return self.encoder.encode_images([picture])[0], None

    # -- searches ---------------------------------------------------------------------------

    def load_query_image(self, image: ImageInput) -> Image.Image:
        """A query image (path, bytes, file object or PIL image) as RGB PIL."""
        if not isinstance(image, Image.Image):
            image = load_image(image, target_size=self.encoder.image_size)
        return image.convert("RGB")

    def search_text(self, query: str, k: int = 10, min_score: float | None = None, rerank: bool = False) -> list[Hit]:
        """Images best matching a text query (the top ``rerank_k`` reranked when ``rerank``)."""
        vector = self.embed_text(query)
        if not rerank:
            return self.images_near(vector, k, min_score, text_query=True)
        self._need_reranker()
        hits = self.images_near(vector, max(k, self.rerank_k), min_score, text_query=True)
        return (self.rerank_images(" ".join(str(query).split())[:MAX_QUERY_CHARS], hits[: self.rerank_k])
                + hits[self.rerank_k:])[:k]

    def search_image(self, image: ImageInput, k: int = 10, min_score: float | None = None) -> list[Hit]:
        """Images most similar to a query image."""
        return self.images_near(self.embed_image(image), k, min_score)

    def captions_for_image(self, image: ImageInput, k: int = 5, min_score: float | None = None,
                           rerank: bool = False) -> list[Hit]:
        """Indexed captions that best describe a query image (the top ``rerank_k`` reranked when ``rerank``)."""
        picture = self.load_query_image(image)
        if rerank:
            self._need_reranker()
        vector, regions = self.embed_picture(picture, with_regions=rerank)
        if not rerank:
            return self.captions_near(vector, k, min_score)
        hits = self.captions_near(vector, max(k, self.rerank_k), min_score)
        return self.rerank_top_captions(picture, hits, regions)[:k]

    # -- reranking --------------------------------------------------------------------------

    def _need_reranker(self) -> None:
        if self.reranker is None:
            raise QueryError("no reranker is loaded (pass --rerank-model, or install the bundled one)")

    def rerank_images(self, query: str, hits: list[Hit]) -> list[Hit]:
        """``hits`` (images for a text query) reordered by the reranker; same hits, match filled in.

        Regions come from the index where it stored them for this reranker, else from the photo
        files; hits whose photo cannot be read keep their order after the reranked ones.
        """
        if not hits:
            return []
        self._need_reranker()
        rr = self.reranker
        ids = [h.image_id for h in hits]
        regions, found = self.store.get_regions(ids, rr.region_key)
        regions = regions.astype(np.float16) if len(regions) else regions
        missing = [n for n, ok in enumerate(found) if not ok]
        usable = np.ones(len(hits), bool)
        if missing:
            pictures = []
            for n in missing:
                try:
                    pictures.append(load_image(hits[n].path, target_size=self.encoder.image_size))
                except ImgSearchError:
                    usable[n] = False
            ok = [n for n in missing if usable[n]]
            if ok:
                fresh = rr.encode_regions(pictures)
                regions = regions.astype(fresh.dtype) if regions.shape[1:] == fresh.shape[1:] else \
                    np.zeros((len(hits),) + fresh.shape[1:], fresh.dtype)
                regions[ok] = fresh
        keep = np.nonzero(usable)[0]
        if not len(keep):
            return list(hits)
        itm = rr.itm_scores([query], regions[keep])
        return self._reorder(hits, keep, itm, rr.alpha)

    def rerank_top_captions(self, image: ImageInput, hits: list[Hit], regions: np.ndarray | None = None) -> list[Hit]:
        """``hits`` with their first ``rerank_k`` reranked (see ``rerank_captions``) and the rest after them."""
        return self.rerank_captions(image, hits[: self.rerank_k], regions) + hits[self.rerank_k:]

    def rerank_captions(self, image: ImageInput, hits: list[Hit], regions: np.ndarray | None = None) -> list[Hit]:
        """``hits`` (captions for a query image) reordered by the reranker; same hits, match filled in.

        ``regions``: the image's regions for this reranker where already computed (``embed_picture``).
        """
        if not hits:
            return []
        self._need_reranker()
        rr = self.reranker
        if regions is None:
            regions = rr.encode_regions([self.load_query_image(image)])
        itm = rr.itm_scores([h.caption or "" for h in hits], regions)
        return self._reorder(hits, np.arange(len(hits)), itm, caption_alpha_of(rr))

    @staticmethod
    def _reorder(hits: list[Hit], keep: np.ndarray, itm: np.ndarray, alpha: float) -> list[Hit]:
        sims = np.array([hits[n].score for n in keep], np.float32)
        fused = fuse(itm, sims, alpha)
        probs = 1.0 / (1.0 + np.exp(-np.clip(itm, -50, 50)))
        ranked = [replace(hits[keep[n]], match=float(probs[n])) for n in np.argsort(-fused, kind="stable")]
        kept = set(keep.tolist())
        rest = [h for n, h in enumerate(hits) if n not in kept]
        return ranked + rest

    def images_near(self, vector: np.ndarray, k: int = 10, min_score: float | None = None,
                    text_query: bool = False) -> list[Hit]:
        """Images nearest a query vector (hubness-corrected for a ``text_query`` where the encoder has it)."""
        scores, ids = self._nearest("image", vector, k, text_query)
        if not (ids >= 0).any() and self.store.count_images() == 0:  # counted only when nothing came back
            raise EmptyIndexError(f"the index in {self.store.data_dir} holds no photos yet (run `imgsearch index DIR`)")
        rows = self.store.images(i for i in ids if i >= 0)
        return [Hit(rows[i].path, float(s), int(i)) for s, i in zip(scores, ids)
                if i in rows and (min_score is None or s >= min_score)]

    def _nearest(self, kind: str, vector: np.ndarray, k: int, correct: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids of the k best ``kind`` ("image" or "caption") results for one query vector.

        With the searcher's hubness correction for this kind, the nearest ``CANDIDATES`` (or k) by
        cosine are rescored (cosine minus the result's penalty) and the best k kept.
        """
        hub = self.hubness if correct else None
        corrects = hub is not None and kind in hub.sides
        search = self.store.search_images if kind == "image" else self.store.search_captions
        scores, ids = search(vector[None, :], max(k, HUB_CANDIDATES) if corrects else k)
        scores, ids = scores[0], ids[0]
        if not corrects:
            return scores, ids
        found = ids >= 0
        scores, ids = scores[found], ids[found]
        scores = scores - self._penalties(hub, kind, ids)
        order = np.argsort(-scores, kind="stable")[:k]
        return scores[order], ids[order]

    def _penalties(self, hub, kind: str, ids: np.ndarray) -> np.ndarray:
        """Hubness penalties of stored results, remembered until the index changes (a result's
        penalty depends on its vector only, so repeated searches skip fetching and rescoring it).
        Called right after the search that found ``ids``, so the store's loaded generation is theirs."""
        gen = (self.store.index_generation, id(hub))
        if self._penalty_gen != gen or len(self._penalty_cache) > PENALTY_CACHE_MAX:
            self._penalty_cache, self._penalty_gen = {}, gen
        cache = self._penalty_cache
        missing = [int(i) for i in ids if (kind, int(i)) not in cache]
        if missing:
            vectors = self.store.image_vectors(missing) if kind == "image" else self.store.caption_vectors(missing)
            cache.update(zip(((kind, i) for i in missing), hub.penalties(kind, vectors).tolist()))
        return np.array([cache[(kind, int(i))] for i in ids], np.float32)

    def captions_near(self, vector: np.ndarray, k: int = 5, min_score: float | None = None) -> list[Hit]:
        """Captions nearest a query (image) vector, each with the image it belongs to; hubness-corrected
        where the encoder has it."""
        scores, ids = self._nearest("caption", vector, k)
        if not (ids >= 0).any() and self.store.count_captions() == 0:
            raise EmptyIndexError(f"the index in {self.store.data_dir} holds no captions "
                                  "(add <photo>.txt files or a captions.jsonl, then reindex)")
        caps = self.store.captions(i for i in ids if i >= 0)
        rows = self.store.images(c.image_id for c in caps.values())
        hits = []
        for s, i in zip(scores, ids):
            c = caps.get(int(i))
            if c is None or c.image_id not in rows or (min_score is not None and s < min_score):
                continue
            hits.append(Hit(rows[c.image_id].path, float(s), c.image_id, c.text, c.id, c.source))
        return hits

