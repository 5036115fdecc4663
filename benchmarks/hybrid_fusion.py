"""Hybrid text search on a partly captioned library: how to fuse pixel, caption and lexical scores.

The protocol: all Flickr8k ``dev`` photos under neutral names, a fixed seeded half with
caption 0 as their sidecar caption, every photo queried with its caption 4. Pixel scores are the
product's (cosine minus the hubness penalty), caption scores the cosine between the query and the
stored caption vector, lexical scores BM25 from an in-memory FTS5 table built as the store builds it.
Fusion variants are compared by R@1/R@5 on the captioned half, the uncaptioned half and overall; the
defaults of ``retrieval.hybrid.FusionParams`` are the ones chosen here (the best overall R@1 among
the variants that keep the uncaptioned half at least at pixels only), and a two-fold split
(choose on one half of the queries, report on the other) shows how much the choice overfits.

    python -m benchmarks.hybrid_fusion [--data ../shared/data/flickr8k] [--cache /tmp/hybrid_cache.npz]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.hybrid import FusionParams, Parts, fuse
from retrieval.terms import FTS_TOKENIZE, STOPWORDS, fts_query, query_tokens

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "flickr8k"
DEFAULT_CACHE = Path("/tmp/hybrid_cache.npz")
SEED = 0
CANDIDATES = 200  # as the product: the nearest photos by cosine and the nearest captions, plus lexical matches
QUERY_CAPTION, SIDECAR_CAPTION = 4, 0
PLAIN_TOKENIZE = "unicode61 remove_diacritics 2"  # the alternative measured: no stemming

Variant = Callable[[dict, np.ndarray], np.ndarray]


def embed_dev(data: Path, cache: Path) -> dict:
    """Embeddings of the dev photos and captions with the default encoder, cached in ``cache``."""
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    from PIL import Image

    from retrieval.encoders import create_encoder

    rows = [json.loads(line) for line in open(data / "captions.jsonl", encoding="utf-8")]
    dev = sorted((r for r in rows if r["split"] == "dev"), key=lambda r: r["image"])
    enc = create_encoder("default")
    vecs = []
    for s in range(0, len(dev), 32):
        images = [Image.open(data / "images" / r["image"]).convert("RGB") for r in dev[s:s + 32]]
        vecs.append(enc.encode_images(images))
        print(f"embedded {s + len(images)}/{len(dev)} photos", file=sys.stderr, flush=True)
    img = np.concatenate(vecs).astype(np.float32)
    texts = np.array([r["captions"][:5] for r in dev]).astype(str)
    cap = enc.encode_texts([t for row in texts for t in row]).astype(np.float32).reshape(len(dev), 5, -1)
    hub = getattr(enc, "hubness", None)
    pen = hub.penalties("image", img) if hub is not None else None
    out = {"images": np.array([r["image"] for r in dev]), "img": img, "cap": cap, "texts": texts,
           "pen": np.zeros(len(img), np.float32) if pen is None else pen.astype(np.float32)}
    if hub is not None and "image" in hub.sides:
        out["ref"] = hub.sides["image"].bank.astype(np.float32)
    np.savez(cache, **out)
    return out


def lexical_scores(texts: list[str], captioned: np.ndarray, queries: list[str], tokenize: str,
                   require_all: bool) -> np.ndarray:
    """BM25 (higher is better) of each query against the sidecar captions; NaN where a photo does not match."""
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE t USING fts5(caption, name, folder, tokenize='{tokenize}')")
    db.executemany("INSERT INTO t(rowid, caption, name, folder) VALUES (?, ?, '', '')",
                   [(int(i), texts[i]) for i in np.flatnonzero(captioned)])
    out = np.full((len(queries), len(texts)), np.nan, np.float32)
    for q, text in enumerate(queries):
        expr = fts_query(text, require_all=require_all)
        if expr is None:
            continue
        for rowid, score in db.execute("SELECT rowid, bm25(t) FROM t WHERE t MATCH ?", (expr,)):
            out[q, rowid] = -score
    db.close()
    return out


def build(data: Path, cache: Path, candidates: int) -> dict:
    """Score matrices (queries x photos) for the protocol, and which photos are candidates of each query."""
    e = embed_dev(data, cache)
    n = len(e["img"])
    captioned = np.zeros(n, bool)
    captioned[np.random.default_rng(SEED).permutation(n)[: n // 2]] = True
    texts = [str(t) for t in e["texts"][:, SIDECAR_CAPTION]]
    queries = [str(t) for t in e["texts"][:, QUERY_CAPTION]]
    qv = e["cap"][:, QUERY_CAPTION]
    cos = qv @ e["img"].T
    pixel = cos - e["pen"][None, :]
    capsim = np.where(captioned[None, :], qv @ e["cap"][:, SIDECAR_CAPTION].T, np.nan).astype(np.float32)
    lex = {(tok, mode): lexical_scores(texts, captioned, queries, tok, mode)
           for tok in (FTS_TOKENIZE, PLAIN_TOKENIZE) for mode in (False, True)}
    cand = np.ones_like(cos, bool)
    if candidates:
        cand[:] = False
        rows = np.arange(n)[:, None]
        cand[rows, np.argsort(-cos, axis=1)[:, :candidates]] = True
        capped = np.where(captioned[None, :], capsim, -np.inf)
        cand[rows, np.argsort(-capped, axis=1)[:, :candidates]] |= captioned[np.argsort(-capped, axis=1)[:, :candidates]]
        for m in lex.values():
            cand |= ~np.isnan(m)
    ref = qv @ e["ref"].T if "ref" in e else None
    return {"pixel": pixel, "caption": capsim, "lex": lex, "cand": cand, "captioned": captioned, "ref": ref,
            "texts": texts, "queries": queries}


def masked_z(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row standardisation of ``x`` over ``mask``; 0 outside it."""
    xm = np.where(mask, x, 0.0)
    cnt = np.maximum(mask.sum(1, keepdims=True), 1)
    mu = xm.sum(1, keepdims=True) / cnt
    sd = np.sqrt((np.where(mask, (x - mu) ** 2, 0.0)).sum(1, keepdims=True) / cnt)
    return np.where(mask, (x - mu) / np.maximum(sd, 1e-6), 0.0)


def ranks(scores: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Rank (1 = first) of each query's own photo among its candidates; beyond the list when not a candidate."""
    s = np.where(cand, scores, -np.inf)
    own = s[np.arange(len(s)), np.arange(len(s))]
    return np.where(np.isfinite(own), (s > own[:, None]).sum(1) + 1, 10 ** 6)


def report(name: str, r: np.ndarray, captioned: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """R@1/R@5 on the captioned half, the uncaptioned half and overall (over ``rows`` where given)."""
    sel = np.ones(len(r), bool) if rows is None else rows
    out = {"variant": name}
    for part, m in (("cap", captioned & sel), ("uncap", ~captioned & sel), ("all", sel)):
        for k in (1, 5):
            out[f"{part}_R@{k}"] = round(100.0 * float((r[m] <= k).mean()), 1)
    return out


# ---- the variants (scores over the candidate set; higher is better) ----

def v_pixels(d: dict, p: dict) -> np.ndarray:
    """Pixels only: today's text search."""
    return d["pixel"]


def v_bonus(d: dict, p: dict) -> np.ndarray:
    """Raw cosine plus a weighted raw caption cosine: the naive bonus that buries uncaptioned photos."""
    return d["pixel"] + p["w"] * np.nan_to_num(d["caption"], nan=0.0)


def caption_z(d: dict, p: dict) -> np.ndarray:
    """Caption similarity standardised per query: over a reference bank of captions, or over candidates."""
    has = d["cand"] & ~np.isnan(d["caption"])
    if p.get("ref") and d["ref"] is not None:
        mu, sd = d["ref"].mean(1, keepdims=True), d["ref"].std(1, keepdims=True)
        return np.where(has, (d["caption"] - mu) / sd, 0.0)
    return masked_z(np.nan_to_num(d["caption"]), has)


def lex_term(d: dict, p: dict) -> np.ndarray:
    """BM25 over matched candidates, scaled by the query's best match (0 where no match)."""
    if not p.get("lw"):
        return 0.0
    m = d["lex"][(p.get("tok", FTS_TOKENIZE), False)]
    best = np.nanmax(np.where(np.isnan(m), -np.inf, m), axis=1, keepdims=True)
    return p["lw"] * np.where(np.isnan(m), 0.0, m / np.maximum(best, 1e-6))


def tier(d: dict, p: dict) -> np.ndarray:
    """A lift above every non-matching photo for photos that match all (or any) of the query's words."""
    if not p.get("tier"):
        return 0.0
    m = d["lex"][(p.get("tok", FTS_TOKENIZE), p["tier"] == "all")]
    return np.where(np.isnan(m), 0.0, 1e3)


def v_zsum(d: dict, p: dict) -> np.ndarray:
    """z(pixel) + w z(caption); an uncaptioned photo counts as an average caption."""
    zp = masked_z(d["pixel"], d["cand"])
    return zp + p["w"] * caption_z(d, p) + lex_term(d, p) + tier(d, p)


def v_gated(d: dict, p: dict) -> np.ndarray:
    """z(pixel) + w max(0, z(caption) - g): a caption lifts its photo only when it matches well."""
    zp = masked_z(d["pixel"], d["cand"])
    return zp + p["w"] * np.maximum(0.0, caption_z(d, p) - p["g"]) + lex_term(d, p) + tier(d, p)


def v_impute(d: dict, p: dict) -> np.ndarray:
    """z(pixel) + w z(caption), an uncaptioned photo's caption z imputed as rho z(pixel)."""
    zp = masked_z(d["pixel"], d["cand"])
    zc = caption_z(d, p)
    has = d["cand"] & ~np.isnan(d["caption"])
    return zp + p["w"] * np.where(has, zc, p["rho"] * zp) + lex_term(d, p) + tier(d, p)


def v_max(d: dict, p: dict) -> np.ndarray:
    """max(z(pixel), a z(caption) - b) over the parts a photo has."""
    zp = masked_z(d["pixel"], d["cand"])
    has = d["cand"] & ~np.isnan(d["caption"])
    return np.where(has, np.maximum(zp, p["w"] * caption_z(d, p) - p["g"]), zp) + lex_term(d, p) + tier(d, p)


def v_rrf(d: dict, p: dict) -> np.ndarray:
    """Reciprocal rank fusion of the pixel list and the caption list (k = p["k"])."""
    k = p["k"]
    px = np.where(d["cand"], d["pixel"], -np.inf)
    rp = np.argsort(np.argsort(-px, axis=1), axis=1) + 1
    has = d["cand"] & ~np.isnan(d["caption"])
    cx = np.where(has, d["caption"], -np.inf)
    rc = np.argsort(np.argsort(-cx, axis=1), axis=1) + 1
    return 1.0 / (k + rp) + p["w"] * np.where(has, 1.0 / (k + rc), 0.0) + lex_term(d, p) / 100 + tier(d, p)


def pixel_z(d: dict) -> np.ndarray:
    """Pixel scores standardised over each query's nearest CANDIDATES photos (as the product does)."""
    top = np.sort(d["pixel"], axis=1)[:, ::-1][:, :CANDIDATES]
    return (d["pixel"] - top.mean(1, keepdims=True)) / top.std(1, keepdims=True)


def v_evidence(d: dict, p: dict) -> np.ndarray:
    """z(pixel) + max(-c, w (z(caption) - g)): a caption is evidence both ways, a non-match costs at most c."""
    p = {**p, "ref": True}
    has = d["cand"] & ~np.isnan(d["caption"])
    return pixel_z(d) + np.where(has, np.maximum(-p["c"], p["w"] * (caption_z(d, p) - p["g"])), 0.0) \
        + lex_term(d, p) + tier(d, p)


def v_module(d: dict, p: dict) -> np.ndarray:
    """``retrieval.hybrid.fuse`` itself, query by query (the shipped defaults unless overridden)."""
    params = replace(FusionParams(), **p.get("params", {}))
    lex_any = d["lex"][(FTS_TOKENIZE, False)]
    lex_all = d["lex"][(FTS_TOKENIZE, True)]
    top = np.sort(d["pixel"], axis=1)[:, ::-1][:, :CANDIDATES]
    out = np.full(d["pixel"].shape, -np.inf)
    for q in range(len(out)):
        idx = np.flatnonzero(d["cand"][q])
        ref = d["ref"][q]
        parts = Parts(pixel=d["pixel"][q, idx], pixel_center=float(top[q].mean()), pixel_scale=float(top[q].std()),
                      caption=d["caption"][q, idx], caption_center=float(ref.mean()), caption_scale=float(ref.std()),
                      lexical=lex_any[q, idx], all_words=~np.isnan(lex_all[q, idx]))
        out[q, idx] = fuse(parts, params).scores
    return out


def variants() -> list[tuple[str, Variant, dict]]:
    """Every variant measured, with its parameters."""
    out: list[tuple[str, Variant, dict]] = [("pixels only", v_pixels, {})]
    out += [(f"naive bonus w={w}", v_bonus, {"w": w}) for w in (0.5, 1.0)]
    for ref in (False, True):
        tag = "ref" if ref else "cand"
        out += [(f"z-sum[{tag}] w={w}", v_zsum, {"w": w, "ref": ref}) for w in (0.5, 1.0, 1.5)]
        out += [(f"z-impute[{tag}] w={w} rho={r}", v_impute, {"w": w, "rho": r, "ref": ref})
                for w in (1.0, 1.5) for r in (0.3, 0.5)]
        out += [(f"z-gated[{tag}] w={w} g={g}", v_gated, {"w": w, "g": g, "ref": ref})
                for w in (0.5, 1.0, 1.5, 2.0) for g in (0.0, 1.0, 2.0, 3.0)]
        out += [(f"z-max[{tag}] a={w} b={g}", v_max, {"w": w, "g": g, "ref": ref})
                for w in (1.0, 1.5) for g in (0.0, 1.0, 2.0)]
    out += [(f"rrf k={k} w={w}", v_rrf, {"k": k, "w": w}) for k in (10, 60) for w in (0.5, 1.0)]
    out += [(f"evidence w={w} g={g} c={c}", v_evidence, {"w": w, "g": g, "c": c})
            for w in (1.0, 1.5, 2.0, 2.5) for g in (3.5, 4.0, 4.5) for c in (0.5, 1.0, 1.5)]
    return out


def lexical_variants(best: tuple[str, Variant, dict]) -> list[tuple[str, Variant, dict]]:
    """The best caption fusion with BM25 added softly, as an all-words tier, and with either tokenizer."""
    name, fn, p = best
    out = []
    for tok, tag in ((FTS_TOKENIZE, "porter"), (PLAIN_TOKENIZE, "plain")):
        for lw in (0.25, 0.5, 1.0):
            out.append((f"{name} +bm25[{tag}] {lw}", fn, {**p, "lw": lw, "tok": tok}))
        out.append((f"{name} +tier[{tag}] all words", fn, {**p, "tier": "all", "tok": tok}))
        out.append((f"{name} +tier[{tag}] any word", fn, {**p, "tier": "any", "tok": tok}))
        out.append((f"{name} +bm25[{tag}] 0.5 +tier all", fn, {**p, "lw": 0.5, "tier": "all", "tok": tok}))
    return out


def rare_words(d: dict) -> dict[int, str]:
    """For each captioned photo, the rarest content word of its caption when no other caption has it."""
    toks = {i: set(query_tokens(t)) - STOPWORDS for i, t in enumerate(d["texts"]) if d["captioned"][i]}
    df: dict[str, int] = {}
    for s in toks.values():
        for t in s:
            df[t] = df.get(t, 0) + 1
    out = {}
    for i, s in toks.items():
        alpha = sorted(t for t in s if df[t] == 1 and t.isalpha() and len(t) >= 3)
        if alpha:
            out[i] = alpha[0]
    return out


def word_vectors(words: list[str], cache: Path) -> np.ndarray:
    """Text vectors of single-word queries, cached beside the dev embeddings."""
    path = cache.with_name(cache.stem + "_words.npz")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        if list(z["words"]) == words:
            return z["vecs"]
    from retrieval.encoders import create_encoder

    vecs = create_encoder("default").encode_texts(words).astype(np.float32)
    np.savez(path, words=np.array(words), vecs=vecs)
    return vecs


def rare_word_check(d: dict, cache: Path, chosen: list[tuple[str, Variant, dict]]) -> list[dict]:
    """Each captioned photo queried by a word only its caption has: how often it comes first, per variant."""
    words = rare_words(d)
    ids = np.array(sorted(words))
    qtext = [words[i] for i in ids]
    e = embed_dev(DEFAULT_DATA, cache)
    qv = word_vectors(qtext, cache)
    texts = d["texts"]
    w = {"pixel": qv @ e["img"].T - e["pen"][None, :],
         "caption": np.where(d["captioned"][None, :], qv @ e["cap"][:, SIDECAR_CAPTION].T, np.nan),
         "lex": {(tok, m): lexical_scores(texts, d["captioned"], qtext, tok, m)
                 for tok in (FTS_TOKENIZE, PLAIN_TOKENIZE) for m in (False, True)},
         "captioned": d["captioned"], "ref": qv @ e["ref"].T if "ref" in e else None}
    w["cand"] = np.ones(w["pixel"].shape, bool)
    out = []
    for name, fn, p in chosen:
        s = np.where(w["cand"], fn(w, p), -np.inf)
        own = s[np.arange(len(ids)), ids]
        first = (s > own[:, None]).sum(1) == 0
        out.append({"variant": name, "queries": len(ids), "first_%": round(100.0 * float(first.mean()), 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    """Build the score matrices, measure every variant, print the table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--candidates", type=int, default=CANDIDATES, help="0: every photo is a candidate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    d = build(args.data, args.cache, args.candidates)
    rows = []
    for name, fn, p in variants():
        rows.append((report(name, ranks(fn(d, p), d["cand"]), d["captioned"]), fn, p))
    floor = rows[0][0]["uncap_R@1"]  # pixels only: the uncaptioned half may not fall below it
    fair = [r for r in rows[1:] if r[0]["uncap_R@1"] >= floor] or rows[1:]
    best = max(fair, key=lambda r: (r[0]["all_R@1"], r[0]["uncap_R@1"]))
    for name, fn, p in lexical_variants((best[0]["variant"], best[1], best[2])):
        rows.append((report(name, ranks(fn(d, p), d["cand"]), d["captioned"]), fn, p))
    rows.append((report("hybrid.fuse (defaults)", ranks(v_module(d, {}), d["cand"]), d["captioned"]), v_module, {}))
    table = [r[0] for r in rows]
    cols = ["cap_R@1", "cap_R@5", "uncap_R@1", "uncap_R@5", "all_R@1", "all_R@5"]
    print(f"{'variant':48s} " + " ".join(f"{c:>9s}" for c in cols))
    for r in table:
        print(f"{r['variant']:48s} " + " ".join(f"{r[c]:9.1f}" for c in cols))
    print(json.dumps(two_fold(d, rows), indent=1))
    pick = [rows[0][1:], *[(r[0]["variant"], r[1], r[2]) for r in rows if r[0]["variant"].startswith(best[0]["variant"])],
            ("hybrid.fuse (defaults)", v_module, {})]
    pick[0] = ("pixels only", v_pixels, {})
    print(json.dumps(rare_word_check(d, args.cache, pick), indent=1))
    if args.json:
        print(json.dumps(table))
    return 0


def two_fold(d: dict, rows: list) -> dict:
    """Choose the best variant on one half of the queries, report it on the other half (and vice versa)."""
    n = len(d["pixel"])
    fold = np.zeros(n, bool)
    fold[np.random.default_rng(SEED + 1).permutation(n)[: n // 2]] = True
    out = {}
    for pick, held in ((fold, ~fold), (~fold, fold)):
        scored = [(report(r[0]["variant"], rk, d["captioned"], pick), rk)
                  for r in rows for rk in [ranks(r[1](d, r[2]), d["cand"])]]
        floor = scored[0][0]["uncap_R@1"]
        fair = [x for x in scored[1:] if x[0]["uncap_R@1"] >= floor] or scored[1:]
        chosen = max(fair, key=lambda s: (s[0]["all_R@1"], s[0]["uncap_R@1"]))
        out[f"chosen on fold {len(out)}"] = report(chosen[0]["variant"], chosen[1], d["captioned"], held)
    return out


if __name__ == "__main__":
    sys.exit(main())
