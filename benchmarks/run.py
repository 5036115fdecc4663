"""Run the benchmarks and gather one flat dict of figures (what `imgsearch bench --json` prints)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.settings import Settings

# the `imgsearch bench` option defaults, read when the parser imports this module
BENCHES = ("model", "index224", "index12mp", "query", "filter", "hybrid", "reindex", "rerank")
OPTIONAL_BENCHES = ("ray",)  # run only when named in --only (starts a Ray runtime; needs imgsearch[ray])


@dataclass
class BenchConfig:
    quick: bool = False
    only: tuple[str, ...] = BENCHES
    model: str = "default"
    device: str | None = None
    dim: int | None = None
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    index_types: tuple[str, ...] = ("flat", "hnsw")
    ef_values: tuple[int, ...] = (32, 64, 128, 256)
    data: str = "structured"
    photos_224: int = 256
    photos_12mp: int = 128
    model_photos: int = 256
    reindex_files: int = 100_000
    hybrid_photos: int = 100_000  # the library the hybrid bench times text search on
    batch_size: int = 32
    workers: int | None = None
    rerank_model: str = "default"
    rerank_k: int = 20
    rerank_photos: int = 256
    ray_photos: int = 256
    ray_workers: int | None = None
    ray_shard_size: int = 32
    ray_address: str | None = None
    flickr_dir: Path = field(default_factory=lambda: Settings.from_env().flickr8k)
    cache_dir: Path = field(default_factory=lambda: Settings.from_env().bench_cache)
    extra: dict = field(default_factory=dict)

    def quicken(self) -> None:
        """Small sizes for CI smoke tests: seconds, not minutes (the *_1m / *_100k keys then hold
        the largest size run, named by query_largest_n, reindex_files and hybrid_n)."""
        self.quick = True
        self.sizes = (2_000, 10_000)
        self.ef_values = (32, 128)
        self.photos_224, self.photos_12mp, self.model_photos = 16, 8, 32
        self.reindex_files = 2_000
        self.hybrid_photos = 5_000
        self.rerank_photos = 32
        self.ray_photos, self.ray_shard_size = 16, 4


def run(cfg: BenchConfig, log: Callable[[str], None]) -> dict:
    import torch

    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"quick": cfg.quick, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "load_average_1m": os.getloadavg()[0]}
    t_all = time.perf_counter()
    encoder = None
    if {"model", "index224", "index12mp", "rerank", "ray"} & set(cfg.only) or cfg.dim is None:
        from retrieval.encoders import create_encoder

        t = time.perf_counter()
        encoder = create_encoder(cfg.model, device=cfg.device)
        res["model_load_s"] = time.perf_counter() - t
        res["model"] = encoder.spec
    dim = cfg.dim or encoder.dim
    res["dim"] = dim

    if "model" in cfg.only or "index12mp" in cfg.only:
        from .indexing import model_only_by_engine

        log(f"model only: {encoder.spec}, batch {cfg.batch_size}")
        res.update(model_only_by_engine(encoder, cfg.model_photos, cfg.batch_size))
        log("  " + ", ".join(f"{k} {v:.1f}" for k, v in res.items() if k.startswith("model_only_photos_per_s")))

    for kind, key, n in (("224", "index224", cfg.photos_224), ("12mp", "index12mp", cfg.photos_12mp)):
        if key not in cfg.only:
            continue
        from .indexing import end_to_end, photo_set, stage_times

        folder = photo_set(kind, n, cfg.flickr_dir, cfg.cache_dir, log)
        log(f"indexing {n} {kind} photos end to end")
        e2e = end_to_end(encoder, folder, batch_size=cfg.batch_size, workers=cfg.workers, log=log)
        stages = stage_times(encoder, folder, min(n, 32))
        res[f"index_{kind}_photos_per_s"] = e2e["photos_per_s"]
        for name, ms in stages.items():
            res[f"index_{kind}_{name}"] = ms
        res[f"index_{kind}_store_ms"] = e2e["store_ms"]
        if "model_only_photos_per_s" in res:
            res[f"index_{kind}_model_ms"] = 1000 / res["model_only_photos_per_s"]
            res[f"index_{kind}_vs_model_only"] = e2e["photos_per_s"] / res["model_only_photos_per_s"]

    if "query" in cfg.only and encoder is not None:
        texts = [f"a photo of {w} playing in the snow" for w in ("two dogs", "a child", "people", "a cat")] * 10
        from .indexing import text_latency_by_engine

        res.update(text_latency_by_engine(encoder, texts))
        log("text query embedding: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()
                                                 if k.startswith("text_encode_p50_ms")))

    if "query" in cfg.only:
        from retrieval.store import IndexParams

        from .vectors import bench_queries

        rows = bench_queries(list(cfg.sizes), dim, cfg.cache_dir, index_types=cfg.index_types,
                             params=IndexParams(), ef_values=cfg.ef_values, data=cfg.data, log=log)
        res["query_rows"] = rows
        largest = max(cfg.sizes)
        res["query_largest_n"] = largest
        params = IndexParams()
        store_kind = params.kind_for(largest)  # what the store picks at this size
        default = [r for r in rows if r["n"] == largest and r["index"] == store_kind and r.get("default")]
        cheapest = [r for r in rows if r["n"] == largest and r["index"] == store_kind and r.get("chosen")]
        if cheapest and cheapest[0]["setting"] is not None:
            res["query_cheapest_setting_meeting_recall_1m"] = cheapest[0]["setting"]
        if default:
            r = default[0]
            res.update({"query_index_1m": r["index"], "query_setting_1m": r["setting"], "query_p50_ms_1m": r["p50_ms"],
                        "query_p95_ms_1m": r["p95_ms"], "query_recall_at_10_1m": r["recall_at_10"],
                        "open_s_1m": r["open_mmap_s"], "open_read_s_1m": r["open_read_s"],
                        "bytes_per_photo": r["bytes_per_vector"]})
        flat = [r for r in rows if r["n"] == largest and r["index"] == "flat"]
        if flat:
            res["query_flat_p50_ms_1m"] = flat[0]["p50_ms"]
        for r in rows:
            if r.get("default"):
                res[f"query_p50_ms_{r['index']}_{r['n']}"] = r["p50_ms"]
                res[f"query_recall_at_10_{r['index']}_{r['n']}"] = r["recall_at_10"]

    if "filter" in cfg.only:
        from retrieval.store import IndexParams

        from .filters import bench_date_filter, summary

        rows = bench_date_filter(max(cfg.sizes), dim, cfg.cache_dir, params=IndexParams(), data=cfg.data, log=log)
        res["filter_rows"] = rows
        res.update(summary(rows))

    if "hybrid" in cfg.only:
        from .hybrid_cost import bench_hybrid

        log(f"hybrid text search beside pixels only, {cfg.hybrid_photos:,} photos")
        res.update(bench_hybrid(cfg.hybrid_photos, dim, cfg.cache_dir, log=log))

    if "reindex" in cfg.only:
        from .indexing import reindex_unchanged

        log(f"reindex of an unchanged {cfg.reindex_files:,}-file library")
        r = reindex_unchanged(cfg.reindex_files, dim, cfg.cache_dir, log)
        res["reindex_files"] = r["files"]
        res["reindex_unchanged_100k_s"] = r["seconds"]
        res["sqlite_bytes_per_photo"] = r["sqlite_bytes_per_photo"]
        if "bytes_per_photo" in res:
            res["bytes_per_photo_total"] = res["bytes_per_photo"] + r["sqlite_bytes_per_photo"]
    if "rerank" in cfg.only:
        import shutil

        from .indexing import photo_set
        from .rerank import rerank_latency

        folder = photo_set("224", cfg.rerank_photos, cfg.flickr_dir, cfg.cache_dir, log)
        data_dir = cfg.cache_dir / f"rerank-index-{cfg.rerank_photos}"
        shutil.rmtree(data_dir, ignore_errors=True)
        log(f"rerank latency: top {cfg.rerank_k} of {cfg.rerank_photos} indexed photos, {cfg.rerank_model}")
        res.update(rerank_latency(encoder, cfg.rerank_model, folder, data_dir, cfg.rerank_k, log))
    if "ray" in cfg.only:
        from .indexing import photo_set
        from .ray_indexing import ray_vs_local

        folder = photo_set("224", cfg.ray_photos, cfg.flickr_dir, cfg.cache_dir, log)
        res.update(ray_vs_local(encoder, folder, workers=cfg.ray_workers, shard_size=cfg.ray_shard_size,
                                batch_size=cfg.batch_size, address=cfg.ray_address, log=log))
    res["load_average_1m_end"] = os.getloadavg()[0]
    res["bench_seconds"] = time.perf_counter() - t_all
    return res


def table(res: dict) -> list[str]:
    """The human-readable summary."""
    lines = [f"{'figure':40} {'value':>12}"]
    for k, v in res.items():
        if k in ("query_rows", "filter_rows", "hybrid_rows"):
            continue
        if isinstance(v, float):
            lines.append(f"{k:40} {v:12.3f}")
        else:
            lines.append(f"{k:40} {v!s:>12}")
    rows = res.get("query_rows") or []
    if rows:
        lines.append("")
        lines.append(f"{'n':>9} {'index':6} {'param':>5} {'p50 ms':>8} {'p95 ms':>8} {'R@10':>6} {'open s':>7} "
                     f"{'B/vec':>7} note")
        for r in rows:
            lines.append(f"{r['n']:9d} {r['index']:6} {'' if r['setting'] is None else r['setting']!s:>5} "
                         f"{r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['recall_at_10']:6.3f} {r['open_mmap_s']:7.3f} "
                         f"{r['bytes_per_vector']:7.0f} {'default' if r.get('default') else ''}"
                         f"{' cheapest>=0.95' if r.get('chosen') else ''}")
    rows = res.get("filter_rows") or []
    if rows:
        lines.append("")
        lines.append(f"{'n':>9} {'index':6} {'filter':12} {'share':>8} {'p50 ms':>8} {'p95 ms':>8} {'R@10':>6} path")
        for r in rows:
            rec = "" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
            lines.append(f"{r['n']:9d} {r['index']:6} {r['filter']:12} {r['share']:8.2%} {r['p50_ms']:8.2f} "
                         f"{r['p95_ms']:8.2f} {rec:>6} {r['path'] or ''}")
    rows = res.get("hybrid_rows") or []
    if rows:
        from .hybrid_cost import table_lines

        lines.append("")
        lines.extend(table_lines(rows))
    return lines
