"""The Search page: a text query, its filters and options, the results gallery and the detail view of a photo.

Endpoints: ``/search(query, k, min_relevance, rerank, taken_after="", taken_before="", folders=[],
sort="relevance", not_text="", offset=0) -> (gallery, status, hits)`` (clients of the first four
parameters keep working) and ``/photo_details(path)``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import gradio as gr

from retrieval.errors import EmptyIndexError, FilterRangeError, ImgSearchError, QueryError, UnknownFolderError
from retrieval.query import SearchQuery, parse_day

from .render import (
    RERANK_INFO_OFF,
    RERANK_INFO_ON,
    details_dict,
    details_md,
    gallery,
    hit_dict,
    msg,
)
from .state import DEFAULT_K, QUERY_CONCURRENCY, AppState, Result, allow_current_folders

MAX_K = 100
MAX_RELEVANCE = 10.0  # the "Minimum relevance" slider's top: few photos stand this far above a query's typical one
MAX_DEPTH = 1000  # "Show more" (and the API's offset) pages through at most this many best photos
SORT_CHOICES = [("Relevance", "relevance"), ("Date taken", "date")]
# Errors that say what to change in the query: shown as information, not as a failure.
QUERY_ERRORS = (QueryError, UnknownFolderError, FilterRangeError)
C = TypeVar("C", bound=gr.components.Component)


def not_texts_of(text: str | None) -> tuple[str, ...]:
    """The "Not" box as the concepts to steer away from: comma-separated, blanks dropped."""
    return tuple(t.strip() for t in str(text or "").split(",") if t.strip())


def folders_of(value: Any) -> tuple[str, ...]:
    """The folder picker's value (a path, a list of them, or nothing) as a tuple of paths."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in values if str(v).strip())


def day_of(value: Any, what: str) -> dt.date | None:
    """A date box's text as a date (None when blank); a one-line QueryError when it is not YYYY-MM-DD."""
    text = "" if value is None else str(value).strip()
    return parse_day(text, what) if text else None


def whole(value: Any, what: str) -> int:
    """A slider or number as an int (a QueryError, not a traceback, for text that is not a number)."""
    try:
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise QueryError(f"{what} must be a whole number, not {str(value)[:40]!r}") from None


def relevance_floor(value: Any) -> float | None:
    """The "Minimum relevance" slider as a floor on a hit's relevance (None at 0: no floor)."""
    try:
        floor = float(value or 0)
    except (TypeError, ValueError):
        raise QueryError(f"minimum relevance must be a number, not {str(value)[:40]!r}") from None
    if floor != floor:  # NaN
        raise QueryError("minimum relevance must be a number, not NaN")
    return floor or None


def make_query(q: str, top_k: Any, threshold: Any, rerank: bool, taken_after: Any, taken_before: Any,
               folders: Any, sort: Any, not_text: Any, offset: Any) -> SearchQuery:
    """The SearchQuery of the page's inputs (or of an API call); QueryError for what cannot be read or
    reaches past the MAX_DEPTH best photos."""
    k, start = whole(top_k, "k"), whole(offset or 0, "offset")
    if not 1 <= k <= MAX_K:
        raise QueryError(f"the number of results (k) must be a whole number from 1 to {MAX_K}, not {k}")
    if not 0 <= start <= MAX_DEPTH - k:
        raise QueryError(f"offset must be from 0 to {MAX_DEPTH - k} (at most the {MAX_DEPTH} best photos "
                         f"are paged through: narrow the search with filters), not {start}")
    return SearchQuery(
        text=q, k=k, min_relevance=relevance_floor(threshold), rerank=bool(rerank),
        taken_after=day_of(taken_after, "taken after"), taken_before=day_of(taken_before, "taken before"),
        folders=folders_of(folders), sort=str(sort or "relevance"), not_texts=not_texts_of(not_text),
        offset=start)


def describe(query: SearchQuery) -> str:
    """The filters, steering and order of a query, as the status line tails the count with them."""
    parts = []
    if query.taken_after and query.taken_before:
        parts.append(f"taken {query.taken_after} to {query.taken_before}")
    elif query.taken_after:
        parts.append(f"taken on or after {query.taken_after}")
    elif query.taken_before:
        parts.append(f"taken on or before {query.taken_before}")
    if query.folders:
        parts.append("in " + ", ".join(os.path.basename(f.rstrip("/")) or f for f in query.folders))
    if query.not_texts:
        parts.append("not " + ", ".join(f"“{t}”" for t in query.not_texts))
    if query.sort == "date":
        parts.append("newest first")
    return "".join(f" · {p}" for p in parts)


def build_search_page(demo: gr.Blocks, state: AppState) -> Callable[[], None]:
    """Lay out the Search tab (inside ``demo``'s Tabs) and return the function that wires its events."""
    has_reranker = state.has_reranker
    with gr.Tab("Search", id="search"):
        with gr.Row(equal_height=True):
            query = gr.Textbox(show_label=False, placeholder="Describe a photo — “a cat”, “a cup of coffee”…",
                               scale=6, max_lines=1, autofocus=True, elem_id="query")
            search_btn = gr.Button("Search", variant="primary", scale=1, min_width=120, elem_id="search-btn")
        with gr.Row(equal_height=True, elem_id="filters"):
            taken_after = date_box("Taken after", "taken-after")
            taken_before = date_box("Taken before", "taken-before")
            folders = gr.Dropdown(choices=safe_folder_choices(state), value=[], multiselect=True,
                                  allow_custom_value=True, label="Folders", scale=3, min_width=220,
                                  info="only photos in these folders", elem_id="folders")
            not_box = gr.Textbox("", label="Not", placeholder="e.g. night, people", max_lines=1, scale=2,
                                 min_width=160, info="steer away from (comma-separated)", elem_id="not")
            sort = as_sent(gr.Radio(SORT_CHOICES, value="relevance", label="Sort by", scale=2, min_width=200,
                            info="date: newest first", elem_id="sort"))
        with gr.Row():
            k = as_sent(gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="Results (top-k)"))
            min_relevance = as_sent(gr.Slider(0.0, MAX_RELEVANCE, value=0.0, step=0.1, label="Minimum relevance",
                                          info="standard deviations above the query's typical photo"))
            rerank = gr.Checkbox(label="Rerank", value=False, interactive=has_reranker,
                                 info=RERANK_INFO_ON if has_reranker else RERANK_INFO_OFF,
                                 elem_id="rerank")
        offset = as_sent(gr.Number(value=0, precision=0, visible=False))  # the API's paging (the page pages by "Show more")
        status = gr.Markdown(elem_id="status-line")
        results = gr.Gallery(label="Results", show_label=False, columns=6, height="auto",
                             object_fit="cover", allow_preview=False, elem_id="results")
        with gr.Row(visible=False, elem_id="more-row") as more_row:
            more_btn = gr.Button("Show more", variant="secondary", size="sm", elem_id="show-more")
        hits_json = gr.JSON(visible=False)  # the hits as data: for API clients
        # What the page shows: the query's inputs, the next offset, gallery items and their hits
        page_state = gr.State({})
        with gr.Column(visible=False, elem_id="detail") as detail:
            with gr.Row():
                with gr.Column(scale=3):
                    detail_img = gr.Image(show_label=False, interactive=False, height=520,
                                          buttons=["download", "fullscreen"], elem_id="detail-img")
                with gr.Column(scale=2):
                    detail_md = gr.Markdown(elem_id="detail-md")

    inputs = [query, k, min_relevance, rerank, taken_after, taken_before, folders, sort, not_box, offset]

    def wire_events() -> None:
        def run(inputs: list, earlier: dict | None = None) -> tuple:
            """One search (a first page, or the next page after ``earlier``) -> the search outputs."""
            q = inputs[0]
            hidden = (gr.Column(visible=False), gr.Row(visible=False))
            if not (q or "").strip():
                return ([], msg("info", "Type a few words describing the photo you are looking for."), [],
                        {}, *hidden)
            try:
                sq = make_query(*inputs)
                if earlier:
                    sq = replace(sq, offset=earlier["next"])
                found = state.find(sq)
            except QUERY_ERRORS as e:
                return [], msg("info", str(e)[:1].upper() + str(e)[1:] + "."), [], {}, *hidden
            except EmptyIndexError:
                return ([], msg("warn", "The index is empty: add photos on the Library tab "
                                        "(or run “imgsearch serve DIR”)."), [], {}, *hidden)
            except ImgSearchError as e:
                return [], msg("error", str(e)), [], {}, *hidden
            if not found and not earlier:
                threshold = sq.min_relevance
                text = (f"No photo has a relevance of at least {threshold:.1f} for “{q.strip()}”: lower the "
                        "minimum relevance."
                        if threshold else f"No photos match “{q.strip()}”{describe(sq)}.")
                return [], msg("info", text), [], {}, *hidden
            allow_current_folders(demo, state)
            items, shown = gallery(state, found)
            on_page = set(shown)
            hits = [hit_dict(r) for r in found if r.hit.path in on_page]
            if earlier:
                items, hits = earlier["items"] + items, earlier["hits"] + hits
            reranked = sq.rerank and has_reranker
            note = f"{len(items)} photo{'s' if len(items) != 1 else ''} for “{q.strip()}”{describe(sq)}" \
                   + (" (reranked)" if reranked else "") + " — click one for details."
            data = hits if earlier else [hit_dict(r) for r in found]
            page = {"inputs": list(inputs), "next": sq.offset + len(found), "items": items, "hits": hits}
            more = gr.Row(visible=len(found) >= sq.k and page["next"] + sq.k <= MAX_DEPTH)  # a full page: maybe more
            return items, msg("ok", note), data, page, gr.Column(visible=False), more

        def do_search(q: str, top_k: float, threshold: float, use_rerank: bool, taken_after: str | None = "",
                      taken_before: str | None = "", folders: list[str] | None = None, sort: str = "relevance",
                      not_text: str = "", offset: float = 0):
            return run([q, top_k, threshold, use_rerank, taken_after, taken_before, folders, sort, not_text, offset])

        search_outputs = [results, status, hits_json, page_state, detail, more_row]
        triggers = [query.submit, search_btn.click, not_box.submit, taken_after.submit, taken_before.submit]
        # always_last: a search asked for while one runs follows it (gradio's default drops it)
        gr.on(triggers, do_search, inputs, search_outputs, api_name="search", trigger_mode="always_last",
              concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")

        def rerun_search(*values):
            if not (values[0] or "").strip():  # changing an option before searching: nothing to redo
                return tuple(gr.skip() for _ in search_outputs)
            return do_search(*values)

        gr.on([rerank.input, sort.input, folders.input], rerun_search, inputs, search_outputs,
              api_visibility="private", trigger_mode="always_last", concurrency_limit=QUERY_CONCURRENCY,
              concurrency_id="query")

        def show_more(page: dict):
            if not page or not page.get("inputs"):
                return tuple(gr.skip() for _ in search_outputs)
            return run(page["inputs"], earlier=page)

        more_btn.click(show_more, [page_state], search_outputs, api_visibility="private",
                       concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")

        demo.load(lambda: gr.Dropdown(choices=safe_folder_choices(state)), None, folders,
                  api_visibility="private")

        def details_for(path: str, hit: dict | None = None):
            r = state.photo(path)
            if r is None:
                return None, msg("warn", "That photo is no longer in the index (reindex to refresh)."), \
                    gr.Column(visible=True)
            if hit:
                r = with_search_facts(r, hit)
            allow_current_folders(demo, state)
            return state.display_image(r), details_md(r), gr.Column(visible=True)

        def on_select(page: dict, evt: gr.SelectData):
            hits = (page or {}).get("hits") or []
            if evt.index is None or evt.index >= len(hits):
                return None, "", gr.Column(visible=False)
            return details_for(hits[evt.index]["photo"], hits[evt.index])

        results.select(on_select, [page_state], [detail_img, detail_md, detail], api_visibility="private")

        def photo_details(path: str) -> dict:
            """Facts and captions of one indexed photo, by its absolute path."""
            r = state.photo(path)
            if r is None:
                raise gr.Error("not an indexed photo", print_exception=False)
            return details_dict(r)

        gr.api(photo_details, api_name="photo_details")

    return wire_events


def with_search_facts(r: Result, hit: dict) -> Result:
    """``r`` (a photo looked up by path) with what its search said of it: score, relevance, matches, caption."""
    h = replace(r.hit, score=hit["score"], relevance=hit.get("relevance"), matched=tuple(hit.get("matched") or ()),
                caption=hit.get("matched_caption"), source=hit.get("source"), match=hit.get("match"),
                taken=hit.get("taken"))
    return Result(h, r.row, r.captions)


def as_sent(component: C) -> C:
    """``component`` with its value reaching the handler as sent, which checks it (``make_query``): gradio's
    own checks of dates, ranges and choices fail the request with a logged traceback instead of a message.
    Patched on the instance: see ``photo_page.pass_unreadable_uploads``."""
    component.preprocess = lambda payload: payload  # type: ignore[method-assign]
    return component


def date_box(label: str, elem_id: str) -> gr.DateTime:
    """A date-only picker (a text box with a calendar) whose text ``day_of`` reads."""
    return as_sent(gr.DateTime("", label=label, include_time=False, type="string", scale=1, min_width=150,
                               elem_id=elem_id))


def safe_folder_choices(state: AppState) -> list[tuple[str, str]]:
    """The folder picker's choices; none while the index cannot be read (the page still loads)."""
    try:
        return state.folder_choices()
    except ImgSearchError:
        return []
