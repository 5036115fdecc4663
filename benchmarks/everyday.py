"""Breadth benchmark (issue 24): short queries on the everyday set and on ``sample_data/``.

Reports top-1 (the first result is relevant) and all-relevant-in-top-k (k = the number of relevant
photos), ranked as ``search`` ranks (with the encoder's hubness correction) and by plain cosine.
``python -m benchmarks.everyday [--model M] [--json] [--packages SITE_PACKAGES ...]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from retrieval.encoders.hubness import corrected_similarity
from retrieval.images import load_image

from .everyday_set import SAMPLE_DIR, build, load_manifest, relevant


def score_queries(encoder, names: list[str], images: list[Image.Image],
                  queries: list[tuple[str, set[str]]], hubness: bool = True) -> dict:
    """top-1 and all-in-top-k rates of ``queries`` over the photos, with the misses named."""
    img = encoder.encode_images(images)
    txt = encoder.encode_texts([q for q, _ in queries])
    hub = getattr(encoder, "hubness", None) if hubness else None
    sims, _ = corrected_similarity(txt @ img.T, hub, img, txt)
    top1 = allk = 0
    misses = []
    for row, (q, rel) in zip(sims, queries):
        order = [names[i] for i in np.argsort(-row, kind="stable")]
        ok1 = order[0] in rel
        okk = set(order[:len(rel)]) <= rel
        top1 += ok1
        allk += okk
        if not (ok1 and okk):
            misses.append(f"{q} -> {order[0]}")
    n = len(queries)
    return {"queries": n, "photos": len(names), "top1": top1 / n, "all_in_top_k": allk / n, "misses": misses}


def everyday_inputs(out_dir: Path, search_paths: list[str] | None = None) -> tuple[list[str], list[Image.Image], list]:
    """The everyday set's photo names, decoded photos and (query, relevant names)."""
    manifest = load_manifest()
    photos = build(out_dir, search_paths, manifest)
    names = [p.name for p in photos]
    images = [load_image(out_dir / n, target_size=224) for n in names]
    return names, images, relevant(photos, manifest)


def sample_inputs() -> tuple[list[str], list[Image.Image], list]:
    """The ``sample_data/`` photos and the manifest's queries for them."""
    names = sorted(p.name for p in SAMPLE_DIR.iterdir() if p.suffix.lower() in
                   {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff"})
    images = [load_image(SAMPLE_DIR / n, target_size=224) for n in names]
    queries = [(q, set(rel)) for q, rel in load_manifest()["sample_queries"].items()]
    return names, images, queries


def run_everyday(encoder, out_dir: Path | None = None, search_paths: list[str] | None = None,
                 log: Callable[[str], None] = lambda s: None) -> dict:
    """Flat figures for `imgsearch bench`: everyday_* and sample_* keys, corrected and plain."""
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"everyday": everyday_inputs(out_dir or Path(tmp), search_paths), "sample": sample_inputs()}
        for key, (names, images, queries) in sets.items():
            for hub, suffix in ((True, ""), (False, "_plain")):
                r = score_queries(encoder, names, images, queries, hubness=hub)
                for k, v in r.items():
                    res[f"{key}_{k}{suffix}"] = v
            log(f"{key}: {res[f'{key}_photos']} photos, {res[f'{key}_queries']} queries, top-1 "
                f"{res[f'{key}_top1']:.1%}, all relevant in top k {res[f'{key}_all_in_top_k']:.1%}")
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI entry: prints the figures (``--json``: only JSON on stdout)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.everyday", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the built set in this folder")
    ap.add_argument("--packages", nargs="*", default=None,
                    help="site-packages folders to read the source photos from (default: this Python's)")
    args = ap.parse_args(argv)
    from retrieval.encoders import create_encoder

    encoder = create_encoder(args.model)
    res = run_everyday(encoder, args.out, args.packages, log=lambda s: print(s, file=sys.stderr))
    res["model"] = encoder.spec
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
