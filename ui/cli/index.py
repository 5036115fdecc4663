"""`imgsearch index DIR...`: index (or incrementally reindex) photo folders, here or on a Ray cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retrieval.encoders.registry import spec_names
from ui.cli.output import emit_json, log, out
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
    add_watch_options(p)
    p.set_defaults(func=cmd_index)


def add_watch_options(p: argparse.ArgumentParser) -> None:
    """--watch, --poll and --debounce, for the commands that can keep watching their folders."""
    p.add_argument("--watch", action="store_true",
                   help="keep running after the first sync: apply new, changed, moved and deleted files as they happen")
    p.add_argument("--poll", type=positive_float, default=None, metavar="SECONDS",
                   help="with --watch: rescan every SECONDS instead of using file-system events "
                        "(for network shares; also the fallback when events are unavailable)")
    p.add_argument("--debounce", type=positive_float, default=1.0, metavar="SECONDS",
                   help="with --watch: wait until files have been quiet this long before applying them (default 1)")


def positive_float(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return x


def watch_folders(indexer: Any, store: Any, folders: list[str], args: argparse.Namespace) -> None:
    """Apply changes under ``folders`` until Ctrl-C: one summary line per batch on stderr (a JSON line
    per batch on stdout with --json)."""
    import threading

    from indexer.watch import Watcher

    def on_report(report) -> None:
        log(report.summary())
        if args.json:
            out(json.dumps(report.as_dict(), ensure_ascii=False, default=str))  # one line per batch

    watcher = Watcher(indexer.sync, folders, debounce=args.debounce, poll=args.poll, ignore=[str(store.data_dir)],
                      on_report=on_report, on_error=lambda m: log(f"watch: {m}"))
    watcher.start()
    how = f"rescanning every {watcher.poll:g}s" if watcher.status.mode == "polling" else "file-system events"
    log(f"watching {len(folders)} folder(s) ({how}); Ctrl+C to stop")
    stop = threading.Event()
    try:
        watcher.run(stop)
    except KeyboardInterrupt:
        log("stopped watching")
    finally:
        watcher.stop()


def cmd_index(args: argparse.Namespace) -> int:
    """Bring each folder up to date in the index: one summary line per folder on stderr, reports with --json."""
    from indexer.sync import Indexer
    from retrieval.encoders import create_encoder
    from retrieval.store import Store

    if args.engine != "ray":
        for name in ("address", "shard_dir"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --engine ray")
    elif args.watch:
        raise UsageError("--watch needs --engine local (changes are applied in this process)")
    if not args.watch and args.poll is not None:
        raise UsageError("--poll needs --watch")
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
        if args.watch:
            store.release_writer_lock()  # each batch takes it for its sync, as a one-off run does
            watch_folders(indexer, store, [r.root for r in reports], args)
    finally:
        if indexer is not None and hasattr(indexer, "close"):
            indexer.close()  # a Ray runtime this command started
        store.close()
    return 0
