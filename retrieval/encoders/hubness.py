"""Hubness correction (CSLS, Lample et al. 2018) for a trained encoder's searches.

In a learned space a few photos (and captions) are near everything: "hubs" that top the results
of many unrelated queries. CSLS lowers each result by how close it sits to its nearest queries
in general, measured once against a fixed bank of typical queries shipped with the weights::

    score(query, doc) = cos(query, doc) - beta * mean(top-k cos(doc, bank)) + offset

where ``offset`` is the mean penalty of typical results, so scores stay on the cosine's scale
(``--min-score`` keeps its meaning). The correction only reorders results; the stored vectors
are unchanged, so it needs no reindex. Images found by text queries are measured against a bank of caption vectors; captions found by
an image against a bank of photo vectors. A heads folder may hold one as ``hubness.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import WeightsError
from ..weights_io import from_int8_rows, int8_rows

HUBNESS_FILE = "hubness.safetensors"
FORMAT_VERSION = 1
KINDS = ("image", "caption")  # which results are corrected: images (for text queries), captions (for photos)
# A search rescores this many nearest results by cosine (or k, if more) and keeps the best k. On
# Flickr8k dev (1,000 photos, 5,000 captions) the corrected top 10 of every query lies among them.
CANDIDATES = 200


@dataclass(frozen=True)
class HubnessSide:
    """The correction of one kind of result: its bank of query vectors, k and beta."""

    bank: np.ndarray  # (n, dim) float32, unit rows: typical queries for this kind of result
    k: int
    beta: float
    offset: float = 0.0  # the mean of beta * mean-top-k over typical results: added back, so scores keep their scale

    def penalties(self, docs: np.ndarray) -> np.ndarray:
        """beta * mean cosine of each doc (n, dim) to its k nearest bank vectors, less ``offset``; float32 (n,)."""
        docs = np.asarray(docs, np.float32)
        if not len(docs):
            return np.zeros(0, np.float32)
        out = np.empty(len(docs), np.float32)
        k = min(self.k, len(self.bank))
        for s in range(0, len(docs), 1024):
            sims = docs[s:s + 1024] @ self.bank.T
            top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
            out[s:s + 1024] = self.beta * top.mean(axis=1) - self.offset
        return out

    def centred(self, typical_docs: np.ndarray) -> "HubnessSide":
        """This side with ``offset`` set so that ``typical_docs`` get a mean penalty of 0."""
        raw = HubnessSide(self.bank, self.k, self.beta).penalties(typical_docs)
        return HubnessSide(self.bank, self.k, self.beta, float(raw.mean()))


@dataclass(frozen=True)
class Hubness:
    """Per-kind corrections (``image``, ``caption``); a kind that is absent is not corrected."""

    sides: dict[str, HubnessSide]

    def penalties(self, kind: str, docs: np.ndarray) -> np.ndarray | None:
        """Penalties for ``docs`` of this kind, or None when this kind is not corrected."""
        side = self.sides.get(kind)
        return None if side is None else side.penalties(docs)

    def describe(self) -> dict:
        """k, beta, offset and bank size per kind (for model cards and ``--json`` output)."""
        return {kind: {"k": s.k, "beta": s.beta, "offset": round(s.offset, 4), "bank": int(len(s.bank))}
                for kind, s in self.sides.items()}

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``hubness.safetensors`` into ``folder``: banks as int8 (``weights_io.int8_rows``), k, beta and
        offset in the metadata."""
        import torch
        from safetensors.torch import save_file

        tensors = {}
        for kind, s in self.sides.items():
            q, scale = int8_rows(s.bank)
            tensors[f"{kind}.bank"], tensors[f"{kind}.scale"] = torch.from_numpy(q), torch.from_numpy(scale)
        meta = {kind: {"k": s.k, "beta": s.beta, "offset": s.offset} for kind, s in self.sides.items()}
        path = os.path.join(folder, HUBNESS_FILE)
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata={"format": "imgsearch-hubness", "version": str(FORMAT_VERSION),
                                          "sides": json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def load_hubness(folder: str | os.PathLike, dim: int) -> Hubness | None:
    """The correction stored in ``folder``, None when it has none; a malformed file raises WeightsError."""
    path = os.path.join(folder, HUBNESS_FILE)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "imgsearch-hubness":
                raise WeightsError(f"{path} is not an imgsearch hubness file")
            if meta.get("version") != str(FORMAT_VERSION):
                raise WeightsError(f"hubness format version {meta.get('version')} in {path} is not supported")
            sides_meta = json.loads(meta.get("sides", "{}"))
            sides = {}
            for kind, m in sides_meta.items():
                if kind not in KINDS:
                    raise WeightsError(f"{path} corrects unknown results '{kind}'")
                q, scale = f.get_tensor(f"{kind}.bank"), f.get_tensor(f"{kind}.scale")
                if q.dtype != np.int8 or scale.shape != (len(q),):
                    raise WeightsError(f"{path}: the {kind} bank is not int8 rows with one scale each")
                bank = from_int8_rows(q, scale)
                if bank.ndim != 2 or bank.shape[1] != dim or not len(bank):
                    raise WeightsError(f"{path}: the {kind} bank has shape {tuple(bank.shape)}, the encoder gives {dim}-d vectors")
                k, beta, offset = int(m["k"]), float(m["beta"]), float(m.get("offset", 0.0))
                if k < 1 or not np.isfinite(beta) or beta < 0 or not np.isfinite(offset):
                    raise WeightsError(f"{path}: bad k, beta or offset for {kind} ({k}, {beta}, {offset})")
                sides[kind] = HubnessSide(bank, k, beta, offset)
    except WeightsError:
        raise
    except Exception as e:  # truncated or foreign file, missing tensor, bad metadata
        raise WeightsError(f"cannot read hubness correction {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return Hubness(sides) if sides else None


def corrected_similarity(sims: np.ndarray, hubness: Hubness | None, image_vecs: np.ndarray,
                         caption_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text->image, image->text) score matrices (captions x images) for a cosine matrix ``sims``."""
    sims = np.asarray(sims, np.float32)
    if hubness is None:
        return sims, sims
    pen_img = hubness.penalties("image", image_vecs)
    pen_cap = hubness.penalties("caption", caption_vecs)
    t2i = sims if pen_img is None else sims - pen_img[None, :]
    i2t = sims if pen_cap is None else sims - pen_cap[:, None]
    return t2i, i2t

