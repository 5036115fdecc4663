"""The plain records the store takes in and hands out (no SQL, no FAISS)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FileState:
    """What the store remembers of one indexed file, enough to decide whether it changed."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str


@dataclass(frozen=True)
class ImageRecord:
    """Metadata of one image to add to the store."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: datetime | None = None


@dataclass(frozen=True)
class ImageRow:
    """One indexed image as read back from the store."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int | None
    height: int | None
    format: str | None
    taken_at: datetime | None
    folder: str


@dataclass(frozen=True)
class CaptionRow:
    """One indexed caption."""

    id: int
    image_id: int
    text: str
    source: str


@dataclass(frozen=True)
class EncoderInfo:
    """The encoder an index was built with."""

    spec: str
    fingerprint: str
    dim: int


@dataclass(frozen=True)
class TermMatch:
    """How one photo's words (captions, file name, folder names) match a text query in the lexical index."""

    score: float  # BM25, higher is better, > 0
    fields: tuple[str, ...]  # which of "caption", "name", "folder" matched any query word
    all_words: bool  # every content word of the query (terms.content_tokens) matched, in any column
