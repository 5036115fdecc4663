"""`imgsearch search` (text → image, image → image) and `imgsearch captions` (image → text) over the index."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Callable, Sequence
from typing import Any

from retrieval.errors import QueryError
from retrieval.query import MAX_K, SORTS, parse_day
from ui.cli.output import emit_json, log, out
from ui.cli.parser import (UsageError, add_common_options, add_hubness_option, add_rerank_options, existing_file,
                           positive_int)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``search`` and ``captions`` commands to the imgsearch parser."""
    p = sub.add_parser("search", help="text → image, image → image with --image, or both")
    p.add_argument("query", nargs="?", help="what to look for (matches pixels, captions, file and folder names)")
    p.add_argument("--image", metavar="FILE", help="a photo to find similar ones to (with a text query too: both)")
    p.add_argument("--queries", metavar="FILE", help="one text query per line, one model load; --json prints "
                   "[{\"query\": ..., \"results\": [...]}, ...] in order")
    p.add_argument("-k", "--limit", dest="k", type=k_value, default=10,
                   help=f"how many results (1 to {MAX_K}, default 10)")
    p.add_argument("--not", dest="not_texts", action="append", default=[], metavar="TEXT",
                   help="steer away from a concept (repeatable)")
    p.add_argument("--taken-after", type=day("--taken-after"), metavar="YYYY-MM-DD",
                   help="only photos taken on or after this day (EXIF date; photos without one are left out)")
    p.add_argument("--taken-before", type=day("--taken-before"), metavar="YYYY-MM-DD",
                   help="only photos taken on or before this day")
    p.add_argument("--folder", dest="folders", action="append", default=[], metavar="PATH",
                   help="only photos under this folder (repeatable: any of them)")
    p.add_argument("--sort", choices=SORTS, default="relevance", help="relevance (default) or date: newest first, "
                   "photos without a date last")
    p.add_argument("--min-relevance", type=float, default=None, metavar="Z",
                   help="drop results less relevant than Z (standard deviations above the query's typical photo)")
    p.add_argument("--min-score", type=float, default=None, help="drop results whose raw pixel score is below this")
    p.add_argument("--pixels-only", action="store_true", help="match photos by their pixels only (no captions or names)")
    add_rerank_options(p)
    add_hubness_option(p)
    add_common_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("captions", help="image → text: the best captions in the index for a photo")
    p.add_argument("--image", metavar="FILE", required=True)
    p.add_argument("-k", "--limit", dest="k", type=k_value, default=5,
                   help=f"how many captions (1 to {MAX_K}, default 5)")
    p.add_argument("--min-score", type=float, default=None)
    add_rerank_options(p)
    add_hubness_option(p)
    add_common_options(p)
    p.set_defaults(func=cmd_captions)


def k_value(text: str) -> int:
    """argparse type: a result count from 1 to MAX_K."""
    n = positive_int(text)
    if n > MAX_K:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_K}, got {n}")
    return n


def day(option: str) -> Callable[[str], dt.date]:
    """argparse type for ``option``: a YYYY-MM-DD date."""
    def parse(text: str) -> dt.date:
        try:
            return parse_day(text, option)
        except QueryError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _open(args: argparse.Namespace) -> Any:
    """The library in --db with the encoder (and reranker, with --rerank) and search options asked for."""
    from retrieval.library import open_library

    rerank = getattr(args, "rerank", False)
    return open_library(args.db, model=args.model, device=args.device,
                        reranker=args.rerank_model if rerank else None, rerank_k=getattr(args, "rerank_k", 20),
                        hubness=not getattr(args, "no_hubness", False))


def _lines(hits: Sequence[Any]) -> list[str]:
    """One ranked line per hit (relevance, or score where a hit has none; path), then what it matched on and
    its caption where there is one."""
    lines = []
    for rank, h in enumerate(hits, 1):
        value = h.score if getattr(h, "relevance", None) is None else h.relevance
        line = f"{rank:3d}  {value:6.2f}  {h.path}"
        if h.match is not None:
            line = f"{rank:3d}  {value:6.2f}  match {h.match:5.3f}  {h.path}"
        notes = []
        if getattr(h, "matched", None) and tuple(h.matched) != ("pixels",):
            notes.append("matched " + ", ".join(h.matched))
        if getattr(h, "taken", None):
            notes.append("taken " + h.taken[:10])
        if notes:
            line += "\n      (" + "; ".join(notes) + ")"
        if h.caption:
            line += f"\n      “{h.caption}”"
        lines.append(line)
    return lines


def _print_hits(hits: Sequence[Any], args: argparse.Namespace, empty: str) -> int:
    """The hits as JSON, or one ranked line each (``empty`` on stderr when there are none)."""
    if args.json:
        emit_json([h.as_dict() for h in hits])
        return 0
    if not hits:
        log(empty)
        return 0
    for line in _lines(hits):
        out(line)
    return 0


def _query(args: argparse.Namespace, text: str | None, image: str | None) -> Any:
    """The SearchQuery the options ask for."""
    from retrieval.query import SearchQuery

    folders = tuple(os.path.realpath(os.path.expanduser(f)) for f in args.folders)
    return SearchQuery(text=text, image=image, not_texts=tuple(args.not_texts), taken_after=args.taken_after,
                       taken_before=args.taken_before, folders=folders, sort=args.sort, k=args.k,
                       min_score=args.min_score, min_relevance=args.min_relevance, rerank=args.rerank,
                       hybrid=not args.pixels_only)


def _read_queries(path: str) -> list[str]:
    """The non-blank lines of a queries file."""
    try:
        with open(existing_file(path), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file (one query per line)") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read queries ({e.strerror or e})") from None


def cmd_search(args: argparse.Namespace) -> int:
    """The photos that best match a text query, a photo (--image), both, or each line of --queries."""
    if args.queries is not None:
        if args.query is not None or args.image is not None:
            raise UsageError("--queries reads the queries from a file: give no query or --image beside it")
        return _search_many(args, _read_queries(args.queries))
    if args.query is None and args.image is None:
        raise UsageError("give a text query, --image FILE, or both")
    if args.query is None and args.rerank:
        raise UsageError("--rerank applies to text queries (and to `imgsearch captions`), not to --image searches")
    image = existing_file(args.image) if args.image is not None else None
    with _open(args) as library:
        hits = library.searcher.search(_query(args, args.query, image))
    return _print_hits(hits, args, "no matching photos")


def _search_many(args: argparse.Namespace, queries: list[str]) -> int:
    """Every query of a --queries file with one model load, in order."""
    with _open(args) as library:
        results = [(q, library.searcher.search(_query(args, q, None))) for q in queries]
    if args.json:
        emit_json([{"query": q, "results": [h.as_dict() for h in hits]} for q, hits in results])
        return 0
    for q, hits in results:
        out(f"== {q}")
        for line in _lines(hits) or ["  (no matching photos)"]:
            out(line)
    return 0


def cmd_captions(args: argparse.Namespace) -> int:
    """The indexed captions that best describe a photo."""
    with _open(args) as library:
        hits = library.searcher.captions_for_image(existing_file(args.image), k=args.k, min_score=args.min_score,
                                                   rerank=args.rerank)
    return _print_hits(hits, args, "no matching captions")
