"""Hybrid text search measured end to end: a partly captioned library, and rare words in names and captions.

Partly captioned library: every Flickr8k ``dev`` photo under a neutral name (linked, not copied, into
a temporary folder), a fixed seeded half with its caption 0 as a sidecar ``.txt``, indexed with the
real indexer, and every photo queried with its caption 4 (``Searcher.search``, as ``imgsearch
search`` runs it). R@1/R@5 on the captioned half, the uncaptioned half and overall, hybrid beside
pixels only. Words: ``sample_data/`` plus a few renamed copies, and queries that only a caption, a
file name or a folder name answers; the rank of the photo that holds the words.

    python -m benchmarks.hybrid [--data ../shared/data/flickr8k] [--json] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEED = 0
QUERY_CAPTION, SIDECAR_CAPTION = 4, 0
# (query, the file that holds its words); the copies below make the name and folder cases
WORD_CASES = (
    ("Hubble", "hubble_deep_field.jpg"),
    ("The Hubble eXtreme Deep Field", "hubble_deep_field.jpg"),
    ("optic disc", "optic_disc_closeup.jpg"),
    ("black cat sleeping on a chair", "black cat sleeping on a chair.JPG"),
    ("kitty", "black cat sleeping on a chair.JPG"),
    ("Kyoto", "2019 Kyoto/IMG_2041.jpg"),
    ("IMG_2041 kyoto", "2019 Kyoto/IMG_2041.jpg"),
)
COPIES = {"black cat sleeping on a chair.JPG": "cat_chelsea.png", "2019 Kyoto/IMG_2041.jpg": "chinese_pagoda_lake.jpg"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _index(folder: Path, data_dir: Path, encoder) -> None:
    from indexer.sync import Indexer
    from retrieval.store import Store

    with Store(data_dir) as store:
        store.bind_encoder(encoder.spec, encoder.fingerprint, encoder.dim, getattr(encoder, "region_key", None))
        Indexer(encoder, store, show_progress=False, regions=False).sync(str(folder))


def recall(ranks: np.ndarray, mask: np.ndarray) -> dict:
    """R@1 and R@5 (percent) of the ranks under ``mask``."""
    return {f"R@{k}": round(100.0 * float((ranks[mask] <= k).mean()), 1) for k in (1, 5)}


def cutoff_table(right: np.ndarray, others: np.ndarray, n: int) -> list[dict]:
    """What ``--min-relevance Z`` keeps of the top 10: the share of queries whose right photo stays, and the
    wrong hits per query that stay."""
    return [{"min_relevance": z, "right_kept_pct": round(100.0 * float((right >= z).mean()), 1),
             "wrong_per_query": round(float((others >= z).sum()) / n, 2)} for z in (0.0, 1.0, 2.0, 3.0, 4.0)]


def partly_captioned(data: Path, work: Path, encoder, limit: int | None) -> dict:
    """The partly captioned library protocol: R@1/R@5 per half, hybrid and pixels only."""
    from retrieval.query import SearchQuery
    from retrieval.search import Searcher
    from retrieval.store import Store

    rows = [json.loads(line) for line in open(data / "captions.jsonl", encoding="utf-8")]
    dev = sorted((r for r in rows if r["split"] == "dev"), key=lambda r: r["image"])[:limit]
    n = len(dev)
    captioned = np.zeros(n, bool)
    captioned[np.random.default_rng(SEED).permutation(n)[: n // 2]] = True
    lib = work / "library"
    lib.mkdir()
    for i, r in enumerate(dev):
        name = f"photo_{i:04d}{Path(r['image']).suffix}"
        os.symlink((data / "images" / r["image"]).resolve(), lib / name)
        if captioned[i]:
            (lib / f"photo_{i:04d}.txt").write_text(r["captions"][SIDECAR_CAPTION] + "\n", encoding="utf-8")
    t = time.monotonic()
    _index(lib, work / "db", encoder)
    _log(f"indexed {n} photos in {time.monotonic() - t:.0f} s")
    out: dict = {"photos": n, "captioned": int(captioned.sum())}
    with Store(work / "db", create=False) as store:
        searcher = Searcher(encoder, store)
        paths = {str((lib / f"photo_{i:04d}{Path(r['image']).suffix}").absolute()): i for i, r in enumerate(dev)}
        for mode, hybrid in (("pixels only", False), ("hybrid", True)):
            ranks = np.full(n, 10 ** 6)
            right = np.full(n, -np.inf)  # the relevance of the right photo, where it is in the top 10
            others: list[float] = []  # the relevance of every other top-10 hit
            times = []
            for i, r in enumerate(dev):
                t = time.perf_counter()
                hits = searcher.search(SearchQuery(text=r["captions"][QUERY_CAPTION], k=10, hybrid=hybrid))
                times.append(1000 * (time.perf_counter() - t))
                for rank, h in enumerate(hits, 1):
                    if paths.get(h.path) == i:
                        ranks[i], right[i] = min(ranks[i], rank), h.relevance
                    else:
                        others.append(h.relevance)
            out[mode] = {"captioned": recall(ranks, captioned), "uncaptioned": recall(ranks, ~captioned),
                         "all": recall(ranks, np.ones(n, bool)), "query_ms_p50": round(float(np.median(times)), 1),
                         "cutoff": cutoff_table(right, np.asarray(others), n)}
            _log(f"{mode}: {out[mode]}")
    return out


def word_cases(work: Path, encoder) -> list[dict]:
    """Rank of the photo holding a query's words, hybrid beside pixels only."""
    from retrieval.query import SearchQuery
    from retrieval.search import Searcher
    from retrieval.store import Store

    lib = work / "words"
    shutil.copytree(REPO / "sample_data", lib)
    for dest, src in COPIES.items():
        (lib / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib / src, lib / dest)
    _index(lib, work / "words-db", encoder)
    out = []
    with Store(work / "words-db", create=False) as store:
        searcher = Searcher(encoder, store)
        for query, target in WORD_CASES:
            row = {"query": query, "photo": target}
            for mode, hybrid in (("pixels only", False), ("hybrid", True)):
                hits = searcher.search(SearchQuery(text=query, k=50, hybrid=hybrid))
                where = [n for n, h in enumerate(hits, 1) if Path(h.path).relative_to(lib).as_posix() == target]
                row[mode] = where[0] if where else None
                if hybrid and where:
                    row["matched"] = list(hits[where[0] - 1].matched or ())
            out.append(row)
            _log(f"{row}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print a table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=None, help="only the first N dev photos (a quick check)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from retrieval.encoders import create_encoder

    encoder = create_encoder(args.model)
    with tempfile.TemporaryDirectory(prefix="imgsearch-hybrid-") as tmp:
        work = Path(tmp)
        res = {"model": encoder.spec, "partly_captioned": partly_captioned(args.data, work, encoder, args.limit),
               "words": word_cases(work, encoder)}
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    pc = res["partly_captioned"]
    print(f"partly captioned library: {pc['photos']} dev photos, {pc['captioned']} with a sidecar caption")
    print(f"{'':14} {'captioned R@1/R@5':>18} {'uncaptioned':>14} {'all':>14} {'p50 ms':>7}")
    for mode in ("pixels only", "hybrid"):
        m = pc[mode]
        print(f"{mode:14} {m['captioned']['R@1']:>9} / {m['captioned']['R@5']:<6} {m['uncaptioned']['R@1']:>6} / "
              f"{m['uncaptioned']['R@5']:<6} {m['all']['R@1']:>6} / {m['all']['R@5']:<6} {m['query_ms_p50']:>7}")
    print("--min-relevance Z on the hybrid top 10: right photo kept (% of queries), wrong hits left per query")
    for row in pc["hybrid"]["cutoff"]:
        print(f"  Z {row['min_relevance']:>3}: {row['right_kept_pct']:>5} %  {row['wrong_per_query']:>5}")
    print("words (rank of the photo holding them; pixels only -> hybrid):")
    for w in res["words"]:
        print(f"  {w['query']!r:40} {w['pixels only']} -> {w['hybrid']}  {w.get('matched', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
