"""Image/text encoders behind one protocol, and the registry that builds them from a spec string.

Specs (``list_models()`` lists them, with descriptions, widths and whether they are installed):
  ``default``          the bundled offline model: trained heads from ``retrieval/weights/`` on top of the
                       label bridge towers (just the label bridge when no weights are shipped)
  ``default-fast``     the same heads without flip averaging: photos embed twice as fast, a little less recall
  ``bridge``           EfficientNet-Lite0 + MiniLM joined by the ImageNet label bridge (ConSE), no training
  ``bridge-lite1``, ``bridge-lite2``
                       the same with the larger EfficientNet-Lite1 (240 px) or Lite2 (260 px) image tower
  ``hf:<id|folder>``   any Hugging Face CLIP-family dual encoder (CLIP, SigLIP)
  ``heads:<folder>``   heads trained by ``imgsearch train`` on top of the base spec recorded in the folder

The protocol and helpers of ``base`` import torch, so they load on first use: listing specs stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import (BRIDGE_VARIANTS, BUNDLED_SPECS, BUNDLED_WEIGHTS_DIR, DEFAULT_SPEC, ENCODERS, create_encoder,
                       list_models, model_info, spec_names)

if TYPE_CHECKING:
    from .base import Encoder, EncoderBase, l2_normalize, pick_device

__all__ = ["Encoder", "EncoderBase", "create_encoder", "l2_normalize", "pick_device", "list_models", "model_info",
           "spec_names", "ENCODERS", "DEFAULT_SPEC", "BUNDLED_SPECS", "BRIDGE_VARIANTS", "BUNDLED_WEIGHTS_DIR"]

BASE_NAMES = ("Encoder", "EncoderBase", "l2_normalize", "pick_device")


def __getattr__(name: str) -> Any:
    """``Encoder``, ``EncoderBase``, ``l2_normalize``, ``pick_device``: imported from ``base`` when first asked for."""
    if name in BASE_NAMES:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
