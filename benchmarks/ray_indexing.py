"""Indexing throughput on Ray against the single-process indexer, and the rate of one Ray worker.

Both index the same generated photo set (``indexing.photo_set``) into fresh data folders with the
same encoder. The Ray run uses a local Ray runtime on this machine's cores (or joins ``address``),
one worker per core unless told otherwise. Its end-to-end rate includes starting the actors, one
model load per worker and the build on the driver (starting the Ray runtime itself is timed
apart); the per-worker rate is files over the busy seconds of the workers, the figure to multiply
by the workers of a node.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from indexer.distributed import RayIndexer
from indexer.sync import Indexer
from retrieval.store import Store

Log = Callable[[str], None]


def _local(encoder, folder: Path, batch_size: int, log: Log) -> dict:
    db = Path(tempfile.mkdtemp(prefix="imgsearch-bench-local-"))
    try:
        with Store(db) as store:
            t = time.perf_counter()
            report = Indexer(encoder, store, batch_size=batch_size, show_progress=False).sync(str(folder))
            secs = time.perf_counter() - t
        n = report.added + report.duplicates + len(report.skipped)
        log(f"  single process: {n} photos in {secs:.1f}s ({n / secs:.1f} photos/s)")
        return {"photos": n, "seconds": secs}
    finally:
        shutil.rmtree(db, ignore_errors=True)


def _ray(encoder, folder: Path, *, workers: int | None, shard_size: int, batch_size: int, address: str | None,
         log: Log) -> dict:
    import ray

    t = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, logging_level=logging.WARNING,
                 **({} if address else {"include_dashboard": False}))
    init_s = time.perf_counter() - t
    db = Path(tempfile.mkdtemp(prefix="imgsearch-bench-ray-"))
    try:
        with Store(db) as store:
            ri = RayIndexer(encoder, store, workers=workers, shard_size=shard_size, batch_size=batch_size,
                            show_progress=False)
            t = time.perf_counter()
            report = ri.sync(str(folder))
            secs = time.perf_counter() - t
        n = report.worker_embedded
        log(f"  Ray, {report.workers} workers: {n} photos in {secs:.1f}s ({n / secs:.1f} photos/s; Ray stage "
            f"{report.ray_seconds:.1f}s, build {report.build_seconds:.2f}s), {report.worker_photos_per_s:.2f} "
            f"photos/s per busy worker; Ray runtime start {init_s:.1f}s")
        return {"photos": n, "seconds": secs, "init_s": init_s, "workers": report.workers,
                "stage_s": report.ray_seconds, "build_s": report.build_seconds,
                "worker_photos_per_s": report.worker_photos_per_s, "shards": report.shards}
    finally:
        shutil.rmtree(db, ignore_errors=True)
        if started:
            ray.shutdown()


def ray_vs_local(encoder, folder: Path, *, workers: int | None = None, shard_size: int = 32, batch_size: int = 32,
                 address: str | None = None, log: Log = print) -> dict:
    """photos/s of the single-process indexer and of the Ray engine on ``folder``, and the per-worker rate."""
    log(f"indexing {folder.name} with the single-process indexer, then on Ray")
    local = _local(encoder, folder, batch_size, log)
    on_ray = _ray(encoder, folder, workers=workers, shard_size=shard_size, batch_size=batch_size, address=address,
                  log=log)
    local_rate, ray_rate = local["photos"] / local["seconds"], on_ray["photos"] / on_ray["seconds"]
    return {
        "ray_photos": on_ray["photos"], "ray_workers": on_ray["workers"], "ray_shards": on_ray["shards"],
        "ray_shard_size": shard_size,
        "local_photos_per_s": local_rate,
        "ray_photos_per_s": ray_rate,  # end to end: actor start, model loads, embedding, build
        "ray_vs_local": ray_rate / local_rate,
        "ray_worker_photos_per_s": on_ray["worker_photos_per_s"],  # one busy worker (one CPU core here)
        "ray_stage_s": on_ray["stage_s"], "ray_build_s": on_ray["build_s"],
        "ray_build_photos_per_s": on_ray["photos"] / on_ray["build_s"] if on_ray["build_s"] else None,
        "ray_init_s": on_ray["init_s"],
    }
