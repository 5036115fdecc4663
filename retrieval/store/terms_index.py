"""The lexical index: an SQLite FTS5 table of each photo's caption text, file-name words and folder words.

One row per image (rowid = ``images.id``), rewritten in the same transaction as every change to an image's
path or captions, so a crash never leaves SQLite and the lexical index apart. Raw SQL on the open
connection: SQLAlchemy cannot declare virtual tables, and this module must not import the schema (the
schema's ``open_engine`` creates and migrates the table through it).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import sqlalchemy as sa

from ..terms import FTS_COLUMNS, FTS_TOKENIZE, WEAK_CAPTION_SOURCES, content_tokens, file_key, fts_query, \
    name_words, query_tokens, quote_token
from .records import TermMatch

TERMS_TABLE = "photo_terms"
# A query word matching more photos than this is "common": it does not pick photos (ranking all of its
# matches by BM25 costs time in proportion to them), but it still adds to the score, fields and all_words
# of the photos the query's other words find. A query of common words only is ranked in full.
RANK_CAP = 2000
CHUNK = 900  # ids per IN (...): below SQLite's old 999-parameter limit
_MARK = "\x01"  # highlight() marker: a column whose highlighted text differs from its text matched

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


def delete_rows(conn: sa.Connection, ids: Iterable[int]) -> None:
    """Drop the FTS rows of these images."""
    for chunk in _chunks(list(ids)):
        conn.exec_driver_sql(f"DELETE FROM {TERMS_TABLE} WHERE rowid IN ({','.join('?' * len(chunk))})",
                             tuple(chunk))


def write_rows(conn: sa.Connection, rows: dict[int, TermsRow]) -> None:
    """Insert (or replace) these FTS rows."""
    if not rows:
        return
    delete_rows(conn, list(rows))
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


def _select(conn: sa.Connection, expr: str, limit: int | None, ranked: bool) -> list[tuple]:
    """(rowid, score, caption, name, folder, highlighted caption, name, folder) of the rows matching ``expr``."""
    hl = ", ".join(f"highlight({TERMS_TABLE}, {i}, '{_MARK}', '{_MARK}')" for i in range(len(FTS_COLUMNS)))
    sql = (f"SELECT rowid, -bm25({TERMS_TABLE}), {', '.join(FTS_COLUMNS)}, {hl} FROM {TERMS_TABLE} "
           f"WHERE {TERMS_TABLE} MATCH ?" + (" ORDER BY rank" if ranked else "")
           + ("" if limit is None else f" LIMIT {int(limit)}"))
    return _raw(conn).execute(sql, (expr,)).fetchall()


def _count_upto(conn: sa.Connection, expr: str, cap: int) -> int:
    """How many rows match ``expr``, counted up to ``cap + 1`` (cheap: no ranking)."""
    sql = f"SELECT count(*) FROM (SELECT rowid FROM {TERMS_TABLE} WHERE {TERMS_TABLE} MATCH ? LIMIT ?)"
    return int(_raw(conn).execute(sql, (expr, cap + 1)).fetchone()[0])


def match_terms(conn: sa.Connection, text: str, limit: int = 1000) -> dict[int, TermMatch]:
    """image id -> TermMatch for the ``limit`` photos whose words best match ``text`` (BM25); see
    ``Store.match_terms``. User text is quoted word by word (``retrieval.terms.fts_query``): never FTS syntax."""
    tokens = query_tokens(text)
    if not tokens or limit < 1:
        return {}
    any_expr = fts_query(text)
    cap = max(RANK_CAP, int(limit))
    if _count_upto(conn, any_expr, cap) <= cap:
        rows = _select(conn, any_expr, limit, ranked=True)
    else:
        common = [t for t in tokens if _count_upto(conn, quote_token(t), cap) > cap]
        rare = [t for t in tokens if t not in common]
        if not rare:
            rows = _select(conn, any_expr, limit, ranked=True)
        else:
            rare_expr = " OR ".join(quote_token(t) for t in rare)
            rows = _select(conn, rare_expr, limit, ranked=True)
            # the rows that also hold a common word: their full score, and every column that matched
            both = f"({rare_expr}) AND ({' OR '.join(quote_token(t) for t in common)})"
            ids = {r[0] for r in rows}
            fuller = {r[0]: r for r in _select(conn, both, None, ranked=False) if r[0] in ids}
            rows = [fuller.get(r[0], r) for r in rows]
    if not rows:
        return {}
    content = content_tokens(tokens)
    if content == tokens and len(tokens) == 1:
        all_ids = {r[0] for r in rows}
    else:
        all_expr = fts_query(text, require_all=True)
        ids = {r[0] for r in rows}
        sql = f"SELECT rowid FROM {TERMS_TABLE} WHERE {TERMS_TABLE} MATCH ?"
        all_ids = {r for (r,) in _raw(conn).execute(sql, (all_expr,)) if r in ids}
    n = len(FTS_COLUMNS)
    out = {}
    for r in rows:
        plain, marked = r[2:2 + n], r[2 + n:2 + 2 * n]
        fields = tuple(c for c, a, b in zip(FTS_COLUMNS, plain, marked) if a != b)
        out[int(r[0])] = TermMatch(score=max(float(r[1]), 1e-9), fields=fields, all_words=r[0] in all_ids)
    return out
