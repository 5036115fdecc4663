"""`imgsearch bench`: reproducible performance benchmarks (the code lives in benchmarks/).

A table on stdout, or with --json one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ui.cli.output import emit_json, log, out
from ui.cli.parser import UsageError, add_common_options


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x.strip())


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command to the imgsearch parser."""
    from benchmarks.run import BENCHES, OPTIONAL_BENCHES

    p = sub.add_parser("bench", help="measure indexing throughput, query latency/recall and reindex time")
    add_common_options(p, "encoder spec to benchmark (default: default)")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test in seconds, not a measurement)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHES)} "
                                                f"(and {', '.join(OPTIONAL_BENCHES)}, run only when named)")
    p.add_argument("--sizes", type=_ints, default=None, help="query bench index sizes (default 10000,100000,1000000); "
                                                              "the filter bench runs at the largest")
    p.add_argument("--index-types", default=None, help="comma-separated: flat,hnsw,ivf (default flat,hnsw)")
    p.add_argument("--ef", type=_ints, default=None, help="HNSW efSearch values to try (default 32,64,128,256)")
    p.add_argument("--dim", type=int, default=None, help="vector dimension for the query bench (default: the encoder's)")
    p.add_argument("--data", choices=("structured", "random"), default="structured",
                   help="synthetic vectors: structured (embedding-like) or random (uniform, worst case)")
    p.add_argument("--photos-12mp", type=int, default=None)
    p.add_argument("--photos-224", type=int, default=None)
    p.add_argument("--reindex-files", type=int, default=None)
    p.add_argument("--rerank-model", default="default", metavar="SPEC", help="reranker for the rerank bench")
    p.add_argument("--rerank-k", type=int, default=20, help="candidates reranked per query in the rerank bench")
    p.add_argument("--ray-photos", type=int, default=None, help="photos for the ray bench (default 256)")
    p.add_argument("--ray-workers", type=int, default=None, help="Ray workers for the ray bench (default: one per core)")
    p.add_argument("--ray-shard-size", type=int, default=None, help="files per shard in the ray bench (default 32)")
    p.add_argument("--ray-address", default=None, help="Ray cluster for the ray bench (default: a local Ray runtime)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: the indexer's)")
    p.add_argument("--flickr", type=Path, default=None, help="Flickr8k folder (read only)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where generated photos and built indexes are kept between runs")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks the options select and print their table (or JSON)."""
    from benchmarks.run import BENCHES, OPTIONAL_BENCHES, BenchConfig, run, table

    cfg = BenchConfig(model=args.model or "default", device=args.device, dim=args.dim, data=args.data,
                      batch_size=args.batch_size, workers=args.workers,
                      flickr_dir=args.flickr or args.settings.flickr8k,
                      cache_dir=args.cache_dir or args.settings.bench_cache,
                      rerank_model=args.rerank_model, rerank_k=args.rerank_k)
    if args.quick:
        cfg.quicken()
    if args.only:
        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
        bad = [x for x in only if x not in BENCHES + OPTIONAL_BENCHES]
        if bad:
            raise UsageError(f"unknown benchmark(s) {', '.join(bad)} "
                             f"(choose from {', '.join(BENCHES + OPTIONAL_BENCHES)})")
        cfg.only = only
    if args.sizes:
        cfg.sizes = args.sizes
    if args.index_types:
        cfg.index_types = tuple(x.strip() for x in args.index_types.split(",") if x.strip())
    if args.ef:
        cfg.ef_values = args.ef
    cfg.ray_workers, cfg.ray_address = args.ray_workers, args.ray_address
    for name in ("photos_12mp", "photos_224", "reindex_files", "ray_photos", "ray_shard_size"):
        if getattr(args, name):
            setattr(cfg, name, getattr(args, name))
    res = run(cfg, log)
    if args.json:
        emit_json(res)
    else:
        for line in table(res):
            out(line)
    return 0
