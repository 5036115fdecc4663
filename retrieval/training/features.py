"""Feature caches for training: frozen base-encoder features, and the fusion reranker's regions and tokens.

Base features (image views and captions) and reranker features (region tokens per view, caption
token states) are computed once and cached as safetensors files under a key of the encoder, the
dataset and the cache format version, so retraining takes seconds to minutes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, TypeVar

import torch
from PIL import Image
from tqdm import tqdm

from ..encoders import Encoder
from ..encoders.base import batched
from ..encoders.heads import feature_extractors
from ..errors import DatasetError, EncoderSpecError, ImageLoadError
from ..images import load_image
from ..rerank.towers import base_towers, image_regions, text_token_states
from .datasets import Dataset
from .evaluate import iter_image_batches

FEATURE_VERSION = 1
RERANK_FEATURE_VERSION = 1  # the format version in the reranker caches' key (``rerank-<split>-<key>``)
T = TypeVar("T")


# -- augmentation ----------------------------------------------------------------------------

def augment(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """A random resized crop (scale 0.35-1), horizontal flip and colour jitter, as a size x size image."""
    import torchvision.transforms.functional as TF

    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.35, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            break
    else:
        cw = ch = min(w, h)
        top, left = (h - ch) // 2, (w - cw) // 2
    out = TF.resized_crop(image, top, left, ch, cw, [size, size], interpolation=TF.InterpolationMode.BICUBIC,
                          antialias=True)
    if rng.random() < 0.5:
        out = TF.hflip(out)
    if rng.random() < 0.8:
        jitters = [lambda im: TF.adjust_brightness(im, rng.uniform(0.7, 1.3)),
                   lambda im: TF.adjust_contrast(im, rng.uniform(0.7, 1.3)),
                   lambda im: TF.adjust_saturation(im, rng.uniform(0.6, 1.4)),
                   lambda im: TF.adjust_hue(im, rng.uniform(-0.04, 0.04))]
        rng.shuffle(jitters)
        for fn in jitters:
            out = fn(out)
    if rng.random() < 0.1:
        out = TF.to_grayscale(out, num_output_channels=3)
    return out


# -- feature cache ---------------------------------------------------------------------------

def cache_key(encoder: Encoder, dataset: Dataset, version: int = FEATURE_VERSION) -> str:
    """A short digest of the encoder, the dataset's files and captions and the cache format version."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": version, "fp": encoder.fingerprint, "root": dataset.root,
                         "split": dataset.split, "n": len(dataset.images)}).encode())
    for p in dataset.images:
        h.update(os.path.basename(p).encode())
    for c in dataset.captions:
        h.update(c.encode())
    return h.hexdigest()[:16]


def cache_folder(encoder: Encoder, dataset: Dataset, cache_dir: str | None, prefix: str = "",
                 version: int = FEATURE_VERSION) -> str | None:
    """The folder (created) that holds one split's cached features, named by ``cache_key``; None without a cache."""
    if not cache_dir:
        return None
    folder = os.path.join(cache_dir, f"{prefix}{dataset.split or 'all'}-{cache_key(encoder, dataset, version)}")
    os.makedirs(folder, exist_ok=True)
    return folder


def save_tensors(path: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` as one safetensors file (``meta`` as JSON in its metadata), atomically."""
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def load_tensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file that ``save_tensors`` wrote."""
    from safetensors.torch import load_file

    return load_file(path)


def _stack(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]).to(torch.float16) for k in parts[0]}


@dataclass
class FeatureSet:
    """Cached base features of one dataset split: image views (V, N, d) and captions (C, d)."""

    images: dict[str, torch.Tensor]
    texts: dict[str, torch.Tensor]
    caption_image: torch.Tensor
    image_dims: dict[str, int]
    text_dims: dict[str, int]
    image_blend_input: str
    text_blend_input: str
    tokens: "CaptionTokens | None" = None  # caption token states, for heads that tune the text tower's last layer

    @property
    def views(self) -> int:
        return next(iter(self.images.values())).shape[0]

    def subset_images(self, n: int) -> "FeatureSet":
        """The first n images and their captions."""
        keep = self.caption_image < n
        tokens = self.tokens.select(torch.nonzero(keep).flatten()) if self.tokens is not None else None
        return FeatureSet({k: v[:, :n] for k, v in self.images.items()}, {k: v[keep] for k, v in self.texts.items()},
                          self.caption_image[keep], self.image_dims, self.text_dims,
                          self.image_blend_input, self.text_blend_input, tokens)


def map_image_view(dataset: Dataset, preprocess: Callable, size: int, view: int, seed: int, batch_size: int,
                   fn: Callable[[torch.Tensor], T], desc: str, show_progress: bool = True) -> list[T]:
    """``fn`` over preprocessed batches of one view of every image (0: clean; v > 0: augmented with a
    per-image seed, so a view is the same crop every time), decoded ahead in a thread pool."""

    def prep(p: str) -> torch.Tensor:
        im = load_image(p, target_size=size)
        if view:
            im = augment(im, size, random.Random(f"{seed}:{view}:{os.path.basename(p)}"))
        return preprocess(im)

    out = []
    with tqdm(total=len(dataset.images), desc=desc, unit="img", file=sys.stderr, disable=not show_progress) as bar:
        try:
            for chunk, pixels in iter_image_batches(dataset.images, prep, batch_size, workers=2):
                out.append(fn(pixels))
                bar.update(len(chunk))
        except ImageLoadError as e:
            raise DatasetError(f"cannot compute features: {e}") from e
    return out


def caption_features(text_fn: Callable, dataset: Dataset, folder: str | None,
                     show_progress: bool) -> dict[str, torch.Tensor]:
    """The base text features of every caption (shortest first, so batches pad little), cached in ``folder``."""
    path = folder and os.path.join(folder, "text.safetensors")
    if path and os.path.isfile(path):
        return load_tensors(path)
    order = sorted(range(len(dataset.captions)), key=lambda i: len(dataset.captions[i]))
    parts, idx = [], []
    with torch.inference_mode(), tqdm(total=len(order), desc=f"captions {dataset.split or ''}", unit="cap",
                                      file=sys.stderr, disable=not show_progress) as bar:
        for chunk in batched(order, 256):
            feats = text_fn([dataset.captions[i] for i in chunk])
            parts.append({k: v.float().cpu() for k, v in feats.items()})
            idx.extend(chunk)
            bar.update(len(chunk))
    out = _stack(parts)
    inverse = torch.empty(len(idx), dtype=torch.long)
    inverse[torch.tensor(idx)] = torch.arange(len(idx))
    out = {k: v[inverse] for k, v in out.items()}
    if path:
        save_tensors(path, out, {"split": dataset.split, "captions": len(idx)})
    return out


def compute_features(encoder: Encoder, dataset: Dataset, views: int = 0, seed: int = 0, cache_dir: str | None = None,
                     batch_size: int = 64, show_progress: bool = True, log: Callable[[str], None] | None = None,
                     tokens: bool = False) -> FeatureSet:
    """Base features for every image (1 clean + ``views`` augmented views) and every caption; with
    ``tokens``, also the captions' token states (bundled towers only; see ``TrainOptions.text_layers``).

    With ``cache_dir``, each view and the captions are stored in their own file and reused
    by later calls (a run asking for more views computes only the missing ones).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    image_fn, text_fn, image_dims, text_dims, ib, tb = feature_extractors(encoder)
    folder = cache_folder(encoder, dataset, cache_dir)
    size = encoder.image_size

    def view_part(v: int) -> dict[str, torch.Tensor]:
        path = folder and os.path.join(folder, f"view{v}-seed{seed if v else 0}.safetensors")
        if path and os.path.isfile(path):
            return load_tensors(path)

        with torch.inference_mode():
            parts = map_image_view(dataset, encoder.preprocess, size, v, seed, batch_size,
                                   lambda px: {k: t.float().cpu() for k, t in image_fn(px).items()},
                                   f"images {dataset.split or ''} view {v}", show_progress)
        out = _stack(parts)
        if path:
            save_tensors(path, out, {"split": dataset.split, "view": v, "seed": seed})
        return out

    t0 = time.monotonic()
    caption_tokens = None
    if tokens:  # first: a base without them fails before minutes of image features
        caption_tokens = compute_caption_tokens(encoder, dataset, cache_dir, show_progress)
    texts = caption_features(text_fn, dataset, folder, show_progress)
    image_views = [view_part(v) for v in range(views + 1)]
    images = {k: torch.stack([iv[k] for iv in image_views]) for k in image_views[0]}
    log(f"features for {len(dataset.images)} images x {views + 1} views, {len(dataset.captions)} captions "
        f"ready in {time.monotonic() - t0:.0f}s")
    return FeatureSet(images, texts, torch.as_tensor(dataset.caption_image, dtype=torch.long),
                      image_dims, text_dims, ib, tb, caption_tokens)


# -- reranker features (regions and caption token states) -----------------------------------

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

    def select(self, idx: torch.Tensor) -> "CaptionTokens":
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


def compute_caption_tokens(encoder: Encoder, dataset: Dataset, cache_dir: str | None = None,
                           show_progress: bool = True) -> CaptionTokens:
    """Token states (last layer and the one before) of every caption, cached in ``cache_dir``."""
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no token states (they need the bundled MiniLM tower)")
    folder = cache_folder(towers, dataset, cache_dir, "rerank-", RERANK_FEATURE_VERSION)
    top_layer = {k: v.detach().clone() for k, v in towers.text_tower.model.encoder.layer[-1].state_dict().items()}
    path = folder and os.path.join(folder, "tokens.safetensors")
    if path and os.path.isfile(path):
        t = load_tensors(path)
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
        save_tensors(path, out, {"split": dataset.split, "captions": len(order)})
    return CaptionTokens(out["tokens"], out["tokens_prev"], out["offsets"], top_layer)


def compute_rerank_features(encoder: Encoder, dataset: Dataset, views: int = 0, seed: int = 0,
                            cache_dir: str | None = None, batch_size: int = 64, show_progress: bool = True,
                            log: Callable[[str], None] | None = None) -> RerankFeatures:
    """Regions for every image (1 clean + ``views`` augmented views) and token states for every caption, cached."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    towers = base_towers(encoder)
    if towers is None:
        raise EncoderSpecError(f"{encoder.spec} gives no region features (the fusion reranker needs the bundled towers)")
    folder = cache_folder(towers, dataset, cache_dir, "rerank-", RERANK_FEATURE_VERSION)
    size = towers.image_size
    t0 = time.monotonic()

    def view_part(v: int) -> torch.Tensor:
        path = folder and os.path.join(folder, f"regions-view{v}-seed{seed if v else 0}.safetensors")
        if path and os.path.isfile(path):
            return load_tensors(path)["regions"]

        parts = map_image_view(dataset, towers.preprocess, size, v, seed, batch_size,
                               lambda px: image_regions(towers, px).half().cpu(),
                               f"regions {dataset.split or ''} view {v}", show_progress)
        out = torch.cat(parts)
        if path:
            save_tensors(path, {"regions": out}, {"split": dataset.split, "view": v, "seed": seed})
        return out

    text = compute_caption_tokens(encoder, dataset, cache_dir, show_progress)
    regions = torch.stack([view_part(v) for v in range(views + 1)])
    log(f"rerank features for {len(dataset.images)} images x {views + 1} views, {len(dataset.captions)} captions "
        f"ready in {time.monotonic() - t0:.0f}s")
    return RerankFeatures(text.tokens, text.tokens_prev, text.offsets, text.top_layer, regions=regions,
                          caption_image=torch.as_tensor(dataset.caption_image, dtype=torch.long))
