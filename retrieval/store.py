"""The index store: metadata in SQLite (through SQLAlchemy), vectors in FAISS.

SQLite is the source of truth: it holds every row and its raw vector. The FAISS
indexes are derived from it, saved atomically beside it with the generation
they reflect, and rebuilt from the stored vectors whenever they fall behind
(after a crash mid-index, say), so nothing is ever re-embedded to repair them.

This is the only module that imports ``faiss`` and ``sqlalchemy``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import faiss
import numpy as np
import sqlalchemy as sa

from .errors import EmptyIndexError, EncoderMismatchError, StoreError

SCHEMA_VERSION = 1
DB_FILE = "imgsearch.sqlite"
LOCK_FILE = "indexer.lock"

_md = sa.MetaData()

meta_table = sa.Table(
    "meta", _md,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.String, nullable=False),
)

folders_table = sa.Table(
    "folders", _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.String, nullable=False, unique=True),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("indexed_at", sa.Float),
)

images_table = sa.Table(
    "images", _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("folder_id", sa.Integer, sa.ForeignKey("folders.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("path", sa.String, nullable=False, unique=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.Integer, nullable=False),
    sa.Column("hash", sa.String, nullable=False, index=True),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("format", sa.String),
    sa.Column("taken_at", sa.DateTime),
    sa.Column("indexed_at", sa.Float, nullable=False),
)

image_vectors_table = sa.Table(
    "image_vectors", _md,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

captions_table = sa.Table(
    "captions", _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

regions_table = sa.Table(
    "regions", _md,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tokens", sa.Integer, nullable=False),  # R
    sa.Column("channels", sa.Integer, nullable=False),  # C
    sa.Column("data", sa.LargeBinary, nullable=False),  # see _quantise_regions
)

skipped_table = sa.Table(
    "skipped", _md,
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("folder_id", sa.Integer, sa.ForeignKey("folders.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("size", sa.Integer),
    sa.Column("mtime_ns", sa.Integer),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class FileState:
    """What the store remembers of one indexed file, enough to decide whether it changed."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str


@dataclass(frozen=True)
class ImageRecord:
    """Metadata of one image to add to the store."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: datetime | None = None


@dataclass(frozen=True)
class ImageRow:
    """One indexed image as read back from the store."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int | None
    height: int | None
    format: str | None
    taken_at: datetime | None
    folder: str


@dataclass(frozen=True)
class CaptionRow:
    """One indexed caption."""

    id: int
    image_id: int
    text: str
    source: str


@dataclass(frozen=True)
class EncoderInfo:
    """The encoder an index was built with."""

    spec: str
    fingerprint: str
    dim: int


@dataclass
class _Delta:
    """The vector changes of one transaction: kind -> (added ids, added vectors, removed ids)."""

    kinds: dict = field(default_factory=dict)
    unknown: bool = False  # vectors may have changed in ways not recorded

    def __bool__(self) -> bool:
        return self.unknown or any(a or r for a, _, r in self.kinds.values())


def _to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


REGION_KEY_META = "region_key"
_SQL_CHUNK = 900  # ids per IN (...): below SQLite's old 999-parameter limit


def _quantise_regions(regions: np.ndarray) -> list[bytes]:
    """(n, R, C) floats -> one blob per image: R float32 scales, then R*C int8 codes.

    Each region token gets its own scale s = max|x| over its channels, and q = round(x / s * 127),
    so x ~ q * s / 127 to within s / 254 (about 15.9 KB per image for 49 x 320). Non-finite
    values (a float16 overflow, say) are clamped to the finite float16 range first (NaN -> 0).
    """
    x = np.asarray(regions, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"regions must be (n, R, C), not {x.shape}")
    if not np.isfinite(x).all():
        big = float(np.finfo(np.float16).max)
        x = np.nan_to_num(x, nan=0.0, posinf=big, neginf=-big)
    scale = np.abs(x).max(axis=2)  # (n, R)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[:, :, None] * 127.0), -127, 127).astype(np.int8)
    scale = scale.astype(np.float32)
    return [scale[i].tobytes() + q[i].tobytes() for i in range(len(x))]


def _dequantise_region(blob: bytes, tokens: int, channels: int) -> np.ndarray:
    """One blob from ``_quantise_regions`` -> float32 (R, C)."""
    if len(blob) != tokens * 4 + tokens * channels:
        raise StoreError(f"a stored region blob holds {len(blob)} bytes, not {tokens * (4 + channels)} "
                         "(run `imgsearch check --repair`)")
    scale = np.frombuffer(blob, dtype=np.float32, count=tokens)
    q = np.frombuffer(blob, dtype=np.int8, offset=tokens * 4).reshape(tokens, channels)
    return q.astype(np.float32) * (scale / 127.0)[:, None]


INDEX_KINDS = ("images", "captions")
INDEX_FLAT = "flat"
INDEX_HNSW = "hnsw"
INDEX_IVF = "ivf"


@dataclass(frozen=True)
class IndexParams:
    """How the FAISS index is chosen and tuned (measured with `imgsearch bench`, see the README).

    Up to ``hnsw_threshold`` vectors the index is exact (flat inner product); above it, HNSW
    (IndexHNSWFlat, inner product, no compression). HNSW cannot remove vectors: deletes become
    tombstones, filtered out of every search with an IDSelector, until they exceed
    ``max_deleted_fraction`` of the index and it is rebuilt from the stored vectors.
    """

    hnsw_threshold: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 256
    ivf_nprobe: int = 16
    max_deleted_fraction: float = 0.1

    def kind_for(self, n: int) -> str:
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
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(arr))

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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), each (n, k); ids are -1 where fewer than k vectors exist (or were found)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, self.ntotal)
        params = self._search_params(k)
        # One query cannot use FAISS's parallelism (it splits work by query), but it still waits on
        # an OpenMP team barrier, which costs milliseconds on a busy machine: run it on this thread
        # alone (the setting is per calling thread, so concurrent searches are unaffected).
        threads = faiss.omp_get_max_threads() if len(q) == 1 else 1
        if threads > 1:
            faiss.omp_set_num_threads(1)
        try:
            return self.index.search(q, k) if params is None else self.index.search(q, k, params=params)
        finally:
            if threads > 1:
                faiss.omp_set_num_threads(threads)

    def save(self, path: Path) -> None:
        """Write atomically: a temp file beside ``path``, then rename over it."""
        _atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))

    @classmethod
    def load(cls, path: Path, dim: int, *, mmap: bool = False, params: IndexParams = DEFAULT_INDEX_PARAMS,
             deleted: Iterable[int] = ()) -> "VectorIndex":
        """Read an index; with ``mmap`` it is memory-mapped read-only (opens in milliseconds at any size)."""
        if mmap:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        else:
            index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"{path} holds {index.d}-d vectors, not {dim}-d")
        return cls(dim, index, params=params, deleted=deleted, mutable=not mmap)


def _atomic_write(path: Path, write) -> None:
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


def _atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic_write(path, write)


class Store:
    """An imgsearch data folder: SQLite metadata plus FAISS indexes for images and captions."""

    def __init__(self, data_dir: str | os.PathLike, *, create: bool = True,
                 index_params: IndexParams | None = None, mmap_indexes: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        db_path = self.data_dir / DB_FILE
        if not db_path.exists() and not create:
            raise StoreError(f"no index at {self.data_dir} (run `imgsearch index DIR --db {self.data_dir}` first)")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create data folder {self.data_dir}: {e.strerror}") from e
        self.engine = sa.create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30})
        sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _md.create_all(self.engine)
            with self.engine.begin() as conn:
                version = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
                if version is None:
                    conn.execute(meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(version) != SCHEMA_VERSION:
                    raise StoreError(f"index at {self.data_dir} has schema version {version}; this imgsearch "
                                     f"reads version {SCHEMA_VERSION}: rebuild it with `imgsearch index DIR --rebuild`")
        except sa.exc.DatabaseError as e:
            raise StoreError(f"cannot open index database {db_path}: {e.orig}") from e
        self._indexes: dict[str, VectorIndex] = {}
        self._loaded_generation = -1
        self.index_params = index_params or DEFAULT_INDEX_PARAMS
        self.mmap_indexes = mmap_indexes
        self._conn: sa.Connection | None = None
        self._delta: _Delta | None = None
        self._file_gen: dict[str, int] = {}  # see _apply_delta
        self._file_gen_seen: dict[str, int] = {}  # the sidecar generation _file_gen was carried from
        self._lock_fd: int | None = None

    # -- metadata ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._connect() as conn:
            return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar()

    def _set_meta(self, conn: sa.Connection, key: str, value: str) -> None:
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == key))
        conn.execute(meta_table.insert().values(key=key, value=value))

    @property
    def encoder_info(self) -> EncoderInfo | None:
        """The encoder this index was built with, or None for a new index."""
        raw = self.get_meta("encoder")
        return EncoderInfo(**json.loads(raw)) if raw else None

    def bind_encoder(self, spec: str, fingerprint: str, dim: int, region_key: str | None = None) -> None:
        """Record the encoder of a new index, or check it matches the one the index was built with.

        With ``region_key`` (the encoder's region extractor, see ``bind_regions``) the region
        features are bound too; None leaves any stored regions and their key alone.
        """
        info = self.encoder_info
        if info is None:
            with self.transaction() as conn:
                self._set_meta(conn, "encoder", json.dumps({"spec": spec, "fingerprint": fingerprint, "dim": dim}))
        else:
            self.check_encoder(fingerprint, spec)
        if region_key:
            self.bind_regions(region_key)

    @property
    def region_key(self) -> str | None:
        """The region extractor whose features ``add_images`` stores, or None when none is bound."""
        return self.get_meta(REGION_KEY_META)

    def bind_regions(self, key: str) -> bool:
        """Store region features under ``key`` from now on.

        Regions are derived data: if the index holds regions of another key they are all
        deleted (the images stay; ``get_regions`` reports them not found). Returns True when
        regions were dropped. Vectors are untouched, so the generation does not move.
        """
        if not key:
            raise ValueError("a region key must be a non-empty string")
        with self._tx() as conn:
            old = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == REGION_KEY_META)).scalar()
            if old == key:
                return False
            dropped = conn.execute(sa.delete(regions_table)).rowcount > 0
            self._set_meta(conn, REGION_KEY_META, key)
        return dropped

    def check_encoder(self, fingerprint: str, spec: str = "") -> None:
        """Raise EncoderMismatchError unless the index was built with this encoder fingerprint."""
        info = self.encoder_info
        if info is not None and info.fingerprint != fingerprint:
            raise EncoderMismatchError(
                f"the index in {self.data_dir} was built with encoder '{info.spec}' ({info.fingerprint}), "
                f"not '{spec or '?'}' ({fingerprint}); rebuild it with "
                f"`imgsearch index DIR --db {self.data_dir} --model {spec or info.spec} --rebuild`")

    @property
    def generation(self) -> int:
        """Bumped by every committed change to the vectors (and by every untracked transaction)."""
        return int(self.get_meta("generation") or 0)

    @property
    def index_generation(self) -> int:
        """The generation the loaded FAISS indexes reflect: what the last search saw (no SQLite read)."""
        return self._loaded_generation

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def transaction(self, *, tracked: bool = False) -> Iterator[sa.Connection]:
        """One atomic SQLite transaction; nested calls join the outer one.

        A plain transaction may change vectors in ways the store cannot see, so it bumps the
        generation and drops the loaded FAISS indexes (they are reloaded or rebuilt on next use).
        With ``tracked=True`` only the Store's own methods write vectors inside it: they record
        what they add and remove, the generation is bumped only when a vector changed, and the
        loaded indexes are updated incrementally instead of being rebuilt.
        """
        if self._conn is not None:
            yield self._conn
            return
        delta = _Delta()
        with self.engine.begin() as conn:
            self._conn, self._delta = conn, delta
            try:
                yield conn
                if not tracked:
                    delta.unknown = True
                old = int(conn.execute(sa.select(meta_table.c.value)
                                       .where(meta_table.c.key == "generation")).scalar() or 0)
                if delta:
                    self._set_meta(conn, "generation", str(old + 1))
            finally:
                self._conn, self._delta = None, None
        if delta:
            self._apply_delta(delta, old, old + 1)

    def _tx(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return self.transaction(tracked=True)

    def _record(self, kind: str, *, add: tuple[int, np.ndarray] | None = None, remove: Iterable[int] = ()) -> None:
        """Note a vector change of the current transaction (see ``transaction``)."""
        if self._delta is None:
            raise RuntimeError("vector changes must happen inside a transaction")
        removed = [int(i) for i in remove]
        if add is None and not removed:
            return
        d = self._delta.kinds.setdefault(kind, ([], [], []))
        if removed:
            d[2].extend(removed)
        if add is not None:
            d[0].append(int(add[0]))
            d[1].append(np.asarray(add[1], dtype=np.float32).reshape(-1))

    # -- writer lock ------------------------------------------------------------------------

    def acquire_writer_lock(self) -> None:
        """Take the single-writer lock, or raise StoreError if another indexer holds it.

        The lock is an flock, so a killed process never leaves a stale lock behind.
        """
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another imgsearch indexer is running on {self.data_dir}; wait for it to finish")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def clear(self) -> None:
        """Empty the index (rows, vectors, regions, encoder and region bindings, FAISS files) for a rebuild;
        needs the writer lock."""
        if self._lock_fd is None:
            raise StoreError("clearing an index needs the writer lock (acquire_writer_lock)")
        with self.transaction() as conn:
            for table in (captions_table, regions_table, image_vectors_table, skipped_table, images_table,
                          folders_table):
                conn.execute(sa.delete(table))
            conn.execute(sa.delete(meta_table).where(meta_table.c.key.in_(["encoder", REGION_KEY_META])))
        for kind in ("images", "captions"):
            for path in (self._index_path(kind).with_suffix(".json"), self._index_path(kind)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- folders ----------------------------------------------------------------------------

    def add_folder(self, path: str) -> int:
        """The id of an indexed root folder, registering it if new."""
        with self._tx() as conn:
            fid = conn.execute(sa.select(folders_table.c.id).where(folders_table.c.path == path)).scalar()
            if fid is None:
                fid = conn.execute(folders_table.insert().values(path=path, added_at=time.time())).inserted_primary_key[0]
            return int(fid)

    def mark_folder_indexed(self, folder_id: int) -> None:
        with self._tx() as conn:
            conn.execute(folders_table.update().where(folders_table.c.id == folder_id).values(indexed_at=time.time()))

    def folders(self) -> list[dict]:
        """Indexed root folders with their image counts and last index time."""
        q = (sa.select(folders_table.c.id, folders_table.c.path, folders_table.c.indexed_at,
                       sa.func.count(images_table.c.id).label("images"))
             .select_from(folders_table.outerjoin(images_table, images_table.c.folder_id == folders_table.c.id))
             .group_by(folders_table.c.id).order_by(folders_table.c.path))
        with self._connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- images -----------------------------------------------------------------------------

    def file_states(self, folder_id: int) -> dict[str, FileState]:
        """path -> FileState for every image under one root folder."""
        # The raw sqlite3 cursor: at 100k photos SQLAlchemy's per-row objects cost seconds.
        sql = "SELECT id, path, size, mtime_ns, hash FROM images WHERE folder_id = ?"
        with self._connect() as conn:
            rows = conn.connection.driver_connection.execute(sql, (folder_id,)).fetchall()
        return {r[1]: FileState(*r) for r in rows}

    def known_hashes(self) -> dict[str, int]:
        """content hash -> one image id holding it, over the whole store."""
        with self._connect() as conn:
            return {h: i for i, h in conn.execute(sa.select(images_table.c.id, images_table.c.hash))}

    def add_images(self, folder_id: int, records: Sequence[ImageRecord], vectors: np.ndarray,
                   regions: np.ndarray | None = None) -> list[int]:
        """Insert images with their vectors (and, optionally, region features (n, R, C) stored
        int8-quantised under the bound region key, see ``bind_regions``), all in one transaction;
        returns their new ids."""
        if len(records) != len(vectors):
            raise ValueError("one vector per record")
        blobs = None
        if regions is not None:
            regions = np.asarray(regions)
            if len(regions) != len(records):
                raise ValueError("one region array per record")
            blobs = _quantise_regions(regions)
            tokens, channels = int(regions.shape[1]), int(regions.shape[2])
        now = time.time()
        ids = []
        with self._tx() as conn:
            if blobs is not None:
                self._check_region_shape(conn, tokens, channels)
            for rec, vec in zip(records, vectors):
                self._drop_path(conn, rec.path)
                iid = conn.execute(images_table.insert().values(
                    folder_id=folder_id, indexed_at=now, **rec.__dict__)).inserted_primary_key[0]
                conn.execute(image_vectors_table.insert().values(image_id=iid, vector=_to_blob(vec)))
                self._record("images", add=(iid, vec))
                conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == rec.path))
                ids.append(int(iid))
            if blobs is not None and ids:
                conn.execute(regions_table.insert(), [{"image_id": i, "tokens": tokens, "channels": channels, "data": b}
                                                      for i, b in zip(ids, blobs)])
        return ids

    def _check_region_shape(self, conn: sa.Connection, tokens: int, channels: int) -> None:
        """Refuse regions when no key is bound, or of another shape than those already stored under it."""
        if conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == REGION_KEY_META)).scalar() is None:
            raise StoreError("regions can only be stored after their key is bound (bind_regions)")
        r = regions_table.c
        have = conn.execute(sa.select(r.tokens, r.channels).limit(1)).first()
        if have is not None and tuple(have) != (tokens, channels):
            raise StoreError(f"regions of shape ({tokens}, {channels}) cannot join the stored ones of shape "
                             f"({have[0]}, {have[1]}) under the same region key")

    def get_regions(self, image_ids: Sequence[int], key: str) -> tuple[np.ndarray, np.ndarray]:
        """Dequantised region features of these images: float32 (n, R, C), in the order asked, and
        a bool (n,) ``found``. Images without stored regions, or every image when ``key`` is not
        the bound region key, come back as zeros with found False; (R, C) is (0, 0) when nothing
        under ``key`` is stored at all."""
        ids = [int(i) for i in image_ids]
        found = np.zeros(len(ids), dtype=bool)
        rows: dict[int, tuple[int, int, bytes]] = {}
        r = regions_table.c
        with self._connect() as conn:
            stored_key = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == REGION_KEY_META)).scalar()
            if stored_key is None or stored_key != key:
                return np.zeros((len(ids), 0, 0), np.float32), found
            wanted = sorted(set(ids))
            for i in range(0, len(wanted), _SQL_CHUNK):
                q = sa.select(r.image_id, r.tokens, r.channels, r.data).where(r.image_id.in_(wanted[i:i + _SQL_CHUNK]))
                rows.update({iid: (t, c, d) for iid, t, c, d in conn.execute(q)})
            if rows:
                shape = next(iter(rows.values()))[:2]
            else:
                shape = tuple(conn.execute(sa.select(r.tokens, r.channels).limit(1)).first() or (0, 0))
        out = np.zeros((len(ids), *shape), np.float32)
        for pos, iid in enumerate(ids):
            row = rows.get(iid)
            if row is not None and row[:2] == shape:
                out[pos] = _dequantise_region(row[2], *shape)
                found[pos] = True
        return out, found

    def region_info(self) -> dict:
        """What region features the index holds: key, count, shape [R, C] and bytes per image
        (None where nothing is stored), and total bytes."""
        r = regions_table.c
        with self._connect() as conn:
            key = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == REGION_KEY_META)).scalar()
            n, total = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(r.data)), 0))
                                    .select_from(regions_table)).one()
            shape = conn.execute(sa.select(r.tokens, r.channels).limit(1)).first()
        return {"key": key, "count": int(n), "shape": list(shape) if shape else None,
                "bytes_per_image": round(int(total) / n) if n else None, "bytes": int(total)}

    def copy_image(self, source_id: int, folder_id: int, record: ImageRecord) -> int:
        """Insert a duplicate of an indexed image at a new path, reusing its vector, regions and EXIF captions."""
        with self._tx() as conn:
            src = conn.execute(sa.select(images_table).where(images_table.c.id == source_id)).one()
            vec = conn.execute(sa.select(image_vectors_table.c.vector)
                               .where(image_vectors_table.c.image_id == source_id)).scalar_one()
            new = {**record.__dict__, "width": src.width, "height": src.height, "format": src.format,
                   "taken_at": src.taken_at}
            self._drop_path(conn, record.path)
            iid = int(conn.execute(images_table.insert().values(
                folder_id=folder_id, indexed_at=time.time(), **new)).inserted_primary_key[0])
            conn.execute(image_vectors_table.insert().values(image_id=iid, vector=vec))
            self._record("images", add=(iid, np.frombuffer(vec, dtype=np.float32)))
            r = regions_table.c
            conn.execute(regions_table.insert().from_select(
                ["image_id", "tokens", "channels", "data"],
                sa.select(sa.literal(iid), r.tokens, r.channels, r.data).where(r.image_id == source_id)))
            for cap in conn.execute(sa.select(captions_table).where(
                    (captions_table.c.image_id == source_id) & (captions_table.c.source == "exif"))).all():
                cid = conn.execute(captions_table.insert().values(image_id=iid, text=cap.text, source="exif",
                                                                  vector=cap.vector)).inserted_primary_key[0]
                self._record("captions", add=(cid, np.frombuffer(cap.vector, dtype=np.float32)))
            conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == record.path))
        return iid

    def update_file_state(self, image_id: int, *, path: str | None = None, folder_id: int | None = None,
                          size: int, mtime_ns: int) -> None:
        """Record a touched or moved file whose content (hash) did not change."""
        values: dict = {"size": size, "mtime_ns": mtime_ns}
        if path is not None:
            values["path"] = path
        if folder_id is not None:
            values["folder_id"] = folder_id
        with self._tx() as conn:
            if path is not None:
                self._drop_path(conn, path, keep=image_id)
                conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == path))
            conn.execute(images_table.update().where(images_table.c.id == image_id).values(**values))

    def _drop_path(self, conn: sa.Connection, path: str, keep: int | None = None) -> None:
        """Delete the image row at ``path`` (but not ``keep``), its vector, regions and captions, recording
        the change."""
        q = sa.select(images_table.c.id).where(images_table.c.path == path)
        if keep is not None:
            q = q.where(images_table.c.id != keep)
        old = conn.execute(q).scalars().all()
        if not old:
            return
        self._record("images", remove=old)
        self._record("captions", remove=conn.execute(
            sa.select(captions_table.c.id).where(captions_table.c.image_id.in_(old))).scalars())
        conn.execute(sa.delete(captions_table).where(captions_table.c.image_id.in_(old)))
        conn.execute(sa.delete(regions_table).where(regions_table.c.image_id.in_(old)))
        conn.execute(sa.delete(image_vectors_table).where(image_vectors_table.c.image_id.in_(old)))
        conn.execute(sa.delete(images_table).where(images_table.c.id.in_(old)))

    def remove_images(self, ids: Iterable[int]) -> int:
        """Delete images (and their captions, regions and vectors); returns how many were removed."""
        ids = list(ids)
        n = 0
        with self._tx() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                self._record("captions", remove=conn.execute(
                    sa.select(captions_table.c.id).where(captions_table.c.image_id.in_(chunk))).scalars())
                self._record("images", remove=chunk)
                conn.execute(sa.delete(captions_table).where(captions_table.c.image_id.in_(chunk)))
                conn.execute(sa.delete(regions_table).where(regions_table.c.image_id.in_(chunk)))
                conn.execute(sa.delete(image_vectors_table).where(image_vectors_table.c.image_id.in_(chunk)))
                n += conn.execute(sa.delete(images_table).where(images_table.c.id.in_(chunk))).rowcount
        return n

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """id -> ImageRow for the ids that exist."""
        ids = [int(i) for i in ids]
        out: dict[int, ImageRow] = {}
        c = images_table.c
        with self._connect() as conn:
            for i in range(0, len(ids), 500):
                q = (sa.select(c.id, c.path, c.size, c.mtime_ns, c.hash, c.width, c.height, c.format, c.taken_at,
                               folders_table.c.path.label("folder"))
                     .join(folders_table, folders_table.c.id == c.folder_id).where(c.id.in_(ids[i:i + 500])))
                out.update({r.id: ImageRow(**r._mapping) for r in conn.execute(q)})
        return out

    def image_by_path(self, path: str) -> ImageRow | None:
        """The indexed image at this absolute path, if any."""
        with self._connect() as conn:
            iid = conn.execute(sa.select(images_table.c.id).where(images_table.c.path == path)).scalar()
        return self.images([iid]).get(iid) if iid is not None else None

    def image_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these images, (n, dim), in the order asked."""
        return self._vectors(image_vectors_table.c.image_id, image_vectors_table.c.vector, ids)

    def _vectors(self, id_col: sa.Column, vector_col: sa.Column, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors (n, dim) of rows ``ids`` of one table, in the order asked."""
        found: dict[int, np.ndarray] = {}
        with self._connect() as conn:
            for i in range(0, len(ids), 500):
                for rid, blob in conn.execute(sa.select(id_col, vector_col).where(
                        id_col.in_([int(x) for x in ids[i:i + 500]]))):
                    found[rid] = np.frombuffer(blob, dtype=np.float32)
        return np.stack([found[int(i)] for i in ids]) if len(ids) else np.zeros((0, self._dim()), np.float32)

    def count_images(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(images_table)).scalar_one())

    def count_captions(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(captions_table)).scalar_one())

    # -- captions ---------------------------------------------------------------------------

    def captions_of(self, image_ids: Iterable[int]) -> dict[int, list[CaptionRow]]:
        """image id -> its captions."""
        ids = list(image_ids)
        out: dict[int, list[CaptionRow]] = {i: [] for i in ids}
        c = captions_table.c
        with self._connect() as conn:
            for i in range(0, len(ids), 500):
                q = sa.select(c.id, c.image_id, c.text, c.source).where(c.image_id.in_(ids[i:i + 500])).order_by(c.id)
                for r in conn.execute(q):
                    out[r.image_id].append(CaptionRow(r.id, r.image_id, r.text, r.source))
        return out

    def folder_captions(self, folder_id: int) -> dict[int, set[tuple[str, str]]]:
        """image id -> {(text, source)} for every captioned image under one root."""
        c = captions_table.c
        q = (sa.select(c.image_id, c.text, c.source).join(images_table, images_table.c.id == c.image_id)
             .where(images_table.c.folder_id == folder_id))
        out: dict[int, set[tuple[str, str]]] = {}
        with self._connect() as conn:
            for r in conn.execute(q):
                out.setdefault(r.image_id, set()).add((r.text, r.source))
        return out

    def caption_vectors_for_texts(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Already-embedded vectors for any of these exact caption texts."""
        texts = list(set(texts))
        out: dict[str, np.ndarray] = {}
        c = captions_table.c
        with self._connect() as conn:
            for i in range(0, len(texts), 500):
                for text, blob in conn.execute(sa.select(c.text, c.vector).where(c.text.in_(texts[i:i + 500]))):
                    out[text] = np.frombuffer(blob, dtype=np.float32)
        return out

    def caption_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these captions, (n, dim), in the order asked."""
        return self._vectors(captions_table.c.id, captions_table.c.vector, ids)

    def add_captions(self, items: Sequence[tuple[int, str, str]], vectors: np.ndarray) -> list[int]:
        """Insert (image_id, text, source) captions with their vectors; returns their ids."""
        ids = []
        with self._tx() as conn:
            for (image_id, text, source), vec in zip(items, vectors):
                ids.append(int(conn.execute(captions_table.insert().values(
                    image_id=image_id, text=text, source=source, vector=_to_blob(vec))).inserted_primary_key[0]))
                self._record("captions", add=(ids[-1], vec))
        return ids

    def remove_captions(self, image_id: int, pairs: Iterable[tuple[str, str]]) -> int:
        """Delete this image's captions with these (text, source) pairs."""
        n = 0
        c = captions_table.c
        with self._tx() as conn:
            for text, source in pairs:
                where = (c.image_id == image_id) & (c.text == text) & (c.source == source)
                self._record("captions", remove=conn.execute(sa.select(c.id).where(where)).scalars())
                n += conn.execute(sa.delete(captions_table).where(where)).rowcount
        return n

    def captions(self, ids: Iterable[int]) -> dict[int, CaptionRow]:
        """caption id -> CaptionRow."""
        ids = [int(i) for i in ids]
        c = captions_table.c
        out = {}
        with self._connect() as conn:
            for i in range(0, len(ids), 500):
                for r in conn.execute(sa.select(c.id, c.image_id, c.text, c.source).where(c.id.in_(ids[i:i + 500]))):
                    out[r.id] = CaptionRow(r.id, r.image_id, r.text, r.source)
        return out

    # -- skipped files ----------------------------------------------------------------------

    def record_skip(self, folder_id: int, path: str, reason: str, size: int | None = None,
                    mtime_ns: int | None = None) -> None:
        """Remember that a file could not be indexed, and why."""
        with self._tx() as conn:
            conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == path))
            conn.execute(skipped_table.insert().values(path=path, folder_id=folder_id, size=size, mtime_ns=mtime_ns,
                                                       reason=reason, at=time.time()))

    def skipped(self, folder_id: int | None = None) -> dict[str, dict]:
        """path -> {reason, size, mtime_ns} of files that could not be indexed."""
        q = sa.select(skipped_table)
        if folder_id is not None:
            q = q.where(skipped_table.c.folder_id == folder_id)
        with self._connect() as conn:
            return {r.path: {"reason": r.reason, "size": r.size, "mtime_ns": r.mtime_ns} for r in conn.execute(q)}

    def forget_skips(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        with self._tx() as conn:
            for i in range(0, len(paths), 500):
                conn.execute(sa.delete(skipped_table).where(skipped_table.c.path.in_(paths[i:i + 500])))

    # -- vector indexes ---------------------------------------------------------------------

    def _dim(self) -> int:
        info = self.encoder_info
        if info is None:
            raise EmptyIndexError(f"the index in {self.data_dir} is empty (run `imgsearch index DIR` first)")
        return info.dim

    def _index_path(self, kind: str) -> Path:
        return self.data_dir / f"{kind}.faiss"

    def _all_vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        if kind == "images":
            q = sa.select(image_vectors_table.c.image_id, image_vectors_table.c.vector)
        else:
            q = sa.select(captions_table.c.id, captions_table.c.vector)
        ids, blobs = [], []
        with self._connect() as conn:
            for i, b in conn.execute(q):
                ids.append(i)
                blobs.append(b)
        dim = self._dim()
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim) if ids \
            else np.zeros((0, dim), np.float32)
        return np.asarray(ids, dtype=np.int64), vecs

    def index(self, kind: str) -> VectorIndex:
        """The FAISS index of "images" or "captions", loaded, or rebuilt if it lags SQLite."""
        gen = self.generation
        if gen != self._loaded_generation:
            self._indexes.clear()
            self._loaded_generation = gen
        if kind not in self._indexes:
            self._indexes[kind] = self._load_or_rebuild(kind, gen)
        return self._indexes[kind]

    def _sidecar(self, kind: str) -> dict | None:
        try:
            saved = json.loads(self._index_path(kind).with_suffix(".json").read_text())
            return saved if isinstance(saved, dict) else None
        except (OSError, ValueError):
            return None

    def _load_saved(self, kind: str, gen: int, *, mmap: bool) -> VectorIndex | None:
        """The saved FAISS file, only if its sidecar says it reflects generation ``gen`` (else None)."""
        path, dim = self._index_path(kind), self._dim()
        saved = self._sidecar(kind)
        if not saved or saved.get("generation") != gen or saved.get("dim") != dim or not path.exists():
            return None
        try:
            vi = VectorIndex.load(path, dim, mmap=mmap, params=self.index_params, deleted=saved.get("deleted") or ())
        except (OSError, ValueError, RuntimeError):
            return None
        if "total" in saved and int(vi.index.ntotal) != int(saved["total"]):
            return None  # a FAISS file from another save than its sidecar
        return vi

    def _load_or_rebuild(self, kind: str, gen: int) -> VectorIndex:
        # Readers memory-map the file (opens in milliseconds at any size); the writer reads it
        # into memory because it updates it in place.
        vi = self._load_saved(kind, gen, mmap=self.mmap_indexes and self._lock_fd is None)
        if vi is not None:
            return vi
        if self._lock_fd is not None or not self._writer_active():
            vi = self._rebuild(kind)
            self._save_index(kind, vi, gen)
        else:
            # Another process is indexing and will save its own file: build a private exact index,
            # which is quick at any size (an HNSW build of a large library takes minutes).
            vi = self._rebuild(kind, INDEX_FLAT)
        return vi

    def _rebuild(self, kind: str, index_kind: str | None = None) -> VectorIndex:
        ids, vecs = self._all_vectors(kind)
        return VectorIndex.build(self._dim(), ids, vecs, self.index_params, kind=index_kind)

    def _apply_delta(self, delta: "_Delta", old: int, new: int) -> None:
        """After a commit from ``old`` to ``new``: carry the loaded indexes over, updated in place.

        ``_file_gen`` tracks, per kind, the generation whose vectors the saved FAISS file holds,
        as far as this process knows: a commit that leaves a kind's vectors alone carries it
        forward, so ``save_indexes`` only re-stamps that file's sidecar instead of rebuilding it.
        """
        if delta.unknown:
            self._indexes.clear()
            self._file_gen.clear()
            self._file_gen_seen.clear()
            self._loaded_generation = -1
            return
        if self._loaded_generation != old:
            self._indexes.clear()  # loaded at another generation: of no use
        for kind in INDEX_KINDS:
            if kind not in self._file_gen:
                saved = self._sidecar(kind)
                if saved and isinstance(saved.get("generation"), int):
                    self._file_gen[kind] = self._file_gen_seen[kind] = saved["generation"]
            file_current = self._file_gen.get(kind) == old
            if kind not in delta.kinds:
                if file_current:
                    self._file_gen[kind] = new
                continue
            self._file_gen.pop(kind, None)
            seen = self._file_gen_seen.pop(kind, None)
            add_ids, add_vecs, removed = delta.kinds[kind]
            vi = self._indexes.get(kind)
            if (vi is None or not vi.mutable) and self._lock_fd is not None and file_current:
                # the indexer: pick up the saved file once rather than rebuild from SQLite at the end
                vi = self._load_saved(kind, seen, mmap=False)
            if vi is None or not vi.mutable:
                self._indexes.pop(kind, None)
                continue
            vi.remove(removed)
            ok = vi.add(np.asarray(add_ids, np.int64),
                        np.stack(add_vecs) if add_vecs else np.zeros((0, vi.dim), np.float32))
            if ok:
                self._indexes[kind] = vi
            else:
                self._indexes.pop(kind, None)  # re-added HNSW tombstone: rebuilt on next use
        self._loaded_generation = new

    def _writer_active(self) -> bool:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _save_index(self, kind: str, vi: VectorIndex, gen: int) -> None:
        """Write the FAISS file and then its sidecar; the old sidecar goes first, so a crash in
        between leaves no sidecar (and a rebuild), never a sidecar vouching for the wrong file."""
        path = self._index_path(kind)
        side = path.with_suffix(".json")
        with contextlib.suppress(FileNotFoundError):
            side.unlink()
        vi.save(path)
        _atomic_write_text(side, json.dumps({"generation": gen, "dim": vi.dim, "count": vi.ntotal, "type": vi.kind,
                                             "total": int(vi.index.ntotal), "deleted": sorted(vi.deleted)}))

    def _file_gen_base(self, kind: str) -> int | None:
        return self._file_gen_seen.get(kind)

    def save_indexes(self) -> None:
        """Bring both FAISS files up to date with SQLite and write them atomically.

        Files already at the current generation are left alone. An index that outgrew its type
        (flat past the HNSW threshold, HNSW shrunk below half of it) or holds too many HNSW
        tombstones is rebuilt from the stored vectors first.
        """
        gen = self.generation
        params = self.index_params
        for kind in ("images", "captions"):
            if gen == self._loaded_generation and kind in self._indexes:
                vi = self._indexes[kind]
                wanted = vi.kind if vi.kind == INDEX_IVF else params.kind_for(vi.ntotal)
                if vi.kind == INDEX_HNSW and vi.ntotal > params.hnsw_threshold // 2:
                    wanted = INDEX_HNSW  # hysteresis: no flip-flopping around the threshold
                if wanted != vi.kind or vi.deleted_fraction > params.max_deleted_fraction:
                    vi = self._indexes[kind] = self._rebuild(kind)
            else:
                saved = self._sidecar(kind)
                if saved and saved.get("generation") == gen and self._index_path(kind).exists():
                    continue  # already saved at this generation: nothing to write
                if saved and self._file_gen.get(kind) == gen and saved.get("generation") == self._file_gen_base(kind) \
                        and self._index_path(kind).exists():
                    # this kind's vectors did not change since the file was saved: re-stamp its sidecar
                    _atomic_write_text(self._index_path(kind).with_suffix(".json"), json.dumps({**saved, "generation": gen}))
                    continue
                vi = self.index(kind)
                if self._sidecar(kind) and self._sidecar(kind).get("generation") == gen:
                    continue  # index() just rebuilt and saved it
            saved = self._sidecar(kind)
            if saved and saved.get("generation") == gen and saved.get("total") == int(vi.index.ntotal) \
                    and saved.get("type") == vi.kind and self._index_path(kind).exists():
                continue
            if not vi.mutable:
                continue
            self._save_index(kind, vi, gen)

    def search_images(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k image (scores, ids) for each query vector."""
        return self._search("images", queries, k)

    def search_captions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k caption (scores, ids) for each query vector."""
        return self._search("captions", queries, k)

    def _search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self._dim():
            raise EncoderMismatchError(f"query vectors have dim {q.shape[1]}, the index holds dim {self._dim()}")
        return self.index(kind).search(q, k)

    def close(self) -> None:
        self.release_writer_lock()
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- consistency check and repair (`imgsearch check`) ------------------------------------

    def check(self, repair: bool = False) -> "CheckReport":
        """Compare SQLite (the truth) with itself, the FAISS files and the photo folders.

        Finds FAISS ids without rows and rows missing from FAISS, images without vectors (and
        vectors without images), vectors of the wrong dimension, orphan captions, stale, corrupt or
        missing FAISS files, a FAISS file claiming a generation the database never reached, region
        rows of no image (or of the wrong size), and indexed photos whose files vanished; images
        without regions are fine (older indexes, encoders without them). With ``repair`` (which
        takes the writer lock, so it refuses while an indexer runs) it drops the broken rows, so
        the next `imgsearch index` embeds those photos again, and rebuilds both FAISS files from
        the stored vectors (not for broken region rows alone: they hold no vectors). Vanished
        files are only reported: the next `imgsearch index` of their folder removes them.
        """
        if repair:
            self.acquire_writer_lock()
        try:
            report = self._check()
            if repair and report.issues:
                report.repaired = self._repair(report)
                report.remaining = self._check().issues
            return report
        finally:
            if repair:
                self.release_writer_lock()

    def _check(self) -> "CheckReport":
        info = self.encoder_info
        gen = self.generation
        report = CheckReport(data_dir=str(self.data_dir), generation=gen, writer_active=self._writer_active())
        im, iv, cp, rg = images_table.c, image_vectors_table.c, captions_table.c, regions_table.c
        with self._connect() as conn:
            paths = dict(conn.execute(sa.select(im.id, im.path)).all())
            regions = {r.image_id: (r.n, r.tokens, r.channels) for r in conn.execute(
                sa.select(rg.image_id, rg.tokens, rg.channels, sa.func.length(rg.data).label("n")))}
            region_key = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == REGION_KEY_META)).scalar()
            vec_len = dict(conn.execute(sa.select(iv.image_id, sa.func.length(iv.vector))).all())
            caps = {r.id: (r.image_id, r.n) for r in conn.execute(
                sa.select(cp.id, cp.image_id, sa.func.length(cp.vector).label("n")))}
        report.images, report.captions, report.regions = len(paths), len(caps), len(regions)
        nbytes = info.dim * 4 if info else None

        def issue(kind: str, ids, message: str, repairable: bool = True) -> None:
            ids = sorted(ids)
            if ids:
                report.issues.append(CheckIssue(kind, f"{len(ids)} {message}", len(ids), repairable, ids[:20]))

        issue("image_without_vector", set(paths) - set(vec_len), "image row(s) without a stored vector")
        issue("vector_without_image", set(vec_len) - set(paths), "stored vector(s) without an image row")
        if nbytes is None and (vec_len or caps):
            report.issues.append(CheckIssue("no_encoder", "vectors are stored but the index records no encoder "
                                            "(rebuild it with `imgsearch index DIR --rebuild`)", 1, False))
        bad_img = {i for i, n in vec_len.items() if nbytes is not None and n != nbytes}
        bad_cap = {i for i, (_, n) in caps.items() if nbytes is not None and n != nbytes}
        issue("image_vector_dim", bad_img, f"image vector(s) whose size is not {info.dim if info else '?'} floats")
        issue("orphan_caption", {i for i, (img, _) in caps.items() if img not in paths}, "caption(s) of no image")
        issue("caption_vector_dim", bad_cap, f"caption vector(s) whose size is not {info.dim if info else '?'} floats")
        # regions are optional (older indexes, encoders without them): only broken rows count
        issue("orphan_region", set(regions) - set(paths), "region row(s) of no image")
        issue("region_size", {i for i, (n, t, c) in regions.items() if n != t * (4 + c)},
              "region row(s) whose size does not match their shape")
        if regions and region_key is None:
            issue("region_unbound", set(regions), "region row(s) stored without a region key")
        gone = [p for p in paths.values() if not os.path.lexists(p)]
        if gone:
            report.issues.append(CheckIssue("missing_file", f"{len(gone)} indexed photo(s) no longer on disk "
                                            "(the next `imgsearch index` of their folder removes them)",
                                            len(gone), False, sorted(gone)[:20]))
        if info is None:
            return report
        expected = {"images": set(vec_len) & set(paths) - bad_img,
                    "captions": {i for i, (img, _) in caps.items() if img in paths} - bad_cap}
        for kind, want in expected.items():
            self._check_faiss_file(kind, want, gen, info.dim, report)
        return report

    def _check_faiss_file(self, kind: str, want: set[int], gen: int, dim: int, report: "CheckReport") -> None:
        path, side = self._index_path(kind), self._index_path(kind).with_suffix(".json")

        def add(what: str, message: str, count: int = 1, examples=()) -> None:
            report.issues.append(CheckIssue(f"faiss_{what}", f"{path.name}: {message}", count, True,
                                            sorted(examples)[:20]))

        if not path.exists() and not side.exists():
            if want:
                add("missing", "missing (it is rebuilt from the stored vectors on first search)")
            return
        if not side.exists():
            add("stale", f"written without its generation file {side.name} (an interrupted save); "
                         "it is rebuilt on first search")
            return
        try:
            saved = json.loads(side.read_text())
            saved_gen = int(saved["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            add("corrupt", f"its generation file {side.name} is missing or unreadable")
            return
        deleted = saved.get("deleted") or ()
        try:
            vi = VectorIndex.load(path, dim, mmap=True, params=self.index_params, deleted=deleted)
        except ValueError as e:  # the file holds vectors of another dimension
            add("dim", str(e).replace(str(path), path.name))
            return
        except (RuntimeError, OSError) as e:
            add("corrupt", f"unreadable FAISS file ({str(e).strip().splitlines()[0][:120]})")
            return
        if saved.get("dim") not in (None, dim):
            add("dim", f"its generation file says {saved.get('dim')}-d vectors, the index is {dim}-d")
            return
        if saved_gen > gen:
            add("generation_mismatch", f"claims generation {saved_gen}, but the database is only at {gen} "
                                       "(restored from a backup, or copied from another index?)")
            return
        if saved_gen < gen:
            add("stale", f"reflects generation {saved_gen}, the database is at {gen}"
                         + (" (an indexer is running)" if report.writer_active else ""))
            return
        if "total" in saved and int(vi.index.ntotal) != int(saved["total"]):
            add("corrupt", f"holds {vi.index.ntotal} vectors, its generation file says {saved['total']} "
                           "(the file and its generation file come from different saves)")
            return
        stored = vi.ids().tolist()
        have = set(stored) - {int(i) for i in deleted}
        if len(set(stored)) != len(stored):
            add("duplicate_ids", "holds an id more than once", len(stored) - len(set(stored)))
        extra, lacking = have - want, want - have
        if extra:
            add("ids_without_rows", f"{len(extra)} id(s) with no row in the database", len(extra), extra)
        if lacking:
            add("rows_missing", f"{len(lacking)} row(s) of the database are not in it", len(lacking), lacking)

    def _repair(self, report: "CheckReport") -> list[str]:
        """Drop the rows the check found broken, then rebuild both FAISS files from the stored vectors."""
        by_kind = {i.kind: i for i in report.issues}
        # Region rows hold no vectors: fixing them is a tracked transaction that leaves the
        # generation (and so the FAISS files) alone.
        with self._tx() as conn:
            region_done = self._repair_regions(conn)
        if not any(i.repairable and i.kind not in _REGION_ISSUES for i in report.issues):
            return region_done
        done: list[str] = []
        im, iv, cp = images_table.c, image_vectors_table.c, captions_table.c
        info = self.encoder_info
        nbytes = info.dim * 4 if info else None
        with self.transaction() as conn:
            paths = {r[0] for r in conn.execute(sa.select(im.id))}
            no_vec = [r[0] for r in conn.execute(sa.select(im.id).where(~im.id.in_(sa.select(iv.image_id))))]
            bad_img = [] if nbytes is None else [
                r[0] for r in conn.execute(sa.select(iv.image_id).where(sa.func.length(iv.vector) != nbytes))]
            drop = sorted(set(no_vec) | set(bad_img) & paths)
            for i in range(0, len(drop), 500):
                chunk = drop[i:i + 500]
                conn.execute(sa.delete(captions_table).where(cp.image_id.in_(chunk)))
                conn.execute(sa.delete(regions_table).where(regions_table.c.image_id.in_(chunk)))
                conn.execute(sa.delete(image_vectors_table).where(iv.image_id.in_(chunk)))
                conn.execute(sa.delete(images_table).where(im.id.in_(chunk)))
            if drop:
                done.append(f"dropped {len(drop)} image row(s) without a usable vector "
                            "(the next `imgsearch index` embeds those photos again)")
            n = conn.execute(sa.delete(image_vectors_table).where(~iv.image_id.in_(sa.select(im.id)))).rowcount
            if n:
                done.append(f"dropped {n} stored vector(s) without an image row")
            n = conn.execute(sa.delete(captions_table).where(~cp.image_id.in_(sa.select(im.id)))).rowcount
            if n:
                done.append(f"dropped {n} caption(s) of no image")
            if nbytes is not None:
                n = conn.execute(sa.delete(captions_table).where(sa.func.length(cp.vector) != nbytes)).rowcount
                if n:
                    done.append(f"dropped {n} caption(s) with a wrong-size vector (the next `imgsearch index` "
                                "adds sidecar and manifest captions again)")
        if info is not None and (done or any(k.startswith("faiss_") for k in by_kind)):
            for kind in ("images", "captions"):
                for p in (self._index_path(kind), self._index_path(kind).with_suffix(".json")):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            self._indexes.clear()
            self._loaded_generation = -1
            self.save_indexes()
            done.append("rebuilt images.faiss and captions.faiss from the stored vectors")
        return region_done + done

    def _repair_regions(self, conn: sa.Connection) -> list[str]:
        """Drop region rows of no image, of the wrong size, or stored with no region key bound."""
        done = []
        rg = regions_table.c
        n = conn.execute(sa.delete(regions_table).where(~rg.image_id.in_(sa.select(images_table.c.id)))).rowcount
        if n:
            done.append(f"dropped {n} region row(s) of no image")
        n = conn.execute(sa.delete(regions_table).where(
            sa.func.length(rg.data) != rg.tokens * (4 + rg.channels))).rowcount
        if n:
            done.append(f"dropped {n} region row(s) of the wrong size")
        if conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == REGION_KEY_META)).scalar() is None:
            n = conn.execute(sa.delete(regions_table)).rowcount
            if n:
                done.append(f"dropped {n} region row(s) stored without a region key")
        return done


_REGION_ISSUES = frozenset({"orphan_region", "region_size", "region_unbound"})


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def destroy_store(data_dir: str | os.PathLike) -> None:
    """Delete the index files in a data folder (and nothing else there); only when no process uses it."""
    d = Path(data_dir).expanduser()
    for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "images.faiss", "images.json",
                 "captions.faiss", "captions.json"):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


@dataclass
class CheckIssue:
    """One kind of drift found by ``Store.check``."""

    kind: str  # e.g. faiss_ids_without_rows, image_without_vector, missing_file
    message: str
    count: int = 1
    repairable: bool = True  # False: reported only (a vanished photo file, say)
    examples: list = field(default_factory=list)  # a few of the ids or paths concerned

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CheckReport:
    """What ``Store.check`` found, and (with repair) what it did and what is left."""

    data_dir: str
    generation: int = 0
    images: int = 0
    captions: int = 0
    regions: int = 0  # images with stored region features
    writer_active: bool = False
    issues: list[CheckIssue] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    remaining: list[CheckIssue] | None = None  # after a repair: the issues a second check still finds

    @property
    def ok(self) -> bool:
        """True when nothing that needs repair is (left) wrong; vanished photo files do not count."""
        left = self.issues if self.remaining is None else self.remaining
        return not any(i.repairable for i in left)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["issues"] = [i.as_dict() for i in self.issues]
        d["remaining"] = None if self.remaining is None else [i.as_dict() for i in self.remaining]
        d["ok"] = self.ok
        return d
