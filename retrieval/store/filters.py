"""Search filters: the ids of the photos taken in a date range and lying under given folders.

Dates are matched in memory: the (id, day taken) of every dated photo is read once per generation
(a new or changed photo always bumps it) into numpy arrays, so a date filter is an array mask, not a
read of every row per query. Folders are matched by a range scan of the unique index on
``images.path``, which reads only the matching rows and stays right when a photo is moved.
"""

from __future__ import annotations

import datetime
import os
import threading
from typing import Callable, Sequence

import numpy as np

from ..errors import FilterRangeError, UnknownFolderError
from .database import Database

EPOCH = datetime.date(1970, 1, 1)
_NO_IDS = np.zeros(0, np.int64)


def calendar_day(day: datetime.date) -> datetime.date:
    """The date itself, or a datetime's calendar day."""
    return day.date() if isinstance(day, datetime.datetime) else day


def day_number(day: datetime.date) -> int:
    """Days since 1970-01-01 of a date (of a datetime, its calendar day)."""
    return (calendar_day(day) - EPOCH).days


def path_range(folder: str) -> tuple[str, str]:
    """The [low, high) string range holding exactly the paths under ``folder`` (by path component)."""
    prefix = folder if folder.endswith("/") else folder + "/"
    return prefix, prefix[:-1] + chr(ord("/") + 1)


def is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, comparing whole path components."""
    low, high = path_range(folder)
    return path == (folder.rstrip("/") or "/") or low <= path < high


def date_range_ids(ids: np.ndarray, days: np.ndarray, taken_after: datetime.date | None,
                   taken_before: datetime.date | None) -> np.ndarray:
    """The ``ids`` whose ``days`` (days since 1970, see ``day_number``) fall in the range, both ends included."""
    mask = np.ones(len(ids), bool)
    if taken_after is not None:
        mask &= days >= day_number(taken_after)
    if taken_before is not None:
        mask &= days <= day_number(taken_before)
    return ids[mask]


class SearchFilters:
    """Date and folder filters over one store's images (see ``Store.filter_ids``)."""

    def __init__(self, db: Database, generation: Callable[[], int]) -> None:
        self.db = db
        self.generation = generation
        self._dates: tuple[int, np.ndarray, np.ndarray] | None = None  # (generation, ids, days)
        self._lock = threading.Lock()

    def dated(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, days taken) of every photo with a date taken, ids ascending; cached per generation."""
        gen = self.generation()
        cached = self._dates
        if cached is not None and cached[0] == gen:
            return cached[1], cached[2]
        with self._lock:
            cached = self._dates
            if cached is not None and cached[0] == gen:
                return cached[1], cached[2]
            # SQLAlchemy stores DateTime as ISO text; strftime('%s') reads it as epoch seconds
            sql = ("SELECT id, CAST(strftime('%s', taken_at) AS INTEGER) AS s FROM images "
                   "WHERE taken_at IS NOT NULL AND s IS NOT NULL ORDER BY id")
            with self.db.connect() as conn:
                rows = np.fromiter(conn.connection.driver_connection.execute(sql),
                                   dtype=np.dtype([("id", np.int64), ("s", np.int64)]))
            ids, days = rows["id"].copy(), (rows["s"] // 86_400).astype(np.int32)
            self._dates = (gen, ids, days)
            return ids, days

    def date_ids(self, taken_after: datetime.date | None, taken_before: datetime.date | None) -> np.ndarray:
        """Sorted ids of the photos taken on or after ``taken_after`` and on or before ``taken_before``."""
        return date_range_ids(*self.dated(), taken_after, taken_before)

    def roots(self) -> list[str]:
        """The indexed root folders, as stored."""
        with self.db.connect() as conn:
            return [r[0] for r in conn.connection.driver_connection.execute("SELECT path FROM folders")]

    def stored_prefix(self, folder: str, roots: Sequence[str]) -> str:
        """``folder`` spelled as the stored paths spell it (roots are kept as given, symlinks unresolved);
        UnknownFolderError when it lies under no indexed root."""
        folder = os.path.normpath(os.path.abspath(os.path.expanduser(folder)))
        for root in roots:
            if is_under(folder, root):
                return folder
        for root in roots:
            real = os.path.realpath(root)
            if real != root and is_under(folder, real):
                return os.path.normpath(root + folder[len(real.rstrip("/")):])
        raise UnknownFolderError(f"folder {folder} is not in the index (`imgsearch info` lists the indexed folders)")

    def folder_ids(self, folders: Sequence[str]) -> np.ndarray:
        """Sorted ids of the photos under any of ``folders``."""
        roots = self.roots()
        prefixes = [self.stored_prefix(f, roots) for f in folders]
        found = []
        with self.db.connect() as conn:
            raw = conn.connection.driver_connection
            for prefix in prefixes:
                low, high = path_range(prefix)
                cur = raw.execute("SELECT id FROM images WHERE path >= ? AND path < ?", (low, high))
                found.append(np.fromiter((r[0] for r in cur), dtype=np.int64))
        return np.unique(np.concatenate(found)) if found else _NO_IDS

    def filter_ids(self, *, taken_after: datetime.date | None = None, taken_before: datetime.date | None = None,
                   folders: Sequence[str] | None = None) -> np.ndarray | None:
        """Sorted int64 ids passing every filter given, or None when none is (see ``Store.filter_ids``)."""
        if taken_after is not None and taken_before is not None and day_number(taken_after) > day_number(taken_before):
            raise FilterRangeError(f"the date range is empty: {calendar_day(taken_after).isoformat()} is after "
                                   f"{calendar_day(taken_before).isoformat()}")
        folders = list(folders) if folders else []
        if taken_after is None and taken_before is None and not folders:
            return None
        out = self.folder_ids(folders) if folders else None
        if taken_after is not None or taken_before is not None:
            dated = self.date_ids(taken_after, taken_before)
            out = dated if out is None else np.intersect1d(out, dated, assume_unique=True)
        return out
