"""Exceptions raised by the imgsearch library.

The library raises these; only the command line and the web UI turn them into
messages and exit codes.
"""

from __future__ import annotations


class ImgSearchError(Exception):
    """Base class for every error imgsearch reports to a user."""


class ImageLoadError(ImgSearchError):
    """An image file could not be read or decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class EncoderSpecError(ImgSearchError):
    """An encoder spec string is malformed or names something that cannot be loaded."""


class EncoderMismatchError(ImgSearchError):
    """An index was built with a different encoder than the one asked for."""


class WeightsError(ImgSearchError):
    """A weights file is missing, corrupt, or does not fit the model it is loaded into."""


class StoreError(ImgSearchError):
    """The index store is missing, locked, corrupt, or from an incompatible version."""


class EmptyIndexError(StoreError):
    """A search was asked of an index that holds nothing to search."""


class DatasetError(ImgSearchError):
    """A dataset folder is not in the expected images/ + captions.jsonl layout."""


class DistributedIndexError(ImgSearchError):
    """Distributed indexing cannot run (Ray missing or unreachable) or lost shards it could not redo."""


class SettingsError(ImgSearchError):
    """An ``IMGSEARCH_*`` environment variable holds a value imgsearch cannot use."""


class UnknownFolderError(StoreError):
    """A search filter names a folder that is not inside any indexed folder."""


class FilterRangeError(ImgSearchError):
    """A search filter's date range is empty: its start lies after its end."""


class QueryError(ImgSearchError):
    """A query that cannot be searched (empty, an option out of range, dates the wrong way round)."""
