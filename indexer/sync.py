"""Incremental sync of one photo folder into a store (mark and sweep).

Unchanged files (same size and mtime) are never opened. New and changed files
are hashed; a hash the store already holds is a move, a touch or a duplicate
and reuses the stored vector and region features. Only genuinely new content is
decoded (in a background pool, overlapped with the encoder) and embedded. Each
batch commits on its own, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from retrieval.encoders.base import Encoder
from retrieval.errors import ImageLoadError, ImgSearchError
from retrieval.images import load_image_and_info
from retrieval.store import FileState, ImageRecord, Store

from .captions import read_manifest, read_sidecar
from .scan import FileEntry, scan_folder

ProgressFn = Callable[[int, int], None]


class FolderError(ImgSearchError):
    """The folder to index does not exist or is not a folder."""


@dataclass
class SyncReport:
    """What one sync did."""

    root: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    duplicates: int = 0
    touched: int = 0
    unchanged: int = 0
    removed: int = 0
    embedded: int = 0
    captions_added: int = 0
    captions_removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: what changed, and why files were skipped."""
        parts = [f"{self.added} added", f"{self.updated} updated", f"{self.moved} moved",
                 f"{self.duplicates} duplicates", f"{self.removed} removed", f"{self.unchanged + self.touched} unchanged",
                 f"{len(self.skipped)} skipped"]
        line = f"{self.root}: " + ", ".join(parts)
        if self.skipped:
            reasons = Counter(reason for _, reason in self.skipped)
            line += " (" + "; ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")"
        return line + f"; {self.captions_added} captions added, {self.captions_removed} removed in {self.seconds:.1f}s"

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


@dataclass
class _Loaded:
    entry: FileEntry
    hash: str
    pixels: torch.Tensor | None = None  # None when the hash is already known: nothing to decode
    record: ImageRecord | None = None
    description: str | None = None
    error: str | None = None


def file_hash(data: bytes) -> str:
    """Content hash used to recognise moved, renamed and duplicate files."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Indexer:
    """Keeps a store in sync with photo folders, embedding with ``encoder``.

    When the encoder has a ``region_key`` (and ``regions`` is True) each new image's region
    features, for the reranker, come from the same forward pass as its vector and are stored with
    it; moved and duplicate files keep or copy them. ``regions=False`` stores none; ``None``
    (the default) stores them unless the encoder says no reranker reads them by default
    (``store_regions = False``, as ``hf:`` encoders do: their patch tokens are large).
    """

    def __init__(self, encoder: Encoder, store: Store, *, batch_size: int = 32, workers: int | None = None,
                 show_progress: bool = True, regions: bool | None = None) -> None:
        self.encoder = encoder
        self.store = store
        self.batch_size = batch_size
        self.workers = workers or min(8, (os.cpu_count() or 2))
        self.show_progress = show_progress
        self.regions = bool(getattr(encoder, "store_regions", True)) if regions is None else regions

    @property
    def region_key(self) -> str | None:
        """The key regions are stored under, or None when this indexer stores no regions."""
        return (getattr(self.encoder, "region_key", None) or None) if self.regions else None

    def sync(self, root: str, progress: ProgressFn | None = None) -> SyncReport:
        """Bring the index up to date with ``root``: add, update, move and remove."""
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise FolderError(f"not a folder: {root}" if os.path.exists(root) else f"folder not found: {root}")
        started = time.monotonic()
        store = self.store
        store.acquire_writer_lock()
        try:
            store.bind_encoder(self.encoder.spec, self.encoder.fingerprint, self.encoder.dim,
                               region_key=self.region_key)
            folder_id = store.add_folder(root)
            report = SyncReport(root=root)
            scan = scan_folder(root, skip_dirs=(str(store.data_dir),))
            report.skipped.extend(scan.errors)
            states = store.file_states(folder_id)
            old_skips = store.skipped(folder_id)
            seen = {f.path for f in scan.files}
            missing = {p: s for p, s in states.items() if p not in seen}

            todo: list[FileEntry] = []
            for f in scan.files:
                st = states.get(f.path)
                if st is not None and (st.size, st.mtime_ns) == (f.size, f.mtime_ns):
                    report.unchanged += 1
                    continue
                skip = old_skips.get(f.path)
                if st is None and skip and (skip["size"], skip["mtime_ns"]) == (f.size, f.mtime_ns):
                    report.skipped.append((f.path, skip["reason"]))  # failed before, unchanged since
                    continue
                todo.append(f)

            self._process(folder_id, todo, states, missing, report, progress)
            store.forget_skips(p for p in old_skips if not os.path.lexists(p))
            report.removed = store.remove_images(s.id for s in missing.values())
            self._sync_captions(folder_id, scan, report)
            store.mark_folder_indexed(folder_id)
            store.save_indexes()
            report.seconds = time.monotonic() - started
            return report
        finally:
            store.release_writer_lock()

    # -- new and changed files ---------------------------------------------------------------

    def _process(self, folder_id: int, todo: list[FileEntry], states: dict[str, FileState],
                 missing: dict[str, FileState], report: SyncReport, progress: ProgressFn | None) -> None:
        if not todo:
            return
        store = self.store
        known = store.known_hashes()
        missing_by_hash: dict[str, list[FileState]] = {}
        for st in missing.values():
            missing_by_hash.setdefault(st.hash, []).append(st)
        batch: list[_Loaded] = []
        bar = tqdm(total=len(todo), desc="indexing", unit="photo", file=sys.stderr,
                   disable=not self.show_progress, dynamic_ncols=True)
        done = 0
        for item in self._load_all(todo, known):
            f = item.entry
            old = states.get(f.path)
            if item.error is not None:
                report.skipped.append((f.path, item.error))
                store.record_skip(folder_id, f.path, item.error, f.size, f.mtime_ns)
            elif item.pixels is None or item.hash in known:
                if known.get(item.hash) == -1:  # same new content twice in this run: embed it once
                    self._flush(folder_id, batch, states, known, report)
                    batch = []
                self._reuse(folder_id, item, old, known, missing_by_hash, missing, report)
            else:
                batch.append(item)
                known[item.hash] = -1  # placeholder until the batch is stored
                if len(batch) >= self.batch_size:
                    self._flush(folder_id, batch, states, known, report)
                    batch = []
            done += 1
            bar.update(1)
            if progress:
                progress(done, len(todo))
        if batch:
            self._flush(folder_id, batch, states, known, report)
        bar.close()

    def _load_all(self, todo: list[FileEntry], known: dict[str, int]) -> Iterator[_Loaded]:
        """Read, hash and (for unseen content) decode files in a thread pool, in order."""
        size = self.encoder.image_size

        def load(f: FileEntry) -> _Loaded:
            try:
                with open(f.path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                return _Loaded(f, "", error="file disappeared during indexing")
            except PermissionError:
                return _Loaded(f, "", error="permission denied")
            except OSError as e:
                return _Loaded(f, "", error=f"cannot read file ({e.strerror or e})")
            digest = file_hash(data)
            if digest in known:
                return _Loaded(f, digest)
            try:
                image, info = load_image_and_info(io.BytesIO(data), target_size=size)
                pixels = self.encoder.preprocess(image)
            except ImageLoadError as e:
                return _Loaded(f, digest, error=e.reason)
            record = ImageRecord(path=f.path, size=f.size, mtime_ns=f.mtime_ns, hash=digest, width=info.width,
                                 height=info.height, format=info.format, taken_at=info.taken_at)
            return _Loaded(f, digest, pixels=pixels, record=record, description=info.description)

        window = max(2 * self.batch_size, 4 * self.workers)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            pending: deque[Future[_Loaded]] = deque()
            it = iter(todo)
            for f in it:
                pending.append(pool.submit(load, f))
                if len(pending) >= window:
                    break
            while pending:
                item = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(load, nxt))
                yield item

    def _reuse(self, folder_id: int, item: _Loaded, old: FileState | None, known: dict[str, int],
               missing_by_hash: dict[str, list[FileState]], missing: dict[str, FileState], report: SyncReport) -> None:
        """A file whose content the store already holds: touched, moved, or a duplicate."""
        f, store = item.entry, self.store
        if old is not None and old.hash == item.hash:
            store.update_file_state(old.id, size=f.size, mtime_ns=f.mtime_ns)
            report.touched += 1
            return
        candidates = missing_by_hash.get(item.hash)
        if candidates:
            src = candidates.pop()
            missing.pop(src.path, None)
            if old is not None:
                store.remove_images([old.id])
            store.update_file_state(src.id, path=f.path, folder_id=folder_id, size=f.size, mtime_ns=f.mtime_ns)
            report.moved += 1
            return
        source_id = known[item.hash]
        record = ImageRecord(path=f.path, size=f.size, mtime_ns=f.mtime_ns, hash=item.hash)
        store.copy_image(source_id, folder_id, record)
        if old is not None:
            report.updated += 1
        else:
            report.duplicates += 1

    def _flush(self, folder_id: int, batch: list[_Loaded], states: dict[str, FileState], known: dict[str, int],
               report: SyncReport) -> None:
        """Embed a batch of decoded images and store them, with their regions and EXIF captions, in one
        transaction."""
        pixels = torch.stack([b.pixels for b in batch])
        regions = None
        if self.region_key:
            vectors, regions = self.encoder.encode_pixels_with_regions(pixels)
        else:
            vectors = self.encoder.encode_pixels(pixels)
        descriptions = [b.description for b in batch]
        texts = sorted({d for d in descriptions if d})
        text_vecs = dict(zip(texts, self.encoder.encode_texts(texts))) if texts else {}
        with self.store.transaction(tracked=True):
            ids = self.store.add_images(folder_id, [b.record for b in batch], vectors, regions)
            items = [(i, d, "exif") for i, d in zip(ids, descriptions) if d]
            if items:
                self.store.add_captions(items, np.stack([text_vecs[d] for _, d, _ in items]))
        for b, i in zip(batch, ids):
            known[b.hash] = i
            if b.entry.path in states:
                report.updated += 1
            else:
                report.added += 1
        report.embedded += len(batch)
        report.captions_added += len(items)

    # -- captions from sidecars and manifests -------------------------------------------------

    def _sync_captions(self, folder_id: int, scan, report: SyncReport) -> None:
        """Make stored sidecar/manifest captions equal those on disk, embedding only new texts."""
        desired: dict[str, set[tuple[str, str]]] = {}
        for manifest in scan.manifests:
            try:
                caps, errors = read_manifest(manifest)
            except OSError as e:
                report.skipped.append((manifest, f"cannot read captions manifest ({e.strerror or e})"))
                continue
            report.skipped.extend(errors)
            for path, texts in caps.items():
                desired.setdefault(path, set()).update((t, "manifest") for t in texts)
        for image, sidecar in scan.sidecars.items():
            try:
                desired.setdefault(image, set()).update((t, "sidecar") for t in read_sidecar(sidecar))
            except OSError as e:
                report.skipped.append((sidecar, f"cannot read caption file ({e.strerror or e})"))
        stored = self.store.folder_captions(folder_id)
        if not desired and not any(src != "exif" for caps in stored.values() for _, src in caps):
            return  # no caption files, none stored: nothing to compare (a second 100k-row read saved)
        states = self.store.file_states(folder_id)
        to_add: list[tuple[int, str, str]] = []
        for path, st in states.items():
            have = {c for c in stored.get(st.id, set()) if c[1] != "exif"}
            want = desired.get(path, set())
            gone = have - want
            if gone:
                report.captions_removed += self.store.remove_captions(st.id, gone)
            to_add.extend((st.id, text, source) for text, source in sorted(want - have))
        if not to_add:
            return
        texts = sorted({t for _, t, _ in to_add})
        vecs = self.store.caption_vectors_for_texts(texts)
        new = [t for t in texts if t not in vecs]
        if new:
            vecs.update(zip(new, self.encoder.encode_texts(new)))
        self.store.add_captions(to_add, np.stack([vecs[t] for _, t, _ in to_add]))
        report.captions_added += len(to_add)
