"""Query latency, recall and open time of the FAISS index types on synthetic vectors.

Synthetic vectors stand in for photo embeddings: real embeddings are far from uniform on the
sphere (they have a low intrinsic dimension), so the default data is ``structured``: a random
32-d latent mapped into ``dim`` dimensions plus isotropic noise carrying 20 % of the energy,
L2-normalised. ``random`` (uniform on the sphere) is the worst case for any approximate index.
Queries are fresh draws from the same distribution. Recall@10 is measured against exact flat
search over the same vectors. Built indexes are cached under the cache folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.store import INDEX_FLAT, INDEX_HNSW, INDEX_IVF, IndexParams, VectorIndex

LATENT_DIM = 32
NOISE_ENERGY = 0.2


def synthetic_vectors(n: int, dim: int, seed: int = 0, data: str = "structured") -> np.ndarray:
    """(n, dim) float32 unit vectors (see the module docstring)."""
    out = np.empty((n, dim), np.float32)
    basis = np.random.default_rng(12345 + dim).normal(size=(LATENT_DIM, dim)).astype(np.float32) / np.sqrt(LATENT_DIM)
    rng = np.random.default_rng(seed)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        if data == "random":
            v = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            z = rng.standard_normal((m, LATENT_DIM), dtype=np.float32)
            v = z @ basis
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            noise = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
            v = np.sqrt(1 - NOISE_ENERGY) * v + np.sqrt(NOISE_ENERGY) * noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[i:i + m] = v
    return out


def _latencies(vi: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query at a time (as a user types them): per-query milliseconds, and the ids found."""
    vi.search(queries[:3], k)  # warm up (page in a memory-mapped file, spin up threads)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = vi.search(q[None], k)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    return np.asarray(times), np.stack(found)


def index_path(cache: Path, kind: str, data: str, n: int, dim: int, params: IndexParams) -> Path:
    """Where a built index of ``n`` synthetic vectors is cached between runs."""
    return cache / f"{kind}-{data}-{n}-{dim}-m{params.hnsw_m}-efc{params.ef_construction}.faiss"


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def bench_queries(sizes: list[int], dim: int, cache: Path, *, index_types=(INDEX_FLAT, INDEX_HNSW),
                  params: IndexParams = IndexParams(), ef_values=(32, 64, 128, 256), nq: int = 200, k: int = 10,
                  data: str = "structured", recall_target: float = 0.95,
                  log: Callable[[str], None] = print) -> list[dict]:
    """One row per (size, index type, setting): p50/p95 ms, recall@10 vs flat, open seconds, bytes/vector.

    ``default`` marks the setting the store uses (IndexParams); ``chosen`` the cheapest one that
    reaches ``recall_target``."""
    rows = []
    queries = synthetic_vectors(nq, dim, seed=10_000_019, data=data)
    for n in sizes:
        log(f"query bench: {n:,} x {dim}-d {data} vectors")
        xb = synthetic_vectors(n, dim, seed=1, data=data)
        ids = np.arange(1, n + 1, dtype=np.int64)
        flat = VectorIndex.build(dim, ids, xb, params, kind=INDEX_FLAT)
        _, truth = flat.search(queries, k)
        for kind in index_types:
            path = index_path(cache, kind, data, n, dim, params)
            build_s = None
            if kind == INDEX_FLAT:
                vi = flat
            elif path.exists():
                vi = VectorIndex.load(path, dim, params=params)
            else:
                log(f"  building {kind} over {n:,} vectors (cached in {path})")
                t = time.perf_counter()
                vi = VectorIndex.build(dim, ids, xb, params, kind=kind)
                build_s = time.perf_counter() - t
            if not path.exists():
                vi.save(path)
            t = time.perf_counter()
            mm = VectorIndex.load(path, dim, mmap=True, params=params)
            open_mmap = time.perf_counter() - t
            t = time.perf_counter()
            VectorIndex.load(path, dim, params=params)
            open_read = time.perf_counter() - t
            settings = [None]
            if kind == INDEX_HNSW:
                settings = sorted(set(ef_values) | {params.ef_search})
            elif kind == INDEX_IVF:
                settings = sorted({16, 32, 64, 128, 256, params.ivf_nprobe})
            chosen = None
            for s in settings:
                if kind == INDEX_HNSW:
                    mm.params = IndexParams(**{**params.__dict__, "ef_search": s})
                elif kind == INDEX_IVF:
                    mm.params = IndexParams(**{**params.__dict__, "ivf_nprobe": s})
                if kind == INDEX_FLAT and n > 200_000:
                    lat, _ = _latencies(mm, queries[:50], k)  # exact by definition; ~0.1-1 s a query here
                    found = truth
                else:
                    lat, found = _latencies(mm, queries, k)
                rec = recall_at(found, truth, k)
                row = {"n": n, "dim": dim, "data": data, "index": kind, "setting": s,
                       "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                       "recall_at_10": rec, "open_mmap_s": open_mmap, "open_read_s": open_read,
                       "bytes_per_vector": os.path.getsize(path) / n, "build_s": build_s}
                log(f"  {kind:5} {'' if s is None else s!s:>4}  p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  "
                    f"recall@10 {rec:.3f}  open {open_mmap:.3f}s (mmap) / {open_read:.2f}s (read)")
                row["default"] = s is None or s == (params.ef_search if kind == INDEX_HNSW else params.ivf_nprobe)
                rows.append(row)
                if chosen is None and rec >= recall_target:
                    chosen = row
            if chosen is not None:
                chosen["chosen"] = True  # the cheapest setting meeting the recall target
            del mm, vi
        del flat, xb
    return rows
