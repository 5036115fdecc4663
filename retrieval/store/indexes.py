"""The life cycle of a store's two FAISS files: load the saved one, or rebuild it from SQLite; follow
each commit incrementally; save with a generation sidecar.

Each ``<kind>.faiss`` has a ``<kind>.json`` sidecar naming the generation it reflects; a file whose
sidecar lags (or is missing) is never trusted, only rebuilt from the stored vectors.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from .database import Delta
from .lock import WriterLock
from .vectors import INDEX_FLAT, INDEX_HNSW, INDEX_IVF, INDEX_KINDS, IndexParams, VectorIndex, atomic_write_text


class IndexSet:
    """The loaded FAISS indexes of one data folder ("images" and "captions") and their files.

    ``generation`` gives the committed generation, ``dim`` the vector dimension and
    ``all_vectors(kind)`` every stored (ids, vectors) of a kind, all read from SQLite when needed;
    ``lock`` tells whether this process is the writer.
    """

    def __init__(self, data_dir: Path, params: IndexParams, *, mmap: bool, lock: WriterLock,
                 generation: Callable[[], int], dim: Callable[[], int],
                 all_vectors: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> None:
        self.data_dir = data_dir
        self.params = params
        self.mmap = mmap
        self.lock = lock
        self.generation = generation
        self.dim = dim
        self.all_vectors = all_vectors
        self.loaded: dict[str, VectorIndex] = {}
        self.loaded_generation = -1
        self.file_gen: dict[str, int] = {}  # see apply_delta
        self.file_gen_seen: dict[str, int] = {}  # the sidecar generation file_gen was carried from

    def path(self, kind: str) -> Path:
        """The FAISS file of one kind (its sidecar is the same path with ``.json``)."""
        return self.data_dir / f"{kind}.faiss"

    def sidecar(self, kind: str) -> dict | None:
        """The saved sidecar of one kind, or None when missing or unreadable."""
        try:
            saved = json.loads(self.path(kind).with_suffix(".json").read_text())
            return saved if isinstance(saved, dict) else None
        except (OSError, ValueError):
            return None

    def reset(self) -> None:
        """Forget the loaded indexes: they are reloaded or rebuilt on next use."""
        self.loaded.clear()
        self.loaded_generation = -1

    def get(self, kind: str) -> VectorIndex:
        """The index of one kind, loaded, or rebuilt if the saved one lags SQLite."""
        gen = self.generation()
        if gen != self.loaded_generation:
            self.loaded.clear()
            self.loaded_generation = gen
        if kind not in self.loaded:
            self.loaded[kind] = self.load_or_rebuild(kind, gen)
        return self.loaded[kind]

    def load_saved(self, kind: str, gen: int, *, mmap: bool) -> VectorIndex | None:
        """The saved FAISS file, only if its sidecar says it reflects generation ``gen`` (else None)."""
        path, dim = self.path(kind), self.dim()
        saved = self.sidecar(kind)
        if not saved or saved.get("generation") != gen or saved.get("dim") != dim or not path.exists():
            return None
        try:
            vi = VectorIndex.load(path, dim, mmap=mmap, params=self.params, deleted=saved.get("deleted") or ())
        except (OSError, ValueError, RuntimeError):
            return None
        if "total" in saved and int(vi.index.ntotal) != int(saved["total"]):
            return None  # a FAISS file from another save than its sidecar
        return vi

    def load_or_rebuild(self, kind: str, gen: int) -> VectorIndex:
        """The saved index at ``gen``, else one rebuilt from SQLite (and saved, unless another process writes)."""
        # Readers memory-map the file (quick to open at any size); the writer reads it into
        # memory because it updates it in place.
        vi = self.load_saved(kind, gen, mmap=self.mmap and not self.lock.held)
        if vi is not None:
            return vi
        if self.lock.held or not self.lock.active():
            vi = self.rebuild(kind)
            self.save(kind, vi, gen)
        else:
            # Another process is indexing and will save its own file: build a private exact index,
            # which is quick at any size (an HNSW build of a large library is slow).
            vi = self.rebuild(kind, INDEX_FLAT)
        return vi

    def rebuild(self, kind: str, index_kind: str | None = None) -> VectorIndex:
        """A new index over every stored vector of one kind."""
        ids, vecs = self.all_vectors(kind)
        return VectorIndex.build(self.dim(), ids, vecs, self.params, kind=index_kind)

    def apply_delta(self, delta: Delta, old: int, new: int) -> None:
        """After a commit from ``old`` to ``new``: carry the loaded indexes over, updated in place.

        ``file_gen`` tracks, per kind, the generation whose vectors the saved FAISS file holds,
        as far as this process knows: a commit that leaves a kind's vectors alone carries it
        forward, so ``save_all`` only re-stamps that file's sidecar instead of rebuilding it.
        """
        if delta.unknown:
            self.loaded.clear()
            self.file_gen.clear()
            self.file_gen_seen.clear()
            self.loaded_generation = -1
            return
        if self.loaded_generation != old:
            self.loaded.clear()  # loaded at another generation: of no use
        for kind in INDEX_KINDS:
            if kind not in self.file_gen:
                saved = self.sidecar(kind)
                if saved and isinstance(saved.get("generation"), int):
                    self.file_gen[kind] = self.file_gen_seen[kind] = saved["generation"]
            file_current = self.file_gen.get(kind) == old
            if kind not in delta.kinds:
                if file_current:
                    self.file_gen[kind] = new
                continue
            self.file_gen.pop(kind, None)
            seen = self.file_gen_seen.pop(kind, None)
            add_ids, add_vecs, removed = delta.kinds[kind]
            vi = self.loaded.get(kind)
            if (vi is None or not vi.mutable) and self.lock.held and file_current:
                # the indexer: pick up the saved file once rather than rebuild from SQLite at the end
                vi = self.load_saved(kind, seen, mmap=False)
            if vi is None or not vi.mutable:
                self.loaded.pop(kind, None)
                continue
            vi.remove(removed)
            ok = vi.add(np.asarray(add_ids, np.int64),
                        np.stack(add_vecs) if add_vecs else np.zeros((0, vi.dim), np.float32))
            if ok:
                self.loaded[kind] = vi
            else:
                self.loaded.pop(kind, None)  # re-added HNSW tombstone: rebuilt on next use
        self.loaded_generation = new

    def save(self, kind: str, vi: VectorIndex, gen: int) -> None:
        """Write the FAISS file and then its sidecar; the old sidecar goes first, so a crash in
        between leaves no sidecar (and a rebuild), never a sidecar vouching for the wrong file."""
        path = self.path(kind)
        side = path.with_suffix(".json")
        with contextlib.suppress(FileNotFoundError):
            side.unlink()
        vi.save(path)
        atomic_write_text(side, json.dumps({"generation": gen, "dim": vi.dim, "count": vi.ntotal, "type": vi.kind,
                                            "total": int(vi.index.ntotal), "deleted": sorted(vi.deleted)}))

    def save_all(self) -> None:
        """Bring both FAISS files up to date with SQLite and write them atomically (see ``Store.save_indexes``)."""
        gen = self.generation()
        params = self.params
        for kind in ("images", "captions"):
            if gen == self.loaded_generation and kind in self.loaded:
                vi = self.loaded[kind]
                wanted = vi.kind if vi.kind == INDEX_IVF else params.kind_for(vi.ntotal)
                if vi.kind == INDEX_HNSW and vi.ntotal > params.hnsw_threshold // 2:
                    wanted = INDEX_HNSW  # hysteresis: no flip-flopping around the threshold
                if wanted != vi.kind or vi.deleted_fraction > params.max_deleted_fraction:
                    vi = self.loaded[kind] = self.rebuild(kind)
            else:
                saved = self.sidecar(kind)
                if saved and saved.get("generation") == gen and self.path(kind).exists():
                    continue  # already saved at this generation: nothing to write
                if saved and self.file_gen.get(kind) == gen and saved.get("generation") == self.file_gen_seen.get(kind) \
                        and self.path(kind).exists():
                    # this kind's vectors did not change since the file was saved: re-stamp its sidecar
                    atomic_write_text(self.path(kind).with_suffix(".json"), json.dumps({**saved, "generation": gen}))
                    continue
                vi = self.get(kind)
                if self.sidecar(kind) and self.sidecar(kind).get("generation") == gen:
                    continue  # get() just rebuilt and saved it
            saved = self.sidecar(kind)
            if saved and saved.get("generation") == gen and saved.get("total") == int(vi.index.ntotal) \
                    and saved.get("type") == vi.kind and self.path(kind).exists():
                continue
            if not vi.mutable:
                continue
            self.save(kind, vi, gen)

    def remove_files(self) -> None:
        """Delete both FAISS files and their sidecars (sidecars first)."""
        for kind in INDEX_KINDS:
            for path in (self.path(kind).with_suffix(".json"), self.path(kind)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
