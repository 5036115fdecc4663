"""The SQLite schema of an imgsearch data folder, its file names, and opening its engine.

SQLite is the source of truth: it holds every row and its raw vector. Only this package imports
``sqlalchemy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import StoreError
from .terms_index import create_terms_table, rebuild_rows

# 2: the lexical index (the FTS5 table of terms_index), created and filled in place when a version-1 index opens
# 3: camera-made file names are indexed by their file key; the lexical rows are rebuilt in place on open
SCHEMA_VERSION = 3
DB_FILE = "imgsearch.sqlite"
LOCK_FILE = "indexer.lock"
REGION_KEY_META = "region_key"
SQL_CHUNK = 900  # ids per IN (...): below SQLite's old 999-parameter limit

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.String, nullable=False),
)

folders_table = sa.Table(
    "folders", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.String, nullable=False, unique=True),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("indexed_at", sa.Float),
)

images_table = sa.Table(
    "images", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("folder_id", sa.Integer, sa.ForeignKey("folders.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("path", sa.String, nullable=False, unique=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.Integer, nullable=False),
    sa.Column("hash", sa.String, nullable=False, index=True),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("format", sa.String),
    sa.Column("taken_at", sa.DateTime),
    sa.Column("indexed_at", sa.Float, nullable=False),
)

image_vectors_table = sa.Table(
    "image_vectors", metadata,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

captions_table = sa.Table(
    "captions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

regions_table = sa.Table(
    "regions", metadata,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tokens", sa.Integer, nullable=False),  # R
    sa.Column("channels", sa.Integer, nullable=False),  # C
    sa.Column("data", sa.LargeBinary, nullable=False),  # see regions.quantise_regions
)

skipped_table = sa.Table(
    "skipped", metadata,
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("folder_id", sa.Integer, sa.ForeignKey("folders.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("size", sa.Integer),
    sa.Column("mtime_ns", sa.Integer),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)


def sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    """Set WAL journaling, normal sync and foreign keys on every new SQLite connection."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def read_meta(conn: sa.Connection, key: str) -> str | None:
    """One value of the meta table, or None."""
    return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar()


def write_meta(conn: sa.Connection, key: str, value: str) -> None:
    """Set one value of the meta table."""
    conn.execute(sa.delete(meta_table).where(meta_table.c.key == key))
    conn.execute(meta_table.insert().values(key=key, value=value))


def open_engine(data_dir: Path, db_path: Path) -> sa.Engine:
    """The engine of the database at ``db_path``, its tables created and its schema version checked."""
    engine = sa.create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30})
    sa.event.listen(engine, "connect", sqlite_pragmas)
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            with engine.begin() as conn:
                version = read_meta(conn, "schema_version")
                if version is None:
                    create_terms_table(conn)
                    conn.execute(meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif version in ("1", "2"):
                    migrate_terms(conn)
                elif version != str(SCHEMA_VERSION):
                    raise StoreError(f"index at {data_dir} has schema version {version}; this imgsearch reads "
                                     f"version {SCHEMA_VERSION}: rebuild it with `imgsearch index DIR --rebuild`")
                else:
                    create_terms_table(conn)  # a no-op, unless the table was dropped: `imgsearch check` refills it
            return engine
        except sa.exc.OperationalError as e:
            if "locked" not in str(e.orig) or attempt == 2:
                raise StoreError(f"cannot open index database {db_path}: {e.orig}") from e
            # another process migrated (or wrote) between our read and our write: look again
        except sa.exc.DatabaseError as e:
            raise StoreError(f"cannot open index database {db_path}: {e.orig}") from e
    return engine


def migrate_terms(conn: sa.Connection) -> None:
    """Bring a version-1 or -2 index to this version in place: create the lexical index and fill it afresh from
    the stored rows (idempotent, in the caller's transaction, so an interrupted migration is simply done again)."""
    create_terms_table(conn)
    rebuild_rows(conn)
    write_meta(conn, "schema_version", str(SCHEMA_VERSION))
