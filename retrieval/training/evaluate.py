"""Retrieval evaluation on a captioned dataset (Flickr/COCO protocol), with or without a reranker."""

from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..encoders import Encoder
from ..encoders.base import batched
from ..encoders.hubness import corrected_similarity
from ..errors import DatasetError, ImageLoadError
from ..images import load_image
from ..rerank.base import Reranker, caption_alpha_of
from .datasets import Dataset
from .metrics import recall_at_k, recall_from_similarity, reranked_recall


def iter_image_batches(paths: Sequence[str], prep: Callable[[str], Any], batch_size: int = 32,
                       workers: int | None = None, ahead: int = 3,
                       collate: Callable[[list], Any] = torch.stack) -> Iterator[tuple[list[str], Any]]:
    """(paths, stacked pixels) batches, decoded in a thread pool up to ``ahead`` batches before they are used.

    ``prep`` turns one path into a preprocessed tensor (or anything ``collate`` can batch); its
    ImageLoadError reaches the caller.
    """
    chunks = list(batched(paths, batch_size))

    def load(chunk: list[str]):
        return collate([prep(p) for p in chunk])

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        pending = deque(pool.submit(load, c) for c in chunks[:ahead])
        for i, chunk in enumerate(chunks):
            pixels = pending.popleft().result()
            if i + ahead < len(chunks):
                pending.append(pool.submit(load, chunks[i + ahead]))
            yield chunk, pixels


def embed_image_files(encoder: Encoder, paths: Sequence[str], batch_size: int = 32, workers: int | None = None,
                      show_progress: bool = True, desc: str = "images") -> np.ndarray:
    """Embed image files, decoding in a thread pool overlapped with the encoder."""
    size = encoder.image_size

    def prep(path: str) -> torch.Tensor:
        return encoder.preprocess(load_image(path, target_size=size))

    out = []
    with tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr, disable=not show_progress) as bar:
        try:
            for chunk, pixels in iter_image_batches(paths, prep, batch_size, workers):
                out.append(encoder.encode_pixels(pixels))
                bar.update(len(chunk))
        except ImageLoadError as e:
            raise DatasetError(f"cannot evaluate: {e}") from e
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)


@dataclass
class EvalResult:
    """Recall both ways on a dataset."""

    text_to_image: dict[str, float]
    image_to_text: dict[str, float]
    images: int
    captions: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"text_to_image": self.text_to_image, "image_to_text": self.image_to_text,
                "images": self.images, "captions": self.captions, **self.extra}


def evaluate(encoder: Encoder, dataset: Dataset, show_progress: bool = True,
             reranker: Reranker | None = None, rerank_k: int = 20, tune_alpha: bool = False,
             hubness: bool = True) -> EvalResult:
    """Embed a dataset with ``encoder`` and measure recall@1/5/10 both ways.

    With a ``reranker`` the top ``rerank_k`` of every query are reranked (at the reranker's own
    alpha); the result holds the reranked recall, and ``without_rerank`` the recall of the same
    candidates without it. ``tune_alpha``: use, per direction, the alpha that scores best here
    (reported with the recall of every alpha tried) instead of the reranker's own.
    An encoder with a hubness correction is measured with it, as it searches (``hubness=False``: by
    plain cosine).
    """
    hub = getattr(encoder, "hubness", None) if hubness else None
    extra = {"hubness": hub.describe()} if hub is not None else {}
    if reranker is None:
        image_vecs = embed_image_files(encoder, dataset.images, show_progress=show_progress)
        text_vecs = encoder.encode_texts(dataset.captions)
        if hub is None:
            r = recall_at_k(image_vecs, text_vecs, dataset.caption_image)
        else:
            t2i, i2t = corrected_similarity(text_vecs @ image_vecs.T, hub, image_vecs, text_vecs)
            r = {"text_to_image": recall_from_similarity(t2i, dataset.caption_image)["text_to_image"],
                 "image_to_text": recall_from_similarity(i2t, dataset.caption_image)["image_to_text"]}
        return EvalResult(r["text_to_image"], r["image_to_text"], len(dataset.images), len(dataset.captions), extra)
    image_vecs, regions = embed_image_files_with_regions(encoder, reranker, dataset.images, show_progress=show_progress)
    text_vecs = encoder.encode_texts(dataset.captions)
    sims, i2t_sims = corrected_similarity(text_vecs @ image_vecs.T, hub, image_vecs, text_vecs)
    bar = tqdm(desc="rerank", unit="query", file=sys.stderr, disable=not show_progress)

    def pair_scores(caps: np.ndarray, imgs: np.ndarray) -> np.ndarray:
        if hasattr(reranker, "itm_pairs"):  # batched over many captions at once
            return reranker.itm_pairs(dataset.captions, regions, caps, imgs)
        out = np.empty(len(caps), np.float32)
        order = np.argsort(caps, kind="stable")
        bounds = np.flatnonzero(np.diff(caps[order])) + 1
        for group in np.split(order, bounds):
            out[group] = reranker.itm_scores([dataset.captions[caps[group[0]]]], regions[imgs[group]])
            bar.update(1)
        return out

    r = reranked_recall(sims, dataset.caption_image, pair_scores, k=rerank_k,
                        fixed_alpha=None if tune_alpha else reranker.alpha,
                        fixed_caption_alpha=None if tune_alpha else caption_alpha_of(reranker), i2t_sims=i2t_sims)
    bar.close()
    tuned = {"tuned_alpha": True, "by_alpha": r["by_alpha"]} if tune_alpha else {}
    return EvalResult(r["with"]["text_to_image"], r["with"]["image_to_text"], len(dataset.images),
                      len(dataset.captions), {**extra, "without_rerank": r["without"],
                                              "rerank": {"model": reranker.spec, "k": rerank_k, "alpha": r["alpha"],
                                                         "caption_alpha": r["caption_alpha"], **tuned}})


def embed_image_files_with_regions(encoder: Encoder, reranker: Reranker, paths: Sequence[str], batch_size: int = 32,
                                   show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors and the reranker's region tokens for image files (one decode per image)."""
    shared = getattr(encoder, "region_key", None) == reranker.region_key

    def prep(path: str):
        image = load_image(path, target_size=encoder.image_size)
        return encoder.preprocess(image), None if shared else image

    def collate(items: list) -> tuple[torch.Tensor, list]:
        return torch.stack([p for p, _ in items]), [im for _, im in items]

    vecs, regions = [], []
    with tqdm(total=len(paths), desc="images", unit="img", file=sys.stderr, disable=not show_progress) as bar:
        try:
            for chunk, (pixels, images) in iter_image_batches(paths, prep, batch_size, collate=collate):
                if shared:
                    v, r = encoder.encode_pixels_with_regions(pixels)
                else:
                    v, r = encoder.encode_pixels(pixels), reranker.encode_regions(images)
                vecs.append(v)
                regions.append(r)
                bar.update(len(chunk))
        except ImageLoadError as e:
            raise DatasetError(f"cannot evaluate: {e}") from e
    return np.concatenate(vecs), np.concatenate(regions)
