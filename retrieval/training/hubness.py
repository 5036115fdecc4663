"""Fitting the search-time hubness correction (CSLS) of a trained encoder on a captioned dataset.

The correction itself (``Hubness``, applied at search time) lives in ``retrieval.encoders.hubness``;
here its banks are sampled from the train split and k and beta chosen per side on dev.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..encoders import Encoder
from ..encoders.hubness import Hubness, HubnessSide, corrected_similarity
from ..errors import DatasetError, ImageLoadError
from ..weights_io import from_int8_rows, int8_rows
from .datasets import Dataset
from .evaluate import embed_image_files
from .metrics import recall_from_similarity

HUBNESS_KS = (20, 30, 50)
HUBNESS_BETAS = (0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)


@dataclass
class HubnessResult:
    """A fitted correction (None when it does not help on dev) and dev recall without and with it."""

    hubness: Hubness | None
    dev_without: dict
    dev_with: dict
    bank: int
    seconds: float

    def summary(self) -> dict:
        return {"dev_without": self.dev_without, "dev_with": self.dev_with, "bank": self.bank,
                "sides": self.hubness.describe() if self.hubness else {}, "seconds": round(self.seconds, 1)}


def fit_hubness(encoder: Encoder, train: Dataset, dev: Dataset, bank: int = 2000, seed: int = 0,
                ks: tuple[int, ...] = HUBNESS_KS, betas: tuple[float, ...] = HUBNESS_BETAS,
                show_progress: bool = True) -> HubnessResult:
    """Banks of ``bank`` train captions and train photos (a seeded sample), with k and beta per side
    chosen on ``dev``: text->image by R@1 + R@5, image->text by R@1 + R@5; a side that does not
    raise them is left out."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    n_img, n_cap = min(bank, len(train.images)), min(bank, len(train.captions))
    if n_img < max(ks) or n_cap < max(ks):
        raise DatasetError(f"the train split is too small for a hubness bank ({n_img} photos, {n_cap} captions)")
    img_idx = np.sort(rng.choice(len(train.images), n_img, replace=False))
    cap_idx = np.sort(rng.choice(len(train.captions), n_cap, replace=False))
    try:
        # as stored (int8), so the dev figures below are those of the written file
        text_bank = from_int8_rows(*int8_rows(encoder.encode_texts([train.captions[i] for i in cap_idx])))
        image_bank = from_int8_rows(*int8_rows(
            embed_image_files(encoder, [train.images[i] for i in img_idx], show_progress=show_progress)))
        dev_img = embed_image_files(encoder, dev.images, show_progress=show_progress)
    except ImageLoadError as e:
        raise DatasetError(f"cannot fit the hubness correction: {e}") from e
    dev_txt = encoder.encode_texts(dev.captions)
    sims = dev_txt @ dev_img.T
    caption_image = np.asarray(dev.caption_image)
    plain = recall_from_similarity(sims, caption_image)

    def score(r: dict) -> float:
        return r["R@1"] + r["R@5"]

    sides: dict[str, HubnessSide] = {}
    best_t2i, best_i2t = plain["text_to_image"], plain["image_to_text"]
    for k in ks:
        # the penalty is beta times a mean top-k cosine: computed once per k
        raw_img = HubnessSide(text_bank, k, 1.0).penalties(dev_img)
        raw_cap = HubnessSide(image_bank, k, 1.0).penalties(dev_txt)
        for beta in betas:
            r = recall_from_similarity(sims - beta * raw_img[None, :], caption_image)["text_to_image"]
            if score(r) > score(best_t2i):
                best_t2i, sides["image"] = r, HubnessSide(text_bank, k, beta)
            r = recall_from_similarity(sims - beta * raw_cap[:, None], caption_image)["image_to_text"]
            if score(r) > score(best_i2t):
                best_i2t, sides["caption"] = r, HubnessSide(image_bank, k, beta)
    # centred on typical results (the other bank: train photos for the image side, captions for the
    # caption side), so corrected scores stay on the cosine's scale; rankings do not change
    typical = {"image": image_bank, "caption": text_bank}
    sides = {kind: side.centred(typical[kind]) for kind, side in sides.items()}
    hub = Hubness(sides) if sides else None
    t2i, i2t = corrected_similarity(sims, hub, dev_img, dev_txt)
    dev_with = {"text_to_image": recall_from_similarity(t2i, caption_image)["text_to_image"],
                "image_to_text": recall_from_similarity(i2t, caption_image)["image_to_text"]}
    return HubnessResult(hub, plain, dev_with, bank, time.monotonic() - t0)
