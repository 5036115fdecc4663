"""Rerankers: cross-attention image-text matching on the top results of the dual encoder.

Specs (``list_rerankers()`` lists them, with descriptions and whether they are installed):
  ``default``               the bundled fusion reranker (``retrieval/weights/reranker/``) on the bundled towers
  ``fusion:<folder>``       a fusion reranker written by ``imgsearch train-reranker``
  ``hf-blip:<id|folder>``   a Hugging Face BLIP image-text matching model (``BlipForImageTextRetrieval``)
"""

from __future__ import annotations

from .base import Reranker, fuse
from .registry import (BUNDLED_RERANKER_DIR, RERANKERS, create_reranker, list_rerankers, reranker_info,
                       reranker_spec_names)

__all__ = ["Reranker", "create_reranker", "fuse", "list_rerankers", "reranker_info", "reranker_spec_names",
           "RERANKERS", "BUNDLED_RERANKER_DIR", "DEFAULT_RERANK_K"]

DEFAULT_RERANK_K = 20
