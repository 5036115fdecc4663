"""``imgsearch train-reranker``: fit the cross-attention fusion reranker on a captioned dataset."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

from ui.cli.output import emit_json, log, out
from ui.cli.parser import UsageError, add_common_options


def cmd_train_reranker(args: argparse.Namespace) -> int:
    """Train the fusion reranker over the encoder's candidates and save it, with a model card, to --out."""
    import torch

    from retrieval.encoders import create_encoder
    from retrieval.rerank.fusion import save_reranker
    from retrieval.training.datasets import load_dataset
    from retrieval.training.features import compute_rerank_features
    from retrieval.training.options import RerankTrainOptions
    from retrieval.training.reranker import dual_similarity, model_card, train_reranker
    from retrieval.training.twins import twin_captions

    if args.epochs < 1 or args.views < 0 or args.hard_k < 1 or args.negatives < 1:
        raise UsageError("--epochs, --hard-k and --negatives must be >= 1 and --views >= 0")
    if not 0 <= args.hard_negatives <= args.negatives:
        raise UsageError("--hard-negatives must be between 0 and --negatives")
    if args.compositional_negatives < 0:
        raise UsageError("--compositional-negatives must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = load_dataset(args.dataset, split=args.train_split)
    dev_set = None if args.dev_split in ("", "none") else load_dataset(args.dataset, split=args.dev_split)
    encoder = create_encoder(args.model or "default", device=args.device)
    log(f"training a reranker over {encoder.spec}: {len(train_set.images)} train images"
        + (f", selecting on {len(dev_set.images)} {args.dev_split} images" if dev_set else ""))
    cache = args.cache or os.path.join(tempfile.gettempdir(), "imgsearch-features")
    t0 = time.monotonic()
    progress = not args.no_progress
    train_feats = compute_rerank_features(encoder, train_set, views=args.views, seed=args.seed, cache_dir=cache,
                                          show_progress=progress, log=log)
    train_sims = dual_similarity(encoder, train_set, cache, show_progress=progress)
    dev_feats = dev_sims = None
    if dev_set is not None:
        dev_feats = compute_rerank_features(encoder, dev_set, views=0, seed=args.seed, cache_dir=cache,
                                            show_progress=progress, log=log)
        dev_sims = dual_similarity(encoder, dev_set, cache, show_progress=progress)
    twins = None
    if args.compositional_negatives:
        twins = twin_captions(encoder, train_set, cache, show_progress=progress)  # from train captions only
        log(f"compositional negatives: {twins.count} rewrites of {sum(1 for t in twins.of if t)} of"
            f" {len(twins.of)} {args.train_split} captions, {args.compositional_negatives} per image list")
    feature_seconds = time.monotonic() - t0
    options = RerankTrainOptions(compositional_negatives=args.compositional_negatives,epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, hard_k=args.hard_k,
                                 negatives=args.negatives, hard_negatives=args.hard_negatives,
                                 patience=args.patience, seed=args.seed, width=args.width, layers=args.layers,
                                 heads=args.heads, rerank_k=args.rerank_k, region_mlp=not args.linear_regions,
                                 self_attention=args.self_attention, itc_weight=args.itc_weight,
                                 init_from=args.init_from, warmup_epochs=args.warmup_epochs,
                                 region_head=args.region_head)
    from retrieval.training.heads import base_spec_for

    from retrieval.rerank.towers import base_towers

    result = train_reranker(train_feats, train_sims, dev_feats, dev_sims, options,
                            base_spec_for(_base_of(encoder)), show_progress=progress, log=log,
                            towers=base_towers(encoder), twins=twins)
    command = "imgsearch " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    save_reranker(args.out, result.config, result.state_dict,
                  model_card(result, train_set.root, command, feature_seconds, encoder.spec))
    summary = {"out": os.path.abspath(args.out), "spec": f"fusion:{os.path.abspath(args.out)}",
               "encoder": encoder.spec, "feature_seconds": round(feature_seconds, 1),
               "train_seconds": round(result.seconds, 1), "best_epoch": result.best_epoch,
               "alpha": result.config.alpha,
               "dev": {k: result.dev[k] for k in ("without", "with")} if result.dev else {}}
    if args.json:
        emit_json(summary)
    else:
        for key in ("without", "with"):
            r = summary["dev"].get(key)
            if r:
                log(f"dev {key} rerank: t2i R@1/5/10 " + "/".join(f"{v:.1f}" for v in r["text_to_image"].values())
                    + ", i2t R@1/5/10 " + "/".join(f"{v:.1f}" for v in r["image_to_text"].values()))
        out(f"reranker written to {summary['out']} (use --rerank --rerank-model {summary['spec']})")
    return 0


def _base_of(encoder) -> str:
    base = getattr(encoder, "base", None)
    return base.spec if base is not None else encoder.spec


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train-reranker`` command to the imgsearch parser."""
    from retrieval.training.options import RerankTrainOptions

    p = sub.add_parser("train-reranker", help="train the cross-attention fusion reranker (ITM with hard negatives)")
    p.add_argument("dataset", help="dataset folder: images/ + captions.jsonl with a split field")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for reranker.safetensors, reranker.json, MODEL_CARD.md")
    add_common_options(p, "the search encoder whose candidates are reranked and whose towers give regions (default: default)")
    defaults = RerankTrainOptions()
    p.add_argument("--epochs", type=int, default=defaults.epochs,
                   help="an epoch pairs every image with one of its captions")
    p.add_argument("--views", type=int, default=1, metavar="K", help="augmented views per training image (+1 clean)")
    p.add_argument("--cache", default=None, metavar="DIR", help="feature cache folder (default: <tmp>/imgsearch-features)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--train-split", default="train")
    p.add_argument("--dev-split", default="dev", help="split for model selection and alpha ('none': last epoch)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--negatives", type=int, default=defaults.negatives, help="negatives per list (each direction)")
    p.add_argument("--hard-negatives", type=int, default=defaults.hard_negatives,
                   help="of those, how many come from the dual encoder's top K (the rest are random)")
    p.add_argument("--hard-k", type=int, default=defaults.hard_k, help="hard negatives come from the dual encoder's top K")
    p.add_argument("--rerank-k", type=int, default=defaults.rerank_k, help="candidates reranked when measuring dev recall")
    p.add_argument("--patience", type=int, default=defaults.patience)
    p.add_argument("--width", type=int, default=defaults.width)
    p.add_argument("--layers", type=int, default=defaults.layers)
    p.add_argument("--heads", type=int, default=defaults.heads)
    p.add_argument("--self-attention", action="store_true", help="add text self-attention to every fusion layer")
    p.add_argument("--region-head", action="store_true",
                   help="start the region path with a frozen copy of the image tower's 1x1 head (320 -> 1280 channels)")
    p.add_argument("--linear-regions", action="store_true", help="a linear map (not an MLP) from regions to the fusion width")
    p.add_argument("--itc-weight", type=float, default=defaults.itc_weight,
                   help="weight of an in-batch contrastive loss on the fusion's inputs (align before fuse)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="fine-tune this reranker folder instead of starting from random weights")
    p.add_argument("--compositional-negatives", type=int, default=defaults.compositional_negatives, metavar="N",
                   help="add N composition rewrites of the image's train captions (colour, role, count, noun swaps)"
                        " to each image's caption list as hard negatives (default 0: none)")
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_reranker)
