"""Composition benchmark: does a model prefer a photo's true caption to its rewritten twin?

Pairs come from one split's captions (default ``dev``, never trained on): each caption against its colour
swap, role swap, count change and noun swap (``retrieval.training.negatives``), scored against the caption's
own photo with the dual encoder (the search score, as ``imgsearch score`` gives it) and, with ``--rerank``,
with the reranker's final fused score. Two control rows:

- ``sanity``: the true caption against an untouched caption of another photo (easy: should be near 100 %);
- ``twin_bias``: true caption against its twin on an *unrelated* photo, where both are wrong: a model that
  reads the photo is near 50 %; one that just spots generated sentences prefers the untouched caption.

    python -m benchmarks.compositional ../shared/data/flickr8k --split dev [--rerank] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

KIND_ROWS = ("colour_swap", "role_swap", "count_change", "noun_swap")
CONTROL_ROWS = ("sanity", "twin_bias")


@dataclass(frozen=True)
class Pair:
    """A photo, the text that should win (``right``) and the one that should lose (``wrong``), of one kind."""

    image: int
    right: str
    wrong: str
    kind: str


def build_pairs(captions: list[str], caption_image: np.ndarray, seed: int = 0) -> list[Pair]:
    """Every rewrite of every caption (one pair each, on its own photo), one sanity pair per photo (its first
    caption vs a caption of another photo), and one twin-bias pair per rewrite (on another photo)."""
    from retrieval.training.negatives import KINDS, rewrites

    rng = np.random.default_rng(seed)
    n_images = int(caption_image.max()) + 1
    pairs: list[Pair] = []
    first: dict[int, int] = {}
    for j, cap in enumerate(captions):
        first.setdefault(int(caption_image[j]), j)
        for kind, twin in rewrites(cap, KINDS).items():
            pairs.append(Pair(int(caption_image[j]), cap, twin, kind))
    rewritten = list(pairs)
    by_image = {i: np.nonzero(caption_image == i)[0] for i in range(n_images)}
    for i, j in sorted(first.items()):
        other = int(rng.integers(0, n_images - 1))
        other += other >= i
        pairs.append(Pair(i, captions[j], captions[int(rng.choice(by_image[other]))], "sanity"))
    for p in rewritten:
        other = int(rng.integers(0, n_images - 1))
        other += other >= p.image
        pairs.append(Pair(other, p.right, p.wrong, "twin_bias"))
    return pairs


def _features(scorer, images: list[str], rerank: bool, cache: str | None, log) -> tuple[np.ndarray, np.ndarray | None]:
    """Every photo's search vector (and reranker regions), from one forward pass each; cached in ``cache``."""
    key = hashlib.sha256(json.dumps([scorer.encoder.fingerprint, rerank and scorer.reranker.region_key,
                                     [os.path.basename(p) for p in images]]).encode()).hexdigest()[:16]
    path = cache and os.path.join(cache, f"compositional-{key}.npz")
    if path and os.path.isfile(path):
        data = np.load(path)
        return data["vectors"], (data["regions"] if rerank else None)
    t0 = time.monotonic()
    vectors, regions = [], []
    for n, p in enumerate(images):
        v, r = scorer.embed(scorer.load(p), rerank)
        vectors.append(v)
        if rerank:
            regions.append(np.asarray(r)[0])
        if (n + 1) % 200 == 0:
            log(f"  {n + 1}/{len(images)} photos embedded ({time.monotonic() - t0:.0f}s)")
    vectors_a = np.stack(vectors).astype(np.float32)
    regions_a = np.stack(regions).astype(np.float16) if rerank else None
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, vectors=vectors_a, **({"regions": regions_a} if rerank else {}))
    return vectors_a, regions_a


def score_pairs(scorer, images: list[str], pairs: list[Pair], rerank: bool, cache: str | None = None,
                log=lambda m: None) -> dict[str, np.ndarray]:
    """(right, wrong) scores of every pair: ``dual`` (search score) and, with ``rerank``, ``fused``, each (P, 2).

    Texts are encoded once for all photos (not once per photo); the first photo's scores are checked against
    ``Scorer.similarity`` / ``itm_scores``, so the batched numbers are the ones ``imgsearch score`` prints.
    """
    from retrieval.rerank import fuse

    vectors, regions = _features(scorer, images, rerank, cache, log)
    t0 = time.monotonic()
    texts = sorted({t for p in pairs for t in (p.right, p.wrong)})
    row = {t: k for k, t in enumerate(texts)}
    text_index = np.array([row[t] for p in pairs for t in (p.right, p.wrong)])
    image_index = np.repeat([p.image for p in pairs], 2)
    text_vecs = np.asarray(scorer.encoder.encode_texts(texts), np.float32)
    sims = np.einsum("pd,pd->p", text_vecs[text_index], vectors[image_index])
    hub = scorer.hubness
    if hub is not None and "image" in hub.sides:  # the search score: cosine less the photo's hubness penalty
        sims = sims - np.asarray(hub.penalties("image", vectors), np.float32)[image_index]
    out = {"dual": sims.reshape(-1, 2).astype(np.float32)}
    log(f"  dual scores of {len(texts)} texts in {time.monotonic() - t0:.0f}s")
    first = np.nonzero(image_index == image_index[0])[0]
    check = scorer.similarity(vectors[image_index[0]], [texts[t] for t in text_index[first]])
    if not np.allclose(check, sims[first], atol=1e-4):
        raise AssertionError("batched dual scores differ from Scorer.similarity")
    if rerank:
        itm = scorer.reranker.itm_pairs(texts, regions, text_index, image_index)
        check = scorer.reranker.itm_scores([texts[t] for t in text_index[first]], regions[image_index[0]][None])
        if not np.allclose(check, itm[first], atol=1e-3):
            raise AssertionError("batched ITM scores differ from itm_scores")
        out["fused"] = fuse(itm, sims, scorer.reranker.alpha).reshape(-1, 2)
        log(f"  ITM scores of {len(itm)} pairs in {time.monotonic() - t0:.0f}s")
    return out


def accuracy_table(pairs: list[Pair], scores: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per kind (and ``overall`` over the four rewrite kinds): pair count and % of pairs with right > wrong
    (ties count half), for each scorer."""
    kinds = np.array([p.kind for p in pairs])
    out = {}
    for row in (*KIND_ROWS, "overall", *CONTROL_ROWS):
        sel = np.isin(kinds, KIND_ROWS) if row == "overall" else kinds == row
        entry = {"pairs": int(sel.sum())}
        for name, s in scores.items():
            if sel.any():
                wins = (s[sel, 0] > s[sel, 1]) + 0.5 * (s[sel, 0] == s[sel, 1])
                entry[name] = round(100.0 * float(wins.mean()), 1)
        out[row] = entry
    return out


def markdown(table: dict[str, dict]) -> str:
    """The table as markdown: one row per kind, the dual encoder and the reranker side by side."""
    cols = [c for c in ("dual", "fused") if any(c in r for r in table.values())]
    names = {"dual": "dual encoder (search score)", "fused": "+ rerank (fused score)"}
    lines = ["| kind | pairs | " + " | ".join(names[c] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row, r in table.items():
        lines.append(f"| {row} | {r['pairs']} | " + " | ".join(f"{r[c]:.1f} %" if c in r else "-" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compositional", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="dataset folder: images/ + captions.jsonl with a split field")
    p.add_argument("--split", default="dev", help="split whose captions make the pairs (default dev)")
    p.add_argument("--model", default="default", help="search encoder spec (default: default)")
    p.add_argument("--rerank", action="store_true", help="also score with the reranker's final fused score")
    p.add_argument("--rerank-model", default="default", metavar="SPEC", help="reranker spec (default: default)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N photos (0: all)")
    p.add_argument("--cache", default=None, metavar="DIR", help="keep photo vectors and regions here for reruns")
    p.add_argument("--seed", type=int, default=0, help="seed of the other photos in the control rows")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON (logs go to stderr)")
    args = p.parse_args(argv)

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    from retrieval.encoders import create_encoder
    from retrieval.scoring import Scorer
    from retrieval.training.datasets import load_dataset

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    ds = load_dataset(args.dataset, split=args.split)
    if args.limit:
        ds = ds.subset(args.limit)
    encoder = create_encoder(args.model)
    reranker = None
    if args.rerank:
        from retrieval.rerank import create_reranker

        reranker = create_reranker(args.rerank_model, encoder=encoder)
    scorer = Scorer(encoder, reranker)
    pairs = build_pairs(ds.captions, ds.caption_image, seed=args.seed)
    log(f"{len(pairs)} pairs from {len(ds.captions)} {args.split} captions of {len(ds.images)} photos")
    scores = score_pairs(scorer, ds.images, pairs, args.rerank, args.cache, log)
    table = accuracy_table(pairs, scores)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = ""
    result = {"dataset": os.path.abspath(args.dataset), "split": args.split, "photos": len(ds.images),
              "encoder": encoder.spec, "reranker": reranker.spec if reranker else None,
              "alpha": reranker.alpha if reranker else None, "table": table,
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "seconds": round(time.monotonic() - t0, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(table))
        log(f"{result['seconds']}s, {encoder.spec}" + (f" + {reranker.spec}" if reranker else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
