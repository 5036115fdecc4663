"""The SQLite connection of a store: transactions, the vector changes they make, and the meta table.

Every committed change to the vectors bumps the ``generation`` in the meta table; the FAISS
indexes record the generation they reflect, so a reader can tell when they fall behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import sqlalchemy as sa

from ..errors import EmptyIndexError
from .records import EncoderInfo
from .schema import read_meta, write_meta


@dataclass
class Delta:
    """The vector changes of one transaction: kind -> (added ids, added vectors, removed ids)."""

    kinds: dict = field(default_factory=dict)
    unknown: bool = False  # vectors may have changed in ways not recorded

    def __bool__(self) -> bool:
        return self.unknown or any(a or r for a, _, r in self.kinds.values())


class Database:
    """One SQLite engine with nestable transactions that track their vector changes.

    ``on_commit(delta, old, new)`` is called after each commit that changed vectors (or may have),
    with the generation it moved from and to.
    """

    def __init__(self, engine: sa.Engine, data_dir: Path,
                 on_commit: Callable[[Delta, int, int], None] | None = None) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.on_commit = on_commit
        self.conn: sa.Connection | None = None  # the open transaction's connection, if any
        self.delta: Delta | None = None  # the open transaction's vector changes
        self._peekers = threading.local()  # each thread's own raw sqlite3 connection for peek()
        self._peeker_conns: list[sqlite3.Connection] = []
        self._peeker_lock = threading.Lock()

    def peek(self, sql: str, params: tuple = ()) -> tuple | None:
        """The first row of a small read, on this thread's own raw sqlite3 connection (checking one out of
        SQLAlchemy's pool costs more than the read); inside a transaction, on its connection."""
        if self.conn is not None:
            return self.conn.connection.driver_connection.execute(sql, params).fetchone()
        held = getattr(self._peekers, "held", None)
        if held is None or held[0] != os.getpid():  # never a connection inherited through fork
            conn = sqlite3.connect(self.engine.url.database, timeout=30, check_same_thread=False)
            with self._peeker_lock:
                self._peeker_conns.append(conn)
            held = self._peekers.held = (os.getpid(), conn)
        return held[1].execute(sql, params).fetchone()

    def close_peekers(self) -> None:
        """Close every thread's peek() connection (the store is closing)."""
        with self._peeker_lock:
            conns, self._peeker_conns = self._peeker_conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._peekers = threading.local()

    @contextlib.contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for reads: the open transaction's, else a fresh one."""
        if self.conn is not None:
            yield self.conn
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def transaction(self, *, tracked: bool = False) -> Iterator[sa.Connection]:
        """One atomic SQLite transaction; nested calls join the outer one (see ``Store.transaction``)."""
        if self.conn is not None:
            yield self.conn
            return
        delta = Delta()
        with self.engine.begin() as conn:
            self.conn, self.delta = conn, delta
            try:
                yield conn
                if not tracked:
                    delta.unknown = True
                old = int(read_meta(conn, "generation") or 0)
                if delta:
                    write_meta(conn, "generation", str(old + 1))
            finally:
                self.conn, self.delta = None, None
        if delta and self.on_commit is not None:
            self.on_commit(delta, old, old + 1)

    def tracked(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A transaction in which only the store's own methods write vectors, recording each change."""
        return self.transaction(tracked=True)

    def record(self, kind: str, *, add: tuple[int, np.ndarray] | None = None, remove: Iterable[int] = ()) -> None:
        """Note a vector change of the current transaction (see ``transaction``)."""
        if self.delta is None:
            raise RuntimeError("vector changes must happen inside a transaction")
        removed = [int(i) for i in remove]
        if add is None and not removed:
            return
        d = self.delta.kinds.setdefault(kind, ([], [], []))
        if removed:
            d[2].extend(removed)
        if add is not None:
            d[0].append(int(add[0]))
            d[1].append(np.asarray(add[1], dtype=np.float32).reshape(-1))

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """One value of the meta table, or None."""
        with self.connect() as conn:
            return read_meta(conn, key)

    @property
    def encoder_info(self) -> EncoderInfo | None:
        """The encoder this index was built with, or None for a new index."""
        raw = self.get_meta("encoder")
        return EncoderInfo(**json.loads(raw)) if raw else None

    @property
    def generation(self) -> int:
        """The committed generation of the vectors."""
        return int(self.get_meta("generation") or 0)

    def dim(self) -> int:
        """The vector dimension of the bound encoder; EmptyIndexError when none is bound."""
        info = self.encoder_info
        if info is None:
            raise EmptyIndexError(f"the index in {self.data_dir} is empty (run `imgsearch index DIR` first)")
        return info.dim
