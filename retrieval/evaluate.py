"""Retrieval evaluation on a captioned dataset (Flickr/COCO protocol)."""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .encoders import Encoder
from .encoders.base import batched
from .errors import DatasetError, ImageLoadError
from .images import load_image

KS = (1, 5, 10)


@dataclass
class Dataset:
    """Images with their captions: ``caption_image[j]`` is the index of caption j's image."""

    root: str
    images: list[str]  # absolute paths
    captions: list[str]
    caption_image: np.ndarray
    split: str | None = None

    def subset(self, n: int) -> "Dataset":
        """The first n images and their captions."""
        keep = self.caption_image < n
        return Dataset(self.root, self.images[:n], [c for c, k in zip(self.captions, keep) if k],
                       self.caption_image[keep], self.split)


def load_dataset(folder: str, split: str | None = None) -> Dataset:
    """Read ``folder/captions.jsonl`` (+ ``folder/images/``), optionally keeping one split."""
    folder = os.path.abspath(folder)
    manifest = os.path.join(folder, "captions.jsonl")
    if not os.path.isfile(manifest):
        raise DatasetError(f"{folder} is not a dataset: no captions.jsonl (expected images/ + captions.jsonl)")
    image_dir = os.path.join(folder, "images")
    base = image_dir if os.path.isdir(image_dir) else folder
    images, captions, owner = [], [], []
    splits = set()
    with open(manifest, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                name, caps = obj["image"], list(obj["captions"])
            except (ValueError, KeyError, TypeError) as e:
                raise DatasetError(f"{manifest}:{lineno}: not a {{\"image\", \"captions\"}} line") from e
            splits.add(obj.get("split"))
            if split is not None and obj.get("split") != split:
                continue
            images.append(os.path.join(base, name))
            for c in caps:
                captions.append(str(c))
                owner.append(len(images) - 1)
    if not images:
        known = ", ".join(sorted(s for s in splits if s)) or "none"
        raise DatasetError(f"no images in {folder}" + (f" for split '{split}' (splits: {known})" if split else ""))
    return Dataset(folder, images, captions, np.asarray(owner, dtype=np.int64), split)


def recall_at_k(image_vecs: np.ndarray, text_vecs: np.ndarray, caption_image: np.ndarray,
                ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """Recall@k in percent both ways from unit vectors.

    text->image: each caption queries all images; a hit if its own image is in the top k.
    image->text: each image queries all captions; a hit if any of its own captions is in the top k.
    """
    sims = text_vecs @ image_vecs.T  # (captions, images)
    return recall_from_similarity(sims, caption_image, ks)


def recall_from_similarity(sims: np.ndarray, caption_image: np.ndarray,
                           ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """Recall@k (percent) both ways from a (captions, images) similarity matrix."""
    caption_image = np.asarray(caption_image)
    n_caps, n_images = sims.shape
    own = sims[np.arange(n_caps), caption_image]
    # rank of the true image for each caption = number of images scoring strictly higher
    t2i_rank = (sims > own[:, None]).sum(axis=1)
    # for each image, best rank over its captions when ranking all captions by sims[:, image]
    i2t_rank = np.full(n_images, n_caps, dtype=np.int64)
    order = np.argsort(-sims, axis=0, kind="stable")  # (captions, images)
    for img in range(n_images):
        positions = np.nonzero(caption_image[order[:, img]] == img)[0]
        if len(positions):
            i2t_rank[img] = positions[0]
    return {
        "text_to_image": {f"R@{k}": round(100.0 * float(np.mean(t2i_rank < k)), 2) for k in ks},
        "image_to_text": {f"R@{k}": round(100.0 * float(np.mean(i2t_rank < k)), 2) for k in ks},
    }


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


def evaluate(encoder: Encoder, dataset: Dataset, show_progress: bool = True, reranker=None,
             rerank_k: int = 20, tune_alpha: bool = False) -> EvalResult:
    """Embed a dataset with ``encoder`` and measure recall@1/5/10 both ways.

    With a ``reranker`` the top ``rerank_k`` of every query are reranked (at the reranker's own
    alpha); the result holds the reranked recall, and ``without_rerank`` the recall of the same
    candidates without it. ``tune_alpha``: use, per direction, the alpha that scores best here
    (reported with the recall of every alpha tried) instead of the reranker's own.
    An encoder with a hubness correction is measured with it, as it searches.
    """
    from .encoders.hubness import corrected_similarity

    hub = getattr(encoder, "hubness", None)
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
    from .rerank.training import reranked_recall

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

    from .rerank.base import caption_alpha_of

    r = reranked_recall(sims, dataset.caption_image, pair_scores, k=rerank_k,
                        fixed_alpha=None if tune_alpha else reranker.alpha,
                        fixed_caption_alpha=None if tune_alpha else caption_alpha_of(reranker), i2t_sims=i2t_sims)
    bar.close()
    tuned = {"tuned_alpha": True, "by_alpha": r["by_alpha"]} if tune_alpha else {}
    return EvalResult(r["with"]["text_to_image"], r["with"]["image_to_text"], len(dataset.images),
                      len(dataset.captions), {**extra, "without_rerank": r["without"],
                                              "rerank": {"model": reranker.spec, "k": rerank_k, "alpha": r["alpha"],
                                                         "caption_alpha": r["caption_alpha"], **tuned}})


def embed_image_files_with_regions(encoder: Encoder, reranker, paths: Sequence[str], batch_size: int = 32,
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
