"""Search filters in the store: date taken and folder, and filtered vector search (exact and HNSW)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FakeEncoder, make_photo, with_date
from indexer.sync import Indexer
from retrieval.errors import FilterRangeError, ImgSearchError, UnknownFolderError
from retrieval.store import ImageRecord, IndexParams, Store

D = dt.date
# name -> EXIF DateTimeOriginal (None: no EXIF date)
PHOTOS = {
    "2019 Kyoto/temple.jpg": "2019:04:01 00:00:00",
    "2019 Kyoto/garden.jpg": "2019:04:30 23:59:59",
    "2019 Kyoto/deep/koi.jpg": "2019:05:01 00:00:00",
    "2018/old.jpg": "2018:12:31 23:59:59",
    "a/b/x.jpg": "2020:01:01 12:00:00",
    "a/bc/y.jpg": "2020:01:02 12:00:00",
    "nodate/plain.jpg": None,
    "nodate/also.jpg": None,
}


def write_photo(path: Path, seed: int, taken: str | None) -> None:
    """A distinct small JPEG, with EXIF DateTimeOriginal when ``taken`` is given."""
    with_date(make_photo(path, seed, size=(32, 24), fmt="JPEG"), path, taken)


def sync(encoder: FakeEncoder, store: Store, root: Path) -> None:
    Indexer(encoder, store, batch_size=8, show_progress=False).sync(str(root))


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """An indexed library of PHOTOS; yields (store, root, name -> id)."""
    base = tmp_path_factory.mktemp("filters")
    root = base / "lib"
    for i, (name, taken) in enumerate(PHOTOS.items()):
        write_photo(root / name, i, taken)
    store = Store(base / "db")
    sync(FakeEncoder(), store, root)
    ids = {name: store.image_by_path(str(root / name)).id for name in PHOTOS}
    yield store, root, ids
    store.close()


def names(ids_by_name: dict[str, int], ids) -> set[str]:
    back = {v: k for k, v in ids_by_name.items()}
    return {back[int(i)] for i in ids}


def test_no_filter_is_none(lib):
    store, _, _ = lib
    assert store.filter_ids() is None
    assert store.filter_ids(folders=[]) is None


def test_date_range_is_inclusive_of_both_days(lib):
    store, _, ids = lib
    got = store.filter_ids(taken_after=D(2019, 4, 1), taken_before=D(2019, 4, 30))
    assert got.dtype == np.int64 and list(got) == sorted(got)
    assert names(ids, got) == {"2019 Kyoto/temple.jpg", "2019 Kyoto/garden.jpg"}
    assert names(ids, store.filter_ids(taken_after=D(2019, 5, 1))) == {
        "2019 Kyoto/deep/koi.jpg", "a/b/x.jpg", "a/bc/y.jpg"}
    assert names(ids, store.filter_ids(taken_before=D(2018, 12, 31))) == {"2018/old.jpg"}
    assert names(ids, store.filter_ids(taken_after=D(2020, 1, 2), taken_before=D(2020, 1, 2))) == {"a/bc/y.jpg"}
    assert len(store.filter_ids(taken_after=D(2020, 1, 3))) == 0


def test_photos_without_a_date_never_match_a_date_filter(lib):
    store, _, ids = lib
    everything_dated = store.filter_ids(taken_after=D(1900, 1, 1), taken_before=D(2100, 1, 1))
    assert names(ids, everything_dated) == {n for n, t in PHOTOS.items() if t is not None}


def test_folder_filter_matches_path_components(lib):
    store, root, ids = lib
    assert names(ids, store.filter_ids(folders=[str(root / "2019 Kyoto")])) == {
        "2019 Kyoto/temple.jpg", "2019 Kyoto/garden.jpg", "2019 Kyoto/deep/koi.jpg"}
    assert names(ids, store.filter_ids(folders=[str(root / "a" / "b")])) == {"a/b/x.jpg"}  # not a/bc
    assert names(ids, store.filter_ids(folders=[str(root / "a" / "b") + "/"])) == {"a/b/x.jpg"}
    assert names(ids, store.filter_ids(folders=[str(root / "a" / "b"), str(root / "a" / "bc")])) == {
        "a/b/x.jpg", "a/bc/y.jpg"}
    both = store.filter_ids(folders=[str(root), str(root / "a")])  # nested folders: each photo once
    assert sorted(both.tolist()) == sorted(ids.values())
    assert len(store.filter_ids(folders=[str(root / "2019 Kyoto" / "deep" / "empty")])) == 0


def test_folder_and_date_filters_combine(lib):
    store, root, ids = lib
    got = store.filter_ids(folders=[str(root / "2019 Kyoto")], taken_after=D(2019, 4, 15))
    assert names(ids, got) == {"2019 Kyoto/garden.jpg", "2019 Kyoto/deep/koi.jpg"}
    assert len(store.filter_ids(folders=[str(root / "nodate")], taken_before=D(2100, 1, 1))) == 0


def test_resolved_folder_matches_a_library_indexed_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    write_photo(real / "a/b/x.jpg", 1, None)
    write_photo(real / "c/y.jpg", 2, None)
    link = tmp_path / "link"
    link.symlink_to(real)
    with Store(tmp_path / "db") as store:
        sync(FakeEncoder(), store, link)  # stored under the link's spelling
        x = store.image_by_path(str(link / "a/b/x.jpg")).id
        assert store.filter_ids(folders=[str(real / "a")]).tolist() == [x]
        assert store.filter_ids(folders=[str(link / "a")]).tolist() == [x]


@pytest.mark.parametrize("folder", ["/nowhere/at/all", "PARENT", "SIBLING"])
def test_unknown_folder_is_a_one_line_error(lib, folder):
    store, root, _ = lib
    folder = {"PARENT": str(root.parent), "SIBLING": str(root) + "x"}.get(folder, folder)
    with pytest.raises(UnknownFolderError) as e:
        store.filter_ids(folders=[folder])
    msg = str(e.value)
    assert isinstance(e.value, ImgSearchError) and "\n" not in msg
    assert folder in msg and "imgsearch info" in msg


def test_inverted_date_range_is_a_one_line_error(lib):
    store, _, _ = lib
    with pytest.raises(FilterRangeError) as e:
        store.filter_ids(taken_after=D(2020, 1, 2), taken_before=D(2020, 1, 1))
    assert isinstance(e.value, ImgSearchError) and not isinstance(e.value, ValueError)
    assert "\n" not in str(e.value) and "2020-01-02" in str(e.value)


def test_filtered_search_returns_k_matching_photos(lib):
    store, root, ids = lib
    query = store.image_vectors([ids["a/b/x.jpg"]])  # closest to a photo outside the filter
    _, top = store.search_images(query, 3)
    assert top[0][0] == ids["a/b/x.jpg"]
    kyoto = store.filter_ids(folders=[str(root / "2019 Kyoto")])
    _, got = store.search_images(query, 2, ids=kyoto)
    assert got.shape == (1, 2) and set(got[0]) <= set(kyoto.tolist())
    scores, got = store.search_images(query, 10, ids=kyoto)
    assert sorted(got[0].tolist()) == sorted(kyoto.tolist())  # all 3, no -1 padding
    assert list(scores[0]) == sorted(scores[0], reverse=True)
    vecs = store.image_vectors(kyoto.tolist())
    assert got[0][0] == kyoto[int(np.argmax(vecs @ query[0]))]
    _, none = store.search_images(query, 10, ids=np.zeros(0, np.int64))
    assert none.shape == (1, 0)


def test_filters_follow_new_and_moved_photos(tmp_path):
    root = tmp_path / "lib"
    write_photo(root / "a/b/x.jpg", 1, "2020:01:01 12:00:00")
    write_photo(root / "a/bc/y.jpg", 2, "2020:01:02 12:00:00")
    enc = FakeEncoder()
    with Store(tmp_path / "db") as store:
        sync(enc, store, root)
        ab = str(root / "a" / "b")
        assert len(store.filter_ids(folders=[ab])) == 1
        assert len(store.filter_ids(taken_after=D(2021, 1, 1))) == 0  # dates now cached
        shutil.move(root / "a/bc/y.jpg", root / "a/b/y.jpg")  # a move keeps the vector: no re-embed
        write_photo(root / "a/b/z.jpg", 3, "2021:06:01 08:00:00")
        sync(enc, store, root)
        got = store.filter_ids(folders=[ab])
        assert {store.images(got.tolist())[i].path for i in got.tolist()} == {
            str(root / "a/b" / n) for n in ("x.jpg", "y.jpg", "z.jpg")}
        new = store.filter_ids(taken_after=D(2021, 1, 1))
        assert [store.images(new.tolist())[int(new[0])].path] == [str(root / "a/b/z.jpg")]


# -- exact and HNSW indexes agree on filtered search --------------------------------------------

N, DIM = 400, 16


@pytest.fixture(scope="module")
def synthetic():
    """N random unit vectors with one synthetic date each (one a day from 2020-01-01; every 10th undated)."""
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    days = [None if i % 10 == 9 else dt.datetime(2020, 1, 1, 12) + dt.timedelta(days=i) for i in range(N)]
    queries = rng.normal(size=(5, DIM)).astype(np.float32)
    return vecs, days, queries


def build_store(path: Path, vecs, days, params: IndexParams) -> tuple[Store, np.ndarray]:
    store = Store(path, index_params=params)
    store.bind_encoder("fake", "fake:1", DIM)
    fid = store.add_folder("/lib")
    recs = [ImageRecord(path=f"/lib/{i // 100}/{i}.jpg", size=1, mtime_ns=1, hash=str(i), taken_at=d)
            for i, d in enumerate(days)]
    return store, np.asarray(store.bulk_add_images(fid, recs, vecs), np.int64)


def brute_force(vecs, row_ids, allowed, queries, k):
    rows = np.flatnonzero(np.isin(row_ids, allowed))
    scores = queries @ vecs[rows].T
    return row_ids[rows][np.argsort(-scores, axis=1)[:, :k]]


@pytest.mark.parametrize("index", ["flat", "hnsw"])
@pytest.mark.parametrize("exact_max, post_max", [(20_000, 2048), (0, 2048), (0, 0)])  # 0, 0: FAISS IDSelector only
def test_exact_and_hnsw_filtered_search_agree_with_brute_force(tmp_path, synthetic, index, exact_max, post_max):
    vecs, days, queries = synthetic
    params = IndexParams(hnsw_threshold=N // 4 if index == "hnsw" else 10 * N, filter_exact_max=exact_max,
                         filter_post_max=post_max)
    store, row_ids = build_store(tmp_path / "db", vecs, days, params)
    with store:
        assert store.index("images").kind == index
        paths: set[str] = set()
        for after, before, folders in ((D(2020, 1, 11), D(2020, 1, 30), None),  # 18 photos (5 %)
                                       (D(2020, 2, 1), D(2020, 11, 30), None),  # ~half
                                       (None, None, ["/lib/2"]), (D(2020, 1, 1), D(2020, 12, 31), ["/lib/0"])):
            allowed = store.filter_ids(taken_after=after, taken_before=before, folders=folders)
            assert 0 < len(allowed) < N
            paths |= {store.index("images").filter_strategy(len(allowed), k) for k in (1, 10, 50)}
            for k in (1, 10, 50):
                scores, got = store.search_images(queries, k, ids=allowed)
                want = brute_force(vecs, row_ids, allowed, queries, k)
                assert got.shape == want.shape == (len(queries), min(k, len(allowed)))
                assert np.array_equal(got, want)
                assert np.isin(got, allowed).all()
                np.testing.assert_allclose(scores, np.take_along_axis(queries @ vecs.T, np.searchsorted(
                    row_ids, got), axis=1), rtol=1e-5, atol=1e-6)
        hnsw_paths = {"post", "selector"} if post_max else {"selector"}
        assert paths == ({"exact"} if exact_max else hnsw_paths if index == "hnsw" else {"selector"})
        if index == "hnsw" and post_max and not exact_max:
            # the photos farthest from a query: too few in one deeper search, so the selector runs after it
            far = row_ids[np.argsort(queries[0] @ vecs.T)[: N // 2]]
            assert store.index("images").filter_strategy(len(far), 10) == "post"
            _, got = store.search_images(queries[:1], 10, ids=far)
            assert np.array_equal(got, brute_force(vecs, row_ids, far, queries[:1], 10))


def test_filtered_search_sees_what_unfiltered_search_sees_after_changes(tmp_path, synthetic):
    vecs, days, queries = synthetic
    params = IndexParams(hnsw_threshold=N // 4, filter_exact_max=0)
    store, row_ids = build_store(tmp_path / "db", vecs[:300], days[:300], params)
    with store:
        store.save_indexes()
        store.search_images(queries, 5)  # the loaded index now follows each commit in place
        fid = store.add_folder("/lib")
        recs = [ImageRecord(path=f"/lib/new/{i}.jpg", size=1, mtime_ns=1, hash=f"n{i}", taken_at=days[i])
                for i in range(300, N)]
        new_ids = store.bulk_add_images(fid, recs, vecs[300:])
        gone = row_ids[:40:2].tolist()  # HNSW tombstones
        store.remove_images(gone)
        assert store.index("images").kind == "hnsw"
        allowed = store.filter_ids(folders=["/lib/0", "/lib/new"])
        assert not set(gone) & set(allowed.tolist()) and set(new_ids) <= set(allowed.tolist())
        _, got = store.search_images(queries, 20, ids=allowed)
        live = store.image_vectors(allowed.tolist())  # SQLite, the truth
        assert np.array_equal(got, allowed[np.argsort(-(queries @ live.T), axis=1)[:, :20]])
        stale = np.asarray(gone + new_ids[:5], np.int64)  # ids read before a delete never come back
        _, got = store.search_images(queries, 10, ids=stale)
        assert got.shape == (len(queries), 5) and set(got.ravel().tolist()) == set(new_ids[:5])


# -- the "date filter at 1M" bench row, at a small size -----------------------------------------

def test_date_filter_bench_row_runs_at_a_small_size(tmp_path):
    from benchmarks.run import BenchConfig, run, table

    cfg = BenchConfig(only=("filter",), dim=16, sizes=(500, 4_000), cache_dir=tmp_path / "cache")
    res = run(cfg, log=lambda _: None)
    rows = res["filter_rows"]
    assert [r["filter"] for r in rows] == ["none", "date 10pct", "date 0_1pct"]
    assert all(r["n"] == 4_000 and r["index"] == "flat" for r in rows)  # the largest size, the store's kind
    assert abs(res["date_filter_10pct_share"] - 0.1) < 0.02 and 0 < res["date_filter_0_1pct_share"] < 0.003
    assert res["date_filter_10pct_recall_at_10_1m"] == res["date_filter_0_1pct_recall_at_10_1m"] == 1.0  # exact
    for key in ("date_filter_unfiltered_p50_ms_1m", "date_filter_10pct_p50_ms_1m", "date_filter_10pct_p95_ms_1m",
                "date_filter_0_1pct_p50_ms_1m", "date_filter_0_1pct_p95_ms_1m"):
        assert isinstance(res[key], float) and res[key] > 0, key
    assert any("date 0_1pct" in line for line in table(res))
