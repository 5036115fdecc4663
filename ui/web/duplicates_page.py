"""The Duplicates page: groups of near-duplicate photos side by side, best first, with what tells them apart.

The groups are those of `imgsearch duplicates` (``retrieval.duplicates.find_duplicates``), computed when the
page asks for them and kept until the index generation or the threshold changes, one computation at a
time in its own queue, so searches never wait behind it. Thumbnails come from the thumbnail cache (JPEG,
whatever the photo's format). imgsearch never deletes a photo: the page shows paths, the user decides.

Endpoint: ``/duplicates(threshold)`` returns the status line, the groups as HTML, and the groups as data.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from urllib.parse import quote

import gradio as gr

from retrieval.duplicates import DEFAULT_THRESHOLD, HashCache, check_threshold, find_duplicates
from retrieval.errors import ImgSearchError
from retrieval.store import ImageRow

from .render import esc, human_size, msg
from .state import AppState, allow_current_folders

MAX_GROUPS_SHOWN = 200  # groups laid out on the page (the data lists them all)
MIN_THRESHOLD = 0.5

CSS = """
.dup-group { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px 12px; margin: 0 0 14px 0; }
.dup-head { font-weight: 600; margin-bottom: 8px; }
.dup-head .dup-score { font-weight: 400; opacity: .75; margin-left: 6px; }
.dup-row { display: flex; flex-wrap: wrap; gap: 12px; }
.dup-photo { width: 220px; margin: 0; border-radius: 10px; overflow: hidden; background: var(--background-fill-secondary); }
.dup-photo img { width: 220px; height: 165px; object-fit: contain; display: block; background: #111; }
.dup-missing { width: 220px; height: 165px; display: flex; align-items: center; justify-content: center; opacity: .6; }
.dup-photo figcaption { padding: 6px 8px 8px 8px; font-size: 12px; line-height: 1.45; }
.dup-name { font-weight: 600; font-size: 13px; word-break: break-all; }
.dup-best { display: inline-block; margin-left: 4px; padding: 0 6px; border-radius: 6px; font-size: 11px;
            background: rgba(34,197,94,.18); color: inherit; }
.dup-path { display: block; margin-top: 4px; font-size: 11px; word-break: break-all; opacity: .8; user-select: all; }
"""


@dataclass(frozen=True)
class DuplicatePhoto:
    """One photo of a group, with the facts that tell the copies apart."""

    path: str
    size: int  # bytes on disk
    width: int | None
    height: int | None
    format: str
    date: str  # "YYYY-MM-DD HH:MM"
    date_kind: str  # "taken" (EXIF) or "modified" (file time)
    thumbnail: str | None  # the cached JPEG thumbnail; None when unreadable, or past the groups the page shows


@dataclass(frozen=True)
class DuplicateSet:
    """One group as the page shows it: its photos best first (as `imgsearch duplicates` lists them)."""

    score: float
    exact: bool
    photos: tuple[DuplicatePhoto, ...]


@dataclass(frozen=True)
class DuplicatesView:
    """What the page shows: the groups, the threshold and index generation they were found at, and how."""

    groups: tuple[DuplicateSet, ...]
    threshold: float
    generation: int
    indexed: int  # photos in the index
    seconds: float  # how long finding the groups took (0 when served from the cache)
    cached: bool


def photo_facts(row: ImageRow, thumbnail: str | None) -> DuplicatePhoto:
    """A stored photo's size, pixels, date (taken, else file time) and format, for one tile."""
    if isinstance(row.taken_at, datetime.datetime):
        date, kind = row.taken_at.strftime("%Y-%m-%d %H:%M"), "taken"
    else:
        date, kind = datetime.datetime.fromtimestamp(row.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M"), "modified"
    fmt = row.format or os.path.splitext(row.path)[1].lstrip(".").upper() or "?"
    return DuplicatePhoto(row.path, int(row.size), row.width, row.height, fmt, date, kind, thumbnail)


class DuplicatesFinder:
    """The Duplicates page's state over one ``AppState``: groups cached per (index generation, threshold),
    found one run at a time, and perceptual hashes kept between runs (a new threshold rehashes nothing)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._hashes: HashCache = {}
        self._cache: tuple[tuple, DuplicatesView] | None = None

    def find(self, threshold: float = DEFAULT_THRESHOLD) -> DuplicatesView:
        """The near-duplicate groups of the index at ``threshold``, with thumbnails; from the cache when the
        index has not changed since. Raises QueryError for a threshold outside (0, 1]."""
        threshold = round(check_threshold(threshold), 4)
        store = self.state.store()
        if store is None:
            return DuplicatesView((), threshold, 0, 0, 0.0, False)
        with self._lock:
            key = (id(store), store.generation, threshold)
            if self._cache is not None and self._cache[0] == key:
                return replace(self._cache[1], seconds=0.0, cached=True)
            start = time.perf_counter()
            groups = find_duplicates(store, threshold, cache=self._hashes)
            rows = store.images([i for g in groups for i in g.ids])
            sets = []
            for g in groups:
                thumbs = len(sets) < MAX_GROUPS_SHOWN
                members = [rows[i] for i in g.ids if i in rows]  # a photo removed meanwhile is left out
                if len(members) < 2:
                    continue
                photos = tuple(photo_facts(r, self.state.thumbs.thumbnail(r.path, r.hash) if thumbs else None)
                               for r in members)
                sets.append(DuplicateSet(float(g.score), bool(g.exact), photos))
            view = DuplicatesView(tuple(sets), threshold, key[1], store.count_images(),
                                  time.perf_counter() - start, False)
            self._cache = (key, view)
            return view


def thumb_url(path: str) -> str:
    """The URL the page loads a cached thumbnail from (relative, so the app may sit under a sub-path)."""
    return "gradio_api/file=" + quote(path)


def groups_html(view: DuplicatesView, limit: int = MAX_GROUPS_SHOWN) -> str:
    """The groups as HTML: one row of tiles per group, best photo first, each with its facts and full path."""
    parts = []
    for n, g in enumerate(view.groups[:limit], 1):
        score = "identical files" if g.exact else f"score {g.score:.3f}"
        tiles = []
        for k, p in enumerate(g.photos):
            img = (f'<img src="{esc(thumb_url(p.thumbnail))}" alt="{esc(os.path.basename(p.path))}" loading="lazy">'
                   if p.thumbnail else '<div class="dup-missing">cannot be read</div>')
            dims = f"{p.width} × {p.height} px" if p.width and p.height else "? px"
            best = '<span class="dup-best">best</span>' if k == 0 else ""
            tiles.append(
                f'<figure class="dup-photo">{img}<figcaption>'
                f'<div class="dup-name"><span class="dup-file">{esc(os.path.basename(p.path))}</span>{best}</div>'
                f'<div class="dup-facts">{esc(human_size(p.size))} · {esc(dims)} · {esc(p.format)}</div>'
                f'<div class="dup-date">{esc(p.date_kind)} {esc(p.date)}</div>'
                f'<code class="dup-path">{esc(p.path)}</code></figcaption></figure>')
        parts.append(f'<div class="dup-group"><div class="dup-head">Group {n}<span class="dup-score">'
                     f'{len(g.photos)} photos · {esc(score)}</span></div>'
                     f'<div class="dup-row">{"".join(tiles)}</div></div>')
    return "\n".join(parts)


def summary(view: DuplicatesView, limit: int = MAX_GROUPS_SHOWN) -> str:
    """The status line above the groups."""
    if not view.indexed:
        return msg("warn", "The index is empty: add photos on the Library tab (or run “imgsearch serve DIR”).")
    if not view.groups:
        return msg("ok", f"No near-duplicates among {view.indexed} photos at threshold {view.threshold:.2f}.")
    photos = sum(len(g.photos) for g in view.groups)
    shown = f" (the first {limit} shown)" if len(view.groups) > limit else ""
    took = "" if view.cached else f" in {view.seconds:.1f}s"
    return msg("ok", f"{len(view.groups)} group{'s' if len(view.groups) != 1 else ''} of near-duplicates "
                     f"({photos} photos) among {view.indexed} photos at threshold {view.threshold:.2f}, "
                     f"found{took}{shown}. Best photo first (most pixels, then oldest). imgsearch never "
                     "deletes a photo: the paths are shown so you can decide.")


def view_data(view: DuplicatesView) -> list[dict]:
    """The groups as data for API clients: paths best first, score, and each photo's facts."""
    return [{"paths": [p.path for p in g.photos], "score": round(g.score, 4), "exact": g.exact,
             "photos": [{k: v for k, v in asdict(p).items() if k not in ("path", "thumbnail")} | {"photo": p.path}
                        for p in g.photos]}
            for g in view.groups]


def build_duplicates_page(demo: gr.Blocks, state: AppState) -> Callable[[], None]:
    """Lay out the Duplicates tab (inside ``demo``'s Tabs) and return the function that wires its events
    (it finds the groups when the tab is opened, and again on the button)."""
    finder = DuplicatesFinder(state)
    with gr.Tab("Duplicates", id="duplicates") as tab:
        with gr.Row(elem_id="dup-controls"):
            threshold = gr.Slider(MIN_THRESHOLD, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Threshold",
                                  info="how alike the photos' vectors must be before the pixel check "
                                       "(higher: fewer, surer groups)", scale=4, elem_id="dup-threshold")
            find_btn = gr.Button("Find duplicates", variant="primary", scale=1, min_width=160, elem_id="dup-find")
        status = gr.Markdown(elem_id="dup-status")
        groups = gr.HTML(css_template=CSS, js_on_load=None, elem_id="dup-groups")
        data = gr.JSON(visible=False)  # the groups as data: for API clients

    def wire_events() -> None:
        def show(value: float):
            try:
                view = finder.find(value)
            except ImgSearchError as e:
                return msg("error", str(e)), "", []
            allow_current_folders(demo, state)
            return summary(view), groups_html(view), view_data(view)

        outputs = [status, groups, data]
        find_btn.click(show, [threshold], outputs, api_name="duplicates", concurrency_limit=1,
                       concurrency_id="duplicates")
        tab.select(show, [threshold], outputs, api_visibility="private", concurrency_limit=1,
                   concurrency_id="duplicates")

    return wire_events
