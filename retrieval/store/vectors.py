"""FAISS inner-product indexes over the stored vectors, and atomic file saves.

The indexes are derived from SQLite and rebuilt from it whenever they fall behind. This is the only
module of the project that imports ``faiss``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from ..errors import StoreError


INDEX_KINDS = ("images", "captions")
INDEX_FLAT = "flat"
INDEX_HNSW = "hnsw"
INDEX_IVF = "ivf"
FILTER_EXACT = "exact"
FILTER_SELECTOR = "selector"
FILTER_POST = "post"


@dataclass(frozen=True)
class IndexParams:
    """How the FAISS index is chosen and tuned (measured with `imgsearch bench`, see the README).

    Up to ``hnsw_threshold`` vectors the index is exact (flat inner product); above it, HNSW
    (IndexHNSWFlat, inner product, no compression). HNSW cannot remove vectors: deletes become
    tombstones, filtered out of every search with an IDSelector, until they exceed
    ``max_deleted_fraction`` of the index and it is rebuilt from the stored vectors.

    A search restricted to a set of ids (a filter) scores up to ``filter_exact_max`` of them
    exactly, vector by vector; a larger set goes through FAISS with an IDSelector (a bitmap of
    storage rows). HNSW visits many more nodes than efSearch, so its default efSearch keeps its
    recall while the set holds at least ``filter_full_share`` of the index; below that, efSearch
    grows with sqrt(filter_full_share / share), and where it would pass ``filter_ef_max`` the set is
    scored exactly instead. A set large enough that an unfiltered HNSW search of depth
    ``filter_post_margin * k / share`` (at most ``filter_post_max``, at twice the efSearch) holds k of its
    ids is searched that way first ("post": unfiltered, then the filter); the IDSelector runs only where
    that falls short.
    """

    hnsw_threshold: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    ivf_nprobe: int = 16
    max_deleted_fraction: float = 0.1
    filter_exact_max: int = 5_000
    filter_full_share: float = 0.05
    filter_ef_max: int = 4096
    filter_post_margin: float = 2.0
    filter_post_max: int = 2048  # 0: never search unfiltered first

    def kind_for(self, n: int) -> str:
        """The index kind for ``n`` vectors: exact up to the threshold, HNSW above it."""
        return INDEX_HNSW if n > self.hnsw_threshold else INDEX_FLAT


DEFAULT_INDEX_PARAMS = IndexParams()


def _index_kind(index: "faiss.Index") -> str:
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return INDEX_HNSW
    if isinstance(inner, faiss.IndexIVF):
        return INDEX_IVF
    return INDEX_FLAT


class VectorIndex:
    """A FAISS inner-product index over unit vectors, keyed by int64 ids (numpy in, numpy out).

    ``kind`` is flat (exact), hnsw or ivf; ids are the SQLite row ids (an IndexIDMap around flat and
    HNSW, IVF's own ids). ``deleted`` holds HNSW tombstones: ids still in the graph but excluded
    from every search. ``mutable`` is False for a memory-mapped (read-only) index.
    """

    def __init__(self, dim: int, index: "faiss.Index | None" = None, *, params: IndexParams = DEFAULT_INDEX_PARAMS,
                 deleted: Iterable[int] = (), mutable: bool = True) -> None:
        self.dim = dim
        self.params = params
        self.index = index if index is not None else faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        self.kind = _index_kind(self.index)
        self.deleted: set[int] = {int(i) for i in deleted}
        self.mutable = mutable
        self._selector = None
        self._positions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # sorted ids, their rows, id_map
        self._deleted_arr: np.ndarray | None = None

    @classmethod
    def empty(cls, dim: int, kind: str = INDEX_FLAT, params: IndexParams = DEFAULT_INDEX_PARAMS,
              train: np.ndarray | None = None) -> "VectorIndex":
        """A new empty index of this kind (IVF needs ``train`` vectors for its coarse quantiser)."""
        if kind == INDEX_FLAT:
            index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        elif kind == INDEX_HNSW:
            hnsw = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = params.ef_construction
            hnsw.hnsw.efSearch = params.ef_search
            index = faiss.IndexIDMap(hnsw)
        elif kind == INDEX_IVF:
            if train is None or len(train) == 0:
                raise ValueError("an IVF index needs training vectors")
            nlist = max(1, min(int(np.sqrt(len(train))), len(train) // 39 or 1))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = train if len(train) <= 40 * nlist else train[np.random.default_rng(0).choice(
                len(train), 40 * nlist, replace=False)]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
            index.nprobe = params.ivf_nprobe
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        return cls(dim, index, params=params)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, params: IndexParams = DEFAULT_INDEX_PARAMS,
              kind: str | None = None) -> "VectorIndex":
        """An index over these vectors, of the kind ``params`` picks for their count unless ``kind`` is given."""
        kind = kind or params.kind_for(len(ids))
        vi = cls.empty(dim, kind, params, train=vectors if kind == INDEX_IVF else None)
        vi.add(ids, vectors)
        return vi

    @property
    def ntotal(self) -> int:
        """How many live vectors the index holds (tombstones excluded)."""
        return int(self.index.ntotal) - len(self.deleted)

    @property
    def deleted_fraction(self) -> float:
        """The share of the stored vectors that are HNSW tombstones."""
        return len(self.deleted) / max(1, int(self.index.ntotal))

    def ids(self) -> np.ndarray:
        """Every id stored in the index, tombstones included."""
        if hasattr(self.index, "id_map"):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        inv = faiss.extract_index_ivf(self.index).invlists
        return np.concatenate([faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
                               for i in range(inv.nlist)] or [np.zeros(0, np.int64)]).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Add vectors (n, dim) under ids (n,). False (nothing added) when an id is an HNSW tombstone:
        its old vector cannot be taken out of the graph, so the caller must rebuild."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return True
        if not self.mutable:
            raise StoreError("a memory-mapped index is read-only")
        if self.deleted and not self.deleted.isdisjoint(ids.tolist()):
            return False
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self._positions = None
        return True

    def remove(self, ids: Iterable[int]) -> None:
        """Drop the vectors with these ids (missing ids are ignored); HNSW keeps them as tombstones."""
        arr = np.fromiter((int(i) for i in ids), dtype=np.int64)
        if not len(arr):
            return
        if not self.mutable:
            raise StoreError("a memory-mapped index is read-only")
        if self.kind == INDEX_HNSW:
            present = arr[np.isin(arr, self.ids())]
            self.deleted.update(present.tolist())
            self._selector = None
            self._deleted_arr = None
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(arr))
            self._positions = None

    def _search_params(self, k: int):
        sel = None
        if self.deleted:
            if self._selector is None:
                batch = faiss.IDSelectorBatch(np.fromiter(self.deleted, dtype=np.int64))
                self._selector = (batch, faiss.IDSelectorNot(batch))
            sel = self._selector[1]
        if self.kind == INDEX_HNSW:
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(self.params.ef_search, k)
        elif self.kind == INDEX_IVF:
            p = faiss.SearchParametersIVF()
            p.nprobe = self.params.ivf_nprobe
        elif sel is None:
            return None
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def search(self, queries: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), each (n, k); ids are -1 where fewer than k vectors exist (or were found).

        With ``ids`` only those vectors can be returned (ids not in the index are ignored), and k of
        them come back when k exist: the restriction acts before the top-k (see ``IndexParams``).
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if ids is not None:
            return self._search_subset(q, k, np.asarray(ids, dtype=np.int64).reshape(-1))
        if self.ntotal == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, self.ntotal)
        return self._faiss_search(q, k, self._search_params(k))

    def range_search(self, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored vector scoring above ``radius`` (inner product) for each query: (lims, scores, ids), as
        FAISS gives them. Query i's hits are ``scores[lims[i]:lims[i+1]]`` and ``ids[...]`` (unordered); lims is
        int64 (n + 1,). Tombstones are never returned; HNSW answers approximately, at its search efSearch."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.ntotal == 0 or not len(q):
            return np.zeros(len(q) + 1, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        params = self._search_params(self.params.ef_search)
        lims, scores, ids = (self.index.range_search(q, float(radius)) if params is None
                             else self.index.range_search(q, float(radius), params=params))
        return np.asarray(lims, np.int64), np.asarray(scores, np.float32), np.asarray(ids, np.int64)

    def _faiss_search(self, q: np.ndarray, k: int, params, index=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``index`` (default: this index) on the calling thread alone for one query."""
        index = self.index if index is None else index
        # One query cannot use FAISS's parallelism (it splits work by query), but it still waits on
        # an OpenMP team barrier, which is slow on a busy machine: run it on this thread alone
        # (the setting is per calling thread, so concurrent searches are unaffected).
        threads = faiss.omp_get_max_threads() if len(q) == 1 else 1
        if threads > 1:
            faiss.omp_set_num_threads(1)
        try:
            return index.search(q, k) if params is None else index.search(q, k, params=params)
        finally:
            if threads > 1:
                faiss.omp_set_num_threads(threads)

    def _live_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The ids of ``ids`` the index holds and may return (sorted, no tombstones), with their rows in
        the flat vector storage (None for IVF, which keeps no such storage)."""
        ids = sorted_unique(ids)
        if self.deleted:
            if self._deleted_arr is None:
                self._deleted_arr = np.fromiter(self.deleted, dtype=np.int64)
            ids = ids[~np.isin(ids, self._deleted_arr, assume_unique=True)]
        if not hasattr(self.index, "id_map"):
            present = np.isin(ids, self.ids(), assume_unique=True)
            return ids[present], None
        if self._positions is None:
            id_map = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            order = np.argsort(id_map, kind="stable")
            self._positions = (id_map[order], order.astype(np.int64), id_map)
        sorted_ids, rows, _ = self._positions
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        present = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return ids[present], rows[at[present]]

    def stored_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors held under these ids, (n, dim) in the order asked, copied from the flat storage, and a
        bool (n,) found: False for ids the index lacks or has tombstoned, and for every id of an IVF index
        (it keeps no flat storage)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        live, rows = (self._live_rows(ids) if len(ids) and hasattr(self.index, "id_map") and self.index.ntotal
                      else (np.zeros(0, np.int64), None))
        if not len(live):
            return np.zeros((len(ids), self.dim), np.float32), np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(live, ids), len(live) - 1)
        found = live[at] == ids
        total = int(self.index.ntotal)
        storage = faiss.rev_swig_ptr(self._flat_storage(), total * self.dim).reshape(total, self.dim)
        if found.all():
            return storage[rows[at]], found
        out = np.zeros((len(ids), self.dim), np.float32)
        out[found] = storage[rows[at[found]]]
        return out, found

    def _flat_storage(self):
        """The swig float pointer of the (ntotal, dim) vectors behind a flat or HNSW index."""
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        return inner.get_xb()

    def _exact_subset(self, q: np.ndarray, k: int, allowed: np.ndarray, rows: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the stored vectors at ``rows`` (those of ids ``allowed``), read in place."""
        order = np.argsort(rows, kind="stable")
        rows, allowed = np.ascontiguousarray(rows[order]), allowed[order]
        scores = np.empty((len(q), k), np.float32)
        found = np.empty((len(q), k), np.int64)
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), self._flat_storage(), faiss.swig_ptr(rows), self.dim,
                                        len(q), int(self.index.ntotal), len(rows), k, faiss.swig_ptr(scores),
                                        faiss.swig_ptr(found), 0)
        # found holds storage rows (or -1): map them back to ids
        at = np.searchsorted(rows, np.maximum(found, 0))
        return scores, np.where(found >= 0, allowed[np.minimum(at, len(rows) - 1)], -1)

    def filter_ef(self, m: int, k: int) -> int:
        """The HNSW efSearch for a search restricted to ``m`` ids (see ``IndexParams``)."""
        share = max(1, m) / max(1, self.ntotal)
        return int(np.ceil(max(self.params.ef_search, k) * max(1.0, np.sqrt(self.params.filter_full_share / share))))

    def _post_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k of ``allowed`` (sorted) from one unfiltered search ``post_depth`` deep, or None where some query
        found fewer than k of them there (its allowed top-k is then exactly what that search ranks first)."""
        depth = min(self.ntotal, self.post_depth(len(allowed), k))
        # twice the efSearch of a plain search that deep: the filtered top-k sits deep in its results
        scores, found = self._faiss_search(q, depth, self._search_params(2 * max(self.params.ef_search, depth)))
        at = np.minimum(np.searchsorted(allowed, found), len(allowed) - 1)
        keep = (found >= 0) & (allowed[at] == found)
        if (keep.sum(axis=1) < k).any():
            return None
        first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # each row's first k kept, in rank order
        return np.take_along_axis(scores, first, axis=1), np.take_along_axis(found, first, axis=1)

    def post_depth(self, m: int, k: int) -> int:
        """How deep an unfiltered search goes to find k of ``m`` allowed ids (see ``IndexParams``)."""
        return int(np.ceil(self.params.filter_post_margin * k * max(1, self.ntotal) / max(1, m)))

    def filter_strategy(self, m: int, k: int) -> str:
        """How a search restricted to ``m`` live ids runs: "exact" (scored one by one), "post" (HNSW searched
        deeper without the filter, then filtered) or "selector" (FAISS with an IDSelector; IVF always,
        having no flat vector storage)."""
        if self.kind == INDEX_IVF:
            return FILTER_SELECTOR
        if m <= self.params.filter_exact_max or (
                self.kind == INDEX_HNSW and self.filter_ef(m, k) > self.params.filter_ef_max):
            return FILTER_EXACT
        if self.kind == INDEX_HNSW and self.post_depth(m, k) <= self.params.filter_post_max:
            return FILTER_POST
        return FILTER_SELECTOR

    def _search_subset(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the vectors of ``ids`` alone: exact for a small set, else one deeper unfiltered search
        or FAISS with an IDSelector."""
        ids = sorted_unique(ids)
        if self.kind == INDEX_HNSW and 0 < k <= len(ids) and self.filter_strategy(len(ids), k) == FILTER_POST:
            got = self._post_filtered(q, k, ids)  # found ids are live: no id translation needed
            if got is not None:
                return got
        allowed, rows = self._live_rows(ids)
        m = len(allowed)
        if m == 0 or k <= 0 or self.ntotal == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, m)
        share = m / self.ntotal
        if rows is not None and self.filter_strategy(m, k) == FILTER_EXACT:
            return self._exact_subset(q, k, allowed, rows)
        index, bitmap = self.index, None
        if rows is not None:
            # select storage rows of the inner index with a bitmap: far quicker to build than an id hash
            # set, and no id translation per visited vector
            flags = np.zeros(int(self.index.ntotal), bool)
            flags[rows] = True
            bitmap = np.packbits(flags, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            index = self.index.index
        else:
            sel = faiss.IDSelectorBatch(allowed)
        if self.kind == INDEX_HNSW:
            p = faiss.SearchParametersHNSW()
            p.efSearch = self.filter_ef(m, k)
        elif self.kind == INDEX_IVF:
            p = faiss.SearchParametersIVF()
            nlist = faiss.extract_index_ivf(self.index).nlist
            p.nprobe = int(min(nlist, max(self.params.ivf_nprobe, np.ceil(self.params.ivf_nprobe / share))))
        else:
            p = faiss.SearchParameters()
        p.sel = sel
        scores, found = self._faiss_search(q, k, p, index)
        if bitmap is not None:
            found = np.where(found >= 0, self._positions[2][np.maximum(found, 0)], -1)
        return scores, found

    def save(self, path: Path) -> None:
        """Write atomically: a temp file beside ``path``, then rename over it."""
        atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))

    @classmethod
    def load(cls, path: Path, dim: int, *, mmap: bool = False, params: IndexParams = DEFAULT_INDEX_PARAMS,
             deleted: Iterable[int] = ()) -> "VectorIndex":
        """Read an index; with ``mmap`` it is memory-mapped read-only (quick to open at any size)."""
        if mmap:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        else:
            index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"{path} holds {index.d}-d vectors, not {dim}-d")
        return cls(dim, index, params=params, deleted=deleted, mutable=not mmap)


def sorted_unique(ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted without repeats (as given when they already are: filters build them so)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) else np.unique(ids)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Have ``write`` fill a temp file beside ``path``, fsync it, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with this UTF-8 text."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)
