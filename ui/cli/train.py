"""`imgsearch train` and `imgsearch fit-hubness`: fit projection heads, and their search-time hubness correction,
on a captioned dataset (images/ + captions.jsonl)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

from ui.cli.output import emit_json, log, out
from ui.cli.parser import UsageError, add_common_options


def cmd_train(args: argparse.Namespace) -> int:
    """Train heads on --train-split (selected on --dev-split) and save them, with a model card, to --out."""
    import torch

    from retrieval.encoders import create_encoder
    from retrieval.encoders.heads import save_heads
    from retrieval.training.datasets import load_dataset
    from retrieval.training.features import compute_features
    from retrieval.training.heads import TrainOptions, base_spec_for, model_card, train_heads
    from retrieval.training.short_texts import compute_short_texts
    from retrieval.training.twins import twin_captions

    if (args.epochs is not None and args.epochs < 1) or args.views < 0 or args.members < 1:
        raise UsageError("--epochs and --members must be >= 1 and --views >= 0")
    width = TrainOptions().embed_dim
    if args.ensemble_dim and not (args.members > 1 and 0 < args.ensemble_dim <= width * args.members):
        raise UsageError(f"--ensemble-dim needs --members > 1 and must be between 1 and {width} x --members")
    if not 0.0 <= args.blend <= 1.0:
        raise UsageError("--blend must be between 0 and 1")
    if args.short_texts < 0:
        raise UsageError("--short-texts must be >= 0")
    if args.composition_negatives and args.text_layers != 1:
        raise UsageError("--composition-negatives needs --text-layers 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    base_spec = base_spec_for(args.model)
    train_set = load_dataset(args.dataset, split=args.train_split)
    dev_set = None if args.dev_split in ("", "none") else load_dataset(args.dataset, split=args.dev_split)
    encoder = create_encoder(base_spec, device=args.device)
    log(f"training heads on {encoder.spec}: {len(train_set.images)} train images"
        + (f", selecting on {len(dev_set.images)} {args.dev_split} images" if dev_set else ""))
    cache = args.cache or os.path.join(tempfile.gettempdir(), "imgsearch-features")
    t0 = time.monotonic()
    tokens = args.text_layers > 0
    train_feats = compute_features(encoder, train_set, views=args.views, seed=args.seed, cache_dir=cache,
                                   show_progress=not args.no_progress, log=log, tokens=tokens)
    dev_feats = (compute_features(encoder, dev_set, views=0, seed=args.seed, cache_dir=cache,
                                  show_progress=not args.no_progress, log=log, tokens=tokens) if dev_set else None)
    short = (compute_short_texts(encoder, train_set, cache, tokens=tokens, show_progress=not args.no_progress)
             if args.short_texts else None)
    twins = (twin_captions(encoder, train_set, cache, show_progress=not args.no_progress)
             if args.composition_negatives else None)
    feature_seconds = time.monotonic() - t0
    tuned = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "patience", "hidden_dim", "dropout",
                                           "weight_decay", "text_lr") if getattr(args, k) is not None}
    for key in ("image_inputs", "text_inputs"):
        names = getattr(args, key, None)
        if names:
            tuned[key] = [n.strip() for n in names.split(",") if n.strip()]
    if args.label_smoothing is not None:
        tuned["label_smoothing"] = args.label_smoothing
    options = TrainOptions(seed=args.seed, blend=args.blend, members=args.members, ensemble_dim=args.ensemble_dim,
                           text_layers=args.text_layers, flip_average=args.flip_average,
                           short_texts=args.short_texts, composition_negatives=args.composition_negatives, **tuned)
    result = train_heads(train_feats, dev_feats, options, base_spec, show_progress=not args.no_progress, short=short,
                         twins=twins)
    command = "imgsearch " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    save_heads(args.out, result.config, result.state_dict,
               model_card(result, train_set.root, command, feature_seconds), int8=args.int8)
    summary = {"out": os.path.abspath(args.out), "spec": f"heads:{os.path.abspath(args.out)}", "base": base_spec,
               "feature_seconds": round(feature_seconds, 1), **result.summary()}
    if args.json:
        emit_json(summary)
    else:
        for key in ("blended", "learned_only"):
            r = result.dev.get(key)
            if r:
                log(f"dev {key}: t2i R@1/5/10 " + "/".join(f"{v:.1f}" for v in r["text_to_image"].values())
                    + ", i2t R@1/5/10 " + "/".join(f"{v:.1f}" for v in r["image_to_text"].values()))
        out(f"heads written to {summary['out']} (use --model {summary['spec']})")
    return 0


def cmd_fit_hubness(args: argparse.Namespace) -> int:
    """Fit a CSLS hubness correction into a trained encoder's heads folder (or remove it where it does not help)."""
    import torch

    from retrieval.encoders import create_encoder
    from retrieval.encoders.heads import TrainedEncoder, set_search_options
    from retrieval.encoders.hubness import HUBNESS_FILE
    from retrieval.training.datasets import load_dataset
    from retrieval.training.hubness import fit_hubness

    if args.bank < 50:
        raise UsageError("--bank must be at least 50")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.blend is not None and not 0.0 <= args.blend <= 1.0:
        raise UsageError("--blend must be between 0 and 1")
    encoder = create_encoder(args.model or "default", device=args.device)
    if not isinstance(encoder, TrainedEncoder):
        raise UsageError(f"{encoder.spec} has no heads folder to hold a hubness correction (use default or heads:<folder>)")
    if encoder.spec == "default-fast":
        raise UsageError("fit the correction for 'default': 'default-fast' uses the same heads folder and banks")
    if args.short_text_blend is not None and not 0.0 <= args.short_text_blend <= 1.0:
        raise UsageError("--short-text-blend must be between 0 and 1")
    if args.blend is not None or args.flip_average is not None or args.short_text_blend is not None:
        config = set_search_options(encoder.folder, args.blend, None if args.flip_average is None
                                    else args.flip_average == "on", args.short_text_blend)
        log(f"{encoder.folder}: blend {config.blend}, short texts {config.short_text_blend}, "
            f"flip averaging {'on' if config.flip_average else 'off'}")
        encoder = TrainedEncoder(encoder.folder, spec=encoder.spec, base=encoder.base)  # the towers are reused
    train_set = load_dataset(args.dataset, split=args.train_split)
    dev_set = load_dataset(args.dataset, split=args.dev_split)
    log(f"fitting a hubness correction for {encoder.spec}: banks of {args.bank} {args.train_split} captions and photos, "
        f"k and beta chosen on {len(dev_set.images)} {args.dev_split} images")
    result = fit_hubness(encoder, train_set, dev_set, bank=args.bank, seed=args.seed, show_progress=not args.no_progress)
    path = os.path.join(encoder.folder, HUBNESS_FILE)
    if result.hubness is None:
        log("the correction does not help on dev; nothing written")
        if os.path.exists(path):
            os.remove(path)
    else:
        result.hubness.save(encoder.folder)
    summary = {"out": path if result.hubness else None, "model": encoder.spec, **result.summary()}
    if args.json:
        emit_json(summary)
    else:
        for key in ("dev_without", "dev_with"):
            r = summary[key]
            log(f"{key}: t2i R@1/5/10 " + "/".join(f"{v:.1f}" for v in r["text_to_image"].values())
                + ", i2t R@1/5/10 " + "/".join(f"{v:.1f}" for v in r["image_to_text"].values()))
        if result.hubness:
            out(f"hubness correction written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``fit-hubness`` commands to the imgsearch parser."""
    p = sub.add_parser("train", help="train projection heads (symmetric InfoNCE) on a captioned dataset")
    p.add_argument("dataset", help="dataset folder: images/ + captions.jsonl with a split field")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for heads.safetensors, heads.json, MODEL_CARD.md")
    add_common_options(p, "base encoder spec: bridge (= default, default-fast), bridge-lite1, bridge-lite2 (larger image towers, pip install imgsearch[lite]), or hf:<hub id or folder>")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--views", type=int, default=2, metavar="K", help="augmented views per training image (+1 clean)")
    p.add_argument("--cache", default=None, metavar="DIR", help="feature cache folder (default: <tmp>/imgsearch-features)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blend", type=float, default=0.7, metavar="W",
                   help="weight of the learned similarity; 1-W stays with the base encoder (default 0.7)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--dev-split", default="dev", help="split for model selection ('none' to keep the last epoch)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--hidden-dim", type=int, default=None, help="MLP width of both heads")
    p.add_argument("--members", type=int, default=1, metavar="N",
                   help="train N head pairs (seeds SEED..SEED+N-1) and ship them as one ensemble: vectors grow by"
                        " 256 per extra member unless --ensemble-dim (default 1)")
    p.add_argument("--int8", action="store_true",
                   help="store the heads' large matrices as int8 with a scale per row (half the size of float16)")
    p.add_argument("--ensemble-dim", type=int, default=0, metavar="D",
                   help="with --members: project the members' joined embedding to D dims (PCA on train), e.g. 256")
    p.add_argument("--text-layers", type=int, default=0, choices=(0, 1), metavar="N",
                   help="1: also train a copy of the MiniLM text tower's last layer (bundled towers; slower training)")
    p.add_argument("--text-lr", type=float, default=None, help="peak learning rate of that layer (default 1e-4)")
    p.add_argument("--flip-average", action="store_true",
                   help="the saved encoder embeds each photo as the mean of it and its mirror image (more recall,"
                        " half the photo indexing speed; training and its dev figures are unchanged)")
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--image-inputs", default=None, metavar="A,B",
                   help="image head inputs, comma-separated (bundled towers: pooled, maxpool, grid, logprobs, bridge)")
    p.add_argument("--text-inputs", default=None, metavar="A,B",
                   help="text head inputs, comma-separated (bundled towers: minilm, minilm_max, cls)")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--short-texts", type=float, default=0.0, metavar="W",
                   help="also train on the captions' short noun phrases (\"a black dog\", \"dog\") with loss weight W"
                        " (default 0: off)")
    p.add_argument("--composition-negatives", action="store_true",
                   help="add each caption's rewritten twin (colours or roles swapped, a count or noun changed) to the"
                        " texts each photo is told apart from (needs --text-layers 1)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after N epochs without a better dev score")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fit-hubness", help="fit a search-time hubness correction (CSLS) for trained heads")
    p.add_argument("dataset", help="dataset folder: images/ + captions.jsonl with a split field")
    add_common_options(p, "trained encoder whose heads folder receives hubness.safetensors: default, or heads:<folder>")
    p.add_argument("--bank", type=int, default=2000, metavar="N", help="train captions and photos kept as banks (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-split", default="train")
    p.add_argument("--dev-split", default="dev", help="split on which k and beta are chosen")
    p.add_argument("--blend", type=float, default=None, metavar="W",
                   help="first set the heads' blend w (weight of the learned similarity) in heads.json; no retraining")
    p.add_argument("--short-text-blend", type=float, default=None, metavar="W",
                   help="first set the blend w of texts of 1-3 words (queries such as 'kitty') in heads.json")
    p.add_argument("--flip-average", choices=("on", "off"), default=None,
                   help="first turn averaging each photo with its mirror image on or off in heads.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fit_hubness)
