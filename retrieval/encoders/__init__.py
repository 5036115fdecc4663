"""Image/text encoders behind one protocol, and the factory that builds them from a spec string.

Specs:
  ``default``          the bundled offline model: trained heads from ``retrieval/weights/`` on top of the
                       label bridge towers (just the label bridge when no weights are shipped)
  ``default-fast``     the same heads without flip averaging: photos embed twice as fast, a little less recall
  ``bridge``           EfficientNet-Lite0 + MiniLM joined by the ImageNet label bridge (ConSE), no training
  ``bridge-lite1``, ``bridge-lite2``
                       the same with the larger EfficientNet-Lite1 (240 px) or Lite2 (260 px) image tower
  ``hf:<id|folder>``   any Hugging Face CLIP-family dual encoder (CLIP, SigLIP)
  ``heads:<folder>``   heads trained by ``imgsearch train`` on top of the base spec recorded in the folder
"""

from __future__ import annotations

import os

from ..errors import EncoderSpecError
from .base import Encoder, EncoderBase, l2_normalize, pick_device

__all__ = ["Encoder", "EncoderBase", "create_encoder", "l2_normalize", "pick_device", "DEFAULT_SPEC",
           "BUNDLED_WEIGHTS_DIR"]

DEFAULT_SPEC = "default"
BUNDLED_SPECS = ("default", "default-fast")  # the bundled heads: as trained, and with flip averaging off
# label-bridge specs and their EfficientNet-Lite variant
BRIDGE_VARIANTS = {"bridge": 0, "bridge-lite1": 1, "bridge-lite2": 2}
BUNDLED_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def create_encoder(spec: str = DEFAULT_SPEC, device: str | None = None) -> Encoder:
    """Build the encoder a spec string names (see the module docstring)."""
    spec = (spec or DEFAULT_SPEC).strip()
    if spec in BUNDLED_SPECS:
        from .heads import WEIGHTS_FILE, TrainedEncoder

        if os.path.isfile(os.path.join(BUNDLED_WEIGHTS_DIR, WEIGHTS_FILE)):
            return TrainedEncoder(BUNDLED_WEIGHTS_DIR, spec=spec, device=device,
                                  flip_average=False if spec == "default-fast" else None)
        from .default import DefaultEncoder

        return DefaultEncoder(device=device, spec=spec)
    if spec in BRIDGE_VARIANTS:
        from .default import BridgeConfig, DefaultEncoder

        return DefaultEncoder(BridgeConfig(image_variant=BRIDGE_VARIANTS[spec]), device=device, spec=spec)
    if spec.startswith("heads:"):
        folder = spec[6:].strip()
        if not folder:
            raise EncoderSpecError("empty folder after 'heads:' (give a folder written by 'imgsearch train')")
        if not os.path.isdir(folder):
            raise EncoderSpecError(f"cannot load {spec} — no such folder: {folder}")
        from .heads import TrainedEncoder

        return TrainedEncoder(folder, spec=f"heads:{os.path.abspath(folder)}", device=device)
    if spec.startswith("hf:"):
        target = spec[3:].strip()
        if not target:
            raise EncoderSpecError("empty model after 'hf:' (give a hub id or a local folder)")
        from .hf import HFDualEncoder

        return HFDualEncoder(target, device=device)
    raise EncoderSpecError(f"unknown model spec '{spec}' (expected 'default', 'default-fast', 'bridge', 'bridge-lite1', "
                           "'bridge-lite2', 'hf:<hub id or folder>' "
                           "or 'heads:<folder>')")
