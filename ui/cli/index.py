"""`imgsearch index DIR...`: index (or incrementally reindex) photo folders, here or on a Ray cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.encoders.registry import spec_names
from ui.cli.output import emit_json, log
from ui.cli.parser import UsageError, add_common_options, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``index`` command to the imgsearch parser."""
    p = sub.add_parser("index", help="index (or incrementally reindex) photo folders")
    p.add_argument("folders", nargs="+", metavar="DIR")
    add_common_options(p, f"encoder spec: {spec_names(quoted=False)} (default: the index's, else default; "
                          "`imgsearch models` lists them)")
    p.add_argument("--rebuild", action="store_true", help="delete the index in --db and build it again")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local: decode threads; ray: Ray workers, one model each (default: one per GPU, else per CPU)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: embed on a Ray cluster, then build the index here "
                        "(needs pip install 'imgsearch[ray]')")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to use, e.g. ray://head:10001 or auto (default: start a local Ray runtime)")
    p.add_argument("--shard-size", type=positive_int, default=256, metavar="N", help="files per Ray shard (default 256)")
    p.add_argument("--shard-dir", default=None, metavar="DIR",
                   help="where Ray workers write shards (default DATA_DIR/shards; shared storage on a multi-node cluster)")
    p.add_argument("--keep-shards", action="store_true", help="keep the Parquet shards after the index is built")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--show-skipped", type=int, default=10, metavar="N", help="list at most N skipped files")
    p.add_argument("--no-regions", action="store_true",
                   help="do not store region features for reranking (saves ~16 KB per photo; --rerank then decodes photos)")
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    """Bring each folder up to date in the index: one summary line per folder on stderr, reports with --json."""
    from indexer.sync import Indexer
    from retrieval.encoders import create_encoder
    from retrieval.store import Store

    if args.engine != "ray":
        for name in ("address", "shard_dir"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --engine ray")
    store = Store(Path(args.db))
    indexer = None
    try:
        store.acquire_writer_lock()  # refuse at once if another indexer runs, before loading a model
        if args.rebuild:
            store.clear()
        spec = args.model or (store.encoder_info.spec if store.encoder_info else "default")
        encoder = create_encoder(spec, device=args.device, light=args.engine != "ray")
        store.check_encoder(encoder.fingerprint, encoder.spec)
        regions = False if args.no_regions else None
        if args.engine == "ray":
            from indexer.distributed import RayIndexer

            indexer = RayIndexer(encoder, store, address=args.address, workers=args.workers,
                                 shard_size=args.shard_size, shard_dir=args.shard_dir, batch_size=args.batch_size,
                                 keep_shards=args.keep_shards, show_progress=not args.no_progress, regions=regions)
        else:
            indexer = Indexer(encoder, store, batch_size=args.batch_size, workers=args.workers,
                              show_progress=not args.no_progress, regions=regions)
        reports = []
        for folder in args.folders:
            report = indexer.sync(folder)
            reports.append(report)
            log(report.summary())
            for path, reason in report.skipped[: args.show_skipped]:
                log(f"  skipped {path}: {reason}")
            if len(report.skipped) > args.show_skipped:
                log(f"  … and {len(report.skipped) - args.show_skipped} more skipped (see `imgsearch info --json`)")
        if args.json:
            emit_json([r.as_dict() for r in reports])
    finally:
        if indexer is not None and hasattr(indexer, "close"):
            indexer.close()  # a Ray runtime this command started
        store.close()
    return 0
