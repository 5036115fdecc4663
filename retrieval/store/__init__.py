"""The index store: metadata in SQLite (through SQLAlchemy), vectors in FAISS.

SQLite is the source of truth: it holds every row and its raw vector. The FAISS indexes are
derived from it, saved atomically beside it with the generation they reflect, and rebuilt from the
stored vectors whenever they fall behind (after a crash mid-index, say), so nothing is ever
re-embedded to repair them. Only this package imports ``sqlalchemy``, and only its ``vectors``
module imports ``faiss``.
"""

from .check import CheckIssue, CheckReport
from .records import CaptionRow, EncoderInfo, FileState, ImageRecord, ImageRow, TermMatch
from .schema import DB_FILE, LOCK_FILE, SCHEMA_VERSION
from .store import Store, destroy_store
from .vectors import DEFAULT_INDEX_PARAMS, INDEX_FLAT, INDEX_HNSW, INDEX_IVF, INDEX_KINDS, IndexParams, VectorIndex

__all__ = [
    "CaptionRow", "CheckIssue", "CheckReport", "DB_FILE", "DEFAULT_INDEX_PARAMS", "EncoderInfo", "FileState",
    "INDEX_FLAT", "INDEX_HNSW", "INDEX_IVF", "INDEX_KINDS", "ImageRecord", "ImageRow", "IndexParams", "LOCK_FILE",
    "SCHEMA_VERSION", "Store", "TermMatch", "VectorIndex", "destroy_store",
]
