"""Captioned datasets (``images/`` + ``captions.jsonl``) that training and evaluation read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError


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
