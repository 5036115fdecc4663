"""Search an indexed store: text->image, image->image and image->text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from .encoders import Encoder
from .encoders.hubness import CANDIDATES as HUB_CANDIDATES
from .errors import EmptyIndexError, ImgSearchError, QueryError
from .hybrid import WEAK_SOURCES, FusionParams, Parts, fuse as fuse_parts
from .images import load_image
from .rerank import DEFAULT_RERANK_K, Reranker, fuse
from .rerank.base import caption_alpha_of
from .query import ImageInput, SearchQuery, clean_text
from .store import CaptionRow, Store
from .store.caption_map import CaptionSet

POOL = HUB_CANDIDATES  # nearest photos (and captions) a hybrid query weighs, beside its word matches
WEAK_CAPTION_ROOM = 20  # extra nearest captions an image -> text search reads, as name captions are passed over
PENALTY_CACHE_MAX = 1_000_000  # hubness penalties remembered before starting afresh


def dot_rows(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` on the calling thread: one query's products are small, and BLAS's thread team
    (stalled behind FAISS's and torch's OpenMP teams on a busy machine) costs far more to wake than they do."""
    return np.einsum("ij,j->i", matrix, vector)


def _passes(q: SearchQuery, score: float, relevance: float | None) -> bool:
    """Whether a hit with this pixel score and relevance clears the query's score floors."""
    return (q.min_score is None or score >= q.min_score) and \
        (q.min_relevance is None or (relevance is not None and relevance >= q.min_relevance))


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
    relevance: float | None = None  # calibrated: standard deviations above the query's typical nearest photo
    matched: tuple[str, ...] | None = None  # what the hit matched on: pixels, caption, name, folder
    taken: str | None = None  # date taken (ISO 8601), where known

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if "matched" in out:
            out["matched"] = list(out["matched"])
        return out


class Searcher:
    """Answers queries against ``store`` with ``encoder`` (which must be the one that built it).

    With a ``reranker``, searches asked to ``rerank`` rescore their top ``rerank_k`` results
    with it (``itm + alpha * cosine``); the rest follow in their original order. ``hubness``:
    rank with the encoder's hubness correction where it has one (False: by plain cosine).
    """

    def __init__(self, encoder: Encoder, store: Store, reranker: "Reranker | None" = None,
                 rerank_k: int = DEFAULT_RERANK_K, *, hubness: bool = True,
                 fusion: FusionParams = FusionParams()) -> None:
        store.check_encoder(encoder.fingerprint, encoder.spec)
        self.encoder = encoder
        self.store = store
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.hubness = getattr(encoder, "hubness", None) if hubness else None
        self.fusion = fusion
        self._penalty_cache: dict[tuple[str, int], float] = {}
        self._penalty_gen: tuple[int, int] | None = None

    # -- query embedding --------------------------------------------------------------------

    def embed_text(self, query: str) -> np.ndarray:
        """A text query -> its (dim,) vector; empty queries raise QueryError."""
        text = clean_text(query)
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
        """Photos best matching a text query, hybrid (the top ``rerank_k`` reranked when ``rerank``)."""
        return self.search(SearchQuery(text=query, k=k, min_score=min_score, rerank=rerank))

    def search(self, query: SearchQuery) -> list[Hit]:
        """Photos for a query: text, a photo or both, steered by ``not_texts``, filtered, sorted and paged.

        A text query is hybrid (pixels, captions, file and folder names) unless ``query.hybrid`` is
        False. Filters act before top-k, so k matching photos come back when k exist.
        """
        q = query.check()
        allowed = None
        if q.has_filters:
            allowed = self.store.filter_ids(taken_after=q.taken_after, taken_before=q.taken_before,
                                            folders=list(q.folders))
        if q.rerank:
            self._need_reranker()
        want = q.offset + q.k
        if allowed is not None and not len(allowed):
            self._check_not_empty()
            return []
        hits = self._rank(q, allowed, max(want, self.rerank_k if q.rerank else 0))
        if q.rerank:
            hits = self.rerank_images(q.text, hits[: self.rerank_k]) + hits[self.rerank_k:]
        hits = [h for h in hits if _passes(q, h.score, h.relevance)]
        page = hits[q.offset:want]
        if q.sort == "date":  # newest first, photos without a date last, ties in relevance order
            dated = sorted((h for h in page if h.taken is not None), key=lambda h: h.taken, reverse=True)
            page = dated + [h for h in page if h.taken is None]
        return page

    def _check_not_empty(self) -> None:
        if self.store.count_images() == 0:
            raise EmptyIndexError(f"the index in {self.store.data_dir} holds no photos yet (run `imgsearch index DIR`)")

    def _rank(self, q: SearchQuery, allowed: np.ndarray | None, want: int) -> list[Hit]:
        """The candidate photos of a checked query, best first, scored by ``hybrid.fuse``: as many as its
        page needs (the first ``rerank_k`` when it reranks, and enough to fill the page after its
        score floors), so only their rows are read."""
        depth = max(POOL, want)
        tvec = self.embed_text(q.text) if q.text else None
        ivec = self.embed_image(q.image) if q.image is not None else None
        lead = tvec if tvec is not None else ivec
        scores, ids = self._nearest("image", lead, depth, correct=tvec is not None, ids=allowed)
        found = ids >= 0
        scores, ids = scores[found], ids[found]
        if not len(ids):
            self._check_not_empty()
            return []
        center, scale = float(scores[:POOL].mean()), float(scores[:POOL].std())
        pool = dict.fromkeys(ids.tolist())
        pixel = dict(zip(ids.tolist(), scores.tolist()))
        words: dict = {}
        if tvec is not None and q.hybrid:
            pool.update(dict.fromkeys(self._caption_candidates(tvec, allowed, depth)))
            words = self._words(q.text, allowed, depth, list(pool))
            pool.update(dict.fromkeys(words))
        if ivec is not None and tvec is not None:
            _, extra = self.store.search_images(ivec[None, :], depth, ids=allowed)
            pool.update(dict.fromkeys(int(i) for i in extra[0] if i >= 0))
        cand = np.fromiter(pool, np.int64, len(pool))
        vectors = None
        missing = [int(i) for i in cand if i not in pixel]
        if ivec is not None and tvec is not None or q.not_texts:
            vectors = self.store.image_vectors(cand.tolist())
        if missing:
            vecs = vectors[[n for n, i in enumerate(cand) if int(i) not in pixel]] if vectors is not None \
                else self.store.image_vectors(missing)
            pixel.update(zip(missing, self._text_pixel_scores(tvec, missing, vecs).tolist()))
        parts = Parts(pixel=np.array([pixel[int(i)] for i in cand]), pixel_center=center, pixel_scale=scale)
        best_caption = None
        captions = self.store.caption_set(cand) if tvec is not None and q.hybrid else None
        if captions is not None:
            best_caption = self._caption_parts(parts, tvec, cand, captions)
            self._word_parts(parts, cand, words)
        if ivec is not None and tvec is not None:
            parts.image = dot_rows(vectors, ivec)
        if q.not_texts:
            parts.negative = self._steer_away(q.not_texts, cand, vectors, captions)
        fusion = fuse_parts(parts, self.fusion)
        order, head, need = fusion.order.tolist(), self.rerank_k if q.rerank else 0, q.offset + q.k
        passes = [True] * len(order) if q.min_score is None and q.min_relevance is None else \
            [_passes(q, float(parts.pixel[n]), round(float(fusion.scores[n]), 4)) for n in order]
        hits: list[Hit] = []
        kept = pos = 0
        while pos < len(order) and (len(hits) < head or kept < need):
            batch, total, good = [], len(hits), kept  # the next candidates the page needs, if all still exist
            while pos < len(order) and (total < head or good < need):
                batch.append(pos)
                total, good, pos = total + 1, good + passes[pos], pos + 1
            rows = self.store.images(cand[[order[b] for b in batch]].tolist())
            texts = self._caption_texts(captions, best_caption, cand, [order[b] for b in batch], fusion.matched)
            for b in batch:
                n = order[b]
                i = int(cand[n])
                row = rows.get(i)
                if row is None:  # removed since the search found it
                    continue
                m = fusion.matched[n]
                cap = texts.get(i)
                hits.append(Hit(row.path, float(parts.pixel[n]), i, cap.text if cap else None,
                                cap.id if cap else None, cap.source if cap else None,
                                relevance=round(float(fusion.scores[n]), 4), matched=m,
                                taken=row.taken_at.isoformat() if row.taken_at else None))
                kept += passes[b]
        return hits

    def _text_pixel_scores(self, tvec: np.ndarray | None, ids: list[int], vectors: np.ndarray) -> np.ndarray:
        """Pixel scores of photos found another way: cosine, less the hubness penalty for a text query."""
        if tvec is None:
            return np.zeros(len(ids), np.float32)
        scores = dot_rows(vectors, tvec)
        hub = self.hubness
        if hub is not None and "image" in hub.sides:
            scores = scores - self._penalties(hub, "image", np.asarray(ids, np.int64))
        return scores

    def _caption_candidates(self, tvec: np.ndarray, allowed: np.ndarray | None, depth: int) -> list[int]:
        """The photos of the captions nearest a text query (within ``allowed``)."""
        _, cids = self.store.search_captions(tvec[None, :], depth)  # none found when the index holds none
        cids = cids[0][cids[0] >= 0]
        image_ids = self.store.caption_images(np.unique(cids)) if len(cids) else np.zeros(0, np.int64)
        image_ids = image_ids[image_ids >= 0]
        if allowed is not None and len(image_ids):
            image_ids = image_ids[np.isin(image_ids, allowed)]
        return image_ids.tolist()

    def _caption_texts(self, captions: CaptionSet | None, best: np.ndarray | None, cand: np.ndarray,
                       picked: list[int], matched: list[tuple[str, ...]]) -> dict[int, CaptionRow]:
        """image id -> the caption a hit shows (its best real caption where it matched on one, else its best
        name or folder caption where it matched on that), read for the picked candidates only."""
        if captions is None or best is None:
            return {}
        want: dict[int, int] = {}
        for n in picked:
            m = matched[n]
            r = int(best[n, 0]) if "caption" in m else -1
            if r < 0 and ("name" in m or "folder" in m):
                r = int(best[n, 1])
            if r >= 0:
                want[int(cand[n])] = r
        rows = self.store.captions(int(captions.ids[r]) for r in want.values())
        return {i: rows[int(captions.ids[r])] for i, r in want.items() if int(captions.ids[r]) in rows}

    def _words(self, text: str, allowed: np.ndarray | None, depth: int, pool: list[int]) -> dict:
        """Lexical matches of a text query (image id -> TermMatch), within ``allowed``; the ``pool`` photos
        (nearest by pixels and captions) are scored too when the query holds only common words."""
        matches = self.store.match_terms(text, limit=max(depth, POOL), candidates=pool)
        if allowed is not None and matches:
            keep = set(np.asarray(list(matches), np.int64)[np.isin(list(matches), allowed)].tolist())
            matches = {i: m for i, m in matches.items() if i in keep}
        return matches

    def _steer_away(self, texts: tuple[str, ...], cand: np.ndarray, vectors: np.ndarray,
                    captions: CaptionSet | None) -> np.ndarray:
        """Each candidate's fused score for the texts to steer away from (the best over them): what its
        pixels and, in a hybrid search, its captions and names say of them."""
        hub = self.hubness
        penalty = self._penalties(hub, "image", cand) if hub is not None and "image" in hub.sides else 0.0
        worst = np.full(len(cand), -np.inf)
        for nvec in self.encoder.encode_texts(list(texts)):
            pixel = dot_rows(vectors, nvec) - penalty
            parts = Parts(pixel=pixel, pixel_center=float(pixel.mean()), pixel_scale=float(pixel.std()))
            if captions is not None:
                self._caption_parts(parts, nvec, cand, captions)
            worst = np.maximum(worst, fuse_parts(parts, self.fusion).scores)
        return worst

    def _caption_parts(self, parts: Parts, tvec: np.ndarray, cand: np.ndarray,
                       captions: CaptionSet) -> np.ndarray | None:
        """Fill the caption parts (best real and weak caption similarity to ``tvec``); (n, 2): the row in
        ``captions`` of each candidate's best real caption and best weak one (-1 where it has none)."""
        n = len(cand)
        parts.caption, parts.weak = np.full(n, np.nan), np.full(n, np.nan)
        if not len(captions):
            return None
        sims = dot_rows(captions.vectors, tvec)
        parts.caption_center, parts.caption_scale = self._caption_reference(tvec, sims)
        by_id = np.argsort(cand, kind="stable")
        pos = by_id[np.searchsorted(cand, captions.image_ids, sorter=by_id)]
        weak = captions.of_sources(WEAK_SOURCES)
        rows = np.arange(len(captions))
        group = pos * 2 + weak
        order = np.lexsort((rows, -sims, group))  # by photo and kind, best first, ties in row order
        top = order[np.r_[True, group[order][1:] != group[order][:-1]]]  # each photo's best caption of each kind
        real, weak_top = top[~weak[top]], top[weak[top]]
        parts.caption[pos[real]] = sims[real]
        parts.weak[pos[weak_top]] = sims[weak_top]
        kinds = np.full(n, None, object)
        kinds[pos[weak_top]] = np.array(captions.source_names, object)[captions.source_codes[weak_top]]
        parts.weak_kind = kinds.tolist()
        best = np.full((n, 2), -1, np.int64)
        best[pos[real], 0], best[pos[weak_top], 1] = real, weak_top
        return best

    def _caption_reference(self, tvec: np.ndarray, sims: np.ndarray) -> tuple[float, float]:
        """Mean and spread of the query's similarity to typical captions: to the hubness bank of caption
        vectors where the encoder ships one, else to the candidates' own captions (``sims``)."""
        hub = getattr(self.encoder, "hubness", None)
        side = hub.sides.get("image") if hub is not None else None
        ref = dot_rows(side.bank, tvec) if side is not None and len(side.bank) >= 2 else sims
        if len(ref) < 2:
            return float(ref.mean()) if len(ref) else 0.0, 1.0
        return float(ref.mean()), float(max(ref.std(), 1e-3))

    @staticmethod
    def _word_parts(parts: Parts, cand: np.ndarray, words: dict) -> None:
        """Fill the lexical parts from the store's term matches."""
        n = len(cand)
        parts.lexical, parts.all_words = np.full(n, np.nan), np.zeros(n, bool)
        fields: list[tuple[str, ...]] = [()] * n
        for n_, i in enumerate(cand.tolist()):
            m = words.get(i)
            if m is not None:
                parts.lexical[n_], parts.all_words[n_], fields[n_] = m.score, m.all_words, tuple(m.fields)
        parts.lexical_fields = fields

    def search_image(self, image: ImageInput, k: int = 10, min_score: float | None = None) -> list[Hit]:
        """Photos most similar to a query photo."""
        return self.search(SearchQuery(image=image, k=k, min_score=min_score))

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
        if not (ids >= 0).any():  # counted only when nothing came back
            self._check_not_empty()
        rows = self.store.images(i for i in ids if i >= 0)
        return [Hit(rows[i].path, float(s), int(i)) for s, i in zip(scores, ids)
                if i in rows and (min_score is None or s >= min_score)]

    def _nearest(self, kind: str, vector: np.ndarray, k: int, correct: bool = True,
                 ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids of the k best ``kind`` ("image" or "caption") results for one query vector.

        With the searcher's hubness correction for this kind, the nearest ``CANDIDATES`` (or k) by
        cosine are rescored (cosine minus the result's penalty) and the best k kept.
        """
        hub = self.hubness if correct else None
        corrects = hub is not None and kind in hub.sides
        n = max(k, HUB_CANDIDATES) if corrects else k
        if kind == "image":
            scores, ids = self.store.search_images(vector[None, :], n, ids=ids)
        else:
            scores, ids = self.store.search_captions(vector[None, :], n)
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
        """Real captions nearest a query (image) vector, each with the image it belongs to; hubness-corrected
        where the encoder has it. The weak captions made from file and folder names describe no picture,
        so they are passed over (the search goes ``WEAK_CAPTION_ROOM`` deeper to make up for them)."""
        scores, ids = self._nearest("caption", vector, k + WEAK_CAPTION_ROOM)
        caps = {i: c for i, c in self.store.captions(i for i in ids if i >= 0).items() if c.source not in WEAK_SOURCES}
        if not caps and self.store.count_captions(include_weak=False) == 0:
            raise EmptyIndexError(f"the index in {self.store.data_dir} holds no captions "
                                  "(add <photo>.txt files or a captions.jsonl, then reindex)")
        rows = self.store.images(c.image_id for c in caps.values())
        hits = []
        for s, i in zip(scores, ids):
            c = caps.get(int(i))
            if c is None or c.image_id not in rows or (min_score is not None and s < min_score):
                continue
            hits.append(Hit(rows[c.image_id].path, float(s), c.image_id, c.text, c.id, c.source))
        return hits[:k]

