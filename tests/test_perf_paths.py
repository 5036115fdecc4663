"""The fast paths: approximate indexes against exact flat search, tombstoned deletes, the index
type switch, memory-mapped loading, generations that move only with the vectors, and the bench CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.vectors import recall_at, synthetic_vectors
from retrieval.store import INDEX_FLAT, INDEX_HNSW, INDEX_IVF, ImageRecord, IndexParams, Store, VectorIndex

DIM = 32


def exact(xb: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by numpy brute force (the ground truth)."""
    order = np.argsort(-(q @ xb.T), axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.fixture(scope="module")
def data():
    xb = synthetic_vectors(5000, DIM, seed=1)
    q = synthetic_vectors(100, DIM, seed=2)
    ids = np.arange(10, 10 + len(xb), dtype=np.int64) * 3  # ids need not be dense
    return xb, ids, q


@pytest.mark.parametrize("kind", [INDEX_HNSW, INDEX_IVF])
def test_approximate_index_recall_vs_exact_flat(data, kind):
    xb, ids, q = data
    truth = exact(xb, ids, q, 10)
    flat = VectorIndex.build(DIM, ids, xb, kind=INDEX_FLAT)
    np.testing.assert_array_equal(flat.search(q, 10)[1], truth)
    vi = VectorIndex.build(DIM, ids, xb, IndexParams(ivf_nprobe=32), kind=kind)
    assert vi.kind == kind and vi.ntotal == len(xb)
    scores, found = vi.search(q, 10)
    assert recall_at(found, truth, 10) >= 0.95
    # the scores are true inner products of the ids returned
    pos = {int(i): n for n, i in enumerate(ids)}
    expect = np.einsum("qd,qkd->qk", q, xb[[[pos[int(i)] for i in row] for row in found]])
    np.testing.assert_allclose(scores, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", [INDEX_FLAT, INDEX_HNSW, INDEX_IVF])
def test_deleted_ids_never_come_back(data, kind):
    xb, ids, q = data
    vi = VectorIndex.build(DIM, ids, xb, IndexParams(ivf_nprobe=32), kind=kind)
    _, before = vi.search(q, 10)
    gone = np.unique(before[:, :3])  # the best hits of every query
    vi.remove(gone.tolist() + [-5, 999_999_999])  # unknown ids are ignored
    assert vi.ntotal == len(xb) - len(gone)
    if kind == INDEX_HNSW:
        assert vi.deleted == set(gone.tolist())  # tombstones: the graph cannot drop nodes
    _, after = vi.search(q, 10)
    assert not set(after.ravel().tolist()) & set(gone.tolist())
    keep = ~np.isin(ids, gone)
    truth = exact(xb[keep], ids[keep], q, 10)
    assert recall_at(after, truth, 10) >= (1.0 if kind == INDEX_FLAT else 0.95)
    # a re-added tombstoned id cannot be put back into an HNSW graph: the caller must rebuild
    ok = vi.add(gone[:1], xb[:1])
    assert ok == (kind != INDEX_HNSW)


def _fill(store: Store, n: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    store.bind_encoder("fake", "fake:1", DIM)
    folder = store.add_folder("/photos")
    vecs = synthetic_vectors(n, DIM, seed=seed)
    recs = [ImageRecord(path=f"/photos/{seed}-{i}.jpg", size=i, mtime_ns=i, hash=f"h{seed}-{i}") for i in range(n)]
    return store.add_images(folder, recs, vecs), vecs


def test_store_switches_to_hnsw_past_the_threshold_and_back(tmp_path):
    params = IndexParams(hnsw_threshold=300)
    store = Store(tmp_path / "db", index_params=params)
    store.acquire_writer_lock()
    ids, vecs = _fill(store, 200)
    assert store.index("images").kind == INDEX_FLAT
    more, mvecs = _fill(store, 200, seed=1)  # now 400 > 300
    store.save_indexes()
    assert store.index("images").kind == INDEX_HNSW
    side = json.loads((tmp_path / "db" / "images.json").read_text())
    assert side["type"] == INDEX_HNSW and side["count"] == 400
    all_ids, all_vecs = np.asarray(ids + more), np.concatenate([vecs, mvecs])
    q = synthetic_vectors(50, DIM, seed=7)
    _, found = store.search_images(q, 10)
    assert recall_at(found, exact(all_vecs, all_ids, q, 10), 10) >= 0.95
    # deletes: tombstones until there are too many, and never in results
    store.remove_images(more[:30])
    vi = store.index("images")
    assert vi.kind == INDEX_HNSW and len(vi.deleted) == 30 and vi.ntotal == 370
    _, found = store.search_images(mvecs[:30], 5)
    assert not set(found.ravel().tolist()) & set(more[:30])
    store.save_indexes()  # 30/400 < 10 %: kept as tombstones, saved in the sidecar
    assert len(json.loads((tmp_path / "db" / "images.json").read_text())["deleted"]) == 30
    reader = Store(tmp_path / "db", index_params=params)
    _, found2 = reader.search_images(mvecs[:30], 5)
    np.testing.assert_array_equal(found, found2)
    reader.close()
    store.remove_images(more[30:])  # 140 of 200 left: below half the threshold -> exact again
    store.save_indexes()
    vi = store.index("images")
    assert vi.kind == INDEX_FLAT and vi.ntotal == 200 and not vi.deleted
    _, found = store.search_images(q, 10)
    np.testing.assert_array_equal(found, exact(vecs, np.asarray(ids), q, 10))
    store.close()


@pytest.mark.parametrize("kind", [INDEX_FLAT, INDEX_HNSW])
def test_mmap_loaded_index_gives_identical_results(data, kind, tmp_path):
    xb, ids, q = data
    vi = VectorIndex.build(DIM, ids, xb, kind=kind)
    vi.remove(ids[:7].tolist())
    vi.save(tmp_path / "x.faiss")
    mm = VectorIndex.load(tmp_path / "x.faiss", DIM, mmap=True, deleted=vi.deleted)
    assert not mm.mutable and mm.ntotal == vi.ntotal
    s1, i1 = vi.search(q, 10)
    s2, i2 = mm.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2)


def test_store_readers_memory_map_and_writers_do_not(tmp_path):
    store = Store(tmp_path / "db")
    _fill(store, 50)
    store.save_indexes()
    store.close()
    reader = Store(tmp_path / "db", create=False)
    assert not reader.index("images").mutable
    # a commit through a reader with a mapped index still ends with correct results
    ids, vecs = _fill(reader, 5, seed=3)
    _, found = reader.search_images(vecs, 1)
    assert found[:, 0].tolist() == ids
    reader.close()


def test_generation_moves_only_with_vectors_and_indexes_update_in_place(tmp_path, monkeypatch):
    store = Store(tmp_path / "db")
    store.acquire_writer_lock()
    ids, vecs = _fill(store, 40)
    store.save_indexes()
    gen = store.generation
    # bookkeeping that touches no vector keeps the generation (and so the saved FAISS files)
    fid = store.add_folder("/photos")
    store.mark_folder_indexed(fid)
    store.record_skip(fid, "/photos/bad.jpg", "broken")
    store.forget_skips(["/photos/bad.jpg"])
    store.update_file_state(ids[0], size=1, mtime_ns=2)
    assert store.generation == gen
    # vector changes bump it, and the loaded index follows incrementally: no rebuild from SQLite
    store.index("images")
    monkeypatch.setattr(store, "_all_vectors", lambda kind: pytest.fail("rebuilt from SQLite"))
    new, nvecs = _fill(store, 3, seed=9)
    store.remove_images(ids[:2])
    assert store.generation == gen + 2
    _, found = store.search_images(nvecs, 1)
    assert found[:, 0].tolist() == new
    _, found = store.search_images(vecs[:2], 3)
    assert not set(found.ravel().tolist()) & set(ids[:2])
    store.save_indexes()
    side = json.loads((tmp_path / "db" / "images.json").read_text())
    assert side["generation"] == store.generation and side["count"] == 41
    # an untracked transaction may have changed anything: it bumps and drops the loaded indexes
    with store.transaction():
        pass
    assert store.generation == gen + 3 and not store._indexes
    monkeypatch.undo()
    store.close()
    # a crash between the FAISS file and its sidecar leaves no sidecar: rebuilt, never trusted
    (tmp_path / "db" / "images.json").unlink()
    again = Store(tmp_path / "db")
    assert again.index("images").ntotal == 41


def test_a_fresh_writer_updates_the_saved_index_instead_of_rebuilding(tmp_path, monkeypatch):
    store = Store(tmp_path / "db")
    ids, vecs = _fill(store, 30)
    store.save_indexes()
    store.close()
    writer = Store(tmp_path / "db")
    writer.acquire_writer_lock()
    monkeypatch.setattr(writer, "_all_vectors", lambda kind: pytest.fail("rebuilt from SQLite"))
    new, nvecs = _fill(writer, 4, seed=5)  # the first commit loads the saved file once
    writer.remove_images(ids[:3])
    writer.save_indexes()
    assert writer.index("images").ntotal == 31
    writer.close()
    reader = Store(tmp_path / "db")
    _, found = reader.search_images(nvecs, 1)
    assert found[:, 0].tolist() == new
    _, found = reader.search_images(vecs[:3], 5)
    assert not set(found.ravel().tolist()) & set(ids[:3])


def test_unchanged_reindex_writes_no_faiss_file(fake_encoder, photo_dir, tmp_path):
    from indexer.sync import Indexer

    store = Store(tmp_path / "db")
    Indexer(fake_encoder, store, show_progress=False).sync(str(photo_dir))
    gen = store.generation
    mtime = (tmp_path / "db" / "images.faiss").stat().st_mtime_ns
    time.sleep(0.01)
    report = Indexer(fake_encoder, store, show_progress=False).sync(str(photo_dir))
    assert report.unchanged == 6 and store.generation == gen
    assert (tmp_path / "db" / "images.faiss").stat().st_mtime_ns == mtime
    store.close()


@pytest.mark.slow
def test_bench_quick_json_smoke(tmp_path):
    from conftest import FLICKR8K

    if not (FLICKR8K / "images").is_dir():
        pytest.skip("Flickr8k is not available")
    # not `-m ui.cli`: plugins import ui.cli again, as a second module whose stdout is not ours
    proc = subprocess.run([sys.executable, "-c", "import sys; from ui.cli import main; sys.exit(main())",
                           "bench", "--quick", "--json",
                           "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    for key in ("index_12mp_photos_per_s", "model_only_photos_per_s", "query_p50_ms_1m", "query_recall_at_10_1m",
                "open_s_1m", "reindex_unchanged_100k_s", "index_224_photos_per_s", "query_p95_ms_1m",
                "bytes_per_photo", "search_rerank_p50_ms", "rerank_itm_only_p50_ms", "region_bytes_per_image",
                "hybrid_added_p50_ms_100k"):
        assert isinstance(res[key], (int, float)) and not isinstance(res[key], bool), key
