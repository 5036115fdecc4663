"""Region and token features the fusion reranker reads, and their training cache.

Regions: the image tower's spatial map as tokens, (n, R, C) — for the bundled towers the
last EfficientNet-Lite block (7x7 = 49 regions x 320 channels); for ``hf:`` encoders the
vision transformer's patch tokens. They are computed in the same forward pass as the image
vector at index time and stored with it (``Store.add_images(..., regions=...)``).

Tokens: the text tower's per-token states (MiniLM's last layer, 384-d), computed at query time.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from tqdm import tqdm

from ..encoders.base import batched
from ..errors import EncoderSpecError
from ..evaluate import Dataset

FEATURE_VERSION = 1
TEXT_MAX_TOKENS = 64


def base_towers(encoder):
    """The bundled-tower encoder under ``encoder`` (itself, or the base of trained heads), else None."""
    from ..encoders.default import DefaultEncoder

    if isinstance(encoder, DefaultEncoder):
        return encoder
    base = getattr(encoder, "base", None)
    return base if isinstance(base, DefaultEncoder) else None


def region_width(encoder) -> int:
    """Channels per region token that ``image_regions`` gives for this encoder."""
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no region features (the fusion reranker needs the bundled towers)")
    return int(towers.image_tower.model._blocks[-1]._project_conv.out_channels)


@torch.no_grad()
def image_regions(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Region tokens (n, R, C) float32 for a preprocessed batch."""
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no region features (the fusion reranker needs the bundled towers)")
    feats = towers.image_features(pixels)
    return feats.regions.flatten(2).transpose(1, 2).float()


@torch.no_grad()
def text_token_states(text_tower, texts: list[str], device, layers: tuple[int, ...] = (-1,)
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-token hidden states of the MiniLM tower for ``layers`` ((n, L, 384) each) and the mask (n, L)."""
    enc = text_tower.tokenizer(texts, padding=True, truncation=True, max_length=TEXT_MAX_TOKENS, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items()}
    out = text_tower.model(**enc, output_hidden_states=True)
    return [out.hidden_states[i].float() for i in layers], enc["attention_mask"]


def _padded(src: torch.Tensor, offsets: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``offsets[i]:offsets[i+1]`` of ``src`` for each i in ``idx``, padded: (B, L, d) float32, (B, L) mask."""
    starts, ends = offsets[idx], offsets[idx + 1]
    lengths = ends - starts
    L = int(lengths.max())
    ar = torch.arange(L)
    mask = ar[None, :] < lengths[:, None]
    gather = (starts[:, None] + ar[None, :]).clamp(max=src.shape[0] - 1)
    return src[gather].float() * mask[..., None], mask


@dataclass
class CaptionTokens:
    """MiniLM token states of a split's captions, unpadded, back to back: the last layer and the layer
    before it (its input), and that last layer's weights (``top_layer``, to start a tuned copy from)."""

    tokens: torch.Tensor  # (T, 384) float16
    tokens_prev: torch.Tensor  # (T, 384) float16
    offsets: torch.Tensor  # (C + 1,) int64
    top_layer: dict[str, torch.Tensor]

    def caption_batch(self, idx: torch.Tensor, prev: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, L, 384) float32 states and a (B, L) bool mask for captions ``idx``."""
        return _padded(self.tokens_prev if prev else self.tokens, self.offsets, idx)

    def lengths(self, idx: torch.Tensor) -> torch.Tensor:
        """Token counts of captions ``idx``."""
        return self.offsets[idx + 1] - self.offsets[idx]

    def select(self, idx: torch.Tensor):
        """Only captions ``idx``, in that order (a copy of the same type)."""
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        rows = torch.cat([torch.arange(int(s), int(e)) for s, e in zip(starts, ends)])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), (ends - starts).cumsum(0)])
        return replace(self, tokens=self.tokens[rows], tokens_prev=self.tokens_prev[rows], offsets=offsets)


@dataclass
class RerankFeatures(CaptionTokens):
    """Cached features of one split: regions per view (V, N, R, C) fp16, the captions' token states and their images."""

    regions: torch.Tensor  # (V, N, R, C) float16
    caption_image: torch.Tensor  # (C,) int64

    def select(self, idx: torch.Tensor) -> "RerankFeatures":
        """The same images with only captions ``idx``, in that order."""
        return replace(super().select(idx), caption_image=self.caption_image[idx])


def _cache_folder(towers, dataset: Dataset, cache_dir: str | None) -> str | None:
    from ..training import _cache_key

    if not cache_dir:
        return None
    folder = os.path.join(cache_dir, f"rerank-{dataset.split or 'all'}-{_cache_key(towers, dataset, FEATURE_VERSION)}")
    os.makedirs(folder, exist_ok=True)
    return folder


def compute_caption_tokens(encoder, dataset: Dataset, cache_dir: str | None = None,
                           show_progress: bool = True) -> CaptionTokens:
    """Token states (last layer and the one before) of every caption, cached in ``cache_dir``."""
    from ..training import _load, _save

    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no token states (they need the bundled MiniLM tower)")
    folder = _cache_folder(towers, dataset, cache_dir)
    top_layer = {k: v.detach().clone() for k, v in towers.text_tower.model.encoder.layer[-1].state_dict().items()}
    path = folder and os.path.join(folder, "tokens.safetensors")
    if path and os.path.isfile(path):
        t = _load(path)
        return CaptionTokens(t["tokens"], t["tokens_prev"], t["offsets"].long(), top_layer)
    order = sorted(range(len(dataset.captions)), key=lambda i: len(dataset.captions[i]))
    per_caption: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(order)  # type: ignore[list-item]
    with tqdm(total=len(order), desc=f"caption tokens {dataset.split or ''}", unit="cap", file=sys.stderr,
              disable=not show_progress) as bar:
        for chunk in batched(order, 256):
            (prev, last), mask = text_token_states(towers.text_tower, [dataset.captions[i] for i in chunk],
                                                   towers.device, layers=(-2, -1))
            for row, i in enumerate(chunk):
                m = mask[row].bool()
                per_caption[i] = (last[row][m].half().cpu(), prev[row][m].half().cpu())
            bar.update(len(chunk))
    lengths = torch.tensor([p[0].shape[0] for p in per_caption])
    out = {"tokens": torch.cat([p[0] for p in per_caption]), "tokens_prev": torch.cat([p[1] for p in per_caption]),
           "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])}
    if path:
        _save(path, out, {"split": dataset.split, "captions": len(order)})
    return CaptionTokens(out["tokens"], out["tokens_prev"], out["offsets"], top_layer)


def compute_rerank_features(encoder, dataset: Dataset, views: int = 0, seed: int = 0, cache_dir: str | None = None,
                            batch_size: int = 64, show_progress: bool = True,
                            log: Callable[[str], None] | None = None) -> RerankFeatures:
    """Regions for every image (1 clean + ``views`` augmented views) and token states for every caption, cached."""
    from ..training import _load, _save, map_image_view

    log = log or (lambda msg: print(msg, file=sys.stderr))
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no region features (the fusion reranker needs the bundled towers)")
    folder = _cache_folder(towers, dataset, cache_dir)
    size = towers.image_size
    t0 = time.monotonic()

    def view_part(v: int) -> torch.Tensor:
        path = folder and os.path.join(folder, f"regions-view{v}-seed{seed if v else 0}.safetensors")
        if path and os.path.isfile(path):
            return _load(path)["regions"]

        parts = map_image_view(dataset, towers.preprocess, size, v, seed, batch_size,
                               lambda px: image_regions(towers, px).half().cpu(),
                               f"regions {dataset.split or ''} view {v}", show_progress)
        out = torch.cat(parts)
        if path:
            _save(path, {"regions": out}, {"split": dataset.split, "view": v, "seed": seed})
        return out

    text = compute_caption_tokens(encoder, dataset, cache_dir, show_progress)
    regions = torch.stack([view_part(v) for v in range(views + 1)])
    log(f"rerank features for {len(dataset.images)} images x {views + 1} views, {len(dataset.captions)} captions "
        f"ready in {time.monotonic() - t0:.0f}s")
    return RerankFeatures(text.tokens, text.tokens_prev, text.offsets, text.top_layer, regions=regions,
                          caption_image=torch.as_tensor(dataset.caption_image, dtype=torch.long))
