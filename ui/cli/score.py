"""`imgsearch score`: how well texts match a photo, in the numbers a search ranks by (why a photo matched)."""

from __future__ import annotations

import argparse
from typing import Any

from ui.cli.output import emit_json, out
from ui.cli.parser import UsageError, add_common_options, add_hubness_option, existing_file


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``score`` command to the imgsearch parser."""
    p = sub.add_parser("score", help="score texts against a photo (the search score, or the reranked one)")
    p.add_argument("--image", metavar="FILE", help="the photo to score the texts against")
    p.add_argument("--text", dest="texts", action="append", default=[], metavar="T",
                   help="a text to score (repeatable)")
    p.add_argument("--pairs", metavar="FILE.jsonl",
                   help='many photos with one model load: {"image": path, "texts": [...]} a line (relative paths '
                        'from the file\'s folder); --json prints [{"image": ..., "scores": [...]}, ...] in order')
    p.add_argument("--rerank", action="store_true",
                   help="the reranker's final score (ITM logit + alpha * search score), as a reranked search orders by")
    p.add_argument("--rerank-model", default="default", metavar="SPEC", help="reranker spec (default: default)")
    add_hubness_option(p)
    add_common_options(p, "encoder spec: the one your index was built with (default: default)")
    p.set_defaults(func=cmd_score)


def _scorer(args: argparse.Namespace) -> Any:
    """The encoder (and, with --rerank, the reranker on its towers) as a Scorer."""
    from retrieval.encoders import create_encoder
    from retrieval.scoring import Scorer

    encoder = create_encoder(args.model or "default", device=args.device)
    reranker = None
    if args.rerank:
        from retrieval.rerank import create_reranker

        reranker = create_reranker(args.rerank_model, encoder=encoder, device=args.device)
    return Scorer(encoder, reranker, hubness=not args.no_hubness)


def cmd_score(args: argparse.Namespace) -> int:
    """Scores of --text against --image, or of every line of --pairs; one model load either way."""
    from retrieval.scoring import ScorePair, clean_texts, read_pairs

    if args.pairs is not None:
        if args.image is not None or args.texts:
            raise UsageError("--pairs reads photos and texts from a file: give no --image or --text beside it")
        pairs = read_pairs(args.pairs)
    else:
        if args.image is None:
            raise UsageError("give --image FILE with one or more --text T, or --pairs FILE.jsonl")
        if not args.texts:
            raise UsageError("no texts to score: give one or more --text T")
        clean_texts(args.texts)
        pairs = [ScorePair(args.image, existing_file(args.image), tuple(args.texts))]
    scorer = _scorer(args)
    results = [(p, scorer.score(p.path, p.texts, rerank=args.rerank)) for p in pairs]
    if args.json:
        rows = [{"image": p.image, "scores": [round(float(s), 6) for s in scores]} for p, scores in results]
        emit_json(rows if args.pairs is not None else rows[0])
        return 0
    for p, scores in results:
        if args.pairs is not None:
            out(f"== {p.image}")
        for text, s in zip(p.texts, scores):
            out(f"{float(s):9.4f}  {text}")
    return 0
