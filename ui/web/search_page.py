"""The Search page: a text query, its options, the results gallery and the detail view of a photo.

Endpoints: ``/search(query, k, min_score, rerank) -> (gallery, status, hits)`` and
``/photo_details(path)``.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from retrieval.errors import EmptyIndexError, ImgSearchError
from retrieval.search import QueryError

from .render import (
    RERANK_INFO_OFF,
    RERANK_INFO_ON,
    details_dict,
    details_md,
    gallery,
    msg,
)
from .state import DEFAULT_K, QUERY_CONCURRENCY, AppState, allow_current_folders

MAX_K = 100


def build_search_page(demo: gr.Blocks, state: AppState) -> Callable[[], None]:
    """Lay out the Search tab (inside ``demo``'s Tabs) and return the function that wires its events."""
    has_reranker = state.has_reranker
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

    def wire_events() -> None:
        def do_search(q: str, top_k: float, threshold: float, use_rerank: bool):
            empty = ([], None, [], gr.Column(visible=False))
            if not (q or "").strip():
                return ([], msg("info", "Type a few words describing the photo you are looking for."), *empty[1:])
            reranked = bool(use_rerank) and has_reranker
            try:
                found = state.search(q, k=int(top_k), min_score=float(threshold) if threshold else None,
                                     rerank=reranked)
            except QueryError as e:
                return ([], msg("info", str(e).capitalize() + "."), *empty[1:])
            except EmptyIndexError:
                return ([], msg("warn", "The index is empty: add photos on the Library tab "
                                        "(or run “imgsearch serve DIR”)."), *empty[1:])
            except ImgSearchError as e:
                return ([], msg("error", str(e)), *empty[1:])
            if not found:
                text = (f"No photo scores at least {threshold:.2f} for “{q.strip()}”: lower the minimum score."
                        if threshold else f"No photos match “{q.strip()}”.")
                return ([], msg("info", text), *empty[1:])
            allow_current_folders(demo, state)
            items, shown = gallery(state, found)
            note = f"{len(items)} photo{'s' if len(items) != 1 else ''} for “{q.strip()}”" \
                   + (" (reranked)" if reranked else "") + " — click one for details."
            data = [{"photo": r.hit.path, "name": r.name, "score": round(r.hit.score, 4), "image_id": r.hit.image_id,
                     "caption": r.caption, "match": None if r.hit.match is None else round(r.hit.match, 4)}
                    for r in found]  # "photo", not "path": see details_dict
            return items, msg("ok", note), data, shown, gr.Column(visible=False)

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
                return None, msg("warn", "That photo is no longer in the index (reindex to refresh)."), \
                    gr.Column(visible=True)
            allow_current_folders(demo, state)
            return state.display_image(r), details_md(r), gr.Column(visible=True)

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
            return details_dict(r)

        gr.api(photo_details, api_name="photo_details")

    return wire_events
