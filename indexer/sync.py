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
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

from retrieval.encoders.base import Encoder, stack_pixels
from retrieval.errors import ImageLoadError, ImgSearchError
from retrieval.images import load_image_and_info
from retrieval.store import FileState, ImageRecord, Store
from retrieval.terms import WEAK_CAPTION_SOURCES

from .captions import FILE_SOURCES, NAME_CAPTIONS_VERSION, read_manifest, read_sidecar, weak_captions
from .scan import FileEntry, ScanResult, scan_folder

if TYPE_CHECKING:  # the light (ONNX-only) encoder indexes without torch
    import torch

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")
R = TypeVar("R")


class FolderError(ImgSearchError):
    """The folder to index does not exist or is not a folder."""


def check_folder(root: str) -> str:
    """``root`` as an absolute path, or FolderError when it is not an existing folder."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FolderError(f"not a folder: {root}" if os.path.exists(root) else f"folder not found: {root}")
    return root


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
class LoadedFile:
    """One new or changed file, read and hashed, and (for content not yet indexed) decoded.

    New content carries either ``pixels`` (to embed) or a ready ``vector`` (and ``regions``),
    embedded elsewhere (by a Ray worker, see indexer/distributed.py).
    """

    entry: FileEntry
    hash: str
    pixels: torch.Tensor | None = None  # None when the hash is already known: nothing to decode
    record: ImageRecord | None = None
    description: str | None = None
    error: str | None = None
    vector: np.ndarray | None = None
    regions: np.ndarray | None = None

    @property
    def fresh(self) -> bool:
        """True when this is content to store (decoded or already embedded), not a known hash."""
        return self.pixels is not None or self.vector is not None


@dataclass
class SyncPlan:
    """What a sync found before touching any file content: the scan, the store's view, the work."""

    root: str
    folder_id: int
    scan: ScanResult
    states: dict[str, FileState]
    old_skips: dict[str, dict]
    missing: dict[str, FileState]  # indexed paths no longer on disk
    todo: list[FileEntry]  # new and changed files, in scan (path) order
    report: SyncReport
    started: float


def file_hash(data: bytes) -> str:
    """Content hash used to recognise moved, renamed and duplicate files."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_file(path: str) -> tuple[bytes | None, str | None]:
    """A file's bytes, or None and the reason it could not be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(), None
    except FileNotFoundError:
        return None, "file disappeared during indexing"
    except PermissionError:
        return None, "permission denied"
    except OSError as e:
        return None, f"cannot read file ({e.strerror or e})"


def load_file(encoder: Encoder, f: FileEntry, known: dict[str, int] | frozenset = frozenset()) -> LoadedFile:
    """Read and hash one file; decode and preprocess it unless its hash is ``known``."""
    data, error = read_file(f.path)
    if data is None:
        return LoadedFile(f, "", error=error)
    digest = file_hash(data)
    if digest in known:
        return LoadedFile(f, digest)
    try:
        stream = io.BytesIO(data)
        stream.name = f.path  # its suffix tells a camera RAW (developed by LibRaw) from a plain TIFF
        image, info = load_image_and_info(stream, target_size=encoder.image_size)
        pixels = encoder.preprocess(image)
    except ImageLoadError as e:
        return LoadedFile(f, digest, error=e.reason)
    record = ImageRecord(path=f.path, size=f.size, mtime_ns=f.mtime_ns, hash=digest, width=info.width,
                         height=info.height, format=info.format, taken_at=info.taken_at)
    return LoadedFile(f, digest, pixels=pixels, record=record, description=info.description)


def embed_pixels(encoder: Encoder, pixels: torch.Tensor, *, regions: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectors (n, dim) of preprocessed images, and (with ``regions``) their region features from the same pass."""
    if regions:
        return encoder.encode_pixels_with_regions(pixels)
    return encoder.encode_pixels(pixels), None


def load_ahead(load: Callable[[T], R], items: Iterable[T], workers: int, window: int) -> Iterator[R]:
    """``load`` over ``items`` in a thread pool, at most ``window`` ahead, yielding results in order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[R]] = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(load, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append(pool.submit(load, nxt))
            yield result


_END = object()


def names_marker(folder_id: int) -> str:
    """The meta key saying a root folder's name captions are in step with its photos' names (see ``apply``)."""
    return f"name_captions:{folder_id}"


def desired_captions(scan: ScanResult, weak_paths: Iterable[str] | None = None
                     ) -> tuple[dict[str, set[tuple[str, str]]], list[tuple[str, str]]]:
    """image path -> {(text, source)} from the scan's sidecars and manifests, plus the weak captions of the
    file and folder names of ``weak_paths`` (every scanned photo when None), and the (path, reason) of caption
    files that could not be read (or of their bad lines)."""
    desired: dict[str, set[tuple[str, str]]] = {}
    errors: list[tuple[str, str]] = []
    for path in (f.path for f in scan.files) if weak_paths is None else weak_paths:
        weak = weak_captions(path, scan.root)
        if weak:
            desired.setdefault(path, set()).update(weak)
    for manifest in scan.manifests:
        try:
            caps, bad = read_manifest(manifest)
        except OSError as e:
            errors.append((manifest, f"cannot read captions manifest ({e.strerror or e})"))
            continue
        errors.extend(bad)
        for path, texts in caps.items():
            desired.setdefault(path, set()).update((t, "manifest") for t in texts)
    for image, sidecar in [*scan.sidecars.items(), *scan.xmp_sidecars.items()]:
        try:
            desired.setdefault(image, set()).update((t, "sidecar") for t in read_sidecar(sidecar))
        except OSError as e:
            errors.append((sidecar, f"cannot read caption file ({e.strerror or e})"))
    return desired, errors


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
        root = check_folder(root)
        store = self.store
        store.acquire_writer_lock()
        try:
            return self.apply(self.plan(root), progress)
        finally:
            store.release_writer_lock()

    def plan(self, root: str) -> SyncPlan:
        """Scan ``root`` and compare it with the store: what is unchanged, new, changed or gone.

        Binds the encoder and registers the folder; the caller holds the writer lock until ``apply``.
        """
        started = time.monotonic()
        root = check_folder(root)
        store = self.store
        store.bind_encoder(self.encoder.spec, self.encoder.fingerprint, self.encoder.dim, region_key=self.region_key)
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
        return SyncPlan(root, folder_id, scan, states, old_skips, missing, todo, report, started)

    def apply(self, plan: SyncPlan, progress: ProgressFn | None = None) -> SyncReport:
        """Store the new and changed files, sweep the gone ones, sync captions and save the indexes."""
        store, report = self.store, plan.report
        # Name captions: when the marker says they are in step, only the new, changed and moved files need
        # theirs compared. The marker is "pending" while a run writes, so a crash leaves it for a full compare.
        key = names_marker(plan.folder_id)
        in_step = store.get_meta(key) == NAME_CAPTIONS_VERSION
        if in_step and plan.todo:
            store.set_meta(key, "pending")
        self._process(plan.folder_id, plan.todo, plan.states, plan.missing, report, progress)
        store.forget_skips(p for p in plan.old_skips if not os.path.lexists(p))
        report.removed = store.remove_images(s.id for s in plan.missing.values())
        self._sync_captions(plan.folder_id, plan.scan, report, {f.path for f in plan.todo} if in_step else None)
        if not in_step or plan.todo:
            store.set_meta(key, NAME_CAPTIONS_VERSION)
        store.mark_folder_indexed(plan.folder_id)
        store.save_indexes()
        report.seconds = time.monotonic() - plan.started
        return report

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
        batch: list[LoadedFile] = []
        bar = tqdm(total=len(todo), desc="indexing", unit="photo", file=sys.stderr,
                   disable=not self.show_progress, dynamic_ncols=True)
        done = 0
        for item in self._load_all(todo, known):
            f = item.entry
            old = states.get(f.path)
            if item.error is not None:
                report.skipped.append((f.path, item.error))
                store.record_skip(folder_id, f.path, item.error, f.size, f.mtime_ns)
            elif not item.fresh or item.hash in known:
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

    def _load_all(self, todo: list[FileEntry], known: dict[str, int]) -> Iterator[LoadedFile]:
        """Read, hash and (for unseen content) decode files in a thread pool, in order."""
        window = max(2 * self.batch_size, 4 * self.workers)
        return load_ahead(lambda f: load_file(self.encoder, f, known), todo, self.workers, window)

    def _reuse(self, folder_id: int, item: LoadedFile, old: FileState | None, known: dict[str, int],
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

    def _flush(self, folder_id: int, batch: list[LoadedFile], states: dict[str, FileState], known: dict[str, int],
               report: SyncReport) -> None:
        """Embed a batch of decoded images and store them, with their regions and EXIF captions, in one
        transaction."""
        vectors, regions = self._embed(batch)
        descriptions = [b.description for b in batch]
        texts = sorted({d for d in descriptions if d})
        text_vecs = dict(zip(texts, self._encode_texts(texts))) if texts else {}
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

    def _embed(self, batch: list[LoadedFile]) -> tuple[np.ndarray, np.ndarray | None]:
        """Vectors (n, dim) of a batch of decoded images, and their regions (n, R, C) when stored."""
        return embed_pixels(self.encoder, stack_pixels([b.pixels for b in batch]), regions=bool(self.region_key))

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """Vectors of caption texts (n, dim)."""
        return self.encoder.encode_texts(texts)

    # -- captions from sidecars and manifests -------------------------------------------------

    def _sync_captions(self, folder_id: int, scan, report: SyncReport, changed: set[str] | None = None) -> None:
        """Make stored sidecar/manifest captions equal those on disk and name captions equal the photos' file
        and folder names (only those of the ``changed`` paths, unless None), embedding only new texts."""
        desired, errors = desired_captions(scan, weak_paths=changed)
        report.skipped.extend(errors)
        names = changed is None or bool(changed)
        stored = self.store.folder_captions(folder_id, FILE_SOURCES + WEAK_CAPTION_SOURCES if names else FILE_SOURCES)
        if not desired and not stored:
            return  # no caption files or names to caption, none stored: nothing to compare (a 100k-row read saved)
        states = self.store.file_states(folder_id)
        to_add: list[tuple[int, str, str]] = []
        for path, st in states.items():
            compare_names = changed is None or path in changed
            have = {c for c in stored.get(st.id, set()) if c[1] in FILE_SOURCES or compare_names}
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
            vecs.update(zip(new, self._encode_texts(new)))
        self.store.add_captions(to_add, np.stack([vecs[t] for _, t, _ in to_add]))
        report.captions_added += len(to_add)
