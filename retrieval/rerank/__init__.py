"""Rerankers: cross-attention image-text matching on the top results of the dual encoder.

Specs:
  ``default``               the bundled fusion reranker (``retrieval/weights/reranker/``) on the bundled towers
  ``fusion:<folder>``       a fusion reranker written by ``imgsearch train-reranker``
  ``hf-blip:<id|folder>``   a Hugging Face BLIP image-text matching model (``BlipForImageTextRetrieval``)
"""

from __future__ import annotations

import os

from ..errors import EncoderSpecError
from .base import Reranker, fuse

__all__ = ["Reranker", "create_reranker", "fuse", "BUNDLED_RERANKER_DIR", "DEFAULT_RERANK_K"]

BUNDLED_RERANKER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "reranker")
DEFAULT_RERANK_K = 20


def create_reranker(spec: str = "default", encoder=None, device: str | None = None) -> Reranker:
    """Build the reranker a spec names; ``encoder`` (the search encoder) lends its towers where they fit."""
    spec = (spec or "default").strip()
    if spec == "default":
        from .fusion import WEIGHTS_FILE, FusionReranker

        if not os.path.isfile(os.path.join(BUNDLED_RERANKER_DIR, WEIGHTS_FILE)):
            raise EncoderSpecError(f"no bundled reranker: {BUNDLED_RERANKER_DIR} has no {WEIGHTS_FILE}")
        return FusionReranker(BUNDLED_RERANKER_DIR, spec="default", encoder=encoder, device=device)
    if spec.startswith("fusion:"):
        folder = spec[7:].strip()
        if not folder or not os.path.isdir(folder):
            raise EncoderSpecError(f"cannot load reranker {spec} — no such folder: {folder or '(empty)'}")
        from .fusion import FusionReranker

        return FusionReranker(folder, spec=f"fusion:{os.path.abspath(folder)}", encoder=encoder, device=device)
    if spec.startswith("hf-blip:"):
        target = spec[8:].strip()
        if not target:
            raise EncoderSpecError("empty model after 'hf-blip:' (give a hub id or a local folder)")
        from .blip import BlipReranker

        return BlipReranker(target, device=device)
    raise EncoderSpecError(f"unknown reranker spec '{spec}' (expected 'default', 'fusion:<folder>' "
                           "or 'hf-blip:<hub id or folder>')")
