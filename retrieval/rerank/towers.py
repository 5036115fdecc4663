"""Region and token inputs the fusion reranker reads, from the bundled towers at index and query time.

Regions: the image tower's spatial map as tokens, (n, R, C) — for the bundled towers the
last EfficientNet-Lite block (7x7 = 49 regions x 320 channels); for ``hf:`` encoders the
vision transformer's patch tokens. They are computed in the same forward pass as the image
vector at index time and stored with it (``Store.add_images(..., regions=...)``).

Tokens: the text tower's per-token states (MiniLM's last layer, 384-d), computed at query time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import EncoderSpecError
from .light import TEXT_MAX_TOKENS

if TYPE_CHECKING:
    from ..encoders.default import DefaultEncoder



def base_towers(encoder: Any) -> DefaultEncoder | None:
    """The bundled-tower encoder under ``encoder`` (itself, or the base of trained heads), else None."""
    from ..encoders.default import DefaultEncoder

    if isinstance(encoder, DefaultEncoder):
        return encoder
    base = getattr(encoder, "base", None)
    return base if isinstance(base, DefaultEncoder) else None


def region_width(encoder: Any) -> int:
    """Channels per region token that ``image_regions`` gives for this encoder."""
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no region features (the fusion reranker needs the bundled towers)")
    return int(towers.image_tower.model._blocks[-1]._project_conv.out_channels)


@torch.no_grad()
def image_regions(encoder: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Region tokens (n, R, C) float32 for a preprocessed batch."""
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no region features (the fusion reranker needs the bundled towers)")
    feats = towers.image_features(pixels)
    return feats.regions.flatten(2).transpose(1, 2).float()


@torch.no_grad()
def text_token_states(text_tower: Any, texts: list[str], device: torch.device | str, layers: tuple[int, ...] = (-1,)
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-token hidden states of the MiniLM tower for ``layers`` ((n, L, 384) each) and the mask (n, L)."""
    enc = text_tower.tokenizer(texts, padding=True, truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items()}
    out = text_tower.model(**enc, output_hidden_states=True)
    return [out.hidden_states[i].float() for i in layers], enc["attention_mask"]
