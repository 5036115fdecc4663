"""Near-duplicate photos: the same shot resized, re-encoded, lightly cropped, or a RAW beside its JPEG.

Candidates come from the stored image vectors (a FAISS range search of every photo against the index,
cosine above ``threshold``); each candidate pair is then confirmed by a perceptual hash of the pixels
(a 64-bit DCT hash, pHash, computed here with numpy and Pillow), so that two different photos of one
scene, which the vectors rank close, are not joined. Exact byte duplicates (one content hash) are
joined outright with score 1.0. Groups are connected components of the confirmed pairs: a chain of
copies (original, its resize, a re-encode of the resize) stays one group. imgsearch never deletes a
photo: this module only lists. The default cutoffs are measured in docs/evaluation.md ("Duplicates").
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import ImageLoadError, QueryError
from .images import load_image
from .store import ImageRow, Store

DEFAULT_THRESHOLD = 0.70  # cosine a candidate pair's vectors must pass (see docs/evaluation.md, "Duplicates")
DEFAULT_MAX_DISTANCE = 14  # pHash bits (of 64) a candidate pair may differ by and still be confirmed
CHECKS = ("phash", "dhash", "none")  # the perceptual check: pHash, dHash, or the vectors alone
HASH_SIZE = 8  # 8 x 8 = 64 bits
PHASH_SIDE = 32  # pHash reads the low frequencies of a 32 x 32 grey image
QUERY_CHUNK = 4096  # query vectors per range search (bounds the result memory)

HashCache = dict  # content hash -> (check, 64-bit hash as int); share one between runs to hash each photo once


@dataclass(frozen=True)
class DuplicateGroup:
    """Photos that show one shot, best first (most pixels, then oldest), and how surely they do.

    ``score`` is the weakest link that joins the group: the lowest vector cosine among the pairs of its
    maximum spanning tree (1.0 when every member has the same bytes). ``exact`` says the bytes are identical.
    """

    ids: tuple[int, ...]
    paths: tuple[str, ...]
    score: float
    exact: bool

    def as_dict(self) -> dict:
        """The JSON shape `imgsearch duplicates --json` prints: paths (best first) and score."""
        return {"paths": list(self.paths), "score": round(float(self.score), 4)}


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in (0, 1]; QueryError otherwise (a cosine cutoff outside it means nothing)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise QueryError(f"duplicate threshold must be a number, got {threshold!r}") from None
    if not 0.0 < t <= 1.0:
        raise QueryError(f"duplicate threshold must lie in (0, 1], got {t:g}")
    return t


# -- perceptual hashes ------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n): ``D @ x`` is the DCT of column vector x."""
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(PHASH_SIDE)
_BIT_WEIGHTS = (1 << np.arange(HASH_SIZE * HASH_SIZE - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _bits_to_int(bits: np.ndarray) -> int:
    return int(np.bitwise_or.reduce(np.where(bits.reshape(-1), _BIT_WEIGHTS, np.uint64(0))))


def _grey(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.convert("L").resize((width, height), Image.Resampling.LANCZOS), dtype=np.float64)


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of an image: the signs of its 8 x 8 lowest DCT frequencies against their
    median, on a 32 x 32 grey copy (robust to resizing, re-encoding and small crops)."""
    g = _grey(image, PHASH_SIDE, PHASH_SIDE)
    low = (_DCT @ g @ _DCT.T)[:HASH_SIZE, :HASH_SIZE]
    return _bits_to_int(low > np.median(low))


def dhash(image: Image.Image) -> int:
    """The 64-bit difference hash of an image: whether each pixel of a 9 x 8 grey copy is brighter than its
    right neighbour."""
    g = _grey(image, HASH_SIZE + 1, HASH_SIZE)
    return _bits_to_int(g[:, 1:] > g[:, :-1])


def hamming(a: int, b: int) -> int:
    """How many bits two 64-bit hashes differ in."""
    return int(a ^ b).bit_count()


HASHERS: dict[str, Callable[[Image.Image], int]] = {"phash": phash, "dhash": dhash}


def photo_hash(path: str, check: str = "phash") -> int | None:
    """The perceptual hash of the photo file at ``path`` (JPEGs decoded at a reduced scale); None when the
    file cannot be read (moved or broken since it was indexed)."""
    try:
        image = load_image(path, target_size=2 * PHASH_SIDE)
    except ImageLoadError:
        return None
    return HASHERS[check](image)


# -- candidates and groups --------------------------------------------------------------------


def candidate_pairs(store: Store, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of stored photos whose vectors' cosine passes ``threshold``: ids (m, 2) with a < b, and cosine (m,)."""
    ids, vectors = store.all_image_vectors()
    pairs, scores = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.float32)]
    if len(ids) < 2:
        return pairs[0], scores[0]
    for start in range(0, len(ids), QUERY_CHUNK):
        q_ids = ids[start:start + QUERY_CHUNK]
        lims, s, found = store.range_search_images(vectors[start:start + QUERY_CHUNK], threshold)
        a = np.repeat(q_ids, np.diff(lims))
        keep = a < found  # each pair once, never a photo with itself
        pairs.append(np.stack([a[keep], found[keep]], axis=1))
        scores.append(s[keep])
    return np.concatenate(pairs), np.concatenate(scores)


def components(pairs: np.ndarray, scores: np.ndarray) -> list[tuple[list[int], float]]:
    """Connected components of the graph of these (id, id) edges, each with the weakest edge of its maximum
    spanning tree (edges joined strongest first, as Kruskal's algorithm does); singletons are left out."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    weakest: dict[int, float] = {}
    for k in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        a, b = int(pairs[k, 0]), int(pairs[k, 1])
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        parent[rb] = ra
        weakest[ra] = min(float(scores[k]), weakest.pop(ra, 1.0), weakest.pop(rb, 1.0))
    members: dict[int, list[int]] = {}
    for x in list(parent):
        members.setdefault(find(x), []).append(x)
    return [(sorted(m), weakest[r]) for r, m in members.items()]


def best_first(rows: Iterable[ImageRow]) -> list[ImageRow]:
    """Photos ordered best first: the most pixels, then the oldest (date taken, else file time), then path."""
    def key(r: ImageRow) -> tuple:
        pixels = (r.width or 0) * (r.height or 0)
        taken = r.taken_at.timestamp() if isinstance(r.taken_at, datetime.datetime) else r.mtime_ns / 1e9
        return (-pixels, taken, r.path)
    return sorted(rows, key=key)


def confirm(paths_a: Sequence[str], paths_b: Sequence[str], hashes_a: Sequence[str], hashes_b: Sequence[str],
            check: str, max_distance: int, cache: HashCache | None = None) -> np.ndarray:
    """Whether each candidate pair passes the perceptual check (bool (m,)); a pair with an unreadable photo
    does not. ``cache`` maps content hash -> (check, hash), filled as photos are hashed."""
    if check == "none":
        return np.ones(len(paths_a), bool)
    cache = {} if cache is None else cache

    def h(path: str, content: str) -> int | None:
        got = cache.get(content)
        if got is None or got[0] != check:
            got = cache[content] = (check, photo_hash(path, check))
        return got[1]

    out = np.zeros(len(paths_a), bool)
    for i, (pa, pb, ha, hb) in enumerate(zip(paths_a, paths_b, hashes_a, hashes_b)):
        x, y = h(pa, ha), h(pb, hb)
        out[i] = x is not None and y is not None and hamming(x, y) <= max_distance
    return out


def find_duplicates(store: Store, threshold: float = DEFAULT_THRESHOLD, *, check: str = "phash",
                    max_distance: int = DEFAULT_MAX_DISTANCE, cache: HashCache | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate photos in ``store``, surest first (score, then the best photo's path).

    Candidate pairs: vector cosine above ``threshold``; each confirmed by ``check`` ("phash" or "dhash": the
    photos' hashes differ by at most ``max_distance`` bits; "none": the vectors alone). Photos with the same
    content hash are joined whatever the check says. Raises QueryError for a threshold outside (0, 1] or an
    unknown check.
    """
    threshold = check_threshold(threshold)
    if check not in CHECKS:
        raise QueryError(f"unknown duplicate check {check!r} (choose from {', '.join(CHECKS)})")
    if not 0 <= int(max_distance) <= HASH_SIZE * HASH_SIZE:
        raise QueryError(f"max hash distance must lie in [0, 64], got {max_distance}")
    if store.encoder_info is None:
        return []
    pairs, scores = candidate_pairs(store, threshold)
    rows = store.images(np.unique(pairs).tolist()) if len(pairs) else {}
    # exact byte duplicates: every photo sharing a content hash, joined to the first holding it
    by_hash: dict[str, list[int]] = {}
    for iid, h in store.image_hashes():
        by_hash.setdefault(h, []).append(iid)
    exact = [(ids[0], other) for ids in by_hash.values() if len(ids) > 1 for other in ids[1:]]
    if exact:
        rows.update(store.images([i for ids in by_hash.values() if len(ids) > 1 for i in ids]))
    keep = np.ones(len(pairs), bool)
    if len(pairs):
        a = [rows[int(x)] for x in pairs[:, 0]]
        b = [rows[int(x)] for x in pairs[:, 1]]
        same = np.array([ra.hash == rb.hash for ra, rb in zip(a, b)], bool)
        keep = same | confirm([r.path for r in a], [r.path for r in b], [r.hash for r in a], [r.hash for r in b],
                              check, int(max_distance), cache)
    all_pairs = np.concatenate([pairs[keep], np.asarray(exact, np.int64).reshape(-1, 2)])
    all_scores = np.concatenate([scores[keep].astype(np.float64), np.ones(len(exact))])
    groups = []
    for members, weakest in components(all_pairs, all_scores):
        ordered = best_first(rows[i] for i in members)
        same_bytes = len({r.hash for r in ordered}) == 1
        groups.append(DuplicateGroup(tuple(r.id for r in ordered), tuple(r.path for r in ordered),
                                     1.0 if same_bytes else min(weakest, 1.0), same_bytes))
    groups.sort(key=lambda g: (-g.score, g.paths[0]))
    return groups
