"""One score per photo for a hybrid query: pixels, captions, the words of names, and what to steer away from.

Raw cosines of different kinds are not comparable (a query runs far closer to captions than to
photos), so every part is standardised per query first. Pixels: over the query's nearest photos.
Captions: over a reference bank of typical captions. A real caption is evidence both ways: one that
matches the query lifts its photo, one that does not lowers it a little (a photo described as
something else is less likely what was asked for). A name or folder turned into a weak caption only
lifts. Photos that hold every content word of the query (caption, file name or folder) rank above
all photos that hold none of them, by construction; only an explicit "not" can move them below. How the weights were chosen: docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MATCH_KINDS = ("pixels", "caption", "name", "folder")
WEAK_SOURCES = ("name", "folder")  # caption sources made from a photo's file and folder names
_TINY = 1e-6


@dataclass(frozen=True)
class FusionParams:
    """Weights of the standardised parts (chosen on Flickr8k dev with ``benchmarks/hybrid.py``).

    ``score = z(pixels) + caption term + lexical_weight * bm25 / best bm25 - not_weight * max(0, z(not))``;
    a real caption adds ``max(-caption_floor, caption_weight * (z(caption) - caption_gate))``, a weak one
    ``max(0, caption_weight * (z(weak) - weak_gate))``. ``z(not)``: the fused score of each photo for the
    texts to steer away from (its pixels and captions), so a photo is lowered by what it shows or says.
    """

    caption_weight: float = 1.5
    caption_gate: float = 4.0
    caption_floor: float = 1.0
    weak_gate: float = 5.0  # names are short phrases, closer to short queries than captions: a higher gate
    lexical_weight: float = 0.0  # partial word matches label a hit; every-word matches rank above by construction
    not_weight: float = 1.0
    image_weight: float = 1.0  # the query photo's part of a text + photo query, beside the text's
    pixel_match_z: float = 1.5  # a hit "matched on pixels" from this pixel z-score up
    lift: float = 1e-3  # the margin all-words matches keep above every photo with none of the words


@dataclass
class Parts:
    """One query's scores over its n candidate photos; NaN where a photo lacks that part."""

    pixel: np.ndarray  # (n,) the text query's pixel score (cosine less the hubness penalty)
    pixel_center: float  # mean and spread of the pixel score over the query's nearest photos
    pixel_scale: float
    caption: np.ndarray | None = None  # (n,) best real caption similarity
    weak: np.ndarray | None = None  # (n,) best weak (name or folder) caption similarity
    weak_kind: Sequence[str | None] | None = None  # per photo: "name" or "folder", what its best weak caption is
    caption_center: float = 0.0  # mean and spread of the query's similarity to typical captions
    caption_scale: float = 1.0
    lexical: np.ndarray | None = None  # (n,) BM25 (higher is better) where any query word matched
    lexical_fields: Sequence[Sequence[str]] | None = None  # per photo, the FTS columns that matched
    all_words: np.ndarray | None = None  # (n,) bool: every content word of the query matched
    image: np.ndarray | None = None  # (n,) cosine to the query photo, for text + photo queries
    negative: np.ndarray | None = None  # (n,) the fused score (z units) of each photo for the "not" texts
    extra: dict = field(default_factory=dict)


class Matches(Sequence[tuple[str, ...]]):
    """What each candidate matched on (``pixels``, ``caption``, ``name``, ``folder``), worked out when asked:
    a search shows a page of its candidates, so most are never asked about."""

    def __init__(self, zp: np.ndarray, cap_term: np.ndarray, weak_term: np.ndarray, has_lex: np.ndarray,
                 parts: Parts, params: FusionParams) -> None:
        self.zp, self.cap_term, self.weak_term, self.has_lex = zp, cap_term, weak_term, has_lex
        self.weak_kind, self.fields, self.params = parts.weak_kind, parts.lexical_fields, params

    def __len__(self) -> int:
        return len(self.zp)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        m: list[str] = []
        if self.zp[i] >= self.params.pixel_match_z:
            m.append("pixels")
        if self.cap_term[i] > 0:
            m.append("caption")
        if self.weak_term[i] > 0:
            m.append(self.weak_kind[i] if self.weak_kind is not None and self.weak_kind[i] else "name")
        if self.has_lex[i]:
            fields = self.fields[i] if self.fields is not None else ("caption",)
            m.extend(f for f in fields if f in MATCH_KINDS)
        if not m:
            m.append("pixels")  # ranked by its pixels alone, however weakly
        return tuple(dict.fromkeys(m))


@dataclass(frozen=True)
class Fusion:
    """Fused scores (higher is better, in standard deviations), the candidates best first, and their matches."""

    scores: np.ndarray
    order: np.ndarray
    matched: Sequence[tuple[str, ...]]


def standardise(x: np.ndarray, center: float | None = None, scale: float | None = None) -> np.ndarray:
    """(x - center) / scale, with the mean and spread of ``x``'s finite values where not given; NaN stays NaN."""
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    if center is None or scale is None:
        if not finite.any():
            return np.full(x.shape, np.nan)
        center, scale = float(x[finite].mean()), float(x[finite].std())
    return (x - center) / max(scale, _TINY)


def _array(x: np.ndarray | None, n: int, name: str) -> np.ndarray:
    out = np.full(n, np.nan) if x is None else np.asarray(x, np.float64)
    if out.shape != (n,):
        raise ValueError(f"{name} must have one entry per candidate")
    return out


def fuse(parts: Parts, params: FusionParams = FusionParams()) -> Fusion:
    """Fuse one query's parts into one score per candidate photo, and say what each matched on."""
    px = np.asarray(parts.pixel, np.float64)
    n = len(px)
    if px.ndim != 1 or not np.isfinite(px).all():
        raise ValueError("pixel scores must be a finite 1-d array (every candidate has one)")
    zp = standardise(px, parts.pixel_center, parts.pixel_scale)
    score = zp.copy()
    img = _array(parts.image, n, "image")
    if parts.image is not None:
        score = score + params.image_weight * np.nan_to_num(standardise(img), nan=0.0)
    cap = standardise(_array(parts.caption, n, "caption"), parts.caption_center, parts.caption_scale)
    weak = standardise(_array(parts.weak, n, "weak"), parts.caption_center, parts.caption_scale)
    cap_term = np.where(np.isfinite(cap), np.maximum(-params.caption_floor,
                                                     params.caption_weight * (np.nan_to_num(cap) - params.caption_gate)), 0.0)
    weak_term = np.where(np.isfinite(weak), np.maximum(0.0, params.caption_weight * (np.nan_to_num(weak) - params.weak_gate)), 0.0)
    score = score + np.where(np.isfinite(weak), np.maximum(cap_term, weak_term), cap_term)
    lex = _array(parts.lexical, n, "lexical")
    has_lex = np.isfinite(lex)
    if has_lex.any():
        score = score + params.lexical_weight * np.where(has_lex, np.nan_to_num(lex) / max(float(lex[has_lex].max()), _TINY), 0.0)
    words = np.zeros(n, bool) if parts.all_words is None else np.asarray(parts.all_words, bool)
    if words.shape != (n,):
        raise ValueError("all_words must have one entry per candidate")
    words &= has_lex
    if words.any() and (~has_lex).any():  # every-word matches above every photo holding none of the words
        floor = float(score[~has_lex].max()) + params.lift
        low = words & (score < floor)
        if low.any():
            s = score[low]
            span = float(s.max() - s.min())
            score[low] = floor + params.lift * ((s - s.min()) / span if span > _TINY else 0.0)
    # steering away comes last: what the user asked not to see may fall below photos without the words
    neg = _array(parts.negative, n, "negative")
    if parts.negative is not None:
        score = score - params.not_weight * np.maximum(0.0, np.nan_to_num(neg, nan=0.0))
    order = np.argsort(-score, kind="stable")
    return Fusion(score, order, Matches(zp, cap_term, weak_term, has_lex, parts, params))
