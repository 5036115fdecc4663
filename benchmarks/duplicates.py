"""Near-duplicate detection measured on Flickr8k ``dev``: hit rate on generated variants, false groups among distinct photos.

The set: every ``dev`` photo (symlinked, read in place) as a distinct original, and for a seeded sample of
them three variants written under the work folder: a 50 % resize, a quality-40 JPEG re-encode, and a 5 %
crop (95 % of the width and height kept, at a seeded offset). All are indexed with the real indexer and
encoder. Candidate pairs come from the store's range search at a loose cosine (``--floor``); each pair's
pHash and dHash distances are computed once, and then every setting of the grid (threshold x check x
max distance) is scored by grouping (connected components, as ``retrieval.duplicates`` does):

- hit rate: the share of variants grouped with their original;
- false-group rate: the share of groups that join two or more distinct originals (and of originals so joined).

The hardest distinct pairs (Flickr8k holds no bursts) are the dev pairs whose vectors, and whose captions,
are most alike: their cosine and hash distances are reported too.

    nice -n 10 python -m benchmarks.duplicates [--data ../shared/data/flickr8k] [--originals 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0
VARIANTS = ("resize50", "q40", "crop5")
THRESHOLDS = (0.50, 0.60, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
DISTANCES = (6, 8, 10, 12, 14, 16, 20)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_variant(src: Path, kind: str, dst: Path, rng: np.random.Generator) -> None:
    """Write one variant of the photo ``src`` to ``dst`` (JPEG)."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        if kind == "resize50":
            im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS).save(dst, "JPEG", quality=92)
        elif kind == "q40":
            im.save(dst, "JPEG", quality=40)
        elif kind == "crop5":
            cw, ch = round(w * 0.95), round(h * 0.95)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im.crop((x, y, x + cw, y + ch)).save(dst, "JPEG", quality=92)
        else:
            raise ValueError(kind)


def build_set(data: Path, work: Path, n_originals: int, limit: int | None
              ) -> tuple[dict[str, tuple[int, str]], list[dict]]:
    """The library folder: dev photos linked in place, variants of ``n_originals`` of them; path -> (origin, kind)."""
    rows = [json.loads(line) for line in open(data / "captions.jsonl", encoding="utf-8")]
    dev = sorted((r for r in rows if r["split"] == "dev"), key=lambda r: r["image"])[:limit]
    lib = work / "library"
    lib.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    chosen = set(rng.choice(len(dev), min(n_originals, len(dev)), replace=False).tolist())
    labels: dict[str, tuple[int, str]] = {}
    for i, r in enumerate(dev):
        src = (data / "images" / r["image"]).resolve()
        link = lib / f"photo_{i:04d}.jpg"
        os.symlink(src, link)
        labels[str(link.absolute())] = (i, "original")
        if i in chosen:
            for kind in VARIANTS:
                dst = lib / f"photo_{i:04d}_{kind}.jpg"
                make_variant(src, kind, dst, rng)
                labels[str(dst.absolute())] = (i, kind)
    return labels, dev


def score_setting(pairs: np.ndarray, cos: np.ndarray, dist: np.ndarray | None, threshold: float,
                  max_distance: int | None, origin: dict[int, int], kind: dict[int, str]) -> dict:
    """Hit and false-group rates of one setting over the precomputed candidate pairs."""
    from retrieval.duplicates import components

    keep = cos > threshold
    if dist is not None:
        keep &= dist <= max_distance
    groups = components(pairs[keep], cos[keep])
    group_of = {i: g for g, (members, _) in enumerate(groups) for i in members}
    variants = [i for i, k in kind.items() if k != "original"]
    originals = {origin[i]: i for i, k in kind.items() if k == "original"}
    hits = sum(1 for v in variants if v in group_of and group_of.get(originals[origin[v]]) == group_of[v])
    false_groups, joined = 0, 0
    for members, _ in groups:
        n = len({origin[i] for i in members})
        if n > 1:
            false_groups += 1
            joined += n
    return {"threshold": threshold, "max_distance": max_distance, "groups": len(groups),
            "hit_pct": round(100.0 * hits / max(1, len(variants)), 1),
            "hit_by_kind_pct": {k: round(100.0 * sum(1 for v in variants if kind[v] == k and v in group_of
                                                     and group_of.get(originals[origin[v]]) == group_of[v])
                                         / max(1, sum(1 for v in variants if kind[v] == k)), 1) for k in VARIANTS},
            "false_groups": false_groups,
            "false_group_pct": round(100.0 * false_groups / max(1, len(groups)), 2),
            "originals_falsely_joined_pct": round(100.0 * joined / max(1, len(originals)), 2)}


def caption_pairs(dev: list[dict], encoder, top: int) -> list[tuple[int, int, float]]:
    """The ``top`` dev pairs whose mean caption vectors are most alike: (i, j, cosine)."""
    vecs = []
    for r in dev:
        v = encoder.encode_texts(r["captions"]).mean(axis=0)
        vecs.append(v / np.linalg.norm(v))
    m = np.stack(vecs) @ np.stack(vecs).T
    np.fill_diagonal(m, -1)
    iu = np.triu_indices(len(dev), 1)
    order = np.argsort(-m[iu])[:top]
    return [(int(iu[0][k]), int(iu[1][k]), float(m[iu][k])) for k in order]


def main(argv: list[str] | None = None) -> int:
    from indexer.sync import Indexer
    from retrieval.duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_THRESHOLD, find_duplicates, hamming, photo_hash
    from retrieval.encoders import create_encoder
    from retrieval.settings import Settings
    from retrieval.store import Store

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="Flickr8k folder (default: IMGSEARCH_FLICKR8K)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--originals", type=int, default=200, help="dev photos that get variants")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N dev photos")
    ap.add_argument("--floor", type=float, default=0.5, help="loosest cosine of the candidate pairs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    data = (args.data or Settings.from_env().flickr8k).resolve()
    res: dict = {"model": args.model, "originals_with_variants": args.originals, "variants": list(VARIANTS)}
    with tempfile.TemporaryDirectory(prefix="imgsearch-dups-") as tmp:
        work = Path(tmp)
        labels, dev = build_set(data, work, args.originals, args.limit)
        res["photos"], res["dev_photos"] = len(labels), len(dev)
        encoder = create_encoder(args.model)
        t = time.monotonic()
        with Store(work / "db") as store:
            store.bind_encoder(encoder.spec, encoder.fingerprint, encoder.dim, getattr(encoder, "region_key", None))
            Indexer(encoder, store, show_progress=False, regions=False).sync(str(work / "library"))
        res["index_s"] = round(time.monotonic() - t, 1)
        _log(f"indexed {len(labels)} photos in {res['index_s']} s")
        with Store(work / "db", create=False) as store:
            rows = store.images([i for i, _ in store.image_hashes()])
            origin = {i: labels[r.path][0] for i, r in rows.items()}
            kind = {i: labels[r.path][1] for i, r in rows.items()}
            from retrieval.duplicates import candidate_pairs

            t = time.perf_counter()
            pairs, cos = candidate_pairs(store, args.floor)
            res["range_search_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            hashes = {c: {i: photo_hash(r.path, c) for i, r in rows.items()} for c in ("phash", "dhash")}
            res["hash_ms_per_photo"] = round(1000 * (time.perf_counter() - t) / (2 * len(rows)), 2)
            dist = {c: np.array([hamming(hashes[c][int(a)], hashes[c][int(b)]) for a, b in pairs], np.int64)
                    for c in hashes}
            _log(f"{len(pairs)} candidate pairs above cosine {args.floor}")
            grid = []
            for th in THRESHOLDS:
                grid.append({"check": "none", **score_setting(pairs, cos, None, th, None, origin, kind)})
                for c in ("phash", "dhash"):
                    for d in DISTANCES:
                        grid.append({"check": c, **score_setting(pairs, cos, dist[c], th, d, origin, kind)})
            res["grid"] = grid
            for c in ("none", "phash", "dhash"):  # vectors alone at any cutoff, and each hash at a loose one
                best = [g for g in grid if g["check"] == c and g["false_groups"] == 0]
                res[f"best_{c}_without_false_groups"] = max(best, key=lambda g: g["hit_pct"]) if best else None
            # the hardest distinct pairs: originals with the most alike vectors, and with the most alike captions
            orig_id = {origin[i]: i for i in rows if kind[i] == "original"}
            vecs = store.image_vectors([orig_id[o] for o in range(len(dev))])
            m = vecs @ vecs.T
            np.fill_diagonal(m, -1)
            iu = np.triu_indices(len(dev), 1)
            top = np.argsort(-m[iu])[:20]
            hard = [(int(iu[0][k]), int(iu[1][k])) for k in top]
            cap = caption_pairs(dev, encoder, 20)

            def describe(i: int, j: int) -> dict:
                a, b = orig_id[i], orig_id[j]
                return {"a": dev[i]["image"], "b": dev[j]["image"], "cosine": round(float(m[i, j]), 4),
                        "phash": hamming(hashes["phash"][a], hashes["phash"][b]),
                        "dhash": hamming(hashes["dhash"][a], hashes["dhash"][b])}

            res["hardest_by_vector"] = [describe(i, j) for i, j in hard]
            res["hardest_by_caption"] = [describe(i, j) for i, j, _ in cap]
            t = time.perf_counter()
            groups = find_duplicates(store)
            res["find_duplicates_s"] = round(time.perf_counter() - t, 2)
            res["default"] = {"threshold": DEFAULT_THRESHOLD, "max_distance": DEFAULT_MAX_DISTANCE,
                              **score_setting(pairs, cos, dist["phash"], DEFAULT_THRESHOLD, DEFAULT_MAX_DISTANCE,
                                              origin, kind)}
            res["default"]["find_duplicates_groups"] = len(groups)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['photos']} photos ({res['dev_photos']} dev originals, {args.originals} x {len(VARIANTS)} "
              f"variants); index {res['index_s']} s, range search {res['range_search_s']} s, "
              f"hash {res['hash_ms_per_photo']} ms/photo")
        print(f"{'check':6} {'cos>':>5} {'bits':>4} {'hit%':>6} {'resize':>6} {'q40':>6} {'crop':>6} "
              f"{'groups':>6} {'false':>5} {'false%':>6}")
        for g in res["grid"]:
            k = g["hit_by_kind_pct"]
            print(f"{g['check']:6} {g['threshold']:5.2f} {str(g['max_distance'] or '-'):>4} {g['hit_pct']:6.1f} "
                  f"{k['resize50']:6.1f} {k['q40']:6.1f} {k['crop5']:6.1f} {g['groups']:6d} {g['false_groups']:5d} "
                  f"{g['false_group_pct']:6.2f}")
        for name in ("hardest_by_vector", "hardest_by_caption"):
            print(name)
            for h in res[name][:10]:
                print(f"  {h['a']} {h['b']} cos {h['cosine']:.3f} phash {h['phash']} dhash {h['dhash']}")
        print("default:", res["default"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
