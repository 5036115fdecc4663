"""The web UI: a Gradio Blocks app over the imgsearch library, one module per page.

``AppState`` (state.py) holds what the pages need and talks to the library; ``render`` turns its
results into Markdown and gallery items; ``search_page``, ``photo_page``, ``library_page`` and
``duplicates_page`` each build one tab and wire its events; ``app`` puts them together (``build_app``) and serves them
(``launch``) with the file-serving rules locked down to the indexed folders and the thumbnail cache.

Endpoints (for gradio_client; parameters added later come last, with defaults):
  /search(query, k, min_relevance, rerank, taken_after="", taken_before="", folders=[], sort="relevance",
          not_text="", offset=0) -> (gallery, status, hits)
  /find_by_photo(image, k, rerank=False, text="") -> (status, captions table, similar photos)
  /photo_details(path), /library_info(), /reindex(), /add_folder(path), /remove_folder(path),
  /duplicates(threshold).

A reranker (``retrieval.rerank.Reranker``, loaded by the caller) passed to ``AppState`` enables
the "Rerank" switches: the Searcher reorders the top results with it, and the gallery labels show
its match probability.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: never phone home
# Gradio's queue rebuilds a pandas summary of its last (up to 10,000) events after every event by
# default: under load that is the costliest step of a search. Summarise rarely, over fewer events.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")

from .app import CSS, MAX_UPLOAD, build_app, launch, theme  # after the settings above
from .render import RERANK_CAPTIONS_INFO_ON, RERANK_INFO_OFF, RERANK_INFO_ON
from .state import CAPTIONS_K, DEFAULT_K, AppState, ReindexStatus, Result

__all__ = [
    "CAPTIONS_K", "CSS", "DEFAULT_K", "MAX_UPLOAD", "RERANK_CAPTIONS_INFO_ON", "RERANK_INFO_OFF", "RERANK_INFO_ON",
    "AppState", "ReindexStatus", "Result", "build_app", "launch", "theme",
]
