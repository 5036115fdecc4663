"""The ``Store`` facade: one imgsearch data folder, its SQLite rows and its FAISS indexes.

It composes the parts of this package (the database and its transactions, the row catalog, the
FAISS index set, the writer lock and the checker) behind the API the rest of imgsearch uses.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sqlalchemy as sa

from ..errors import EncoderMismatchError, StoreError
from .caption_map import CaptionMap, CaptionSet
from .catalog import Catalog
from .check import Checker, CheckReport
from .database import Database
from .filters import SearchFilters
from .indexes import IndexSet
from .lock import WriterLock
from .records import CaptionRow, EncoderInfo, FileState, ImageRecord, ImageRow, TermMatch
from .regions import read_regions, region_info
from .schema import DB_FILE, REGION_KEY_META, meta_table, open_engine, read_meta, regions_table, write_meta
from .terms_index import TERMS_GENERATION, TermsCache, match_terms
from .vectors import DEFAULT_INDEX_PARAMS, IndexParams, VectorIndex


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
        self.engine = open_engine(self.data_dir, db_path)
        self._lock = WriterLock(self.data_dir)
        self._db = Database(self.engine, self.data_dir)
        self._catalog = Catalog(self._db)
        # all_vectors is looked up on the store at call time: it is the one place FAISS rebuilds read SQLite
        self._faiss = IndexSet(self.data_dir, index_params or DEFAULT_INDEX_PARAMS, mmap=mmap_indexes,
                               lock=self._lock, generation=lambda: self.generation, dim=self._db.dim,
                               all_vectors=lambda kind: self._all_vectors(kind))
        self._db.on_commit = self._faiss.apply_delta
        self._checker = Checker(self._db, self._faiss, self._lock)
        self._filters = SearchFilters(self._db, lambda: self.generation)
        self._caption_map: CaptionMap | None = None  # see caption_set
        self._caption_map_asked = -1  # the generation a caption map was last asked for (built on the second ask)
        self._terms_cache = TermsCache()  # see match_terms

    @property
    def index_params(self) -> IndexParams:
        """How the FAISS indexes are chosen and tuned."""
        return self._faiss.params

    @index_params.setter
    def index_params(self, params: IndexParams) -> None:
        self._faiss.params = params

    @property
    def mmap_indexes(self) -> bool:
        """Whether readers memory-map the saved FAISS files."""
        return self._faiss.mmap

    @mmap_indexes.setter
    def mmap_indexes(self, mmap: bool) -> None:
        self._faiss.mmap = mmap

    # -- metadata ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """One value of the meta table, or None."""
        return self._db.get_meta(key)

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (None: delete) one value of the meta table, e.g. a sync marker; vectors are untouched, so the
        generation does not move. ``clear`` drops every key but the schema version and the two generations."""
        if key in ("schema_version", "generation", "encoder", REGION_KEY_META, TERMS_GENERATION):
            raise ValueError(f"meta key {key!r} is the store's own")
        with self._db.tracked() as conn:
            if value is None:
                conn.execute(sa.delete(meta_table).where(meta_table.c.key == key))
            else:
                write_meta(conn, key, value)

    @property
    def encoder_info(self) -> EncoderInfo | None:
        """The encoder this index was built with, or None for a new index."""
        return self._db.encoder_info

    def bind_encoder(self, spec: str, fingerprint: str, dim: int, region_key: str | None = None) -> None:
        """Record the encoder of a new index, or check it matches the one the index was built with.

        With ``region_key`` (the encoder's region extractor, see ``bind_regions``) the region
        features are bound too; None leaves any stored regions and their key alone.
        """
        info = self.encoder_info
        if info is None:
            with self.transaction() as conn:
                write_meta(conn, "encoder", json.dumps({"spec": spec, "fingerprint": fingerprint, "dim": dim}))
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
        with self._db.tracked() as conn:
            if read_meta(conn, REGION_KEY_META) == key:
                return False
            dropped = conn.execute(sa.delete(regions_table)).rowcount > 0
            write_meta(conn, REGION_KEY_META, key)
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
        row = self._db.peek("SELECT value FROM meta WHERE key = 'generation'")  # read several times a search
        return int(row[0]) if row else 0

    @property
    def index_generation(self) -> int:
        """The generation the loaded FAISS indexes reflect: what the last search saw (no SQLite read)."""
        return self._faiss.loaded_generation

    # -- transactions and the writer lock ---------------------------------------------------

    def transaction(self, *, tracked: bool = False) -> contextlib.AbstractContextManager[sa.Connection]:
        """One atomic SQLite transaction; nested calls join the outer one.

        A plain transaction may change vectors in ways the store cannot see, so it bumps the
        generation and drops the loaded FAISS indexes (they are reloaded or rebuilt on next use).
        With ``tracked=True`` only the Store's own methods write vectors inside it: they record
        what they add and remove, the generation is bumped only when a vector changed, and the
        loaded indexes are updated incrementally instead of being rebuilt.
        """
        return self._db.transaction(tracked=tracked)

    def acquire_writer_lock(self) -> None:
        """Take the single-writer lock, or raise StoreError if another indexer holds it.

        The lock is an flock, so a killed process never leaves a stale lock behind.
        """
        self._lock.acquire()

    def release_writer_lock(self) -> None:
        """Let the writer lock go (a no-op when not held)."""
        self._lock.release()

    def clear(self) -> None:
        """Empty the index (rows, vectors, regions, encoder and region bindings, FAISS files) for a rebuild;
        needs the writer lock."""
        if not self._lock.held:
            raise StoreError("clearing an index needs the writer lock (acquire_writer_lock)")
        self._catalog.clear()
        self._faiss.remove_files()

    # -- folders, images, captions and skipped files (see catalog.Catalog) -------------------

    def add_folder(self, path: str) -> int:
        """The id of an indexed root folder, registering it if new."""
        return self._catalog.add_folder(path)

    def mark_folder_indexed(self, folder_id: int) -> None:
        """Stamp a root folder's last index time."""
        self._catalog.mark_folder_indexed(folder_id)

    def folders(self) -> list[dict]:
        """Indexed root folders with their image counts and last index time."""
        return self._catalog.folders()

    def remove_folder(self, path: str) -> tuple[int, int] | None:
        """Drop an indexed root folder and every photo indexed under it, atomically (the photo files are
        untouched); needs the writer lock. Returns (folder id, photos removed), None when ``path`` is no root.
        ``save_indexes`` afterwards writes the FAISS files without them."""
        if not self._lock.held:
            raise StoreError("removing a folder needs the writer lock (acquire_writer_lock)")
        return self._catalog.remove_folder(path)

    def photo_folders(self) -> list[str]:
        """Every folder that directly holds an indexed photo, sorted (for folder pickers; read-only)."""
        # rtrim(path, <path without '/'>) strips the file name: SQLite has no dirname()
        sql = "SELECT DISTINCT rtrim(path, replace(path, '/', '')) FROM images"
        with self._db.connect() as conn:
            rows = conn.connection.driver_connection.execute(sql).fetchall()
        return sorted(d.rstrip("/") or "/" for (d,) in rows)

    def file_states(self, folder_id: int) -> dict[str, FileState]:
        """path -> FileState for every image under one root folder."""
        return self._catalog.file_states(folder_id)

    def known_hashes(self) -> dict[str, int]:
        """content hash -> one image id holding it, over the whole store."""
        return self._catalog.known_hashes()

    def image_hashes(self) -> list[tuple[int, str]]:
        """(image id, content hash) of every stored photo, by id (photos sharing a hash hold the same bytes)."""
        with self._db.connect() as conn:
            rows = conn.connection.driver_connection.execute("SELECT id, hash FROM images ORDER BY id").fetchall()
        return [(int(i), str(h)) for i, h in rows]

    def add_images(self, folder_id: int, records: Sequence[ImageRecord], vectors: np.ndarray,
                   regions: np.ndarray | None = None) -> list[int]:
        """Insert images with their vectors (and, optionally, region features (n, R, C) stored
        int8-quantised under the bound region key, see ``bind_regions``), all in one transaction;
        returns their new ids."""
        return self._catalog.add_images(folder_id, records, vectors, regions)

    def bulk_add_images(self, folder_id: int, records: Sequence[ImageRecord], vectors: np.ndarray) -> list[int]:
        """Insert images whose paths are new to the store, with their vectors, by executemany; returns their
        ids. For filling large test and benchmark stores quickly: no regions, no skip records cleared."""
        return self._catalog.bulk_add_images(folder_id, records, vectors)

    def get_regions(self, image_ids: Sequence[int], key: str) -> tuple[np.ndarray, np.ndarray]:
        """Dequantised region features of these images: float32 (n, R, C), in the order asked, and
        a bool (n,) ``found``. Images without stored regions, or every image when ``key`` is not
        the bound region key, come back as zeros with found False; (R, C) is (0, 0) when nothing
        under ``key`` is stored at all."""
        with self._db.connect() as conn:
            return read_regions(conn, image_ids, key)

    def region_info(self) -> dict:
        """What region features the index holds: key, count, shape [R, C] and bytes per image
        (None where nothing is stored), and total bytes."""
        with self._db.connect() as conn:
            return region_info(conn)

    def copy_image(self, source_id: int, folder_id: int, record: ImageRecord) -> int:
        """Insert a duplicate of an indexed image at a new path, reusing its vector, regions and EXIF captions."""
        return self._catalog.copy_image(source_id, folder_id, record)

    def update_file_state(self, image_id: int, *, path: str | None = None, folder_id: int | None = None,
                          size: int, mtime_ns: int) -> None:
        """Record a touched or moved file whose content (hash) did not change."""
        self._catalog.update_file_state(image_id, path=path, folder_id=folder_id, size=size, mtime_ns=mtime_ns)

    def remove_images(self, ids: Iterable[int]) -> int:
        """Delete images (and their captions, regions and vectors); returns how many were removed."""
        return self._catalog.remove_images(ids)

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """id -> ImageRow for the ids that exist."""
        return self._catalog.images(ids)

    def image_by_path(self, path: str) -> ImageRow | None:
        """The indexed image at this absolute path, if any."""
        return self._catalog.image_by_path(path)

    def image_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these images, (n, dim), in the order asked."""
        return self._vectors("images", ids)

    def _vectors(self, kind: str, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of one kind: copied from the loaded FAISS index where it reflects the committed
        generation and no transaction is open (the same float32 values SQLite holds), else read from SQLite."""
        vi = self._faiss.loaded.get(kind)
        if vi is not None and len(ids) and self._db.conn is None and self._faiss.loaded_generation == self.generation:
            vectors, found = vi.stored_vectors(np.asarray(ids, np.int64))
            if found.all():
                return vectors
        read = self._catalog.image_vectors if kind == "images" else self._catalog.caption_vectors
        return read(ids)

    def count_images(self) -> int:
        """How many images the store holds."""
        return self._catalog.count_images()

    def count_captions(self, include_weak: bool = True) -> int:
        """How many captions the store holds (``include_weak=False``: not counting file and folder names)."""
        return self._catalog.count_captions(include_weak)

    def captions_of(self, image_ids: Iterable[int]) -> dict[int, list[CaptionRow]]:
        """image id -> its captions."""
        return self._catalog.captions_of(image_ids)

    def folder_captions(self, folder_id: int, sources: Sequence[str] | None = None) -> dict[int, set[tuple[str, str]]]:
        """image id -> {(text, source)} for every captioned image under one root (only captions of ``sources``
        when given)."""
        return self._catalog.folder_captions(folder_id, sources)

    def match_terms(self, text: str, limit: int = 1000, candidates: Sequence[int] | None = None
                    ) -> dict[int, TermMatch]:
        """image id -> TermMatch for the (up to) ``limit`` photos whose caption, file-name or folder words best
        match ``text`` by BM25 in the lexical index; {} when the text has no words.

        Every token of ``text`` is searched as a plain word (quotes, AND/OR/NOT/NEAR, ``*``, ``^``, ``:`` and
        parentheses are never FTS5 syntax), any word matching. A word matching more than
        ``terms_index.RANK_CAP`` photos is "common": it does not pick photos while the query has rarer words (it
        still adds to their score, fields and all_words). A query of common words only returns its ``limit``
        best by BM25 (ties by id) and also every photo of ``candidates`` (say, a search's nearest photos) that
        holds any of its words, scored alike, so each candidate that holds every content word is known to. Its
        words' matches are read once and kept in memory (17 bytes a match, ``terms_index.CACHE_POSTINGS`` at
        most) until the next write to the lexical index.
        """
        with self._db.connect() as conn:
            # inside a transaction its uncommitted rows may roll back: use a throwaway cache
            cache = self._terms_cache if self._db.conn is None else TermsCache()
            cand = None if candidates is None else np.asarray(candidates, np.int64).reshape(-1)
            return match_terms(conn, text, limit, cand, cache)

    def caption_vectors_for_texts(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Already-embedded vectors for any of these exact caption texts."""
        return self._catalog.caption_vectors_for_texts(texts)

    def caption_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these captions, (n, dim), in the order asked."""
        return self._vectors("captions", ids)

    def caption_set(self, image_ids: Sequence[int]) -> CaptionSet:
        """Every caption of these photos with its stored vector, grouped by photo in the order asked, each
        photo's by caption id. Read from the in-memory caption map and the captions' FAISS index while both
        reflect the committed generation (checked on each call), else from SQLite: the same rows either way."""
        ids = np.asarray(image_ids, np.int64).reshape(-1)
        current = self._current_caption_map(build=True)
        if current is not None:
            cmap, vi = current
            rows = cmap.rows_of(ids)
            vectors, found = vi.stored_vectors(cmap.ids[rows])
            unknown = cmap.unknown(rows)
            if len(unknown):
                sources = self._catalog.caption_sources(cmap.ids[unknown].tolist())
                if self.generation == cmap.generation and len(sources) == len(unknown):  # read at the map's generation
                    cmap.learn(unknown, [sources[int(i)] for i in cmap.ids[unknown]])
            if found.all() and not len(cmap.unknown(rows)):
                return cmap.caption_set(rows, vectors)
        return self._catalog.caption_set(ids.tolist())

    def caption_images(self, caption_ids: Sequence[int]) -> np.ndarray:
        """The photo of each caption id (int64, in the order asked), -1 for captions that are gone."""
        cids = np.asarray(caption_ids, np.int64).reshape(-1)
        current = self._current_caption_map()
        if current is not None:
            return current[0].images_of(cids)
        caps = self.captions(cids.tolist())
        return np.array([caps[int(c)].image_id if int(c) in caps else -1 for c in cids], np.int64)

    def cache_info(self) -> dict:
        """What the query path holds in memory: the caption map's bytes (0 until a hybrid query built it), and the
        word postings the lexical cache holds (tokens, matches, bytes)."""
        held = self._terms_cache.held
        return {"caption_map_bytes": self._caption_map.nbytes if self._caption_map is not None else 0,
                "terms_tokens": len(self._terms_cache.postings), "terms_postings": held,
                "terms_bytes": held * 17}

    def _current_caption_map(self, build: bool = False) -> tuple[CaptionMap, VectorIndex] | None:
        """The caption map and the captions' FAISS index, both at the committed generation; None while a
        transaction is open, when a commit lands while the map is read, and until ``build`` asks for it a second
        time at a generation (a one-off search does not pay for reading every caption): SQLite answers those."""
        if self._db.conn is not None:
            return None
        vi = self.index("captions")  # reads the committed generation, and reloads the index if it moved
        gen = self._faiss.loaded_generation
        cmap = self._caption_map
        if cmap is None or cmap.generation != gen:
            self._caption_map = None
            if not build or self._caption_map_asked != gen:
                self._caption_map_asked = gen if build else self._caption_map_asked
                return None
            ids, image_ids = self._catalog.caption_index()
            if self.generation != gen:
                return None  # the rows just read may be newer than the index
            cmap = self._caption_map = CaptionMap(gen, ids, image_ids)
        return cmap, vi

    def add_captions(self, items: Sequence[tuple[int, str, str]], vectors: np.ndarray) -> list[int]:
        """Insert (image_id, text, source) captions with their vectors; returns their ids."""
        return self._catalog.add_captions(items, vectors)

    def remove_captions(self, image_id: int, pairs: Iterable[tuple[str, str]]) -> int:
        """Delete this image's captions with these (text, source) pairs."""
        return self._catalog.remove_captions(image_id, pairs)

    def captions(self, ids: Iterable[int]) -> dict[int, CaptionRow]:
        """caption id -> CaptionRow."""
        return self._catalog.captions(ids)

    def record_skip(self, folder_id: int, path: str, reason: str, size: int | None = None,
                    mtime_ns: int | None = None) -> None:
        """Remember that a file could not be indexed, and why."""
        self._catalog.record_skip(folder_id, path, reason, size, mtime_ns)

    def skipped(self, folder_id: int | None = None) -> dict[str, dict]:
        """path -> {reason, size, mtime_ns} of files that could not be indexed."""
        return self._catalog.skipped(folder_id)

    def forget_skips(self, paths: Iterable[str]) -> None:
        """Drop the skip records of these paths."""
        self._catalog.forget_skips(paths)

    # -- vector indexes (see indexes.IndexSet) ----------------------------------------------

    def index(self, kind: str) -> VectorIndex:
        """The FAISS index of "images" or "captions", loaded, or rebuilt if it lags SQLite."""
        return self._faiss.get(kind)

    def save_indexes(self) -> None:
        """Bring both FAISS files up to date with SQLite and write them atomically.

        Files already at the current generation are left alone. An index that outgrew its type
        (flat past the HNSW threshold, HNSW shrunk below half of it) or holds too many HNSW
        tombstones is rebuilt from the stored vectors first.
        """
        self._faiss.save_all()

    def filter_ids(self, *, taken_after: datetime.date | None = None, taken_before: datetime.date | None = None,
                   folders: Sequence[str] | None = None) -> np.ndarray | None:
        """Sorted int64 ids of the photos taken in [taken_after, taken_before] (both days included; photos
        without a date taken never match) and lying under any of ``folders``; None when no filter is given.

        A folder must be an indexed root or lie inside one (UnknownFolderError), and the range must not be
        inverted (FilterRangeError). Pass the result to ``search_images(ids=...)``.
        """
        return self._filters.filter_ids(taken_after=taken_after, taken_before=taken_before, folders=folders)

    def search_images(self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k image (scores, ids) for each query vector; with ``ids``, only among those photos (k of
        them when k exist: the filter acts before the top-k)."""
        return self._search("images", queries, k, ids)

    def range_search_images(self, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every photo whose vector scores above ``radius`` for each query vector: (lims, scores, ids), query i's
        hits at ``[lims[i]:lims[i+1]]``, unordered (see ``VectorIndex.range_search``)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        vi = self.index("images")
        if q.shape[1] != vi.dim:
            raise EncoderMismatchError(f"query vectors have dim {q.shape[1]}, the index holds dim {vi.dim}")
        return vi.range_search(q, radius)

    def all_image_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored photo's (ids, vectors): int64 (n,) sorted, float32 (n, dim), read from SQLite."""
        ids, vectors = self._all_vectors("images")
        order = np.argsort(np.asarray(ids, np.int64), kind="stable")
        return np.asarray(ids, np.int64)[order], np.asarray(vectors, np.float32)[order]

    def search_captions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k caption (scores, ids) for each query vector."""
        return self._search("captions", queries, k)

    def _search(self, kind: str, queries: np.ndarray, k: int,
                ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        vi = self.index(kind)  # built or loaded for the bound encoder's dimension (EmptyIndexError without one)
        if q.shape[1] != vi.dim:
            raise EncoderMismatchError(f"query vectors have dim {q.shape[1]}, the index holds dim {vi.dim}")
        return vi.search(q, k, ids=ids)

    def _all_vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (ids, vectors) of one kind: what every FAISS rebuild reads."""
        return self._catalog.all_vectors(kind)

    def _save_index(self, kind: str, vi: VectorIndex, gen: int) -> None:
        """Write one FAISS file and its sidecar at generation ``gen``."""
        self._faiss.save(kind, vi, gen)

    @property
    def _indexes(self) -> dict[str, VectorIndex]:
        """The loaded FAISS indexes by kind."""
        return self._faiss.loaded

    def close(self) -> None:
        """Release the writer lock and the database connections."""
        self.release_writer_lock()
        self._db.close_peekers()
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- consistency check and repair (`imgsearch check`) ------------------------------------

    def check(self, repair: bool = False) -> CheckReport:
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
            report = self._checker.check()
            if repair and report.issues:
                report.repaired = self._checker.repair(report)
                report.remaining = self._checker.check().issues
            return report
        finally:
            if repair:
                self.release_writer_lock()


def destroy_store(data_dir: str | os.PathLike) -> None:
    """Delete the index files in a data folder (and nothing else there); only when no process uses it."""
    d = Path(data_dir).expanduser()
    for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "images.faiss", "images.json",
                 "captions.faiss", "captions.json"):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
