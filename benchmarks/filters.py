"""Latency and recall of a date-filtered image search, beside the unfiltered one, on synthetic photos.

The photos are the query bench's synthetic vectors (``benchmarks.vectors``), in the index the store
picks for their count (HNSW at 1M), memory-mapped as a reader opens it, with synthetic dates taken
spread evenly over ten years (5 % of the photos undated). One timed query is what the store does for
`imgsearch search --taken-after A --taken-before B`: the date mask over the in-memory arrays
(``retrieval.store.filters.date_range_ids``) and the filtered search. Recall@10 is against exact
scoring of the photos in the range.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.store import IndexParams, VectorIndex
from retrieval.store.filters import date_range_ids, day_number

from .vectors import index_path, synthetic_vectors

FIRST_DAY = dt.date(2015, 1, 1)
SPAN_DAYS = 3650
UNDATED = 0.05
SHARES = (0.1, 0.001)  # of all photos, roughly: the date ranges timed


def synthetic_days(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(ids, days since 1970) of the dated photos among ids 1..n, as ``SearchFilters.dated`` holds them."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    dated = rng.random(n) >= UNDATED
    days = (day_number(FIRST_DAY) + rng.integers(0, SPAN_DAYS, n)).astype(np.int32)
    return ids[dated], days[dated]


def share_key(share: float) -> str:
    """A JSON-key-friendly percentage: 0.1 -> "10pct", 0.001 -> "0_1pct"."""
    return f"{share * 100:g}".replace(".", "_") + "pct"


def filtered_recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """The share of the exact top-k found, over queries whose range may hold fewer than k photos."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(1, sum(len(t) for t in truth))


def bench_date_filter(n: int, dim: int, cache: Path, *, params: IndexParams = IndexParams(), data: str = "structured",
                      nq: int = 100, k: int = 10, shares: tuple[float, ...] = SHARES,
                      log: Callable[[str], None] = print) -> list[dict]:
    """One row per date-range share (and one unfiltered): p50/p95 ms, recall@10, the share actually
    matched and how the index ran the filtered search (exact or IDSelector)."""
    kind = params.kind_for(n)
    path = index_path(cache, kind, data, n, dim, params)
    xb = synthetic_vectors(n, dim, seed=1, data=data)  # the query bench's photos: its cached index fits
    if not path.exists():
        log(f"date filter bench: building {kind} over {n:,} vectors (cached in {path})")
        VectorIndex.build(dim, np.arange(1, n + 1, dtype=np.int64), xb, params, kind=kind).save(path)
    vi = VectorIndex.load(path, dim, mmap=True, params=params)
    ids, days = synthetic_days(n)
    queries = synthetic_vectors(nq, dim, seed=10_000_019, data=data)
    rng = np.random.default_rng(11)
    vi.search(queries[:3], k)  # page in the memory-mapped file
    times = []
    for q in queries:
        t = time.perf_counter()
        vi.search(q[None], k)
        times.append((time.perf_counter() - t) * 1000)
    rows = [{"n": n, "index": kind, "filter": "none", "share": 1.0, "p50_ms": float(np.percentile(times, 50)),
             "p95_ms": float(np.percentile(times, 95)), "recall_at_10": None, "path": None}]
    log(f"date filter bench at {n:,} ({kind}): unfiltered p50 {rows[0]['p50_ms']:.2f} ms")
    for share in shares:
        length = max(1, round(share * SPAN_DAYS / (1 - UNDATED)))
        starts = rng.integers(0, SPAN_DAYS - length + 1, nq)
        ranges = [(FIRST_DAY + dt.timedelta(days=int(s)), FIRST_DAY + dt.timedelta(days=int(s) + length - 1))
                  for s in starts]
        date_range_ids(ids, days, *ranges[0])
        times, found, matched = [], [], []
        for q, (after, before) in zip(queries, ranges):
            t = time.perf_counter()
            allowed = date_range_ids(ids, days, after, before)
            _, got = vi.search(q[None], k, ids=allowed)
            times.append((time.perf_counter() - t) * 1000)
            found.append(got[0])
            matched.append(len(allowed))
        truth = []
        for q, (after, before) in zip(queries, ranges):  # exact top-k among the photos in range
            allowed = date_range_ids(ids, days, after, before)
            truth.append(allowed[np.argsort(-(xb[allowed - 1] @ q))[:k]])
        row = {"n": n, "index": kind, "filter": f"date {share_key(share)}", "share": float(np.mean(matched)) / n,
               "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
               "recall_at_10": filtered_recall(found, truth),
               "path": vi.filter_strategy(int(np.median(matched)), k)}
        log(f"  date range of {length} days ({row['share']:.2%} of photos, {row['path']}): p50 {row['p50_ms']:.2f} ms"
            f"  p95 {row['p95_ms']:.2f} ms  recall@10 {row['recall_at_10']:.3f}")
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """The flat figures of the filter rows (keys end in _1m: they hold the largest size run)."""
    out: dict = {}
    for r in rows:
        if r["filter"] == "none":
            out["date_filter_unfiltered_p50_ms_1m"] = r["p50_ms"]
            out["date_filter_n"] = r["n"]
            out["date_filter_index"] = r["index"]
            continue
        key = r["filter"].split()[1]
        out.update({f"date_filter_{key}_p50_ms_1m": r["p50_ms"], f"date_filter_{key}_p95_ms_1m": r["p95_ms"],
                    f"date_filter_{key}_recall_at_10_1m": r["recall_at_10"], f"date_filter_{key}_share": r["share"],
                    f"date_filter_{key}_path": r["path"]})
    return out
