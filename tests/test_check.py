"""`Store.check` / `imgsearch check`: each kind of drift, made on purpose, is found and repaired."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeEncoder, make_photo
from indexer.sync import Indexer
from retrieval.errors import StoreError
from retrieval.search import Searcher
from retrieval.store import Store, VectorIndex
from ui.cli import main


@pytest.fixture
def indexed(tmp_path):
    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(8):
        make_photo(photos / f"p{i}.png", seed=i)
    (photos / "p0.txt").write_text("a red square\na second caption\n")
    (photos / "p1.txt").write_text("a blue square\n")
    store = Store(db)
    Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos))
    store.close()
    return photos, db


def sql(db: Path, *statements: str) -> None:
    """Change SQLite behind the store's back (no generation bump, foreign keys off)."""
    store = Store(db)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        for s in statements:
            conn.exec_driver_sql(s)
    store.close()


def image_id(db: Path, path: Path) -> int:
    with Store(db) as s:
        return s.image_by_path(str(path)).id


def image_id_in(store: Store, path: Path) -> int:
    return store.image_by_path(str(path)).id


def check(db: Path, repair: bool = False):
    with Store(db) as s:
        return s.check(repair=repair)


def kinds(report) -> set[str]:
    return {i.kind for i in report.issues}


def test_clean_index_is_ok(indexed):
    _, db = indexed
    report = check(db)
    assert report.ok and report.issues == [] and (report.images, report.captions) == (8, 3)


def _row_without_vector(photos, db):
    sql(db, f"DELETE FROM image_vectors WHERE image_id = {image_id(db, photos / 'p3.png')}")


def _vector_without_row(photos, db):
    sql(db, f"DELETE FROM images WHERE id = {image_id(db, photos / 'p4.png')}")


def _wrong_dim(photos, db):
    sql(db, f"UPDATE image_vectors SET vector = zeroblob(8 * 4) WHERE image_id = {image_id(db, photos / 'p5.png')}")


def _orphan_caption(photos, db):
    sql(db, "INSERT INTO captions (image_id, text, source, vector) VALUES (9999, 'lost', 'sidecar', zeroblob(64))")


def _caption_wrong_dim(photos, db):
    sql(db, "UPDATE captions SET vector = zeroblob(12) WHERE text = 'a blue square'")


def _faiss_extra_id(photos, db):
    sql(db, f"DELETE FROM image_vectors WHERE image_id = {image_id(db, photos / 'p6.png')}",
        f"DELETE FROM images WHERE id = {image_id(db, photos / 'p6.png')}")


def _faiss_stale(photos, db):
    sql(db, "UPDATE meta SET value = value + 1 WHERE key = 'generation'")


def _faiss_corrupt(photos, db):
    (db / "images.faiss").write_bytes(b"\x00" * 100)


def _faiss_missing(photos, db):
    (db / "captions.faiss").unlink()
    (db / "captions.json").unlink()


def _generation_mismatch(photos, db):
    side = db / "images.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "generation": 10_000}))


def _faiss_from_another_index(photos, db):
    """A FAISS file of the right generation holding other ids (copied over from elsewhere)."""
    with Store(db) as s:
        ids = sorted(st.id for st in s.file_states(1).values())
        vecs = s.image_vectors(ids)
        vi = VectorIndex.build(16, np.array(ids[2:] + [777, 778]), np.concatenate([vecs[2:], vecs[:2]]))
        s._save_index("images", vi, s.generation)


def _terms_missing(photos, db):
    sql(db, f"DELETE FROM photo_terms WHERE rowid = {image_id(db, photos / 'p0.png')}")


def _terms_stale(photos, db):
    sql(db, f"UPDATE photo_terms SET caption = 'a green circle' WHERE rowid = {image_id(db, photos / 'p1.png')}")


DRIFTS = {
    "image_without_vector": (_row_without_vector, {"image_without_vector", "faiss_ids_without_rows"}),
    "vector_without_image": (_vector_without_row, {"vector_without_image", "faiss_ids_without_rows", "terms_orphan"}),
    "image_vector_dim": (_wrong_dim, {"image_vector_dim", "faiss_ids_without_rows"}),
    "orphan_caption": (_orphan_caption, {"orphan_caption"}),
    "caption_vector_dim": (_caption_wrong_dim, {"caption_vector_dim", "faiss_ids_without_rows"}),
    "faiss_ids_without_rows": (_faiss_extra_id, {"faiss_ids_without_rows", "terms_orphan"}),
    "faiss_stale": (_faiss_stale, {"faiss_stale"}),
    "faiss_corrupt": (_faiss_corrupt, {"faiss_corrupt"}),
    "faiss_missing": (_faiss_missing, {"faiss_missing"}),
    "generation_mismatch": (_generation_mismatch, {"faiss_generation_mismatch"}),
    "faiss_rows_missing": (_faiss_from_another_index, {"faiss_ids_without_rows", "faiss_rows_missing"}),
    "terms_missing": (_terms_missing, {"terms_missing"}),
    "terms_stale": (_terms_stale, {"terms_stale"}),
}


@pytest.mark.parametrize("name", list(DRIFTS))
def test_each_drift_is_found_and_repaired(indexed, name):
    photos, db = indexed
    corrupt, expected = DRIFTS[name]
    corrupt(photos, db)
    report = check(db)
    assert kinds(report) == expected and not report.ok
    assert all(i.message and i.count >= 1 for i in report.issues)
    fixed = check(db, repair=True)
    assert fixed.repaired and fixed.ok and fixed.remaining == []
    again = check(db)
    assert again.ok and again.issues == []
    # the repaired index searches, and the next index run restores whatever rows were dropped
    enc = FakeEncoder()
    with Store(db) as s:
        Indexer(enc, s, show_progress=False).sync(str(photos))
        assert s.count_images() == 8 and s.count_captions() == 3
        assert len(Searcher(enc, s).search_text("x", k=20)) == 8
        words = {w: set(s.match_terms(w)) for w in ("red", "blue", "green")}
        assert words == {"red": {image_id_in(s, photos / "p0.png")}, "blue": {image_id_in(s, photos / "p1.png")},
                         "green": set()}
    assert check(db).issues == []


def test_vanished_photos_are_reported_not_repaired(indexed):
    photos, db = indexed
    os.unlink(photos / "p2.png")
    report = check(db)
    assert kinds(report) == {"missing_file"} and report.ok
    assert report.issues[0].examples == [str(photos / "p2.png")] and not report.issues[0].repairable
    assert check(db, repair=True).repaired == []
    with Store(db) as s:
        assert s.count_images() == 8  # reported only; `imgsearch index` removes it


def test_repair_is_refused_while_an_indexer_runs(indexed):
    photos, db = indexed
    _faiss_corrupt(photos, db)
    with Store(db) as writer:
        writer.acquire_writer_lock()
        assert "faiss_corrupt" in kinds(check(db))  # checking (read-only) works meanwhile
        with pytest.raises(StoreError, match="another imgsearch indexer is running"):
            check(db, repair=True)
    assert check(db, repair=True).ok


def test_check_cli_text_json_and_exit_codes(indexed, capsys):
    photos, db = indexed
    assert main(["check", "--db", str(db)]) == 0
    assert "ok: SQLite and the FAISS files agree" in capsys.readouterr().out
    _faiss_extra_id(photos, db)
    _orphan_caption(photos, db)
    assert main(["check", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "problem:  orphan_caption: 1 caption(s) of no image" in out and "imgsearch check --repair" in out
    assert main(["check", "--db", str(db), "--repair", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and {i["kind"] for i in data["issues"]} == {"orphan_caption", "faiss_ids_without_rows",
                                                            "terms_orphan"}
    assert any("rebuilt" in r for r in data["repaired"]) and data["remaining"] == []
    assert main(["check", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["issues"] == []
    assert main(["check", "--db", str(db.parent / "nowhere")]) == 1
    assert "no index at" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_older_index_gets_its_lexical_rows_rebuilt_on_open(indexed, version):
    photos, db = indexed
    gone = "DROP TABLE photo_terms" if version == "1" else "UPDATE photo_terms SET caption = 'old words'"
    sql(db, gone, f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")
    with Store(db) as s:
        assert s.get_meta("schema_version") == "3"
        assert set(s.match_terms("red")) == {image_id_in(s, photos / "p0.png")} and not s.match_terms("old")
    assert check(db).issues == []
