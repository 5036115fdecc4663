"""The hybrid-cost bench (`imgsearch bench --only hybrid`) at a tiny size: its library, keys and table."""

from __future__ import annotations

from benchmarks.hybrid_cost import bench_hybrid, build_library, library_captions, library_paths, vocabulary
from benchmarks.run import BENCHES, table
from retrieval.store import Store
from retrieval.terms import name_words


def test_library_has_camera_and_word_names_and_zipf_captions():
    paths = library_paths(2000, "/lib")
    assert len(set(paths)) == 2000
    named = [p for p in paths if name_words(p, "/lib").name]
    assert 0.1 < len(named) / len(paths) < 0.3  # the rest are IMG_001234 camera names
    assert all(name_words(p, "/lib").folder for p in paths)
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab)) == 2000
    caps = library_captions(2000, vocab)
    assert 0.4 < len(caps) / 2000 < 0.6
    words = [w for c in caps.values() for w in c.split()]
    assert words.count(vocab[0]) > 20 * max(1, words.count(vocab[-1]))  # common words far outnumber rare ones


def test_hybrid_bench_reports_both_paths_and_caches_its_library(tmp_path):
    res = bench_hybrid(2000, 32, tmp_path, rounds=1, log=lambda m: None)
    for key in ("hybrid_added_p50_ms_100k", "hybrid_p50_ms_100k", "pixels_p50_ms_100k", "hybrid_n"):
        assert isinstance(res[key], (int, float)), key
    assert res["hybrid_n"] == 2000
    assert res["hybrid_added_p50_ms_100k"] == res["hybrid_p50_ms_100k"] - res["pixels_p50_ms_100k"]
    assert res["hybrid_min_hits"] == 10  # every hybrid query, an absent word too, returned k photos
    assert res["hybrid_queries_with_word_hits"] > 0
    assert res["hybrid_caption_map_bytes"] > 0 and res["hybrid_terms_cache_tokens"] > 0  # the caches were used
    assert res["hybrid_first_query_ms"] > 0 and res["pixels_first_query_ms"] > 0
    paths = {(r["path"], r["queries"]) for r in res["hybrid_rows"]}
    assert {("pixels", "all"), ("hybrid", "all"), ("hybrid", "rare"), ("pixels", "absent")} <= paths
    assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in res["hybrid_rows"])

    data_dir = build_library(2000, 32, tmp_path)
    assert (data_dir / ".complete").exists()
    with Store(data_dir) as store:  # half the photos hold a sidecar, beside the weak name and folder captions
        assert store.count_images() == 2000
        assert res["hybrid_library_captions"] == store.count_captions() > 2000
    mtime = (data_dir / ".complete").stat().st_mtime_ns
    assert build_library(2000, 32, tmp_path) == data_dir
    assert (data_dir / ".complete").stat().st_mtime_ns == mtime  # reused, not rebuilt

    assert "hybrid" in BENCHES
    lines = table(res)
    assert any(" hybrid " in line and " rare " in line for line in lines)

