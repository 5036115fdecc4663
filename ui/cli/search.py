"""`imgsearch search` (text → image, image → image) and `imgsearch captions` (image → text) over the index."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ui.cli.output import emit_json, log, out
from ui.cli.parser import UsageError, add_common_options, add_hubness_option, add_rerank_options, existing_file


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``search`` and ``captions`` commands to the imgsearch parser."""
    p = sub.add_parser("search", help="text → image, or image → image with --image")
    p.add_argument("query", nargs="?")
    p.add_argument("--image", metavar="FILE")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--min-score", type=float, default=None)
    add_rerank_options(p)
    add_hubness_option(p)
    add_common_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("captions", help="image → text: the best captions in the index for a photo")
    p.add_argument("--image", metavar="FILE", required=True)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--min-score", type=float, default=None)
    add_rerank_options(p)
    add_hubness_option(p)
    add_common_options(p)
    p.set_defaults(func=cmd_captions)


def _open(args: argparse.Namespace) -> Any:
    """The library in --db with the encoder (and reranker, with --rerank) and search options asked for."""
    from retrieval.library import open_library

    rerank = getattr(args, "rerank", False)
    return open_library(args.db, model=args.model, device=args.device,
                        reranker=args.rerank_model if rerank else None, rerank_k=getattr(args, "rerank_k", 20),
                        hubness=not getattr(args, "no_hubness", False))


def _print_hits(hits: Sequence[Any], args: argparse.Namespace, empty: str) -> int:
    """The hits as JSON, or one ranked line each (``empty`` on stderr when there are none)."""
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
    """The photos that best match a text query or, with --image, a photo."""
    if (args.query is None) == (args.image is None):
        raise UsageError("give either a text query or --image FILE")
    if args.image is not None and args.rerank:
        raise UsageError("--rerank applies to text queries (and to `imgsearch captions`), not to --image searches")
    with _open(args) as library:
        searcher = library.searcher
        if args.image is not None:
            hits = searcher.search_image(existing_file(args.image), k=args.k, min_score=args.min_score)
        else:
            hits = searcher.search_text(args.query, k=args.k, min_score=args.min_score, rerank=args.rerank)
    return _print_hits(hits, args, "no matching photos")


def cmd_captions(args: argparse.Namespace) -> int:
    """The indexed captions that best describe a photo."""
    with _open(args) as library:
        hits = library.searcher.captions_for_image(existing_file(args.image), k=args.k, min_score=args.min_score,
                                                   rerank=args.rerank)
    return _print_hits(hits, args, "no matching captions")
