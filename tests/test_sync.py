"""Incremental sync: what is embedded, reused, moved, removed and skipped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FakeEncoder, make_photo
from indexer.sync import FolderError, Indexer
from retrieval.images import load_image_and_info
from retrieval.store import Store


def index(encoder, db: Path, folder: Path):
    store = Store(db)
    try:
        return Indexer(encoder, store, batch_size=4, show_progress=False).sync(str(folder)), store
    finally:
        store.close()


def paths_in(store: Store) -> set[str]:
    return {os.path.basename(p) for p in store.file_states(1)}


def test_first_run_indexes_everything_second_run_embeds_nothing(fake_encoder, photo_dir, tmp_path):
    report, store = index(fake_encoder, tmp_path / "db", photo_dir)
    assert (report.added, report.skipped) == (6, [])
    assert fake_encoder.images_embedded == 6
    again, store = index(fake_encoder, tmp_path / "db", photo_dir)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 6)
    assert fake_encoder.images_embedded == 6  # nothing re-embedded
    assert store.count_images() == 6


def test_unchanged_files_are_not_even_opened(fake_encoder, photo_dir, tmp_path, monkeypatch):
    index(fake_encoder, tmp_path / "db", photo_dir)
    import indexer.sync as sync

    monkeypatch.setattr(sync, "file_hash", lambda data: pytest.fail("hashed an unchanged file"))
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert report.unchanged == 6


def test_moved_and_renamed_files_reuse_their_vectors(fake_encoder, photo_dir, tmp_path):
    _, store = index(fake_encoder, tmp_path / "db", photo_dir)
    before = Store(tmp_path / "db")
    old_id = before.image_by_path(str(photo_dir / "a.jpg")).id
    old_vec = before.image_vectors([old_id])[0]
    before.close()

    (photo_dir / "moved").mkdir()
    shutil.move(photo_dir / "a.jpg", photo_dir / "moved" / "renamed.jpg")
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert (report.moved, report.added, report.removed) == (1, 0, 0)
    assert fake_encoder.images_embedded == 6

    store = Store(tmp_path / "db")
    row = store.image_by_path(str(photo_dir / "moved" / "renamed.jpg"))
    assert row is not None and row.id == old_id
    np.testing.assert_array_equal(store.image_vectors([row.id])[0], old_vec)
    assert store.image_by_path(str(photo_dir / "a.jpg")) is None
    _, ids = store.search_images(old_vec[None], k=1)
    assert ids[0, 0] == old_id


def test_duplicates_reuse_the_stored_vector(fake_encoder, photo_dir, tmp_path):
    index(fake_encoder, tmp_path / "db", photo_dir)
    shutil.copy(photo_dir / "b.png", photo_dir / "copy_of_b.png")
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert (report.duplicates, report.added) == (1, 0)
    assert fake_encoder.images_embedded == 6
    store = Store(tmp_path / "db")
    a = store.image_by_path(str(photo_dir / "b.png"))
    b = store.image_by_path(str(photo_dir / "copy_of_b.png"))
    np.testing.assert_array_equal(store.image_vectors([a.id]), store.image_vectors([b.id]))


def test_deleted_files_leave_the_index_and_search(fake_encoder, photo_dir, tmp_path):
    index(fake_encoder, tmp_path / "db", photo_dir)
    store = Store(tmp_path / "db")
    gone = store.image_by_path(str(photo_dir / "sub" / "e.jpg"))
    vec = store.image_vectors([gone.id])[0]
    store.close()
    (photo_dir / "sub" / "e.jpg").unlink()
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert report.removed == 1
    store = Store(tmp_path / "db")
    assert store.count_images() == 5
    _, ids = store.search_images(vec[None], k=5)
    assert gone.id not in ids[0].tolist()


def test_changed_file_is_re_embedded_touched_file_is_not(fake_encoder, photo_dir, tmp_path):
    index(fake_encoder, tmp_path / "db", photo_dir)
    make_photo(photo_dir / "b.png", seed=99)  # new content, same name
    os.utime(photo_dir / "c.webp", ns=(1, 1))  # same content, new mtime
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert (report.updated, report.touched, report.added) == (1, 1, 0)
    assert fake_encoder.images_embedded == 7
    again, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert again.unchanged == 6 and fake_encoder.images_embedded == 7


def test_bad_files_are_skipped_reported_and_not_retried(fake_encoder, photo_dir, tmp_path):
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "random.jpg").write_bytes(os.urandom(2000))
    (photo_dir / "notes.png").write_text("this is text, not a PNG")
    good = (photo_dir / "a.jpg").read_bytes()
    (photo_dir / "truncated.jpg").write_bytes(good[: len(good) // 2])
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    skipped = {os.path.basename(p): r for p, r in report.skipped}
    assert set(skipped) == {"empty.jpg", "random.jpg", "notes.png", "truncated.jpg"}
    assert skipped["empty.jpg"] == "empty file"
    assert "not an image" in skipped["notes.png"]
    assert report.added == 6
    assert "4 skipped" in report.summary()
    again, store = index(fake_encoder, tmp_path / "db", photo_dir)
    assert len(again.skipped) == 4 and fake_encoder.images_embedded == 6
    # a fixed file is picked up on the next run and leaves the skipped list
    (photo_dir / "random.jpg").unlink()
    make_photo(photo_dir / "random.jpg", seed=42)
    third, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert third.added == 1 and len(third.skipped) == 3
    assert str(photo_dir / "random.jpg") not in Store(tmp_path / "db").skipped()


def test_captions_from_sidecar_manifest_and_their_changes(fake_encoder, photo_dir, tmp_path):
    (photo_dir / "a.txt").write_text("a sidecar caption\n\nsecond line caption\n")
    (photo_dir / "captions.jsonl").write_text(
        '{"image": "b.png", "captions": ["manifest one", "manifest two"]}\n'
        'not json\n'
        '{"image": "sub/e.jpg", "captions": ["in a subfolder"]}\n')
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert report.captions_added == 5 + 2  # sidecar and manifest, plus the folder caption "sub" of sub/e.jpg, sub/f.tiff
    assert any("captions.jsonl:2" in p for p, _ in report.skipped)
    store = Store(tmp_path / "db")
    a = store.image_by_path(str(photo_dir / "a.jpg"))
    assert sorted(c.text for c in store.captions_of([a.id])[a.id]) == ["a sidecar caption", "second line caption"]
    store.close()

    texts_before = fake_encoder.texts_embedded
    (photo_dir / "a.txt").write_text("a sidecar caption\nan edited caption\n")
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert (report.captions_added, report.captions_removed) == (1, 1)
    assert fake_encoder.texts_embedded == texts_before + 1  # only the new text was embedded
    store = Store(tmp_path / "db")
    assert sorted(c.text for c in store.captions_of([a.id])[a.id]) == ["a sidecar caption", "an edited caption"]
    _, ids = store.search_captions(fake_encoder.encode_texts(["in a subfolder"]), k=1)
    cap = store.captions(ids[0])[int(ids[0, 0])]
    assert store.images([cap.image_id])[cap.image_id].path == str(photo_dir / "sub" / "e.jpg")


def test_interrupted_run_resumes_without_re_embedding(fake_encoder, photo_dir, tmp_path):
    for i in range(10):
        make_photo(photo_dir / f"more_{i}.png", seed=100 + i)

    class Crash(Exception):
        pass

    calls = {"n": 0}
    real = fake_encoder.encode_pixels

    def crashing(pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash()
        return real(pixels)

    fake_encoder.encode_pixels = crashing
    with pytest.raises(Crash):
        index(fake_encoder, tmp_path / "db", photo_dir)
    committed = Store(tmp_path / "db").count_images()
    assert committed == 8  # two batches of 4 were committed before the crash
    fake_encoder.encode_pixels = real
    embedded_before = fake_encoder.images_embedded
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert report.added == 16 - committed and report.unchanged == committed
    assert fake_encoder.images_embedded - embedded_before == 16 - committed
    store = Store(tmp_path / "db")
    assert store.count_images() == 16 and store.index("images").ntotal == 16


def test_symlink_loop_and_missing_folder(fake_encoder, photo_dir, tmp_path):
    os.symlink(photo_dir, photo_dir / "sub" / "loop")
    report, store = index(fake_encoder, tmp_path / "db", photo_dir)
    assert report.added == 6  # the loop is walked once, not forever
    with pytest.raises(FolderError, match="folder not found"):
        index(fake_encoder, tmp_path / "db", tmp_path / "nope")


def test_unicode_and_spaces_in_names(fake_encoder, tmp_path):
    d = tmp_path / "фото с пробелами"
    make_photo(d / "café au lait 😀.jpg", seed=1)
    report, _ = index(fake_encoder, tmp_path / "db", d)
    assert report.added == 1
    assert Store(tmp_path / "db").image_by_path(str(d / "café au lait 😀.jpg")) is not None


def test_rebuild_clears_the_index_under_the_lock(fake_encoder, photo_dir, tmp_path):
    from retrieval.errors import StoreError

    index(fake_encoder, tmp_path / "db", photo_dir)
    store = Store(tmp_path / "db")
    with pytest.raises(StoreError, match="writer lock"):
        store.clear()
    store.acquire_writer_lock()
    store.clear()
    assert store.count_images() == 0 and store.encoder_info is None
    assert not (tmp_path / "db" / "images.faiss").exists()
    store.release_writer_lock()
    report, _ = index(fake_encoder, tmp_path / "db", photo_dir)
    assert report.added == 6 and fake_encoder.images_embedded == 12


# -- region features for the reranker ----------------------------------------------------------

class RegionEncoder(FakeEncoder):
    """FakeEncoder plus region tokens: the 16 2x2 patches of its 8x8 pixels, 12 values each."""

    region_key = "fake-regions"

    def __init__(self) -> None:
        super().__init__()
        self.region_batches = 0

    @staticmethod
    def regions_of(pixels: torch.Tensor) -> np.ndarray:
        n = len(pixels)
        patches = pixels.reshape(n, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, 16, 12)
        return (patches * 3).half().numpy()

    def encode_pixels_with_regions(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        self.region_batches += 1
        return self.encode_pixels(pixels), self.regions_of(pixels)


def expected_regions(encoder: RegionEncoder, path: Path) -> np.ndarray:
    image, _ = load_image_and_info(str(path), target_size=encoder.image_size)
    return encoder.regions_of(encoder.preprocess(image)[None])[0].astype(np.float32)


def regions_of(db: Path, paths, key: str = "fake-regions") -> tuple[np.ndarray, np.ndarray]:
    with Store(db) as store:
        return store.get_regions([store.image_by_path(str(p)).id for p in paths], key)


def test_every_indexed_image_gets_its_regions(photo_dir, tmp_path):
    enc = RegionEncoder()
    report, _ = index(enc, tmp_path / "db", photo_dir)
    assert report.added == 6 and enc.region_batches == 2  # batch_size 4: same forward pass as the vectors
    paths = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    got, found = regions_of(tmp_path / "db", paths)
    assert found.all() and got.shape == (6, 16, 12)
    for g, p in zip(got, paths):
        x = expected_regions(enc, p)
        assert (np.abs(g - x) <= np.abs(x).max(axis=1, keepdims=True) / 127 + 1e-3).all()
    with Store(tmp_path / "db") as store:
        info = store.region_info()
        assert (info["key"], info["count"], info["bytes_per_image"]) == ("fake-regions", 6, 16 * 12 + 16 * 4)
        assert store.check().regions == 6


def test_moved_and_duplicated_files_keep_their_regions_without_re_embedding(photo_dir, tmp_path, monkeypatch):
    enc = RegionEncoder()
    index(enc, tmp_path / "db", photo_dir)
    before, _ = regions_of(tmp_path / "db", [photo_dir / "a.jpg", photo_dir / "b.png"])

    monkeypatch.setattr(enc, "encode_pixels_with_regions", lambda p: pytest.fail("re-embedded a known photo"))
    monkeypatch.setattr(enc, "encode_pixels", lambda p: pytest.fail("re-embedded a known photo"))
    (photo_dir / "moved").mkdir()
    shutil.move(photo_dir / "a.jpg", photo_dir / "moved" / "renamed.jpg")
    shutil.copy(photo_dir / "b.png", photo_dir / "copy_of_b.png")
    report, _ = index(enc, tmp_path / "db", photo_dir)
    assert (report.moved, report.duplicates, report.added, report.embedded) == (1, 1, 0, 0)

    after, found = regions_of(tmp_path / "db", [photo_dir / "moved" / "renamed.jpg", photo_dir / "copy_of_b.png"])
    assert found.all()
    np.testing.assert_array_equal(after, before)
    with Store(tmp_path / "db") as store:
        assert store.region_info()["count"] == 7


def test_deleted_files_and_clear_drop_their_regions(photo_dir, tmp_path):
    enc = RegionEncoder()
    index(enc, tmp_path / "db", photo_dir)
    with Store(tmp_path / "db") as store:
        gone = store.image_by_path(str(photo_dir / "sub" / "e.jpg")).id
    (photo_dir / "sub" / "e.jpg").unlink()
    report, _ = index(enc, tmp_path / "db", photo_dir)
    assert report.removed == 1
    with Store(tmp_path / "db") as store:
        assert not store.get_regions([gone], "fake-regions")[1].any()
        assert store.region_info()["count"] == 5
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM regions WHERE image_id = ?", (gone,)).scalar() == 0
        store.acquire_writer_lock()
        store.clear()
        store.release_writer_lock()
        assert store.region_info() == {"key": None, "count": 0, "shape": None, "bytes_per_image": None, "bytes": 0}
    report, _ = index(enc, tmp_path / "db", photo_dir)  # a rebuild stores them again
    with Store(tmp_path / "db") as store:
        assert store.region_info()["count"] == report.added == 5


def test_check_finds_and_repairs_an_orphan_region_row(photo_dir, tmp_path):
    enc = RegionEncoder()
    index(enc, tmp_path / "db", photo_dir)
    with Store(tmp_path / "db") as store:
        assert store.check().issues == []
        gen = store.generation
        with store.engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("INSERT INTO regions (image_id, tokens, channels, data) VALUES (9999, 1, 2, ?)",
                                 (b"\0" * 6,))
        report = store.check()
        assert [(i.kind, i.examples) for i in report.issues] == [("orphan_region", [9999])] and not report.ok
        fixed = store.check(repair=True)
        assert fixed.repaired == ["dropped 1 region row(s) of no image"] and fixed.remaining == [] and fixed.ok
        assert store.generation == gen  # no vector changed: the FAISS files stay current
        assert store.check().issues == [] and store.region_info()["count"] == 6


def test_images_without_regions_are_not_a_check_issue(photo_dir, tmp_path):
    index(FakeEncoder(), tmp_path / "db", photo_dir)  # an encoder without regions
    make_photo(photo_dir / "new.png", seed=50)
    index(RegionEncoder(), tmp_path / "db", photo_dir)  # same fingerprint, now with regions
    with Store(tmp_path / "db") as store:
        assert store.region_info()["count"] == 1
        report = store.check()
        assert report.issues == [] and report.regions == 1


def test_regions_can_be_turned_off(photo_dir, tmp_path):
    enc = RegionEncoder()
    store = Store(tmp_path / "db")
    report = Indexer(enc, store, batch_size=4, show_progress=False, regions=False).sync(str(photo_dir))
    assert report.added == 6 and enc.region_batches == 0 and enc.images_embedded == 6
    assert store.region_info() == {"key": None, "count": 0, "shape": None, "bytes_per_image": None, "bytes": 0}
    store.close()


def test_a_new_region_key_drops_the_old_regions(photo_dir, tmp_path):
    index(RegionEncoder(), tmp_path / "db", photo_dir)
    enc = RegionEncoder()
    enc.region_key = "fake-regions-v2"
    make_photo(photo_dir / "new.png", seed=50)
    index(enc, tmp_path / "db", photo_dir)
    _, old = regions_of(tmp_path / "db", [photo_dir / "a.jpg", photo_dir / "new.png"], "fake-regions")
    _, new = regions_of(tmp_path / "db", [photo_dir / "a.jpg", photo_dir / "new.png"], "fake-regions-v2")
    assert old.tolist() == [False, False] and new.tolist() == [False, True]


def test_interrupted_run_never_leaves_an_image_without_its_regions(photo_dir, tmp_path):
    for i in range(10):
        make_photo(photo_dir / f"more_{i}.png", seed=100 + i)
    enc = RegionEncoder()
    real = enc.encode_pixels_with_regions

    def crashing(pixels):
        if enc.region_batches == 2:
            raise KeyboardInterrupt()
        return real(pixels)

    enc.encode_pixels_with_regions = crashing
    with pytest.raises(KeyboardInterrupt):
        index(enc, tmp_path / "db", photo_dir)
    with Store(tmp_path / "db") as store:
        assert store.count_images() == 8 and store.region_info()["count"] == 8
    enc.encode_pixels_with_regions = real
    index(enc, tmp_path / "db", photo_dir)
    with Store(tmp_path / "db") as store:
        ids = list(store.file_states(1).values())
        assert len(ids) == 16 and store.get_regions([s.id for s in ids], "fake-regions")[1].all()
