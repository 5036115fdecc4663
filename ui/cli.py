"""The `imgsearch` command line: index, search, captions, eval, info (and serve/train/bench when installed).

Library errors (ImgSearchError) become one line on stderr and a non-zero exit code.
With --json, stdout holds only the JSON; logs and progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

EXIT_ERROR = 1
EXIT_USAGE = 2


def default_data_dir() -> Path:
    """Where the index lives unless --db says otherwise: $IMGSEARCH_HOME, else the per-user data folder."""
    env = os.environ.get("IMGSEARCH_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("imgsearch", appauthor=False)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_OUT = sys.stdout


def out(text: str = "") -> None:
    """A line of the command's own output, on the real stdout (library chatter is sent to stderr)."""
    _OUT.write(text + "\n")
    _OUT.flush()


def emit_json(obj) -> None:
    out(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


# -- commands --------------------------------------------------------------------------------

def cmd_index(args: argparse.Namespace) -> int:
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
        encoder = create_encoder(spec, device=args.device)
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


def _open(args: argparse.Namespace):
    from retrieval.search import open_searcher

    rerank = getattr(args, "rerank", False)
    searcher = open_searcher(args.db, model=args.model, device=args.device,
                             reranker=args.rerank_model if rerank else None, rerank_k=getattr(args, "rerank_k", 20))
    if getattr(args, "no_hubness", False):
        searcher.encoder.hubness = None
    return searcher


def _print_hits(hits, args: argparse.Namespace, empty: str) -> int:
    if args.json:
        emit_json([h.as_dict() for h in hits])
        return 0
    if not hits:
        log(empty)
        return 0
    for rank, h in enumerate(hits, 1):
        line = f"{rank:3d}  {h.score:6.3f}  {h.path}"
        if h.match is not None:
            line = f"{rank:3d}  {h.score:6.3f}  match {h.match:5.3f}  {h.path}"
        if h.caption:
            line += f"\n      “{h.caption}”"
        out(line)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.image is None):
        raise UsageError("give either a text query or --image FILE")
    if args.image is not None and args.rerank:
        raise UsageError("--rerank applies to text queries (and to `imgsearch captions`), not to --image searches")
    searcher = _open(args)
    try:
        if args.image is not None:
            hits = searcher.search_image(_existing_file(args.image), k=args.k, min_score=args.min_score)
        else:
            hits = searcher.search_text(args.query, k=args.k, min_score=args.min_score, rerank=args.rerank)
    finally:
        searcher.store.close()
    return _print_hits(hits, args, "no matching photos")


def cmd_captions(args: argparse.Namespace) -> int:
    searcher = _open(args)
    try:
        hits = searcher.captions_for_image(_existing_file(args.image), k=args.k, min_score=args.min_score,
                                           rerank=args.rerank)
    finally:
        searcher.store.close()
    return _print_hits(hits, args, "no matching captions")


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from retrieval.encoders import create_encoder
    from retrieval.evaluate import evaluate, load_dataset

    if args.tune_alpha and not args.rerank:
        raise UsageError("--tune-alpha goes with --rerank")
    dataset = load_dataset(args.dataset, split=args.split)
    if args.limit:
        dataset = dataset.subset(args.limit)
    encoder = create_encoder(args.model or "default", device=args.device)
    if args.no_hubness:
        encoder.hubness = None
    reranker = None
    if args.rerank:
        from retrieval.rerank import create_reranker

        reranker = create_reranker(args.rerank_model, encoder=encoder, device=args.device)
    log(f"evaluating {encoder.spec} on {len(dataset.images)} images, {len(dataset.captions)} captions"
        + (f", reranking the top {args.rerank_k} with {reranker.spec}" if reranker else ""))
    t0 = time.monotonic()
    result = evaluate(encoder, dataset, show_progress=not args.no_progress, reranker=reranker, rerank_k=args.rerank_k,
                      tune_alpha=args.tune_alpha)
    result.extra.update({"model": encoder.spec, "fingerprint": encoder.fingerprint,
                         "split": args.split, "seconds": round(time.monotonic() - t0, 1)})
    if args.json:
        emit_json(result.as_dict())
    else:
        out(f"{'':28}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
        rows = [("", result.text_to_image, result.image_to_text)]
        if "without_rerank" in result.extra:
            base = result.extra["without_rerank"]
            rows = [(" (no rerank)", base["text_to_image"], base["image_to_text"]),
                    (" (reranked)", result.text_to_image, result.image_to_text)]
        for suffix, t2i, i2t in rows:
            for name, row in (("text → image", t2i), ("image → text", i2t)):
                out(f"{name + suffix:28}" + "".join(f"{row[k]:8.1f}" for k in ("R@1", "R@5", "R@10")))
        out(f"{result.images} images, {result.captions} captions, {result.extra['seconds']}s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from retrieval.store import Store

    store = Store(args.db, create=False)
    try:
        info = store.encoder_info
        folders = store.folders()
        skipped = store.skipped()
        data = {
            "data_dir": str(store.data_dir),
            "encoder": info.__dict__ if info else None,
            "images": store.count_images(),
            "captions": store.count_captions(),
            "folders": folders,
            "regions": store.region_info(),
            "skipped": [{"path": p, "reason": s["reason"]} for p, s in sorted(skipped.items())],
        }
    finally:
        store.close()
    if args.json:
        emit_json(data)
        return 0
    out(f"index:    {data['data_dir']}")
    out(f"encoder:  {info.spec} ({info.fingerprint}, dim {info.dim})" if info else "encoder:  none yet")
    out(f"photos:   {data['images']}   captions: {data['captions']}   skipped: {len(data['skipped'])}")
    regions = data["regions"]
    if regions.get("count"):
        out(f"regions:  {regions['count']} photos ({regions['bytes_per_image']} bytes each, for reranking)")
    for f in folders:
        out(f"folder:   {f['path']} ({f['images']} photos)")
    for s in data["skipped"][:20]:
        out(f"skipped:  {s['path']}: {s['reason']}")
    return 0


# -- parser ----------------------------------------------------------------------------------

class UsageError(Exception):
    """A command line that does not make sense."""


def _existing_file(path: str) -> str:
    from retrieval.errors import ImageLoadError

    if not os.path.exists(path):
        raise ImageLoadError(path, "file not found")
    if os.path.isdir(path):
        raise ImageLoadError(path, "is a folder, not an image file")
    return path


def _common(p: argparse.ArgumentParser, model_help: str = "encoder spec (default: the one the index was built with)") -> None:
    p.add_argument("--db", default=None, help="data folder holding the index (default: $IMGSEARCH_HOME or the per-user data folder)")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout (logs go to stderr)")


def _hubness_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-hubness", action="store_true",
                   help="rank by plain cosine, without the model's hubness correction (where it ships one)")


def _rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", action="store_true", help="rerank the top results with the cross-attention reranker")
    p.add_argument("--rerank-k", type=positive_int, default=20, metavar="N", help="how many top results to rerank (default 20)")
    p.add_argument("--rerank-model", default="default", metavar="SPEC",
                   help="reranker spec: default, fusion:<folder>, hf-blip:<hub id or folder> (default: default)")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description="Offline image–text photo search.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("index", help="index (or incrementally reindex) photo folders")
    p.add_argument("folders", nargs="+", metavar="DIR")
    _common(p, "encoder spec: default, default-fast, bridge, bridge-lite1, bridge-lite2, hf:<hub id or folder> (default: the index's, else default)")
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

    p = sub.add_parser("search", help="text → image, or image → image with --image")
    p.add_argument("query", nargs="?")
    p.add_argument("--image", metavar="FILE")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--min-score", type=float, default=None)
    _rerank_options(p)
    _hubness_option(p)
    _common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("captions", help="image → text: the best captions in the index for a photo")
    p.add_argument("--image", metavar="FILE", required=True)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--min-score", type=float, default=None)
    _rerank_options(p)
    _hubness_option(p)
    _common(p)
    p.set_defaults(func=cmd_captions)

    p = sub.add_parser("eval", help="recall@1/5/10 on a dataset folder (images/ + captions.jsonl)")
    p.add_argument("dataset")
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--tune-alpha", action="store_true",
                   help="with --rerank: report the best fusion alpha per direction on this split, by R@1 + R@5 "
                        "(and R@1, R@5 at each alpha tried)")
    p.add_argument("--no-progress", action="store_true")
    _rerank_options(p)
    _hubness_option(p)
    _common(p, "encoder spec (default: default)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="what the index holds")
    _common(p)
    p.set_defaults(func=cmd_info)

    for register in _plugins():
        register(sub, _common)
    return parser


def _plugins() -> list[Callable]:
    """Extra commands (serve, train, bench, check, ...) registered by their own modules."""
    found = []
    for module in ("ui.serve_cli", "ui.train_cli", "ui.bench_cli", "ui.check_cli", "ui.rerank_cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        found.append(mod.register)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given (model cards record it)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "db", "unset") is None:
        args.db = str(default_data_dir())
    from retrieval.errors import ImgSearchError

    global _OUT
    _OUT = sys.stdout
    try:
        # Anything a library prints to stdout (model loaders do) goes to stderr: stdout is ours.
        with contextlib.redirect_stdout(sys.stderr):
            return int(args.func(args) or 0)
    except UsageError as e:
        log(f"imgsearch {args.command}: error: {e}")
        return EXIT_USAGE
    except ImgSearchError as e:
        log(f"error: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        log("interrupted (the index keeps everything committed so far; rerun to resume)")
        return 130


if __name__ == "__main__":
    # Run through the importable module so plugins that `from ui.cli import out` share its state.
    from ui.cli import main as _main

    sys.exit(_main())
