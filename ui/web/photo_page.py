"""The Find by photo page: an uploaded photo's best-matching captions and most similar photos.

Endpoint: ``/find_by_photo(image, k, rerank=False, text="") -> (status, captions table, similar photos)``;
with ``text`` the similar photos match the photo and the text together ("this photo, but at night").
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from retrieval.errors import EmptyIndexError, ImageLoadError, ImgSearchError, QueryError
from retrieval.query import clean_text

from .render import (
    CAPTION_HEADERS,
    RERANK_CAPTIONS_INFO_ON,
    RERANK_INFO_OFF,
    gallery,
    msg,
)
from .search_page import as_sent, whole
from .state import CAPTIONS_K, QUERY_CONCURRENCY, AppState, allow_current_folders

MAX_PHOTOS = 50


def build_photo_page(demo: gr.Blocks, state: AppState) -> Callable[[], None]:
    """Lay out the Find by photo tab (inside ``demo``'s Tabs) and return the function that wires its events."""
    has_reranker = state.has_reranker
    with gr.Tab("Find by photo", id="photo"):
        with gr.Row():
            with gr.Column(scale=2):
                photo = pass_unreadable_uploads(gr.Image(
                    label="Upload or paste a photo", type="filepath", sources=["upload", "clipboard"],
                    image_mode=None,  # the file as uploaded: our loader converts (no re-encode here)
                    height=320, elem_id="photo-input"))
                photo_text = gr.Textbox("", label="and text", placeholder="this photo, but… “at night”, “in snow”",
                                        max_lines=1, info="optional: find photos like this one and these words",
                                        elem_id="photo-text")
                photo_k = as_sent(gr.Slider(1, MAX_PHOTOS, value=8, step=1, label="Results"))
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

    def wire_events() -> None:
        def find_by_photo(image_path: str | None, top_k: float, use_rerank: bool = False, text: str | None = ""):
            if not image_path:
                return msg("info", "Upload or paste a photo to find its captions and similar photos."), [], []
            reranked = bool(use_rerank) and has_reranker
            text = clean_text(text)
            try:
                k_photos = whole(top_k, "k")
                if not 1 <= k_photos <= MAX_PHOTOS:
                    raise QueryError(f"the number of results (k) must be a whole number from 1 to {MAX_PHOTOS}, "
                                     f"not {k_photos}")
                image = state.load_query_image(image_path)
                caps, sims = state.photo_matches(image, k_captions=CAPTIONS_K, k_photos=k_photos, rerank=reranked,
                                                 text=text or None)
            except ImageLoadError as e:
                return msg("warn", f"That file is not an image we can read ({e.reason})."), [], []
            except EmptyIndexError as e:
                return msg("warn", f"Nothing to compare with yet: {e}"), [], []
            except QueryError as e:
                return msg("info", str(e)[:1].upper() + str(e)[1:] + "."), [], []
            except ImgSearchError as e:
                return msg("error", str(e)), [], []
            allow_current_folders(demo, state)
            rows = [[round(r.hit.score, 3), r.hit.caption, r.name] for r in caps]
            if has_reranker:  # the Match column: the reranker's probability, where it reranked
                for row, r in zip(rows, caps):
                    row.append(None if r.hit.match is None else round(r.hit.match, 3))
            items, _ = gallery(state, sims)
            alike = f"{len(items)} photos like this one and “{text}”" if text else f"{len(items)} similar photos"
            note = (f"{len(rows)} best captions{' (reranked)' if reranked else ''} and {alike}." if rows
                    else f"No captions in the index match this photo; {alike}.")
            return msg("ok", note), rows, items

        gr.on([photo_btn.click, photo.upload, photo_text.submit], find_by_photo,
              [photo, photo_k, photo_rerank, photo_text], [photo_status, captions_table, similar],
              api_name="find_by_photo", concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")
        photo.clear(lambda: ("", [], []), None, [photo_status, captions_table, similar], api_visibility="private")

        def rerun_find(image_path: str | None, top_k: float, use_rerank: bool, text: str):
            if not image_path:
                return gr.skip(), gr.skip(), gr.skip()
            return find_by_photo(image_path, top_k, use_rerank, text)

        photo_rerank.input(rerun_find, [photo, photo_k, photo_rerank, photo_text],
                           [photo_status, captions_table, similar],
                           api_visibility="private", concurrency_limit=QUERY_CONCURRENCY, concurrency_id="query")

    return wire_events


def pass_unreadable_uploads(image: gr.Image) -> gr.Image:
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
