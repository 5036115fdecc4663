"""SQLite reads and writes of a store's rows: folders, images and their vectors, captions, skipped files.

Every write goes through a tracked transaction of the ``Database`` and records the vectors it adds
or removes, so the loaded FAISS indexes follow incrementally. Every write that changes an image's path or
captions rewrites its lexical-index row (``terms_index``) in the same transaction.
"""

from __future__ import annotations

import datetime
import time
from typing import Iterable, Sequence

import numpy as np
import sqlalchemy as sa

from ..terms import WEAK_CAPTION_SOURCES
from .caption_map import CaptionSet, caption_set_of
from .database import Database
from .records import CaptionRow, FileState, ImageRecord, ImageRow
from .regions import check_region_shape, insert_regions, quantise_regions
from .schema import (REGION_KEY_META, SQL_CHUNK, captions_table, folders_table, image_vectors_table, images_table,
                     meta_table, regions_table, skipped_table)
from .terms_index import TERMS_GENERATION, clear_rows, delete_rows, refresh_rows

# meta keys a clear keeps (it drops bindings and sync markers): counters only ever go up
KEPT_META = ("schema_version", "generation", TERMS_GENERATION)


def to_blob(vector: np.ndarray) -> bytes:
    """A vector as the float32 bytes SQLite stores."""
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def parse_datetime(value: str | None) -> datetime.datetime | None:
    """A DateTime column as SQLAlchemy writes it to SQLite (ISO text), read back without SQLAlchemy."""
    return datetime.datetime.fromisoformat(value) if value else None


def raw_rows(conn: sa.Connection, sql: str, ids: Sequence[int]) -> list[tuple]:
    """The rows of ``sql`` (whose ``IN ({})`` takes the ids) for these ids, chunk by chunk, on the raw sqlite3
    cursor of ``conn`` (same transaction): on the query path SQLAlchemy's per-row objects are slow."""
    raw = conn.connection.driver_connection
    out: list[tuple] = []
    for i in range(0, len(ids), SQL_CHUNK):
        chunk = ids[i:i + SQL_CHUNK]
        out += raw.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
    return out


class Catalog:
    """The row tables of one store, read and written through its ``Database``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def clear(self) -> None:
        """Delete every row, its lexical-index row, the encoder and region bindings and the other meta keys
        (sync markers), in one untracked transaction."""
        with self.db.transaction() as conn:
            for table in (captions_table, regions_table, image_vectors_table, skipped_table, images_table,
                          folders_table):
                conn.execute(sa.delete(table))
            clear_rows(conn)
            conn.execute(sa.delete(meta_table).where(meta_table.c.key.not_in(KEPT_META)))

    # -- folders ----------------------------------------------------------------------------

    def add_folder(self, path: str) -> int:
        """The id of an indexed root folder, registering it if new."""
        with self.db.tracked() as conn:
            fid = conn.execute(sa.select(folders_table.c.id).where(folders_table.c.path == path)).scalar()
            if fid is None:
                fid = conn.execute(folders_table.insert().values(path=path, added_at=time.time())).inserted_primary_key[0]
            return int(fid)

    def mark_folder_indexed(self, folder_id: int) -> None:
        """Stamp a root folder's last index time."""
        with self.db.tracked() as conn:
            conn.execute(folders_table.update().where(folders_table.c.id == folder_id).values(indexed_at=time.time()))

    def remove_folder(self, path: str) -> tuple[int, int] | None:
        """Forget the root folder stored as ``path``: its images (with their captions, regions and vectors),
        skip records and row, in one transaction. Returns (folder id, images removed); None when not a root."""
        with self.db.tracked() as conn:
            fid = conn.execute(sa.select(folders_table.c.id).where(folders_table.c.path == path)).scalar()
            if fid is None:
                return None
            ids = conn.execute(sa.select(images_table.c.id).where(images_table.c.folder_id == fid)).scalars().all()
            removed = self.remove_images(ids)  # joins this transaction
            conn.execute(sa.delete(skipped_table).where(skipped_table.c.folder_id == fid))
            conn.execute(sa.delete(folders_table).where(folders_table.c.id == fid))
        return int(fid), removed

    def folders(self) -> list[dict]:
        """Indexed root folders with their image counts and last index time."""
        q = (sa.select(folders_table.c.id, folders_table.c.path, folders_table.c.indexed_at,
                       sa.func.count(images_table.c.id).label("images"))
             .select_from(folders_table.outerjoin(images_table, images_table.c.folder_id == folders_table.c.id))
             .group_by(folders_table.c.id).order_by(folders_table.c.path))
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- images -----------------------------------------------------------------------------

    def file_states(self, folder_id: int) -> dict[str, FileState]:
        """path -> FileState for every image under one root folder."""
        # The raw sqlite3 cursor: on large libraries SQLAlchemy's per-row objects are slow.
        sql = "SELECT id, path, size, mtime_ns, hash FROM images WHERE folder_id = ?"
        with self.db.connect() as conn:
            rows = conn.connection.driver_connection.execute(sql, (folder_id,)).fetchall()
        return {r[1]: FileState(*r) for r in rows}

    def known_hashes(self) -> dict[str, int]:
        """content hash -> one image id holding it, over the whole store."""
        with self.db.connect() as conn:
            return {h: i for i, h in conn.execute(sa.select(images_table.c.id, images_table.c.hash))}

    def add_images(self, folder_id: int, records: Sequence[ImageRecord], vectors: np.ndarray,
                   regions: np.ndarray | None = None) -> list[int]:
        """Insert images with their vectors (and optional regions), all in one transaction (see ``Store``)."""
        if len(records) != len(vectors):
            raise ValueError("one vector per record")
        blobs = None
        if regions is not None:
            regions = np.asarray(regions)
            if len(regions) != len(records):
                raise ValueError("one region array per record")
            blobs = quantise_regions(regions)
            tokens, channels = int(regions.shape[1]), int(regions.shape[2])
        now = time.time()
        ids = []
        with self.db.tracked() as conn:
            if blobs is not None:
                check_region_shape(conn, tokens, channels)
            for rec, vec in zip(records, vectors):
                self.drop_path(conn, rec.path)
                iid = conn.execute(images_table.insert().values(
                    folder_id=folder_id, indexed_at=now, **rec.__dict__)).inserted_primary_key[0]
                conn.execute(image_vectors_table.insert().values(image_id=iid, vector=to_blob(vec)))
                self.db.record("images", add=(iid, vec))
                conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == rec.path))
                ids.append(int(iid))
            if blobs is not None and ids:
                insert_regions(conn, ids, tokens, channels, blobs)
            refresh_rows(conn, ids)
        return ids

    def bulk_add_images(self, folder_id: int, records: Sequence[ImageRecord], vectors: np.ndarray) -> list[int]:
        """Insert images new to the store with their vectors by executemany (see ``Store``)."""
        if len(records) != len(vectors):
            raise ValueError("one vector per record")
        now = time.time()
        c = images_table.c
        with self.db.tracked() as conn:
            if records:
                conn.execute(images_table.insert(), [{"folder_id": folder_id, "indexed_at": now, **rec.__dict__}
                                                     for rec in records])
            paths = [rec.path for rec in records]
            by_path: dict[str, int] = {}
            for i in range(0, len(paths), SQL_CHUNK):
                q = sa.select(c.path, c.id).where(c.path.in_(paths[i:i + SQL_CHUNK]))
                by_path.update((r[0], r[1]) for r in conn.execute(q))
            ids = [int(by_path[p]) for p in paths]
            if ids:
                conn.execute(image_vectors_table.insert(), [{"image_id": iid, "vector": to_blob(vec)}
                                                            for iid, vec in zip(ids, vectors)])
            for iid, vec in zip(ids, vectors):
                self.db.record("images", add=(iid, vec))
            refresh_rows(conn, ids)
        return ids

    def copy_image(self, source_id: int, folder_id: int, record: ImageRecord) -> int:
        """Insert a duplicate of an indexed image at a new path, reusing its vector, regions and EXIF captions."""
        with self.db.tracked() as conn:
            src = conn.execute(sa.select(images_table).where(images_table.c.id == source_id)).one()
            vec = conn.execute(sa.select(image_vectors_table.c.vector)
                               .where(image_vectors_table.c.image_id == source_id)).scalar_one()
            new = {**record.__dict__, "width": src.width, "height": src.height, "format": src.format,
                   "taken_at": src.taken_at}
            self.drop_path(conn, record.path)
            iid = int(conn.execute(images_table.insert().values(
                folder_id=folder_id, indexed_at=time.time(), **new)).inserted_primary_key[0])
            conn.execute(image_vectors_table.insert().values(image_id=iid, vector=vec))
            self.db.record("images", add=(iid, np.frombuffer(vec, dtype=np.float32)))
            r = regions_table.c
            conn.execute(regions_table.insert().from_select(
                ["image_id", "tokens", "channels", "data"],
                sa.select(sa.literal(iid), r.tokens, r.channels, r.data).where(r.image_id == source_id)))
            for cap in conn.execute(sa.select(captions_table).where(
                    (captions_table.c.image_id == source_id) & (captions_table.c.source == "exif"))).all():
                cid = conn.execute(captions_table.insert().values(image_id=iid, text=cap.text, source="exif",
                                                                  vector=cap.vector)).inserted_primary_key[0]
                self.db.record("captions", add=(cid, np.frombuffer(cap.vector, dtype=np.float32)))
            conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == record.path))
            refresh_rows(conn, [iid])
        return iid

    def update_file_state(self, image_id: int, *, path: str | None = None, folder_id: int | None = None,
                          size: int, mtime_ns: int) -> None:
        """Record a touched or moved file whose content (hash) did not change."""
        values: dict = {"size": size, "mtime_ns": mtime_ns}
        if path is not None:
            values["path"] = path
        if folder_id is not None:
            values["folder_id"] = folder_id
        with self.db.tracked() as conn:
            if path is not None:
                self.drop_path(conn, path, keep=image_id)
                conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == path))
            conn.execute(images_table.update().where(images_table.c.id == image_id).values(**values))
            if path is not None or folder_id is not None:
                refresh_rows(conn, [image_id])  # a move or rename: new name and folder words

    def drop_path(self, conn: sa.Connection, path: str, keep: int | None = None) -> None:
        """Delete the image row at ``path`` (but not ``keep``), its vector, regions and captions, recording
        the change."""
        q = sa.select(images_table.c.id).where(images_table.c.path == path)
        if keep is not None:
            q = q.where(images_table.c.id != keep)
        old = conn.execute(q).scalars().all()
        if not old:
            return
        self.db.record("images", remove=old)
        self.db.record("captions", remove=conn.execute(
            sa.select(captions_table.c.id).where(captions_table.c.image_id.in_(old))).scalars())
        conn.execute(sa.delete(captions_table).where(captions_table.c.image_id.in_(old)))
        conn.execute(sa.delete(regions_table).where(regions_table.c.image_id.in_(old)))
        conn.execute(sa.delete(image_vectors_table).where(image_vectors_table.c.image_id.in_(old)))
        conn.execute(sa.delete(images_table).where(images_table.c.id.in_(old)))
        delete_rows(conn, old)

    def remove_images(self, ids: Iterable[int]) -> int:
        """Delete images (and their captions, regions and vectors); returns how many were removed."""
        ids = list(ids)
        n = 0
        with self.db.tracked() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                self.db.record("captions", remove=conn.execute(
                    sa.select(captions_table.c.id).where(captions_table.c.image_id.in_(chunk))).scalars())
                self.db.record("images", remove=chunk)
                conn.execute(sa.delete(captions_table).where(captions_table.c.image_id.in_(chunk)))
                conn.execute(sa.delete(regions_table).where(regions_table.c.image_id.in_(chunk)))
                conn.execute(sa.delete(image_vectors_table).where(image_vectors_table.c.image_id.in_(chunk)))
                n += conn.execute(sa.delete(images_table).where(images_table.c.id.in_(chunk))).rowcount
                delete_rows(conn, chunk)
        return n

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """id -> ImageRow for the ids that exist."""
        # The raw sqlite3 cursor (as every read on the query path): SQLAlchemy's per-row objects are slow.
        sql = ("SELECT i.id, i.path, i.size, i.mtime_ns, i.hash, i.width, i.height, i.format, i.taken_at, f.path "
               "FROM images i JOIN folders f ON f.id = i.folder_id WHERE i.id IN ({})")
        out: dict[int, ImageRow] = {}
        with self.db.connect() as conn:
            for r in raw_rows(conn, sql, [int(i) for i in ids]):
                out[r[0]] = ImageRow(*r[:8], parse_datetime(r[8]), r[9])
        return out

    def image_by_path(self, path: str) -> ImageRow | None:
        """The indexed image at this absolute path, if any."""
        with self.db.connect() as conn:
            iid = conn.execute(sa.select(images_table.c.id).where(images_table.c.path == path)).scalar()
        return self.images([iid]).get(iid) if iid is not None else None

    def image_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these images, (n, dim), in the order asked."""
        return self.vectors(image_vectors_table.c.image_id, image_vectors_table.c.vector, ids)

    def vectors(self, id_col: sa.Column, vector_col: sa.Column, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors (n, dim) of rows ``ids`` of one table, in the order asked (KeyError for an id
        that has none)."""
        sql = f"SELECT {id_col.name}, {vector_col.name} FROM {id_col.table.name} WHERE {id_col.name} IN ({{}})"
        ids = [int(i) for i in ids]
        with self.db.connect() as conn:
            found = dict(raw_rows(conn, sql, ids))
        if not ids:
            return np.zeros((0, self.db.dim()), np.float32)
        return np.frombuffer(bytearray(b"".join([found[i] for i in ids])), dtype=np.float32).reshape(len(ids), -1)

    def all_vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (ids, vectors) of "images" or "captions", as the FAISS index is built from them."""
        if kind == "images":
            q = sa.select(image_vectors_table.c.image_id, image_vectors_table.c.vector)
        else:
            q = sa.select(captions_table.c.id, captions_table.c.vector)
        ids, blobs = [], []
        with self.db.connect() as conn:
            for i, b in conn.execute(q):
                ids.append(i)
                blobs.append(b)
        dim = self.db.dim()
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim) if ids \
            else np.zeros((0, dim), np.float32)
        return np.asarray(ids, dtype=np.int64), vecs

    def count_images(self) -> int:
        """How many images the store holds."""
        with self.db.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(images_table)).scalar_one())

    def count_captions(self, include_weak: bool = True) -> int:
        """How many captions the store holds; ``include_weak=False``: only real ones, not those made
        from file and folder names."""
        q = sa.select(sa.func.count()).select_from(captions_table)
        if not include_weak:
            q = q.where(captions_table.c.source.not_in(WEAK_CAPTION_SOURCES))
        with self.db.connect() as conn:
            return int(conn.execute(q).scalar_one())

    # -- captions ---------------------------------------------------------------------------

    def captions_of(self, image_ids: Iterable[int]) -> dict[int, list[CaptionRow]]:
        """image id -> its captions (by caption id)."""
        ids = [int(i) for i in image_ids]
        out: dict[int, list[CaptionRow]] = {i: [] for i in ids}
        with self.db.connect() as conn:
            rows = raw_rows(conn, "SELECT id, image_id, text, source FROM captions WHERE image_id IN ({})", ids)
        for r in sorted(rows):
            out[r[1]].append(CaptionRow(*r))
        return out

    def caption_set(self, image_ids: Sequence[int]) -> CaptionSet:
        """Every caption of these images with its stored vector, read from SQLite (see ``Store.caption_set``)."""
        ids = [int(i) for i in image_ids]
        with self.db.connect() as conn:
            rows = raw_rows(conn, "SELECT image_id, id, source, vector FROM captions WHERE image_id IN ({})", ids)
        rank = {i: n for n, i in enumerate(dict.fromkeys(ids))}
        rows.sort(key=lambda r: (rank[r[0]], r[1]))  # the images in the order asked, each by caption id
        return caption_set_of(rows, self.db.dim())

    def caption_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(caption ids, their image ids) of every caption, for ``CaptionMap``: read from the image-id index
        alone, never the rows (each holds its vector)."""
        with self.db.connect() as conn:
            rows = conn.connection.driver_connection.execute(
                "SELECT id, image_id FROM captions").fetchall()  # the planner covers it with the index
        pairs = np.array(rows, np.int64).reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def caption_sources(self, ids: Sequence[int]) -> dict[int, str]:
        """caption id -> source, for the ids that exist."""
        with self.db.connect() as conn:
            return dict(raw_rows(conn, "SELECT id, source FROM captions WHERE id IN ({})", [int(i) for i in ids]))

    def folder_captions(self, folder_id: int, sources: Sequence[str] | None = None) -> dict[int, set[tuple[str, str]]]:
        """image id -> {(text, source)} for every captioned image under one root (only captions of ``sources``
        when given)."""
        # The raw sqlite3 cursor: on large libraries SQLAlchemy's per-row objects are slow.
        sql = ("SELECT c.image_id, c.text, c.source FROM captions c JOIN images i ON i.id = c.image_id "
               "WHERE i.folder_id = ?")
        params: tuple = (folder_id,)
        if sources is not None:
            sql += f" AND c.source IN ({','.join('?' * len(sources))})"
            params += tuple(sources)
        out: dict[int, set[tuple[str, str]]] = {}
        with self.db.connect() as conn:
            for image_id, text, source in conn.connection.driver_connection.execute(sql, params):
                out.setdefault(image_id, set()).add((text, source))
        return out

    def caption_vectors_for_texts(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Already-embedded vectors for any of these exact caption texts."""
        texts = list(set(texts))
        out: dict[str, np.ndarray] = {}
        c = captions_table.c
        with self.db.connect() as conn:
            for i in range(0, len(texts), 500):
                for text, blob in conn.execute(sa.select(c.text, c.vector).where(c.text.in_(texts[i:i + 500]))):
                    out[text] = np.frombuffer(blob, dtype=np.float32)
        return out

    def caption_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these captions, (n, dim), in the order asked."""
        return self.vectors(captions_table.c.id, captions_table.c.vector, ids)

    def add_captions(self, items: Sequence[tuple[int, str, str]], vectors: np.ndarray) -> list[int]:
        """Insert (image_id, text, source) captions with their vectors; returns their ids."""
        ids = []
        with self.db.tracked() as conn:
            for (image_id, text, source), vec in zip(items, vectors):
                ids.append(int(conn.execute(captions_table.insert().values(
                    image_id=image_id, text=text, source=source, vector=to_blob(vec))).inserted_primary_key[0]))
                self.db.record("captions", add=(ids[-1], vec))
            refresh_rows(conn, {i for i, _, src in items if src not in WEAK_CAPTION_SOURCES})
        return ids

    def remove_captions(self, image_id: int, pairs: Iterable[tuple[str, str]]) -> int:
        """Delete this image's captions with these (text, source) pairs."""
        n = 0
        c = captions_table.c
        lexical = False
        with self.db.tracked() as conn:
            for text, source in pairs:
                where = (c.image_id == image_id) & (c.text == text) & (c.source == source)
                self.db.record("captions", remove=conn.execute(sa.select(c.id).where(where)).scalars())
                n += conn.execute(sa.delete(captions_table).where(where)).rowcount
                lexical |= source not in WEAK_CAPTION_SOURCES
            if lexical:
                refresh_rows(conn, [image_id])
        return n

    def captions(self, ids: Iterable[int]) -> dict[int, CaptionRow]:
        """caption id -> CaptionRow."""
        with self.db.connect() as conn:
            rows = raw_rows(conn, "SELECT id, image_id, text, source FROM captions WHERE id IN ({})",
                            [int(i) for i in ids])
        return {r[0]: CaptionRow(*r) for r in rows}

    # -- skipped files ----------------------------------------------------------------------

    def record_skip(self, folder_id: int, path: str, reason: str, size: int | None = None,
                    mtime_ns: int | None = None) -> None:
        """Remember that a file could not be indexed, and why."""
        with self.db.tracked() as conn:
            conn.execute(sa.delete(skipped_table).where(skipped_table.c.path == path))
            conn.execute(skipped_table.insert().values(path=path, folder_id=folder_id, size=size, mtime_ns=mtime_ns,
                                                       reason=reason, at=time.time()))

    def skipped(self, folder_id: int | None = None) -> dict[str, dict]:
        """path -> {reason, size, mtime_ns} of files that could not be indexed."""
        q = sa.select(skipped_table)
        if folder_id is not None:
            q = q.where(skipped_table.c.folder_id == folder_id)
        with self.db.connect() as conn:
            return {r.path: {"reason": r.reason, "size": r.size, "mtime_ns": r.mtime_ns} for r in conn.execute(q)}

    def forget_skips(self, paths: Iterable[str]) -> None:
        """Drop the skip records of these paths."""
        paths = list(paths)
        with self.db.tracked() as conn:
            for i in range(0, len(paths), 500):
                conn.execute(sa.delete(skipped_table).where(skipped_table.c.path.in_(paths[i:i + 500])))
