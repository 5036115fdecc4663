"""The lexical index: an SQLite FTS5 table of each photo's caption text, file-name words and folder words.

One row per image (rowid = ``images.id``), rewritten in the same transaction as every change to an image's
path or captions, so a crash never leaves SQLite and the lexical index apart. Raw SQL on the open
connection: SQLAlchemy cannot declare virtual tables, and this module must not import the schema (the
schema's ``open_engine`` creates and migrates the table through it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import sqlalchemy as sa

from ..terms import FTS_COLUMNS, FTS_TOKENIZE, WEAK_CAPTION_SOURCES, content_tokens, file_key, fts_query, \
    name_words, query_tokens, quote_token
from .records import TermMatch

TERMS_TABLE = "photo_terms"
# A query word matching more photos than this is "common": it does not pick photos while the query has rarer
# words (it still adds to the score, fields and all_words of the photos they pick). A query of common words only
# picks its best by BM25 and also scores the caller's candidate photos (``match_terms``).
RANK_CAP = 2000
TERMS_GENERATION = "terms_generation"  # meta key bumped by every write to the FTS table (see TermsCache)
CACHE_POSTINGS = 1_000_000  # token matches a TermsCache holds (17 bytes each) before dropping the least recent
CHUNK = 900  # ids per IN (...): below SQLite's old 999-parameter limit

TermsRow = tuple[str, str, str]  # (caption, name, folder): the text of one FTS row


def create_terms_table(conn: sa.Connection) -> None:
    """Create the FTS5 table if it does not exist."""
    cols = ", ".join(FTS_COLUMNS)
    conn.exec_driver_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {TERMS_TABLE} USING fts5({cols}, "
                         f"tokenize='{FTS_TOKENIZE}')")


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield [int(x) for x in ids[i:i + CHUNK]]


def _raw(conn: sa.Connection):
    """The sqlite3 connection under ``conn`` (same transaction): SQLAlchemy's per-row objects are slow."""
    return conn.connection.driver_connection


def expected_rows(conn: sa.Connection, ids: Sequence[int] | None = None) -> dict[int, TermsRow]:
    """image id -> the FTS row its stored path, root folder and (non-weak) captions call for; every image when
    ``ids`` is None, else those of ``ids`` that exist."""
    raw = _raw(conn)
    weak = ",".join("?" * len(WEAK_CAPTION_SOURCES))
    img_sql = "SELECT i.id, i.path, f.path FROM images i JOIN folders f ON f.id = i.folder_id"
    cap_sql = f"SELECT image_id, text FROM captions WHERE source NOT IN ({weak})"
    if ids is None:
        images = raw.execute(img_sql).fetchall()
        caps = raw.execute(cap_sql + " ORDER BY image_id, id", WEAK_CAPTION_SOURCES).fetchall()
    else:
        images, caps = [], []
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            images += raw.execute(f"{img_sql} WHERE i.id IN ({marks})", chunk).fetchall()
            caps += raw.execute(f"{cap_sql} AND image_id IN ({marks}) ORDER BY image_id, id",
                                (*WEAK_CAPTION_SOURCES, *chunk)).fetchall()
    texts: dict[int, list[str]] = {}
    for image_id, text in caps:
        texts.setdefault(image_id, []).append(text)
    out = {}
    for image_id, path, root in images:
        nw = name_words(path, root)
        name = " ".join(nw.name) or file_key(path) or ""  # a camera-made name: its one file key token
        out[image_id] = ("\n".join(texts.get(image_id, ())), name, " ".join(nw.folder))
    return out


def stored_rows(conn: sa.Connection) -> dict[int, TermsRow]:
    """image id -> the FTS row as stored, for every row of the table."""
    cols = ", ".join(FTS_COLUMNS)
    return {r[0]: tuple(r[1:]) for r in _raw(conn).execute(f"SELECT rowid, {cols} FROM {TERMS_TABLE}")}


def bump_terms_generation(conn: sa.Connection) -> None:
    """Count a write to the FTS table, in the writing transaction, so readers' TermsCache drops what it holds."""
    _raw(conn).execute(f"INSERT INTO meta(key, value) VALUES ('{TERMS_GENERATION}', '1') ON CONFLICT(key) "
                       "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)")


def terms_generation(conn: sa.Connection) -> int:
    """The count of writes to the FTS table (0 before the first)."""
    row = _raw(conn).execute("SELECT value FROM meta WHERE key = ?", (TERMS_GENERATION,)).fetchone()
    return int(row[0]) if row else 0


def delete_rows(conn: sa.Connection, ids: Iterable[int]) -> None:
    """Drop the FTS rows of these images."""
    ids = list(ids)
    if ids:
        bump_terms_generation(conn)
    for chunk in _chunks(ids):
        conn.exec_driver_sql(f"DELETE FROM {TERMS_TABLE} WHERE rowid IN ({','.join('?' * len(chunk))})",
                             tuple(chunk))


def write_rows(conn: sa.Connection, rows: dict[int, TermsRow]) -> None:
    """Insert (or replace) these FTS rows."""
    if not rows:
        return
    delete_rows(conn, list(rows))  # counts the write
    cols = ", ".join(FTS_COLUMNS)
    conn.exec_driver_sql(f"INSERT INTO {TERMS_TABLE}(rowid, {cols}) VALUES (?, ?, ?, ?)",
                         [(i, *row) for i, row in rows.items()])


def refresh_rows(conn: sa.Connection, ids: Iterable[int]) -> None:
    """Rewrite the FTS rows of these images from their stored rows (dropping those of images that are gone)."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return
    rows = expected_rows(conn, ids)
    delete_rows(conn, [i for i in ids if i not in rows])
    write_rows(conn, rows)


def clear_rows(conn: sa.Connection) -> None:
    """Empty the FTS table."""
    bump_terms_generation(conn)
    conn.exec_driver_sql(f"DELETE FROM {TERMS_TABLE}")


def rebuild_rows(conn: sa.Connection) -> int:
    """Fill the FTS table afresh from every stored image; returns its row count."""
    clear_rows(conn)
    rows = expected_rows(conn)
    write_rows(conn, rows)
    return len(rows)


def terms_drift(conn: sa.Connection) -> tuple[set[int], set[int], set[int]]:
    """(missing, stale, orphaned): images without an FTS row, rows whose text differs from what the image's
    path and captions call for, and rows of no image."""
    want, have = expected_rows(conn), stored_rows(conn)
    missing = set(want) - set(have)
    orphan = set(have) - set(want)
    stale = {i for i in set(want) & set(have) if want[i] != have[i]}
    return missing, stale, orphan


@dataclass(frozen=True)
class Postings:
    """Every photo one query token matches: sorted ids, each one's BM25 for the token alone, and a bit per FTS
    column it matches in. FTS5 scores an OR or AND query as the sum of its phrases' parts, in query order, and a
    phrase's part depends on the phrase alone, so these add up to the query's BM25 exactly."""

    ids: np.ndarray  # (m,) int64, sorted
    score: np.ndarray  # (m,) float64, -bm25 of the one-token query
    columns: np.ndarray  # (m,) uint8, bit c set when column FTS_COLUMNS[c] holds the token


def read_postings(conn: sa.Connection, token: str) -> Postings:
    """One token's postings, read from the FTS table (a BM25 pass and one pass per column over its matches)."""
    raw, phrase = _raw(conn), quote_token(token)
    rows = raw.execute(f"SELECT rowid, -bm25({TERMS_TABLE}) FROM {TERMS_TABLE} WHERE {TERMS_TABLE} MATCH ?",
                       (phrase,)).fetchall()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    score = np.fromiter((r[1] for r in rows), np.float64, len(rows))
    order = np.argsort(ids, kind="stable")
    ids, score = ids[order], score[order]
    columns = np.zeros(len(ids), np.uint8)
    sql = f"SELECT rowid FROM {TERMS_TABLE} WHERE {TERMS_TABLE} MATCH ?"
    for c, name in enumerate(FTS_COLUMNS):
        hit = np.fromiter((r for (r,) in raw.execute(sql, (f"{{{name}}} : {phrase}",))), np.int64)
        columns[np.searchsorted(ids, hit)] |= np.uint8(1 << c)
    return Postings(ids, score, columns)


class TermsCache:
    """Per store: the postings of the query tokens seen, valid for one terms generation, the least recently used
    dropped past ``max_postings`` matches in all (17 bytes each).

    Every write to the FTS table bumps the generation (``bump_terms_generation``) in its own transaction, and
    each ``match_terms`` call reads it first, so nothing here outlives a change to the words it describes.
    """

    def __init__(self, max_postings: int = CACHE_POSTINGS) -> None:
        self.max_postings = max_postings
        self.generation: int | None = None
        self.postings: OrderedDict[str, Postings] = OrderedDict()
        self.held = 0
        self.lock = threading.Lock()

    def sync(self, conn: sa.Connection) -> None:
        """Forget everything if the FTS table changed since it was filled."""
        gen = terms_generation(conn)
        with self.lock:
            if gen != self.generation:
                self.generation, self.postings, self.held = gen, OrderedDict(), 0

    def postings_of(self, conn: sa.Connection, token: str) -> Postings:
        """The token's postings, read from the FTS table on first use."""
        with self.lock:
            got = self.postings.get(token)
            if got is not None:
                self.postings.move_to_end(token)
                return got
        got = read_postings(conn, token)
        with self.lock:
            if token not in self.postings:
                self.postings[token] = got
                self.held += len(got.ids)
            while self.held > self.max_postings and len(self.postings) > 1:
                _, old = self.postings.popitem(last=False)
                self.held -= len(old.ids)
        return got


def _best(picked: np.ndarray, rank: np.ndarray, limit: int) -> np.ndarray:
    """The ``limit`` of the ``picked`` ids (sorted) of highest ``rank``, best first, ties by id (as FTS5's
    ORDER BY rank gives them)."""
    r = rank[picked]
    if len(picked) > limit:
        kth = np.partition(r, len(r) - limit)[len(r) - limit]
        above = r > kth
        keep = above | ((r == kth) & (np.cumsum(r == kth) <= limit - int(above.sum())))
        picked, r = picked[keep], r[keep]
    return picked[np.lexsort((picked, -r))]


def match_terms(conn: sa.Connection, text: str, limit: int = 1000, candidates: np.ndarray | None = None,
                cache: TermsCache | None = None) -> dict[int, TermMatch]:
    """image id -> TermMatch for the ``limit`` photos whose words best match ``text`` (BM25), and for a query
    of common words only the ``candidates`` holding any of them too; see ``Store.match_terms``. Scored from the
    tokens' postings: the scores, fields and all_words the FTS5 queries (any word; every content word for
    all_words) give. User text is only ever searched as words: never FTS syntax."""
    tokens = query_tokens(text)
    if not tokens or limit < 1:
        return {}
    cache = cache if cache is not None else TermsCache()
    cache.sync(conn)
    posts = [cache.postings_of(conn, t) for t in tokens]
    cap = max(RANK_CAP, int(limit))
    common = [len(p.ids) > cap for p in posts]
    only_common = all(common)
    picks = [not c for c in common] if any(common) and not only_common else [True] * len(tokens)
    size = 1 + max((int(p.ids[-1]) for p in posts if len(p.ids)), default=0)
    rank, columns, held = np.zeros(size), np.zeros(size, np.uint8), np.zeros(size, np.int32)
    for p, pick in zip(posts, picks):  # the words that pick photos, in query order, as FTS5 sums its phrases
        if pick:
            rank[p.ids] += p.score
            columns[p.ids] |= p.columns
    top = _best(np.flatnonzero(columns), rank, int(limit))
    score = rank
    if not all(picks):  # common words beside rarer ones only add to the photos those picked (the phrases after them)
        score = rank.copy()
        for p, pick in zip(posts, picks):
            if not pick:
                score[p.ids] += p.score
                columns[p.ids] |= p.columns
    content = set(content_tokens(tokens))
    for t, p in zip(tokens, posts):
        if t in content:
            held[p.ids] += 1
    if only_common and candidates is not None and len(candidates):
        cand = np.asarray(candidates, np.int64)
        cand = cand[(cand >= 0) & (cand < size)]
        cand = cand[columns[cand] > 0]
        top = np.concatenate([top, cand[~np.isin(cand, top)]])
    every = held == len(content)
    out = {}
    for i in top.tolist():
        bits = int(columns[i])
        out[i] = TermMatch(score=max(float(score[i]), 1e-9), all_words=bool(every[i]),
                           fields=tuple(c for n, c in enumerate(FTS_COLUMNS) if bits >> n & 1))
    return out
