"""Reranking latency: one query's top-k reranked end to end, as `imgsearch search --rerank` does it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

Log = Callable[[str], None]

QUERIES = ("two dogs playing in the snow", "a man riding a bike on a dirt path", "a little girl in a pink dress",
           "a brown dog running through the grass", "people walking down a busy street",
           "a boy jumping into a swimming pool", "a black and white dog catching a frisbee",
           "a woman climbing a rock wall", "children playing soccer on a field", "a surfer riding a wave")


def rerank_latency(encoder, reranker_spec: str, folder: Path, data_dir: Path, rerank_k: int, log: Log,
                   repeats: int = 3) -> dict:
    """Index ``folder`` (regions stored) and time text searches with and without reranking the top ``rerank_k``."""
    from indexer.sync import Indexer
    from retrieval.rerank import create_reranker
    from retrieval.search import Searcher
    from retrieval.store import Store

    store = Store(data_dir)
    try:
        Indexer(encoder, store, show_progress=False).sync(str(folder))
        reranker = create_reranker(reranker_spec, encoder=encoder)
        searcher = Searcher(encoder, store, reranker, rerank_k=rerank_k)
        searcher.search_text(QUERIES[0], k=10, rerank=True)  # warm up
        plain, reranked, itm_only, caption_side, no_hub = [], [], [], [], []
        plain_cosine = Searcher(encoder, store, hubness=False) if getattr(encoder, "hubness", None) else None
        for _ in range(repeats):
            for q in QUERIES:
                t = time.perf_counter()
                searcher.search_text(q, k=10)
                plain.append((time.perf_counter() - t) * 1000)
                if plain_cosine is not None:  # the same search by plain cosine: what the correction costs
                    t = time.perf_counter()
                    plain_cosine.search_text(q, k=10)
                    no_hub.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                hits = searcher.search_text(q, k=10, rerank=True)
                reranked.append((time.perf_counter() - t) * 1000)
        ids = [h.image_id for h in searcher.search_text(QUERIES[0], k=rerank_k)]
        regions, found = store.get_regions(ids, reranker.region_key)
        for q in QUERIES * repeats:
            t = time.perf_counter()
            reranker.itm_scores([q], regions)
            itm_only.append((time.perf_counter() - t) * 1000)
        one = regions[:1]
        for _ in range(repeats * 3):
            t = time.perf_counter()
            reranker.itm_scores(list(QUERIES * 2)[:rerank_k], one)
            caption_side.append((time.perf_counter() - t) * 1000)
        info = store.region_info()
        by_engine = rerank_by_engine(searcher, encoder, reranker, regions, repeats)
    finally:
        store.close()
    res = {"rerank_k": rerank_k, "rerank_model": reranker.spec, "rerank_candidates": int(len(found)),
           "rerank_regions_found": int(np.sum(found)),
           "search_p50_ms": float(np.percentile(plain, 50)),
           **({"search_no_hubness_p50_ms": float(np.percentile(no_hub, 50))} if no_hub else {}),
           "search_rerank_p50_ms": float(np.percentile(reranked, 50)),
           "search_rerank_p95_ms": float(np.percentile(reranked, 95)),
           "rerank_overhead_p50_ms": float(np.percentile(reranked, 50) - np.percentile(plain, 50)),
           "rerank_itm_only_p50_ms": float(np.percentile(itm_only, 50)),
           "rerank_captions_itm_p50_ms": float(np.percentile(caption_side, 50)),
           "region_bytes_per_image": info.get("bytes_per_image"), **by_engine}
    log(f"  search {res['search_p50_ms']:.1f} ms, + rerank top {rerank_k}: {res['search_rerank_p50_ms']:.1f} ms p50 "
        f"({res['search_rerank_p95_ms']:.1f} p95); {res['region_bytes_per_image']} region bytes per photo")
    return res


def rerank_by_engine(searcher, encoder, reranker, regions: np.ndarray, repeats: int) -> dict:
    """Reranked search and the fusion model alone, p50 ms, on torch and on ONNX Runtime side by side
    (``..._torch``, ``..._onnx``); empty when the reranker does not run on ONNX Runtime."""
    from retrieval.encoders.runtime import use_engine

    if getattr(reranker, "engine", None) != "onnx":
        return {}
    res = {}
    for name in ("torch", "onnx"):
        with use_engine(encoder, name), use_engine(reranker, name):
            searcher.search_text(QUERIES[0], k=10, rerank=True)  # warm up
            full, itm = [], []
            for q in QUERIES * repeats:
                t = time.perf_counter()
                searcher.search_text(q, k=10, rerank=True)
                full.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                reranker.itm_scores([q], regions)
                itm.append((time.perf_counter() - t) * 1000)
        res[f"search_rerank_p50_ms_{name}"] = float(np.percentile(full, 50))
        res[f"rerank_itm_only_p50_ms_{name}"] = float(np.percentile(itm, 50))
    return res
