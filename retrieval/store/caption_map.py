"""Which photo and source every caption belongs to, held in memory so a hybrid query reads no caption rows.

A ``CaptionMap`` is built from SQLite once per generation (every caption change bumps it) and used only
while the store's loaded FAISS indexes reflect that same generation, so it never names a caption the
index does not hold, nor a caption's old photo. A ``CaptionSet`` is what a query gets: the captions of
its candidate photos with their vectors. No SQL and no FAISS here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CaptionSet:
    """The captions of some photos, grouped by photo in the order asked, each photo's by caption id."""

    ids: np.ndarray  # (n,) int64 caption ids
    image_ids: np.ndarray  # (n,) int64 the photo of each caption
    source_codes: np.ndarray  # (n,) int index into source_names
    source_names: tuple[str, ...]
    vectors: np.ndarray  # (n, dim) float32

    def __len__(self) -> int:
        return len(self.ids)

    def of_sources(self, sources: Sequence[str]) -> np.ndarray:
        """(n,) bool: whether each row's source is one of ``sources``."""
        wanted = np.array([s in sources for s in self.source_names] or [False], bool)
        return wanted[self.source_codes] if len(self.ids) else np.zeros(0, bool)


def _codes(sources: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(s, len(names)) for s in sources), np.int32, len(sources))
    return codes.astype(np.int8 if len(names) < 128 else np.int32), tuple(names)


def caption_set_of(rows: Sequence[tuple], dim: int) -> CaptionSet:
    """A CaptionSet from (image_id, caption id, source, float32 vector bytes) rows, kept in their order."""
    n = len(rows)
    codes, names = _codes([r[2] for r in rows])
    vectors = np.frombuffer(bytearray(b"".join(r[3] for r in rows)), np.float32).reshape(n, dim) if n \
        else np.zeros((0, dim), np.float32)
    return CaptionSet(np.fromiter((r[1] for r in rows), np.int64, n), np.fromiter((r[0] for r in rows), np.int64, n),
                      codes, names, vectors)


class CaptionMap:
    """caption id -> photo, photo -> its caption ids, and the sources learnt so far, of every caption at one
    ``generation`` (about 30 bytes per caption: ids, photos, sources and the by-photo order, as numpy arrays).
    Sources are learnt as queries need them (``learn``): reading them means reading every caption row."""

    def __init__(self, generation: int, ids: np.ndarray, image_ids: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self.generation = generation
        self.ids = np.ascontiguousarray(ids[order], np.int64)
        self.image_ids = np.ascontiguousarray(image_ids[order], np.int64)
        self.source_codes = np.full(len(ids), -1, np.int16)  # -1: not learnt yet
        self.source_names: list[str] = []
        # by photo, each photo's captions by id (ids are sorted, so a stable sort keeps them in id order)
        self.by_image = np.argsort(self.image_ids, kind="stable").astype(np.int32 if len(ids) < 2**31 else np.int64)
        self.sorted_images = self.image_ids[self.by_image]

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return sum(a.nbytes for a in (self.ids, self.image_ids, self.source_codes, self.by_image, self.sorted_images))

    def rows_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Positions (into ``ids``) of every caption of these photos, grouped by photo in the order given,
        each photo's by caption id."""
        image_ids = np.asarray(image_ids, np.int64).reshape(-1)
        lo = np.searchsorted(self.sorted_images, image_ids, "left")
        counts = np.searchsorted(self.sorted_images, image_ids, "right") - lo
        total = int(counts.sum())
        if not total:
            return np.zeros(0, np.int64)
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return self.by_image[starts + np.arange(total)].astype(np.int64)

    def images_of(self, caption_ids: np.ndarray) -> np.ndarray:
        """The photo of each caption id, -1 for ids the map does not hold."""
        caption_ids = np.asarray(caption_ids, np.int64).reshape(-1)
        if not len(self.ids):
            return np.full(len(caption_ids), -1, np.int64)
        at = np.minimum(np.searchsorted(self.ids, caption_ids), len(self.ids) - 1)
        return np.where(self.ids[at] == caption_ids, self.image_ids[at], -1)

    def unknown(self, rows: np.ndarray) -> np.ndarray:
        """The positions of ``rows`` whose source is not learnt yet."""
        return rows[self.source_codes[rows] < 0]

    def learn(self, rows: np.ndarray, sources: Sequence[str]) -> None:
        """Remember the sources of these positions (read at the map's generation)."""
        codes = {s: n for n, s in enumerate(self.source_names)}
        for s in sources:
            if s not in codes:
                codes[s] = len(self.source_names)
                self.source_names.append(s)
        self.source_codes[rows] = np.fromiter((codes[s] for s in sources), np.int16, len(sources))

    def caption_set(self, rows: np.ndarray, vectors: np.ndarray) -> CaptionSet:
        """The CaptionSet of these positions (their sources learnt), with their vectors."""
        return CaptionSet(self.ids[rows], self.image_ids[rows], self.source_codes[rows], tuple(self.source_names),
                          vectors)
