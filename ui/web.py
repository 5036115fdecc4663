"""The web UI: a Gradio Blocks app over the imgsearch library.

``AppState`` holds what the pages need (a Searcher, opened lazily; a thumbnail
cache; the background reindex job) and talks to the library only through
Searcher, Store and Indexer. ``build_app`` lays out the pages and turns library
errors into messages; ``launch`` serves the app with the file-serving rules
locked down to the indexed folders and the thumbnail cache.

Endpoints (for gradio_client):
  /search(query, k, min_score, rerank) -> (gallery, status, hits)
  /find_by_photo(image, k, rerank=False) -> (status, captions table, similar photos)
  /photo_details(path), /library_info(), /reindex().

A reranker (``retrieval.rerank.Reranker``, loaded by the caller) passed to
``AppState`` enables the "Rerank" switches: the Searcher reorders the top results
with it, and the gallery labels show its match probability.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: never phone home
# Gradio's queue rebuilds a pandas summary of its last (up to 10,000) events after every event by
# default: under load that is the costliest step of a search. Summarise rarely, over fewer events.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")

import html
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from indexer.sync import Indexer
from retrieval.encoders import create_encoder
from retrieval.errors import EmptyIndexError, ImageLoadError, ImgSearchError, StoreError
from retrieval.images import load_image
from retrieval.rerank import DEFAULT_RERANK_K
from retrieval.search import Hit, QueryError, Searcher, open_searcher
from retrieval.store import DB_FILE, CaptionRow, ImageRow, Store

from .thumbs import ThumbnailCache

if TYPE_CHECKING:
    from retrieval.rerank import Reranker

log = logging.getLogger("imgsearch.web")

DEFAULT_K = 12
MAX_K = 100
MAX_UPLOAD = "25mb"
CAPTIONS_K = 5
# Text searches and photo queries share one FIFO queue (concurrency id "query") with this many
# running at once: on 2 cores more only adds GIL contention, and one queue keeps the waits of
# the two kinds equal (measured with benchmarks/load_test.py; see README, Performance).
QUERY_CONCURRENCY = 4
CAPTION_HEADERS = ["Score", "Caption", "Photo"]
RERANK_INFO_OFF = "install a reranker to enable"
RERANK_INFO_ON = "reorder the top results with the reranker"
RERANK_CAPTIONS_INFO_ON = "reorder the best captions with the reranker"


# -- state: everything the pages need, through the library only ------------------------------

@dataclass
class Result:
    """A hit with the stored facts the gallery and the detail view show."""

    hit: Hit
    row: ImageRow | None
    captions: list[CaptionRow] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.hit.path)

    @property
    def caption(self) -> str | None:
        """The caption that matched, else the photo's first caption."""
        if self.hit.caption:
            return self.hit.caption
        return self.captions[0].text if self.captions else None


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
                 searcher: Searcher | None = None, reranker: "Reranker | None" = None,
                 rerank_k: int = DEFAULT_RERANK_K, thumbs_dir: str | os.PathLike | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
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

    @property
    def has_reranker(self) -> bool:
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
                self._searcher = self._wrap(open_searcher(self.data_dir, model=self.model, device=self.device))
            return self._searcher

    def _adopt(self, encoder) -> None:
        """After a reindex that loaded its own encoder: open the searcher around it (with the
        reranker, like any searcher this state opens) rather than load the model again later."""
        with self._lock:
            if self._searcher is not None:
                return
            store = Store(self.data_dir, create=False)
            try:
                if store.encoder_info is None:
                    store.close()
                    return
                self._searcher = self._wrap(Searcher(encoder, store))
            except BaseException:
                store.close()
                raise

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
        with self._lock:
            if self._searcher is not None:
                self._searcher.store.close()
            if self._info_store is not None:
                self._info_store.close()

    # -- searching --------------------------------------------------------------------------

    def search(self, query: str, k: int = DEFAULT_K, min_score: float | None = None,
               rerank: bool = False) -> list[Result]:
        """Photos for a text query; with ``rerank`` (and a reranker) the top ``rerank_k`` reordered."""
        searcher = self.searcher()
        hits = searcher.search_text(query, k=k, min_score=min_score, rerank=bool(rerank) and self.has_reranker)
        return self._results(hits)

    def photo_matches(self, image: Any, k_captions: int = CAPTIONS_K, k_photos: int = DEFAULT_K,
                      rerank: bool = False) -> tuple[list[Result], list[Result]]:
        """Best captions and most similar photos for one query photo, embedding it once.

        With ``rerank`` (and a reranker) the best ``rerank_k`` captions are reordered by it.
        """
        searcher = self.searcher()
        rerank = bool(rerank) and self.has_reranker
        picture = searcher.load_query_image(image)
        vector, regions = searcher.embed_picture(picture, with_regions=rerank)
        try:
            hits = searcher.captions_near(vector, k=max(k_captions, self.rerank_k) if rerank else k_captions)
        except EmptyIndexError:  # photos but no captions: still show the similar photos
            hits = []
        if rerank and hits:
            hits = searcher.rerank_top_captions(picture, hits, regions)
        return self._results(hits[:k_captions]), self._results(searcher.images_near(vector, k=k_photos))

    def load_query_image(self, path: str):
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
        return self.thumbs.thumbnail(r.hit.path, r.row.hash) if r.row else None

    def display_image(self, r: Result) -> str | None:
        return self.thumbs.display(r.hit.path, r.row.hash) if r.row else None

    # -- library facts ----------------------------------------------------------------------

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
            "captions": store.count_captions(),
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
        store: Store | None = None
        try:
            store = Store(self.data_dir)
            folders = [f["path"] for f in store.folders()]
            if not folders:
                status.errors.append("no folders are indexed yet: run `imgsearch index DIR` "
                                     "or `imgsearch serve DIR` to add one")
                return
            with self._lock:
                encoder = self._searcher.encoder if self._searcher is not None else None
            if encoder is None:
                info = store.encoder_info
                encoder = create_encoder(self.model or (info.spec if info else "default"), device=self.device)
            indexer = Indexer(encoder, store, show_progress=False)
            for folder in folders:
                status.folder, status.done, status.total = folder, 0, 0

                def progress(done: int, total: int) -> None:
                    status.done, status.total = done, total

                try:
                    report = indexer.sync(folder, progress=progress)
                except ImgSearchError as e:
                    status.errors.append(f"{folder}: {e}")
                    continue
                status.summaries.append(report.summary())
            self._adopt(encoder)
        except ImgSearchError as e:
            status.errors.append(str(e))
        except Exception as e:  # a bug: keep serving, and say what happened
            log.exception("reindex failed")
            status.errors.append(f"reindex failed: {type(e).__name__}: {e}")
        finally:
            if store is not None:
                store.close()
            status.finished_at = time.time()
            status.running = False


# -- formatting ------------------------------------------------------------------------------

def _esc(text: object) -> str:
    return html.escape(str(text), quote=False)


def _md_esc(text: object) -> str:
    """Text safe inside Markdown: HTML-escaped, and Markdown punctuation backslashed."""
    out = _esc(text)
    for ch in "\\`*_[]#|<>":
        out = out.replace(ch, "\\" + ch)
    return out


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "never"


def _msg(kind: str, text: str) -> str:
    """A status line; the kind only picks the CSS class (headless browsers often lack emoji fonts)."""
    return f'<div class="msg msg-{kind}">{_esc(text)}</div>\n'


def _gallery(state: AppState, results: list[Result]) -> tuple[list[tuple[str, str]], list[str]]:
    """Gallery items (thumbnail, label) and the photo path of each, in the same order."""
    items, paths = [], []
    for r in results:
        thumb = state.thumbnail(r)
        if thumb is None:
            continue  # unreadable since it was indexed (deleted or replaced): nothing to show
        label = f"{r.hit.score:.2f} · "
        if r.hit.match is not None:  # reranked: the reranker's match probability
            label += f"match {r.hit.match:.2f} · "
        label += r.name
        if r.caption:
            label += f" — {r.caption}"
        items.append((thumb, label))
        paths.append(r.hit.path)
    return items, paths


def _details_md(r: Result) -> str:
    row = r.row
    lines = [f"### {_md_esc(r.name)}", ""]
    if row is not None:
        dims = f"{row.width} × {row.height}" if row.width and row.height else "?"
        taken = row.taken_at.strftime("%Y-%m-%d %H:%M") if row.taken_at else "unknown"
        lines += [
            f"**Path** `{row.path}`  ",
            f"**Size** {_human_size(row.size)} · **Dimensions** {dims} px · **Format** {_md_esc(row.format or '?')}  ",
            f"**Taken** {taken}",
        ]
    else:
        lines.append(f"**Path** `{r.hit.path}`")
    lines += ["", "#### Captions"]
    if r.captions:
        lines += [f"- {_md_esc(c.text)} <small>({_md_esc(c.source)})</small>" for c in r.captions]
    else:
        lines.append("_No captions: add a `<photo>.txt` beside it or a `captions.jsonl`, then reindex._")
    return "\n".join(lines)


def _details_dict(r: Result) -> dict:
    row = r.row
    return {  # no "path" key: gradio_client would take the dict for a file and download it
        "photo": r.hit.path,
        "name": r.name,
        "size": row.size if row else None,
        "width": row.width if row else None,
        "height": row.height if row else None,
        "format": row.format if row else None,
        "taken_at": row.taken_at.isoformat() if row and row.taken_at else None,
        "captions": [{"text": c.text, "source": c.source} for c in r.captions],
    }


def _library_md(lib: dict, status: ReindexStatus) -> str:
    enc = lib["encoder"]
    enc_line = f"`{enc['spec']}` ({enc['fingerprint']}, {enc['dim']}-d)" if enc else "none yet"
    lines = [
        f"**{lib['images']}** photos · **{lib['captions']}** captions · **{len(lib['skipped'])}** skipped files  ",
        f"**Encoder** {enc_line}  ",
        f"**Last indexed** {_when(lib['last_indexed'])}  ",
        f"**Index folder** `{lib['data_dir']}`",
    ]
    if not lib["folders"]:
        lines += ["", _msg("info", "Nothing is indexed yet: start the server with “imgsearch serve DIR” "
                                    "or run “imgsearch index DIR”.")]
    return "\n".join(lines)


def _status_md(status: ReindexStatus) -> str:
    if status.running:
        where = f" {status.folder}" if status.folder else ""
        count = f" — {status.done}/{status.total} new or changed files" if status.total else ""
        return _msg("info", f"Reindexing{where}{count}… searching keeps working meanwhile.")
    if status.finished_at is None:
        return ""
    lines = []
    if status.errors:
        lines.append(_msg("error", f"Reindex finished {_when(status.finished_at)} with "
                                   f"{len(status.errors)} error(s):"))
        lines += [f"- {_md_esc(e)}" for e in status.errors]
    else:
        lines.append(_msg("ok", f"Reindex finished {_when(status.finished_at)} "
                                f"in {status.finished_at - (status.started_at or status.finished_at):.1f}s."))
    lines += [f"- {_md_esc(s)}" for s in status.summaries]
    return "\n".join(lines)


# -- the app ---------------------------------------------------------------------------------

CSS = """
.gradio-container { width: 100% !important; max-width: 1280px !important; margin: 0 auto !important; }
#app-title h1 { margin-bottom: 0; letter-spacing: -0.02em; }
#app-title p { margin-top: 2px; opacity: .7; }
.msg { padding: 8px 12px; border-radius: 8px; border-left: 4px solid; font-size: 14px; }
.msg-ok { border-color: #22c55e; background: rgba(34,197,94,.08); }
.msg-info { border-color: #6366f1; background: rgba(99,102,241,.08); }
.msg-warn { border-color: #f59e0b; background: rgba(245,158,11,.10); }
.msg-error { border-color: #ef4444; background: rgba(239,68,68,.08); }
#results .thumbnail-item, #similar .thumbnail-item { border-radius: 10px; overflow: hidden; }
#results .caption-label, #similar .caption-label {
  left: 0 !important; right: 0 !important; bottom: 0 !important; max-width: none !important;
  border-radius: 0 !important; margin: 0 !important; padding: 18px 8px 0 8px !important;
  border: none !important; border-bottom: 5px solid transparent !important;
  background: linear-gradient(transparent, rgba(0,0,0,.75)) !important; color: #fff !important;
  font-size: 12px !important; line-height: 1.3 !important; white-space: normal !important;
  display: -webkit-box !important; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden !important;
  text-overflow: ellipsis; }
#captions-table td *, #folders-table td *, #skipped-table td * { font-family: var(--font) !important; }
#detail { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 12px; }
#detail-md code { word-break: break-all; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    """A quiet theme with system fonts only (the default pulls web fonts, and we are offline)."""
    fonts = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
    return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", radius_size="md", font=fonts, font_mono=mono)


def build_app(state: AppState) -> gr.Blocks:
    """The Blocks app: Search, Find by photo, and Library tabs over ``state``."""
    has_reranker = state.has_reranker

    with gr.Blocks(title="imgsearch", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# imgsearch\nSearch your photos by what is in them — offline, on this computer.", elem_id="app-title")

        with gr.Tabs():
            # -- Search ------------------------------------------------------------------------
            with gr.Tab("Search", id="search"):
                with gr.Row(equal_height=True):
                    query = gr.Textbox(show_label=False, placeholder="Describe a photo — “a cat”, “a cup of coffee”…",
                                       scale=6, max_lines=1, autofocus=True, elem_id="query")
                    search_btn = gr.Button("Search", variant="primary", scale=1, min_width=120, elem_id="search-btn")
                with gr.Row():
                    k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="Results (top-k)")
                    min_score = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Minimum score")
                    rerank = gr.Checkbox(label="Rerank", value=False, interactive=has_reranker,
                                         info=RERANK_INFO_ON if has_reranker else RERANK_INFO_OFF,
                                         elem_id="rerank")
                status = gr.Markdown(elem_id="status-line")
                results = gr.Gallery(label="Results", show_label=False, columns=6, height="auto",
                                     object_fit="cover", allow_preview=False, elem_id="results")
                hits_json = gr.JSON(visible=False)  # the hits as data: for API clients
                hits_state = gr.State([])
                with gr.Column(visible=False, elem_id="detail") as detail:
                    with gr.Row():
                        with gr.Column(scale=3):
                            detail_img = gr.Image(show_label=False, interactive=False, height=520,
                                                  buttons=["download", "fullscreen"], elem_id="detail-img")
                        with gr.Column(scale=2):
                            detail_md = gr.Markdown(elem_id="detail-md")

            # -- Find by photo -----------------------------------------------------------------
            with gr.Tab("Find by photo", id="photo"):
                with gr.Row():
                    with gr.Column(scale=2):
                        photo = _pass_unreadable_uploads(gr.Image(
                            label="Upload or paste a photo", type="filepath", sources=["upload", "clipboard"],
                            image_mode=None,  # the file as uploaded: our loader converts (no re-encode here)
                            height=320, elem_id="photo-input"))
                        photo_k = gr.Slider(1, 50, value=8, step=1, label="Results")
                        photo_rerank = gr.Checkbox(label="Rerank captions", value=False, interactive=has_reranker,
                                                   info=RERANK_CAPTIONS_INFO_ON if has_reranker else RERANK_INFO_OFF,
                                                   elem_id="photo-rerank")
                        photo_btn = gr.Button("Find", variant="primary", elem_id="photo-btn")
                    with gr.Column(scale=3):
                        photo_status = gr.Markdown(elem_id="photo-status")
                        captions_table = gr.Dataframe(headers=CAPTION_HEADERS + (["Match"] if has_reranker else []),
                                                      datatype=["number", "str", "str"]
                                                      + (["number"] if has_reranker else []),
                                                      label="Best-matching captions", interactive=False, wrap=True,
                                                      elem_id="captions-table",
                                                      column_widths=["11%", "55%", "22%", "12%"] if has_reranker
                                                      else ["12%", "63%", "25%"])
                similar = gr.Gallery(label="Most similar photos", columns=6, height="auto", object_fit="cover",
                                     allow_preview=True, elem_id="similar")

            # -- Library -----------------------------------------------------------------------
            with gr.Tab("Library", id="library"):
                with gr.Row(equal_height=True):
                    with gr.Column(scale=4):
                        lib_md = gr.Markdown(elem_id="lib-summary")
                    with gr.Column(scale=0, min_width=180):
                        reindex_btn = gr.Button("Reindex", variant="primary", elem_id="reindex-btn")
                        refresh_btn = gr.Button("Refresh", variant="secondary", size="sm", elem_id="refresh-btn")
                lib_status = gr.Markdown(elem_id="lib-status")
                folders_df = gr.Dataframe(headers=["Folder", "Photos", "Last indexed"],
                                          datatype=["str", "number", "str"], label="Indexed folders",
                                          interactive=False, wrap=True, elem_id="folders-table")
                skipped_df = gr.Dataframe(headers=["Skipped file", "Reason"], datatype=["str", "str"],
                                          label="Skipped files", interactive=False, wrap=True,
                                          elem_id="skipped-table")

        # -- handlers --------------------------------------------------------------------------

        def allow_current_folders() -> None:
            demo.allowed_paths = state.allowed_paths()  # folders indexed since launch become servable

        def do_search(q: str, top_k: float, threshold: float, use_rerank: bool):
            empty = ([], None, [], gr.Column(visible=False))
            if not (q or "").strip():
                return ([], _msg("info", "Type a few words describing the photo you are looking for."), *empty[1:])
            reranked = bool(use_rerank) and has_reranker
            try:
                found = state.search(q, k=int(top_k), min_score=float(threshold) if threshold else None,
                                     rerank=reranked)
            except QueryError as e:
                return ([], _msg("info", str(e).capitalize() + "."), *empty[1:])
            except EmptyIndexError:
                return ([], _msg("warn", "The index is empty: add photos on the Library tab "
                                         "(or run “imgsearch serve DIR”)."), *empty[1:])
            except ImgSearchError as e:
                return ([], _msg("error", str(e)), *empty[1:])
            if not found:
                text = (f"No photo scores at least {threshold:.2f} for “{q.strip()}”: lower the minimum score."
                        if threshold else f"No photos match “{q.strip()}”.")
                return ([], _msg("info", text), *empty[1:])
            allow_current_folders()
            items, shown = _gallery(state, found)
            note = f"{len(items)} photo{'s' if len(items) != 1 else ''} for “{q.strip()}”" \
                   + (" (reranked)" if reranked else "") + " — click one for details."
            data = [{"photo": r.hit.path, "name": r.name, "score": round(r.hit.score, 4), "image_id": r.hit.image_id,
                     "caption": r.caption, "match": None if r.hit.match is None else round(r.hit.match, 4)}
                    for r in found]  # "photo", not "path": see _details_dict
            return items, _msg("ok", note), data, shown, gr.Column(visible=False)

        search_outputs = [results, status, hits_json, hits_state, detail]
        gr.on([query.submit, search_btn.click], do_search, [query, k, min_score, rerank], search_outputs,
              api_name="search", concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")

        def rerun_search(q: str, top_k: float, threshold: float, use_rerank: bool):
            if not (q or "").strip():  # flipping the switch before searching: nothing to redo
                return tuple(gr.skip() for _ in search_outputs)
            return do_search(q, top_k, threshold, use_rerank)

        rerank.input(rerun_search, [query, k, min_score, rerank], search_outputs, api_visibility="private",
                     concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")

        def details_for(path: str):
            r = state.photo(path)
            if r is None:
                return None, _msg("warn", "That photo is no longer in the index (reindex to refresh)."), \
                    gr.Column(visible=True)
            allow_current_folders()
            return state.display_image(r), _details_md(r), gr.Column(visible=True)

        def on_select(paths: list[str], evt: gr.SelectData):
            if not paths or evt.index is None or evt.index >= len(paths):
                return None, "", gr.Column(visible=False)
            return details_for(paths[evt.index])

        results.select(on_select, [hits_state], [detail_img, detail_md, detail], api_visibility="private")

        def photo_details(path: str) -> dict:
            """Facts and captions of one indexed photo, by its absolute path."""
            r = state.photo(path)
            if r is None:
                raise gr.Error("not an indexed photo", print_exception=False)
            return _details_dict(r)

        gr.api(photo_details, api_name="photo_details")

        def find_by_photo(image_path: str | None, top_k: float, use_rerank: bool = False):
            if not image_path:
                return _msg("info", "Upload or paste a photo to find its captions and similar photos."), [], []
            reranked = bool(use_rerank) and has_reranker
            try:
                image = state.load_query_image(image_path)
                caps, sims = state.photo_matches(image, k_captions=CAPTIONS_K, k_photos=int(top_k), rerank=reranked)
            except ImageLoadError as e:
                return _msg("warn", f"That file is not an image we can read ({e.reason})."), [], []
            except EmptyIndexError as e:
                return _msg("warn", f"Nothing to compare with yet: {e}"), [], []
            except ImgSearchError as e:
                return _msg("error", str(e)), [], []
            allow_current_folders()
            rows = [[round(r.hit.score, 3), r.hit.caption, r.name] for r in caps]
            if has_reranker:  # the Match column: the reranker's probability, where it reranked
                for row, r in zip(rows, caps):
                    row.append(None if r.hit.match is None else round(r.hit.match, 3))
            items, _ = _gallery(state, sims)
            note = (f"{len(rows)} best captions{' (reranked)' if reranked else ''} and "
                    f"{len(items)} similar photos." if rows else "No captions in the index match this photo.")
            return _msg("ok", note), rows, items

        gr.on([photo_btn.click, photo.upload], find_by_photo, [photo, photo_k, photo_rerank],
              [photo_status, captions_table, similar], api_name="find_by_photo",
              concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")
        photo.clear(lambda: ("", [], []), None, [photo_status, captions_table, similar], api_visibility="private")

        def rerun_find(image_path: str | None, top_k: float, use_rerank: bool):
            if not image_path:
                return gr.skip(), gr.skip(), gr.skip()
            return find_by_photo(image_path, top_k, use_rerank)

        photo_rerank.input(rerun_find, [photo, photo_k, photo_rerank], [photo_status, captions_table, similar],
                           api_visibility="private", concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")

        def library_view():
            lib = state.library()
            folders = [[f["path"], f["images"], _when(f.get("indexed_at"))] for f in lib["folders"]]
            skipped = [[p, reason] for p, reason in lib["skipped"]]
            # plain values, not gr.Dataframe(...) updates: API clients then get the table itself
            return _library_md(lib, state.status), _status_md(state.status), folders, skipped

        library_outputs = [lib_md, lib_status, folders_df, skipped_df]

        def library_info():
            allow_current_folders()
            return library_view()

        refresh_btn.click(library_info, None, library_outputs, api_name="library_info")
        demo.load(library_info, None, library_outputs, api_visibility="private")

        def reindex(progress=gr.Progress()):
            started = state.start_reindex()
            if not started:
                gr.Info("A reindex is already running; showing its progress.")
            progress((0, None), desc="Starting…")
            while not state.wait_reindex(timeout=0.5):
                s = state.status
                if s.total:
                    progress((s.done, s.total), desc=f"Indexing {os.path.basename(s.folder) or s.folder}",
                             unit="files")
                else:
                    progress((0, None), desc=f"Scanning {os.path.basename(s.folder) or s.folder}…")
            if state.status.errors:
                gr.Warning(f"Reindex finished with {len(state.status.errors)} error(s); see the Library tab.")
            return library_info()

        reindex_btn.click(reindex, None, library_outputs, api_name="reindex", concurrency_limit=1,
                          show_progress="full")

    demo.imgsearch_state = state  # type: ignore[attr-defined]
    return demo


def _pass_unreadable_uploads(image: gr.Image) -> gr.Image:
    """Let an upload that Pillow cannot open reach the handler as a file path, so a non-image gets a
    clear message instead of a failed request. Patched on the instance: subclassing a gradio
    Component makes gradio write a .pyi stub beside this module at import time."""
    original = image.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:
            return str(payload.path) if payload is not None and payload.path else None

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def launch(demo: gr.Blocks, state: AppState, *, host: str = "127.0.0.1", port: int | None = 7860,
           auth: tuple[str, str] | None = None, max_file_size: str | int = MAX_UPLOAD,
           prevent_thread_lock: bool = True, quiet: bool = True):
    """Serve the app: only the indexed folders and thumbnails are servable, uploads are capped, never shared."""
    demo.queue(default_concurrency_limit=2)
    # Thumbnails are served as static files: gradio then skips copying (and hashing) each one
    # into its upload cache on every search. The folder holds only thumbnails and previews.
    gr.set_static_paths([str(state.thumbs.folder)])
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        auth_message="imgsearch — sign in to search these photos." if auth else None,
        share=False,
        allowed_paths=state.allowed_paths(),
        blocked_paths=state.blocked_paths(),
        max_file_size=max_file_size,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=False,
        ssr_mode=False,
        inbrowser=False,
        theme=theme(),
        css=CSS,
        footer_links=[],
    )
