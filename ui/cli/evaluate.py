"""`imgsearch eval DATASET`: recall@1/5/10 in both directions on a captioned dataset folder."""

from __future__ import annotations

import argparse

from ui.cli.output import emit_json, log, out
from ui.cli.parser import UsageError, add_common_options, add_hubness_option, add_rerank_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command to the imgsearch parser."""
    p = sub.add_parser("eval", help="recall@1/5/10 on a dataset folder (images/ + captions.jsonl)")
    p.add_argument("dataset")
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--tune-alpha", action="store_true",
                   help="with --rerank: report the best fusion alpha per direction on this split, by R@1 + R@5 "
                        "(and R@1, R@5 at each alpha tried)")
    p.add_argument("--no-progress", action="store_true")
    add_rerank_options(p)
    add_hubness_option(p)
    add_common_options(p, "encoder spec (default: default)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate an encoder (and optionally a reranker) on the dataset: a recall table, or JSON."""
    import time

    from retrieval.encoders import create_encoder
    from retrieval.training.datasets import load_dataset
    from retrieval.training.evaluate import evaluate

    if args.tune_alpha and not args.rerank:
        raise UsageError("--tune-alpha goes with --rerank")
    dataset = load_dataset(args.dataset, split=args.split)
    if args.limit:
        dataset = dataset.subset(args.limit)
    encoder = create_encoder(args.model or "default", device=args.device)
    reranker = None
    if args.rerank:
        from retrieval.rerank import create_reranker

        reranker = create_reranker(args.rerank_model, encoder=encoder, device=args.device)
    log(f"evaluating {encoder.spec} on {len(dataset.images)} images, {len(dataset.captions)} captions"
        + (f", reranking the top {args.rerank_k} with {reranker.spec}" if reranker else ""))
    t0 = time.monotonic()
    result = evaluate(encoder, dataset, show_progress=not args.no_progress, reranker=reranker, rerank_k=args.rerank_k,
                      tune_alpha=args.tune_alpha, hubness=not args.no_hubness)
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
