"""What a search asks for: the text and/or photo, what to steer away from, filters, order and page.

One frozen object carries it from the CLI or the web app to the searcher, which checks it once
(:meth:`SearchQuery.check`) so every front end gets the same one-line errors.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import BinaryIO, Union

from PIL import Image

from .errors import QueryError

ImageInput = Union[str, "os.PathLike[str]", bytes, BinaryIO, Image.Image]
MAX_QUERY_CHARS = 1000
MAX_K = 10_000  # results one search returns at most (paging past it: offset)
MAX_OFFSET = 100_000  # how deep paging goes
MAX_NOT = 8
SORTS = ("relevance", "date")


def clean_text(text: str | None) -> str:
    """User text with runs of whitespace made one space, cut to MAX_QUERY_CHARS."""
    return " ".join(str(text or "").split())[:MAX_QUERY_CHARS]


def parse_day(value: str, what: str) -> dt.date:
    """A YYYY-MM-DD date from user text, or a one-line QueryError naming ``what``."""
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise QueryError(f"{what} must be a date written YYYY-MM-DD, not {str(value)[:40]!r}") from None


@dataclass(frozen=True)
class SearchQuery:
    """One search: ``text`` and/or ``image``, ``not_texts`` to steer away from, filters, sort and page.

    ``hybrid``: a text query also matches captions, file and folder names (False: pixels only).
    ``min_score`` is a floor on the raw pixel score; ``min_relevance`` one on the calibrated relevance
    (standard deviations above the query's typical nearest photo).
    """

    text: str | None = None
    image: ImageInput | None = None
    not_texts: tuple[str, ...] = ()
    taken_after: dt.date | None = None
    taken_before: dt.date | None = None
    folders: tuple[str, ...] = ()
    sort: str = "relevance"
    k: int = 10
    offset: int = 0
    min_score: float | None = None
    min_relevance: float | None = None
    rerank: bool = False
    hybrid: bool = True

    @property
    def has_filters(self) -> bool:
        return self.taken_after is not None or self.taken_before is not None or bool(self.folders)

    def check(self) -> "SearchQuery":
        """This query with its text cleaned, or a one-line QueryError for what cannot be searched."""
        text = clean_text(self.text) if self.text is not None else None
        if self.image is None and not text:
            raise QueryError("empty query: type some words to search for" if self.text is not None
                             else "give a text query, a photo, or both")
        nots = tuple(t for t in (clean_text(n) for n in self.not_texts) if t)
        if len(self.not_texts) != len(nots):
            raise QueryError("a concept to steer away from needs some words")
        if len(nots) > MAX_NOT:
            raise QueryError(f"at most {MAX_NOT} concepts to steer away from")
        if not text and nots:
            raise QueryError("steering away from a concept needs a text query too")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise QueryError(f"k must be a whole number from 1 to {MAX_K}, not {self.k!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_OFFSET:
            raise QueryError(f"offset must be a whole number from 0 to {MAX_OFFSET}, not {self.offset!r}")
        if self.sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}, not {str(self.sort)[:40]!r}")
        for name in ("taken_after", "taken_before"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dt.date):
                raise QueryError(f"{name.replace('_', ' ')} must be a date, not {value!r}")
        if self.taken_after and self.taken_before and self.taken_after > self.taken_before:
            raise QueryError(f"taken after {self.taken_after} is later than taken before {self.taken_before}: "
                             "no photo can match")
        if self.rerank and text is None:
            raise QueryError("reranking applies to text queries")
        return SearchQuery(text, self.image, nots, self.taken_after, self.taken_before,
                           tuple(str(f) for f in self.folders), self.sort, self.k, self.offset, self.min_score,
                           self.min_relevance, self.rerank, self.hybrid)
