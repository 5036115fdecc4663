"""How much can a second-stage scorer add over the shipped `default` on Flickr8k dev? (issue 4's question)

Every scorer reranks the same candidates, the top 20 of `default` as it searches (flip-averaged,
hubness-corrected), with ``score + alpha * dual score``; alpha is the best of a grid, chosen on dev
itself, so the gains printed are upper bounds. Scorers:

- ``reranker``: a fusion reranker folder (default: the shipped one);
- ``heads``: another dual encoder's plain cosine (heads folders on the bundled towers, e.g. older
  trained heads): what a whole second model on the same pooled features adds;
- ``late``: a late-interaction scorer (FILIP-style: each text token's best region, and each
  region's best token) on the reranker's own inputs, trained here with an in-batch contrastive
  loss over batches of hard groups (each image with 3 of its caption's top-20 images).

    python benchmarks/rerank_headroom.py ../shared/data/flickr8k --cache /tmp/imgsearch_cache \\
        [--heads FOLDER ...] [--late-epochs 4] [--json]

The tower features are cached in ``--cache`` (the same cache ``imgsearch train`` and
``imgsearch train-reranker`` use); without one, the region features of the train split alone
take 15-30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

ALPHAS = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0, 80.0, 120.0, 200.0, 300.0, 500.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary(name: str, r: dict, seconds: float) -> dict:
    """One row: the scorer alone (alpha 0), its best R@1 fused with the dual score (over every alpha), the gain."""
    base, by_alpha = r["without"], r["by_alpha"]
    best = {d: max(by_alpha[d], key=lambda a: (by_alpha[d][a]["R@1"], by_alpha[d][a]["R@5"])) for d in by_alpha}
    return {"scorer": name, "seconds": round(seconds, 1),
            "alone_R@1": {d: by_alpha[d]["0.0"]["R@1"] for d in by_alpha},
            "base_R@1": {d: base[d]["R@1"] for d in by_alpha},
            "best_R@1": {d: by_alpha[d][best[d]]["R@1"] for d in by_alpha},
            "gain_R@1": {d: round(by_alpha[d][best[d]]["R@1"] - base[d]["R@1"], 2) for d in by_alpha},
            "alpha": {d: float(best[d]) for d in by_alpha}}


def late_interaction_scorer(towers, train, train_sims: np.ndarray, dev, epochs: int, batch: int = 128,
                            group: int = 4, dim: int = 256, lr: float = 1e-3, seed: int = 0):
    """Train the late-interaction scorer on cached train features; return ``score(caps, imgs)`` on dev."""
    import torch
    import torch.nn.functional as F

    from retrieval.rerank.fusion import init_region_head
    from retrieval.training.metrics import top_candidates

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tower = towers.image_tower.model
    tower.requires_grad_(False)
    n_views, n, n_regions, channels = train.regions.shape

    class LateInteraction(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.region_head = torch.nn.Linear(channels, 1280)  # the tower's own 1x1 head, batch norm folded in
            init_region_head(self, towers)
            self.region_head.requires_grad_(False)
            self.region = torch.nn.Sequential(torch.nn.LayerNorm(1280), torch.nn.Linear(1280, 2 * dim),
                                              torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))
            self.pos = torch.nn.Parameter(torch.zeros(1, n_regions + 1, dim))
            self.text = torch.nn.Sequential(torch.nn.LayerNorm(train.tokens.shape[1]),
                                            torch.nn.Linear(train.tokens.shape[1], 2 * dim), torch.nn.GELU(),
                                            torch.nn.Linear(2 * dim, dim))
            self.scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def regions(self, r: torch.Tensor) -> torch.Tensor:
            h = tower._swish(self.region_head(r.float()))
            h = torch.cat([h.mean(1, keepdim=True), h], 1)
            return F.normalize(self.region(h) + self.pos, dim=-1)

        def tokens(self, t: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.text(t.float()), dim=-1)

        def score(self, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            """s: (..., L, R) token-region cosines; mask (..., L) -> (...) scores."""
            m = mask.to(s.dtype)
            t2r = (s.amax(-1) * m).sum(-1) / m.sum(-1)
            r2t = s.masked_fill(~mask[..., None], -1e4).amax(-2).mean(-1)
            return self.scale.exp() * 0.5 * (t2r + r2t)

    model = LateInteraction()
    cap_img = train.caption_image.numpy()
    caps_of: list[list[int]] = [[] for _ in range(n)]
    for j, i in enumerate(cap_img.tolist()):
        caps_of[i].append(j)
    top, _ = top_candidates(train_sims, 25)
    hard = [row[row != cap_img[j]][:20] for j, row in enumerate(top)]
    steps = math.ceil(n / batch)
    total, warm = steps * epochs, max(1, steps // 5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))

    def hard_groups() -> np.ndarray:
        imgs: list[int] = []
        seen: set[int] = set()
        for i in rng.choice(n, batch // group, replace=False):
            if i in seen:
                continue
            imgs.append(i)
            seen.add(i)
            added = 0
            for h in rng.permutation(hard[rng.choice(caps_of[i])]):
                if added == group - 1:
                    break
                if h not in seen:
                    imgs.append(h)
                    seen.add(h)
                    added += 1
        return np.array(imgs)

    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for _ in range(steps):
            imgs = hard_groups()
            caps = torch.as_tensor([rng.choice(caps_of[i]) for i in imgs])
            views = torch.as_tensor(rng.integers(0, n_views, size=len(imgs)))
            r = model.regions(train.regions[views, torch.as_tensor(imgs)])
            text, mask = train.caption_batch(caps)
            s = torch.einsum("ald,brd->ablr", model.tokens(text), r)  # every caption with every image
            logits = model.score(s, mask[:, None, :].expand(-1, len(imgs), -1))
            target = torch.arange(len(imgs))
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.scale.clamp_(0, math.log(100))
            losses.append(loss.item())
        log(f"late interaction: epoch {epoch}/{epochs}, loss {np.mean(losses):.3f} (chance {math.log(batch):.3f})")
    model.eval()
    with torch.no_grad():
        dev_regions = torch.cat([model.regions(dev.regions[0, s:s + 250]) for s in range(0, dev.regions.shape[1], 250)])

    @torch.no_grad()
    def score(caps: np.ndarray, imgs: np.ndarray) -> np.ndarray:
        out = np.empty(len(caps), np.float32)
        for s in range(0, len(caps), 2048):
            text, mask = dev.caption_batch(torch.as_tensor(caps[s:s + 2048]))
            r = dev_regions[torch.as_tensor(imgs[s:s + 2048])]
            out[s:s + 2048] = model.score(torch.einsum("pld,prd->plr", model.tokens(text), r), mask).numpy()
        return out

    return score


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a Flickr8k-style folder (captions.jsonl + images/)")
    p.add_argument("--cache", default=None, help="tower feature cache (shared with imgsearch train)")
    p.add_argument("--reranker", default="default", help="fusion reranker spec ('none' to skip)")
    p.add_argument("--heads", nargs="*", default=[], help="other heads folders to score with (plain cosine)")
    p.add_argument("--late-epochs", type=int, default=4, help="late-interaction training epochs (0: skip)")
    p.add_argument("--views", type=int, default=3, help="augmented region views of train for the late scorer")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch

    from retrieval.encoders import create_encoder
    from retrieval.encoders.hubness import corrected_similarity
    from retrieval.rerank import create_reranker
    from retrieval.rerank.towers import base_towers
    from retrieval.training.datasets import load_dataset
    from retrieval.training.evaluate import embed_image_files, embed_image_files_with_regions
    from retrieval.training.features import compute_rerank_features
    from retrieval.training.metrics import reranked_recall
    from retrieval.training.reranker import dual_similarity

    dev, train = load_dataset(a.dataset, "dev"), load_dataset(a.dataset, "train")
    enc = create_encoder("default")
    towers = base_towers(enc)
    t0 = time.monotonic()
    reranker = None if a.reranker == "none" else create_reranker(a.reranker, encoder=enc)
    if reranker is not None:
        img, regions = embed_image_files_with_regions(enc, reranker, dev.images, show_progress=False)
    else:
        img, regions = embed_image_files(enc, dev.images, show_progress=False), None
    txt = enc.encode_texts(dev.captions)
    t2i, i2t = corrected_similarity(txt @ img.T, enc.hubness, img, txt)
    log(f"default on dev embedded in {time.monotonic() - t0:.0f}s")
    rows = []

    def measure(name: str, pair_scores) -> None:
        t = time.monotonic()
        r = reranked_recall(t2i, dev.caption_image, pair_scores, a.k, alphas=ALPHAS, i2t_sims=i2t)
        rows.append(summary(name, r, time.monotonic() - t))
        log(json.dumps(rows[-1]))

    if reranker is not None:
        measure(f"reranker {reranker.spec}", lambda c, i: reranker.itm_pairs(dev.captions, regions, c, i))
    if a.heads:
        from retrieval.training.features import compute_features
        from retrieval.training.heads import embed_features
        from retrieval.encoders.heads import load_heads

        feats = compute_features(towers, dev, views=0, cache_dir=a.cache, show_progress=False, tokens=True)
        for folder in a.heads:
            cfg, heads = load_heads(folder)
            heads.eval()
            with torch.no_grad():
                hi, ht = embed_features(heads, feats, cfg.blend)
            sims = (ht @ hi.T).numpy()
            measure(f"heads {folder}", lambda c, i, s=sims: 100.0 * s[c, i])
    if a.late_epochs > 0:
        t = time.monotonic()
        tr = compute_rerank_features(towers, train, views=a.views, cache_dir=a.cache, show_progress=False)
        dv = compute_rerank_features(towers, dev, views=0, cache_dir=a.cache, show_progress=False)
        train_sims = dual_similarity(enc, train, cache_dir=a.cache, show_progress=False)
        scorer = late_interaction_scorer(towers, tr, train_sims, dv, a.late_epochs)
        log(f"late interaction trained in {time.monotonic() - t:.0f}s")
        measure(f"late interaction, {a.late_epochs} epochs", scorer)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['scorer']}: alone R@1 {row['alone_R@1']}, gain {row['gain_R@1']} at alpha {row['alpha']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
