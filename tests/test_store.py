"""Store: exact search equals numpy brute force; SQLite stays the source of truth for FAISS."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.errors import EmptyIndexError, EncoderMismatchError, StoreError
from retrieval.store import ImageRecord, Store


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: Store, n: int, dim: int = 16, seed: int = 0) -> tuple[list[int], np.ndarray]:
    store.bind_encoder("fake", "fake:1", dim)
    folder = store.add_folder("/photos")
    vecs = unit(np.random.default_rng(seed), n, dim)
    recs = [ImageRecord(path=f"/photos/{i}.jpg", size=i, mtime_ns=i, hash=f"h{i}") for i in range(n)]
    ids = store.add_images(folder, recs, vecs)
    return ids, vecs


def test_search_equals_numpy_brute_force(tmp_path):
    store = Store(tmp_path / "db")
    ids, vecs = fill(store, 300)
    queries = unit(np.random.default_rng(1), 20, 16)
    scores, found = store.search_images(queries, k=10)
    sims = queries @ vecs.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found, np.asarray(ids)[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5, atol=1e-6)


def test_index_is_rebuilt_from_sqlite_when_faiss_file_lags(tmp_path):
    store = Store(tmp_path / "db")
    ids, vecs = fill(store, 50)
    store.save_indexes()
    # a later commit that never reached the FAISS file (as after a crash mid-index)
    more = unit(np.random.default_rng(5), 5, 16)
    new_ids = store.add_images(1, [ImageRecord(f"/photos/x{i}.jpg", 1, 1, f"x{i}") for i in range(5)], more)
    store.close()

    reopened = Store(tmp_path / "db", create=False)
    scores, found = reopened.search_images(more, k=1)
    assert found[:, 0].tolist() == new_ids
    assert reopened.index("images").ntotal == 55


def test_saved_index_is_loaded_not_rebuilt(tmp_path, monkeypatch):
    store = Store(tmp_path / "db")
    fill(store, 20)
    store.save_indexes()
    side = json.loads((tmp_path / "db" / "images.json").read_text())
    assert side["count"] == 20 and side["generation"] == store.generation
    store.close()
    reopened = Store(tmp_path / "db")
    monkeypatch.setattr(reopened, "_all_vectors", lambda kind: pytest.fail("rebuilt instead of loading"))
    assert reopened.index("images").ntotal == 20


def test_removed_images_leave_the_index(tmp_path):
    store = Store(tmp_path / "db")
    ids, vecs = fill(store, 10)
    store.remove_images(ids[:3])
    _, found = store.search_images(vecs[:3], k=10)
    assert not set(found.ravel().tolist()) & set(ids[:3])
    assert store.count_images() == 7


def test_encoder_mismatch_is_a_clear_error(tmp_path):
    store = Store(tmp_path / "db")
    fill(store, 3)
    with pytest.raises(EncoderMismatchError, match="--rebuild"):
        store.bind_encoder("other", "other:2", 16)


def test_missing_index_and_empty_index(tmp_path):
    with pytest.raises(StoreError, match="no index"):
        Store(tmp_path / "nothing", create=False)
    store = Store(tmp_path / "db")
    with pytest.raises(EmptyIndexError):
        store.search_images(np.zeros((1, 4), np.float32), 3)


def test_second_writer_is_refused_until_the_first_releases(tmp_path):
    a, b = Store(tmp_path / "db"), Store(tmp_path / "db")
    a.acquire_writer_lock()
    with pytest.raises(StoreError, match="another imgsearch indexer"):
        b.acquire_writer_lock()
    a.release_writer_lock()
    b.acquire_writer_lock()
    b.release_writer_lock()


def test_captions_search_and_text_vector_reuse(tmp_path):
    store = Store(tmp_path / "db")
    ids, _ = fill(store, 3)
    vecs = unit(np.random.default_rng(2), 2, 16)
    store.add_captions([(ids[0], "a red ball", "sidecar"), (ids[1], "a blue cup", "manifest")], vecs)
    scores, found = store.search_captions(vecs[1:], k=1)
    cap = store.captions(found[0])[int(found[0, 0])]
    assert (cap.text, cap.image_id, cap.source) == ("a blue cup", ids[1], "manifest")
    reused = store.caption_vectors_for_texts(["a red ball", "unknown"])
    assert list(reused) == ["a red ball"]
    np.testing.assert_allclose(reused["a red ball"], vecs[0])


# -- region features (int8 with one scale per token) -------------------------------------------

def fake_regions(n: int, tokens: int = 49, channels: int = 320, seed: int = 0) -> np.ndarray:
    """float16 (n, R, C) with very different magnitudes per token, and one all-zero token."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-3, 2, size=(n, tokens, 1))
    r = (rng.normal(size=(n, tokens, channels)) * scale).astype(np.float16)
    r[0, 0] = 0
    return r


def test_regions_round_trip_within_one_quantisation_step(tmp_path):
    store = Store(tmp_path / "db")
    store.bind_encoder("fake", "fake:1", 16, region_key="fake-regions")
    folder = store.add_folder("/photos")
    recs = [ImageRecord(f"/photos/{i}.jpg", i, i, f"h{i}") for i in range(6)]
    regions = fake_regions(4)
    ids = store.add_images(folder, recs[:4], unit(np.random.default_rng(0), 4, 16), regions)
    plain = store.add_images(folder, recs[4:], unit(np.random.default_rng(1), 2, 16))  # no regions

    ask = [ids[2], 999_999, ids[0], plain[0], ids[3], ids[1], ids[2]]
    got, found = store.get_regions(ask, "fake-regions")
    assert got.dtype == np.float32 and got.shape == (7, 49, 320)
    assert found.dtype == bool and found.tolist() == [True, False, True, False, True, True, True]
    assert not got[~found].any()  # not found -> zeros
    x = regions.astype(np.float32)[[2, 0, 3, 1, 2]]
    s = np.abs(x).max(axis=2, keepdims=True)
    err = np.abs(got[found] - x)
    assert (err <= s / 127 * (1 + 1e-3) + 1e-7).all()
    assert (err <= s / 254 * (1 + 1e-3) + 1e-7).all()  # rounding: half a step
    assert not got[2][0].any()  # the all-zero token (regions[0, 0]) stays zero

    info = store.region_info()
    assert info == {"key": "fake-regions", "count": 4, "shape": [49, 320], "bytes_per_image": 49 * 320 + 49 * 4,
                    "bytes": 4 * (49 * 320 + 49 * 4)}

    other, found = store.get_regions(ids, "another-extractor")
    assert not found.any() and not other.any() and len(other) == 4
    empty, found = store.get_regions([], "fake-regions")
    assert empty.shape == (0, 49, 320) and found.shape == (0,)


def test_regions_follow_their_images_and_a_new_key_drops_them(tmp_path):
    store = Store(tmp_path / "db")
    store.bind_encoder("fake", "fake:1", 16)
    folder = store.add_folder("/photos")
    vecs = unit(np.random.default_rng(0), 3, 16)
    recs = [ImageRecord(f"/photos/{i}.jpg", i, i, f"h{i}") for i in range(3)]
    with pytest.raises(StoreError, match="bind_regions"):
        store.add_images(folder, recs, vecs, fake_regions(3, 4, 8))
    assert store.count_images() == 0  # nothing half-written
    assert store.bind_regions("k1") is False
    ids = store.add_images(folder, recs, vecs, fake_regions(3, 4, 8))
    with pytest.raises(StoreError, match="shape"):
        store.add_images(folder, [ImageRecord("/photos/x.jpg", 1, 1, "x")], vecs[:1], fake_regions(1, 5, 8))
    with pytest.raises(ValueError, match="one region array per record"):
        store.add_images(folder, [ImageRecord("/photos/x.jpg", 1, 1, "x")], vecs[:1], fake_regions(2, 4, 8))

    dup = store.copy_image(ids[0], folder, ImageRecord("/photos/dup.jpg", 0, 0, "h0"))
    a, found = store.get_regions([ids[0], dup], "k1")
    assert found.all()
    np.testing.assert_array_equal(a[0], a[1])
    # re-adding an image at the same path replaces its regions, removing an image drops them
    new = store.add_images(folder, [recs[1]], vecs[1:2], fake_regions(1, 4, 8, seed=5))
    store.remove_images([ids[2]])
    _, found = store.get_regions([ids[1], new[0], ids[2]], "k1")
    assert found.tolist() == [False, True, False]
    assert store.region_info()["count"] == 3  # ids[0], dup, new

    gen = store.generation
    assert store.bind_regions("k1") is False and store.region_info()["count"] == 3
    assert store.bind_regions("k2") is True  # another extractor: the old regions are derived data, dropped
    assert store.region_info() == {"key": "k2", "count": 0, "shape": None, "bytes_per_image": None, "bytes": 0}
    assert store.generation == gen  # no vector changed
    assert store.count_images() == 3  # ids[0], dup, new (ids[1] replaced, ids[2] removed)
    got, found = store.get_regions([ids[0]], "k2")
    assert not found.any() and got.shape == (1, 0, 0)  # nothing under k2 yet: no shape to give


def test_get_regions_of_many_ids_in_the_order_asked(tmp_path):
    store = Store(tmp_path / "db")
    store.bind_encoder("fake", "fake:1", 4, region_key="k")
    folder = store.add_folder("/photos")
    n = 1000
    regions = fake_regions(n, 2, 3)
    ids = store.add_images(folder, [ImageRecord(f"/p/{i}.jpg", i, i, f"h{i}") for i in range(n)],
                           unit(np.random.default_rng(0), n, 4), regions)
    order = np.random.default_rng(1).permutation(n)
    got, found = store.get_regions([ids[i] for i in order], "k")
    assert found.all()
    x = regions.astype(np.float32)[order]
    assert (np.abs(got - x) <= np.abs(x).max(axis=2, keepdims=True) / 127 + 1e-6).all()


def test_non_finite_regions_are_clamped_not_stored_as_nan(tmp_path):
    store = Store(tmp_path / "db")
    store.bind_encoder("fake", "fake:1", 4, region_key="k")
    r = np.ones((1, 2, 3), np.float16)
    r[0, 0, 0], r[0, 1, 1] = np.inf, np.nan
    ids = store.add_images(store.add_folder("/p"), [ImageRecord("/p/a.jpg", 1, 1, "a")],
                           unit(np.random.default_rng(0), 1, 4), r)
    got, found = store.get_regions(ids, "k")
    assert found.all() and np.isfinite(got).all() and got[0, 1, 1] == 0


def test_old_database_without_regions_table_opens_and_searches(tmp_path):
    import sqlite3

    store = Store(tmp_path / "db")
    ids, vecs = fill(store, 10)
    store.save_indexes()
    store.close()
    with sqlite3.connect(tmp_path / "db" / "imgsearch.sqlite") as db:
        db.execute("DROP TABLE regions")
    reopened = Store(tmp_path / "db", create=False)
    _, found = reopened.search_images(vecs[:1], k=1)
    assert found[0, 0] == ids[0]
    assert reopened.region_info()["count"] == 0 and reopened.region_key is None
    got, ok = reopened.get_regions(ids, "fake-regions")
    assert not ok.any()
    report = reopened.check()
    assert report.ok and {i.kind for i in report.issues} == {"missing_file"} and report.regions == 0
    # the index can then start storing regions
    reopened.bind_regions("fake-regions")
    new = reopened.add_images(1, [ImageRecord("/photos/new.jpg", 1, 1, "new")], vecs[:1], fake_regions(1, 2, 3))
    assert reopened.get_regions(new, "fake-regions")[1].all()
