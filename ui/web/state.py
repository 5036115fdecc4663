"""What the web pages call: ``AppState`` over one data folder, and the search results it returns.

``AppState`` holds what the pages need (a searcher, opened lazily through ``open_library``; a
thumbnail cache; the background reindex job; the folders of the library, added and removed from the
Library page; the optional watcher that keeps them current) and talks to the library only through
Library, Searcher, Store, Indexer and Watcher. It raises the library's errors; the pages turn them
into messages. Every write (reindex, folder add or remove, watch batch) runs under one lock, on a
Store of its own, so searches never share a connection with a write in progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from indexer.sync import FolderError, Indexer, SyncReport, check_folder, names_marker
from indexer.watch import DEFAULT_DEBOUNCE, Watcher, WatchStatus
from retrieval.encoders import create_encoder
from retrieval.errors import EmptyIndexError, ImgSearchError, StoreError
from retrieval.hybrid import WEAK_SOURCES
from retrieval.images import load_image
from retrieval.library import open_library
from retrieval.query import SearchQuery
from retrieval.rerank import DEFAULT_RERANK_K
from retrieval.search import Hit, Searcher
from retrieval.store import DB_FILE, CaptionRow, ImageRow, Store

from .thumbs import ThumbnailCache

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from retrieval.rerank import Reranker

log = logging.getLogger("imgsearch.web")

DEFAULT_K = 12
CAPTIONS_K = 5
# Text searches and photo queries share one FIFO queue (concurrency id "query") with this many
# running at once: on 2 cores more only adds GIL contention, and one queue keeps the waits of
# the two kinds equal (measured with benchmarks/load_test.py; see README, Performance).
QUERY_CONCURRENCY = 4
MAX_FOLDER_CHOICES = 500  # folders the Search page's picker lists (roots first); others can be typed
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev", "/run")  # never photo folders; serving them would leak the machine


@dataclass
class Result:
    """A hit with the stored facts the gallery and the detail view show."""

    hit: Hit
    row: ImageRow | None
    captions: list[CaptionRow] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The photo's file name."""
        return os.path.basename(self.hit.path)

    @property
    def caption(self) -> str | None:
        """The caption that matched, else the photo's first caption; a real caption before the weak ones
        made from its file and folder names (those only repeat the name shown beside it)."""
        if self.hit.caption and self.hit.source not in WEAK_SOURCES:
            return self.hit.caption
        real = [c.text for c in self.captions if c.source not in WEAK_SOURCES]
        return real[0] if real else None


@dataclass
class ReindexStatus:
    """Where the background reindex stands (read by the Library page while it runs)."""

    running: bool = False
    folder: str = ""
    done: int = 0
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    summaries: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _SerialTextEncoder:
    """The searcher's encoder with text encoding serialised: fast tokenizers refuse concurrent use
    ("Already borrowed"), and the reindex thread shares the encoder with the search requests."""

    def __init__(self, encoder, lock: threading.Lock | None = None) -> None:
        self._encoder = encoder
        self._text_lock = lock or threading.Lock()

    def encode_texts(self, texts):
        with self._text_lock:
            return self._encoder.encode_texts(texts)

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)


class _SerialReranker:
    """The reranker with its text side serialised under the encoder's text lock: the bundled
    reranker tokenizes with the search encoder's own tokenizer (it shares the towers)."""

    def __init__(self, reranker, lock: threading.Lock) -> None:
        self._reranker = reranker
        self._text_lock = lock

    def itm_scores(self, texts, regions):
        with self._text_lock:
            return self._reranker.itm_scores(texts, regions)

    def __getattr__(self, name: str):
        return getattr(self._reranker, name)


class AppState:
    """The web app's view of one data folder: search, photo facts, library facts, and reindexing.

    ``reranker`` (loaded by the caller, e.g. ``retrieval.rerank.create_reranker`` with the search
    encoder so the towers are shared) goes to every Searcher this state opens; searches asked to
    rerank reorder their top ``rerank_k`` with it. Without one (and without one on ``searcher``)
    the Rerank switches stay off.
    """

    def __init__(self, data_dir: str | os.PathLike, *, model: str | None = None, device: str | None = None,
                 searcher: Searcher | None = None, reranker: Reranker | None = None,
                 rerank_k: int = DEFAULT_RERANK_K, thumbs_dir: str | os.PathLike | None = None,
                 folders_editable: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        # False where anyone on the network could make any folder servable (serve --host 0.0.0.0 without --auth)
        self.folders_editable = folders_editable
        self.model = model
        self.device = device
        if reranker is None and searcher is not None:
            reranker = searcher.reranker
        if isinstance(reranker, _SerialReranker):
            reranker = reranker._reranker
        self.reranker = reranker
        self.rerank_k = int(rerank_k)
        self.thumbs = ThumbnailCache(thumbs_dir or self.data_dir / "thumbs")
        self.status = ReindexStatus()
        self._lock = threading.RLock()
        self._text_lock = threading.Lock()  # the encoder's tokenizer, shared with the reranker
        self._reranker = _SerialReranker(reranker, self._text_lock) if reranker is not None else None
        self._searcher = self._wrap(searcher) if searcher is not None else None
        self._info_store: Store | None = None
        self._thread: threading.Thread | None = None
        self._folder_cache: tuple[tuple, list[tuple[str, str]]] | None = None
        self._write_lock = threading.Lock()  # one write at a time: reindex, folder add/remove, watch batch
        self._write_encoder: Any = None  # loaded for a write while no searcher was open
        self._watcher: Watcher | None = None
        self._watch_stop = threading.Event()
        self._watch_thread: threading.Thread | None = None

    @property
    def has_reranker(self) -> bool:
        """Whether searches can be reranked (the pages enable their Rerank switches then)."""
        return self.reranker is not None

    def _wrap(self, searcher: Searcher) -> Searcher:
        """``searcher`` around the serialised encoder, with this state's reranker."""
        encoder = searcher.encoder
        if isinstance(encoder, _SerialTextEncoder):
            encoder = encoder._encoder
        return Searcher(_SerialTextEncoder(encoder, self._text_lock), searcher.store,  # type: ignore[arg-type]
                        reranker=self._reranker, rerank_k=self.rerank_k)

    # -- library objects --------------------------------------------------------------------

    def searcher(self) -> Searcher:
        """The searcher, opened on first use; raises EmptyIndexError/StoreError while there is no index."""
        with self._lock:
            if self._searcher is None:
                if not (self.data_dir / DB_FILE).exists():
                    raise EmptyIndexError(f"there is no index in {self.data_dir} yet")
                self._searcher = self._wrap(open_library(self.data_dir, model=self.model, device=self.device).searcher)
            return self._searcher

    def _adopt(self, encoder) -> None:
        """After a reindex that loaded its own encoder: open the searcher around it (with the
        reranker, like any searcher this state opens) rather than load the model again later."""
        with self._lock:
            if self._searcher is not None:
                return
            try:
                library = open_library(self.data_dir, encoder=encoder)
            except EmptyIndexError:  # nothing was indexed: open lazily later, as before the reindex
                return
            self._searcher = self._wrap(library.searcher)

    def store(self) -> Store | None:
        """The store to read library facts from, or None while no index exists."""
        with self._lock:
            if self._searcher is not None:
                return self._searcher.store
            if self._info_store is None:
                try:
                    self._info_store = Store(self.data_dir, create=False)
                except StoreError:
                    return None
            return self._info_store

    def warm_up(self) -> None:
        """Run the encoder once on a text and a blank photo, so the first visitor does not wait for
        lazily built inference graphs; nothing when no index is open yet."""
        with self._lock:
            searcher = self._searcher
        if searcher is None:
            return
        from PIL import Image

        searcher.encoder.encode_texts(["a photo"])
        searcher.encoder.encode_images([Image.new("RGB", (64, 64), (128, 128, 128))])

    def close(self) -> None:
        """Stop the watcher, then close the stores this state opened."""
        self.stop_watching()
        with self._lock:
            if self._searcher is not None:
                self._searcher.store.close()
            if self._info_store is not None:
                self._info_store.close()

    # -- searching --------------------------------------------------------------------------

    def search(self, query: str, k: int = DEFAULT_K, min_score: float | None = None,
               rerank: bool = False, **options: Any) -> list[Result]:
        """Photos for a text query; with ``rerank`` (and a reranker) the top ``rerank_k`` reordered.

        ``options``: any other ``SearchQuery`` field (filters, ``not_texts``, ``sort``, ``offset``, ``image``).
        """
        return self.find(SearchQuery(text=query, k=k, min_score=min_score, rerank=rerank, **options))

    def find(self, query: SearchQuery) -> list[Result]:
        """The results of one ``SearchQuery`` (its rerank dropped when no reranker is loaded)."""
        if query.rerank and not self.has_reranker:
            query = replace(query, rerank=False)
        return self._results(self.searcher().search(query))

    def photo_matches(self, image: Any, k_captions: int = CAPTIONS_K, k_photos: int = DEFAULT_K,
                      rerank: bool = False, text: str | None = None) -> tuple[list[Result], list[Result]]:
        """Best captions and most similar photos for one query photo, embedding it once.

        With ``rerank`` (and a reranker) the best ``rerank_k`` captions are reordered by it. With
        ``text`` the similar photos are those matching the photo and the text together ("this photo,
        but at night"); the captions stay the photo's own.
        """
        searcher = self.searcher()
        rerank = bool(rerank) and self.has_reranker
        picture = searcher.load_query_image(image)
        vector, regions = searcher.embed_picture(picture, with_regions=rerank)
        want = max(k_captions, self.rerank_k) if rerank else k_captions
        try:
            hits = searcher.captions_near(vector, k=want)
        except EmptyIndexError:  # photos but no captions: still show the similar photos
            hits = []
        if rerank and hits:
            hits = searcher.rerank_top_captions(picture, hits, regions)
        if text and text.strip():
            similar = searcher.search(SearchQuery(text=text, image=picture, k=k_photos))
        else:
            similar = searcher.images_near(vector, k=k_photos)
        return self._results(hits[:k_captions]), self._results(similar)

    def load_query_image(self, path: str) -> Image.Image:
        """An uploaded file decoded once (ImageLoadError with a reason when it is not a readable image)."""
        size = self.searcher().encoder.image_size
        return load_image(path, target_size=size).convert("RGB")

    def _results(self, hits: list[Hit]) -> list[Result]:
        store = self.searcher().store
        ids = {h.image_id for h in hits}
        rows = store.images(ids)
        caps = store.captions_of(ids)
        return [Result(h, rows.get(h.image_id), caps.get(h.image_id, [])) for h in hits]

    def photo(self, path: str) -> Result | None:
        """An indexed photo by its absolute path (None for anything not in the index)."""
        store = self.store()
        if store is None:
            return None
        row = store.image_by_path(path)
        if row is None:
            return None
        return Result(Hit(row.path, 1.0, row.id), row, store.captions_of([row.id])[row.id])

    def thumbnail(self, r: Result) -> str | None:
        """The cached thumbnail of a result (None when its photo cannot be read)."""
        return self.thumbs.thumbnail(r.hit.path, r.row.hash) if r.row else None

    def display_image(self, r: Result) -> str | None:
        """What the detail view shows for a result: the photo itself, or a browser-friendly preview."""
        return self.thumbs.display(r.hit.path, r.row.hash) if r.row else None

    # -- library facts ----------------------------------------------------------------------

    def folder_choices(self) -> list[tuple[str, str]]:
        """(label, path) of the folders a search can be narrowed to: each indexed root (its full path),
        then the sub-folders holding photos (labelled from the root's name); at most MAX_FOLDER_CHOICES."""
        store = self.store()
        if store is None:
            return []
        roots = sorted(f["path"] for f in store.folders())
        gen = store.generation
        with self._lock:
            cached = self._folder_cache
        if cached is not None and cached[0] == (id(store), gen, tuple(roots)):
            return cached[1]
        choices = [(r, r) for r in roots]
        for folder in store.photo_folders():
            root = max((r for r in roots if folder.startswith(r.rstrip("/") + "/")), key=len, default=None)
            if root is not None and len(choices) < MAX_FOLDER_CHOICES:
                rel = os.path.relpath(folder, root)
                choices.append((f"{os.path.basename(root) or root}/{rel}", folder))
        with self._lock:
            self._folder_cache = ((id(store), gen, tuple(roots)), choices)
        return choices

    def library(self) -> dict:
        """Folders, counts, skipped files, encoder and last index time (an empty shape when no index)."""
        store = self.store()
        if store is None:
            return {"data_dir": str(self.data_dir), "encoder": None, "images": 0, "captions": 0,
                    "folders": [], "skipped": [], "last_indexed": None}
        folders = store.folders()
        info = store.encoder_info
        times = [f["indexed_at"] for f in folders if f.get("indexed_at")]
        return {
            "data_dir": str(store.data_dir),
            "encoder": info.__dict__ if info else None,
            "images": store.count_images(),
            "captions": store.count_captions(include_weak=False),
            "folders": folders,
            "skipped": sorted((p, s["reason"]) for p, s in store.skipped().items()),
            "last_indexed": max(times) if times else None,
        }

    def allowed_paths(self) -> list[str]:
        """What the web server may serve: the indexed folders and the thumbnail cache, nothing else."""
        store = self.store()
        roots = [f["path"] for f in store.folders()] if store is not None else []
        return sorted(set(roots)) + [str(self.thumbs.folder)]

    def blocked_paths(self) -> list[str]:
        """The index's own files, in case the data folder sits inside an indexed folder."""
        names = (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "images.faiss", "images.json",
                 "captions.faiss", "captions.json", "indexer.lock")
        return [str(self.data_dir / n) for n in names]

    # -- writing: one at a time, each on its own Store ---------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Store]:
        """The write lock held, and a Store of this write's own (closed after it)."""
        with self._write_lock:
            store = Store(self.data_dir)
            try:
                yield store
            finally:
                store.close()

    def _indexer(self, store: Store) -> Indexer:
        """An Indexer on ``store`` with the searcher's encoder, else one loaded once for writes (its text
        side serialised with the searches', as the searcher's is)."""
        with self._lock:
            encoder = self._searcher.encoder if self._searcher is not None else self._write_encoder
        if encoder is None:  # only writes load it, and they hold the write lock: loaded once
            info = store.encoder_info
            raw = create_encoder(self.model or (info.spec if info else "default"), device=self.device, light=True)
            encoder = self._write_encoder = _SerialTextEncoder(raw, self._text_lock)
        return Indexer(encoder, store, show_progress=False)

    def _sync_root(self, root: str, progress: Callable[[int, int], None] | None = None, *,
                   known_only: bool = True) -> SyncReport | None:
        """Sync one root folder under the write lock; with ``known_only``, None (nothing done) when it is no
        longer in the library (removed while this sync waited for the lock)."""
        with self._writing() as store:
            if known_only and root not in {f["path"] for f in store.folders()}:
                return None
            indexer = self._indexer(store)
            report = indexer.sync(root, progress=progress)
        encoder = indexer.encoder
        self._adopt(encoder._encoder if isinstance(encoder, _SerialTextEncoder) else encoder)
        return report

    # -- reindexing -------------------------------------------------------------------------

    def start_reindex(self) -> bool:
        """Start syncing every indexed folder in a background thread; False if one is already running."""
        with self._lock:
            if self.status.running:
                return False
            self.status = ReindexStatus(running=True, started_at=time.time())
            self._thread = threading.Thread(target=self._reindex, name="imgsearch-reindex", daemon=True)
            self._thread.start()
            return True

    def wait_reindex(self, timeout: float | None = None) -> bool:
        """Wait for the running reindex; True when none is running any more."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.status.running

    def _reindex(self) -> None:
        status = self.status
        try:
            folders = self.folder_paths()
            if not folders:
                status.errors.append("no folders are indexed yet: add one on the Library page, or run "
                                     "`imgsearch index DIR` or `imgsearch serve DIR`")
                return
            for folder in folders:
                status.folder, status.done, status.total = folder, 0, 0

                def progress(done: int, total: int) -> None:
                    status.done, status.total = done, total

                try:
                    report = self._sync_root(folder, progress)
                except ImgSearchError as e:
                    status.errors.append(f"{folder}: {e}")
                    continue
                if report is not None:
                    status.summaries.append(report.summary())
        except ImgSearchError as e:
            status.errors.append(str(e))
        except Exception as e:  # a bug: keep serving, and say what happened
            log.exception("reindex failed")
            status.errors.append(f"reindex failed: {type(e).__name__}: {e}")
        finally:
            status.finished_at = time.time()
            status.running = False

    # -- the library's folders --------------------------------------------------------------

    def folder_paths(self) -> list[str]:
        """The library's root folders, sorted: the ones indexed by the CLI or added on the Library page,
        kept in the index (its folders table), so a restart keeps them."""
        store = self.store()
        return sorted(f["path"] for f in store.folders()) if store is not None else []

    def check_new_folder(self, path: str, roots: list[str] | None = None) -> str:
        """``path`` as the absolute root folder to add, after the CLI's checks (it exists, is a folder) and
        those of a library (readable; not the index folder; not already in or overlapping ``roots``,
        default the current folders). FolderError with a one-line reason otherwise."""
        self._check_editable()
        text = (path or "").strip()
        if not text:
            raise FolderError("type the path of a photo folder to add")
        if any(ord(c) < 32 for c in text):  # NUL, newlines: no real folder, and no one-line message
            raise FolderError("a folder path cannot contain control characters")
        root = check_folder(text)
        if not os.access(root, os.R_OK | os.X_OK):
            raise FolderError(f"folder not readable: {root}")
        if root == "/" or any(root == d or root.startswith(d + "/") for d in SYSTEM_FOLDERS):
            raise FolderError(f"{root} is a system folder, not a photo folder")
        data = str(self.data_dir)
        if root == data or root.startswith(data.rstrip("/") + "/"):
            raise FolderError(f"{root} is inside the index folder {data}, not a photo folder")
        for r in self.folder_paths() if roots is None else roots:
            if root == r:
                raise FolderError(f"already in the library: {root}")
            if root.startswith(r.rstrip("/") + "/"):
                raise FolderError(f"{root} is already indexed as part of {r}")
            if r.startswith(root.rstrip("/") + "/"):
                raise FolderError(f"{root} holds the indexed folder {r}: remove that one first")
        return root

    def add_folder(self, path: str, progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Check ``path`` (``check_new_folder``), index it, and watch it when watching: its photos are then
        searchable, and the web server may serve it (``allowed_paths``). Raises FolderError for a bad path."""
        root = self.check_new_folder(path)
        watcher = self._active_watcher()
        if watcher is not None:
            watcher.add_root(root)  # before the scan: nothing written meanwhile is missed
        try:
            with self._writing() as store:
                self.check_new_folder(root, [f["path"] for f in store.folders()])  # another add may have won
                indexer = self._indexer(store)
                report = indexer.sync(root, progress=progress)
        except BaseException:
            if watcher is not None:
                watcher.remove_root(root)
            raise
        encoder = indexer.encoder
        self._adopt(encoder._encoder if isinstance(encoder, _SerialTextEncoder) else encoder)
        return report

    def remove_folder(self, path: str) -> int:
        """Drop a root folder from the library: stop watching it and remove its photos from the index (the
        files stay where they are); it is no longer served. Returns how many photos were removed;
        FolderError when ``path`` is not one of the library's folders."""
        self._check_editable()
        text = (path or "").strip()
        if not text:
            raise FolderError("pick a folder to remove")
        root = os.path.abspath(os.path.expanduser(text))
        with self._writing() as store:
            store.acquire_writer_lock()
            try:
                gone = store.remove_folder(root)
                if gone is None:
                    raise FolderError(f"not a folder of the library: {root}")
                store.set_meta(names_marker(gone[0]), None)  # a later folder may reuse the id
                store.save_indexes()
            finally:
                store.release_writer_lock()
        watcher = self._active_watcher()
        if watcher is not None:
            watcher.remove_root(root)
        return gone[1]

    def _check_editable(self) -> None:
        if not self.folders_editable:
            raise FolderError("folders can be added and removed here only on a server with a login "
                              "(imgsearch serve --auth USER:PASSWORD) or on this computer alone (--host 127.0.0.1)")

    # -- watching ---------------------------------------------------------------------------

    def _active_watcher(self) -> Watcher | None:
        with self._lock:
            t = self._watch_thread
            return self._watcher if t is not None and t.is_alive() else None

    @property
    def watching(self) -> bool:
        """Whether a watcher keeps the library's folders current."""
        return self._active_watcher() is not None

    def start_watching(self, *, debounce: float = DEFAULT_DEBOUNCE, poll: float | None = None,
                       observer_factory: Callable[[], Any] | None = None, tick: float = 0.2) -> WatchStatus:
        """Watch every folder of the library (and each one added later) in a background thread: each
        settled batch of changes goes through the same sync, so searches see it on their next query. The
        folders are synced once first (changes made while nothing watched). Returns the watcher's status."""
        with self._lock:
            if self._watch_thread is not None and self._watch_thread.is_alive():
                raise RuntimeError("already watching")

            def on_report(report: SyncReport) -> None:
                log.info("watch: %s", report.summary())

            watcher = Watcher(self._watch_sync, self.folder_paths(), debounce=debounce, poll=poll,
                              ignore=[str(self.data_dir)], observer_factory=observer_factory, on_report=on_report)
            watcher.start()  # events (or polling) from now on, before the catch-up scan
            stop = threading.Event()

            def run() -> None:
                try:
                    watcher.catch_up()
                    watcher.run(stop, tick)
                except Exception:  # a bug: searching goes on, the Library page says the watcher stopped
                    log.exception("watcher failed")
                    watcher.stop()

            self._watcher, self._watch_stop = watcher, stop
            self._watch_thread = threading.Thread(target=run, name="imgsearch-watch", daemon=True)
            self._watch_thread.start()
            return watcher.status

    def _watch_sync(self, root: str) -> SyncReport | None:
        return self._sync_root(root)

    def watch_status(self) -> WatchStatus | None:
        """A copy of the watcher's status (folders, events or polling, last batch, pending), None when this
        server never watched."""
        with self._lock:
            w = self._watcher
        if w is None:
            return None
        st = w.status
        return replace(st, folders=list(st.folders), errors=list(st.errors))

    def stop_watching(self, timeout: float = 10.0) -> None:
        """Stop the watcher (a batch being applied finishes first); changes not yet applied are picked up by
        the next sync."""
        with self._lock:
            thread, stop = self._watch_thread, self._watch_stop
        stop.set()
        if thread is not None:
            thread.join(timeout)
        w = self._watcher
        if w is not None:
            w.stop()


def allow_current_folders(demo: gr.Blocks, state: AppState) -> None:
    """Let the server serve what ``state`` may show now: folders indexed since launch become servable."""
    demo.allowed_paths = state.allowed_paths()
