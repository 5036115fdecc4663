"""Training the fusion reranker: image-text matching with hard negatives mined from the dual encoder.

ALBEF-style, both directions: each image's caption is scored against its own image and a list
of negative images (some hard, from the caption's top-k under the dual encoder, the rest random),
and the image against its caption and a list of negative captions; softmax cross-entropy over
each list plus a binary cross-entropy on every pair. Features (regions, caption token states)
are cached (see ``features.compute_rerank_features``).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..encoders import Encoder
from ..encoders.heads import TrainedEncoder, is_rich
from ..errors import DatasetError, WeightsError
from ..rerank.fusion import FusionConfig, FusionModel, init_region_head, load_fusion
from .datasets import Dataset
from .evaluate import embed_image_files
from .features import CaptionTokens, RerankFeatures, compute_caption_tokens, compute_features
from .heads import embed_features
from .metrics import reranked_recall, top_candidates
from .options import RerankTrainOptions
from .twins import TwinCaptions


@dataclass
class RerankTrainResult:
    """The best model (by dev R@1 after reranking), its config and the history."""

    config: FusionConfig
    state_dict: dict[str, torch.Tensor]
    dev: dict
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def feature_pair_scorer(model: FusionModel, feats: RerankFeatures, batch: int = 256
                        ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ITM logits for (caption, image) index pairs from cached features (clean view)."""

    @torch.no_grad()
    def score(caps: np.ndarray, imgs: np.ndarray) -> np.ndarray:
        model.eval()
        out = np.empty(len(caps), np.float32)
        order = np.lexsort((caps, imgs))  # group by image so region tokens are shared within a batch
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            c, i = torch.as_tensor(caps[idx]), torch.as_tensor(imgs[idx])
            uc, ci = torch.unique(c, return_inverse=True)
            ui, ii = torch.unique(i, return_inverse=True)
            text, mask = feats.caption_batch(uc)
            logits = model(text, mask, feats.regions[0, ui], image_index=ii, text_index=ci)
            out[idx] = logits.numpy()
        return out

    return score


def _joined_text(feats: CaptionTokens, twins: TwinCaptions) -> CaptionTokens:
    """The split's captions followed by the twins (twin t becomes caption ``n_captions + t``)."""
    base = feats.offsets[-1]
    return CaptionTokens(torch.cat([feats.tokens, twins.tokens.tokens]),
                         torch.cat([feats.tokens_prev, twins.tokens.tokens_prev]),
                         torch.cat([feats.offsets, twins.tokens.offsets[1:] + base]), feats.top_layer)


def _random_other(rng: np.random.Generator, n: int, not_this: int, size: int) -> np.ndarray:
    """``size`` random indices in [0, n) other than ``not_this``."""
    out = rng.integers(0, n - 1, size=size)
    return out + (out >= not_this)


def _twin_rows(rng: np.random.Generator, twin_of: list[list[int]], caption: int, image: int, n: int,
               n_captions: int, caps_of: list[list[int]]) -> np.ndarray:
    """``n`` caption rows for one image's list: twins of ``caption`` (else of the image's other captions), as
    rows after the split's captions; random captions of other images where the image has no twin."""
    pool = twin_of[caption] or [t for c in caps_of[image] for t in twin_of[c]]
    if pool:
        return n_captions + rng.choice(pool, size=n, replace=len(pool) < n)
    return np.array([rng.choice(caps_of[o]) for o in _random_other(rng, len(caps_of), image, n)])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_reranker(train: RerankFeatures, train_sims: np.ndarray, dev: RerankFeatures | None,
                   dev_sims: np.ndarray | None, options: RerankTrainOptions, base_spec: str,
                   show_progress: bool = True, log: Callable[[str], None] | None = None,
                   towers: Encoder | None = None, twins: TwinCaptions | None = None) -> RerankTrainResult:
    """Train a fusion model with ITM loss on positives and dual-encoder hard negatives, both directions.

    ``options.compositional_negatives`` > 0 (with ``twins``, built from the same split's captions): each
    image's caption list also holds that many composition rewrites of its captions (hard negatives that
    differ from a true caption only in word order or one word).
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    t0 = time.monotonic()
    _seed_all(options.seed)
    n_views, n_images, n_regions, region_dim = train.regions.shape
    if n_images < 2:
        raise DatasetError("training a reranker needs at least 2 captioned images (negatives come from the others)")
    cfg = FusionConfig(base_spec=base_spec, region_dim=region_dim, num_regions=n_regions,
                       text_dim=train.tokens.shape[1], width=options.width, layers=options.layers,
                       heads=options.heads, self_attention=options.self_attention, dropout=options.dropout,
                       region_mlp=options.region_mlp, region_head=1280 if options.region_head else 0)
    model = FusionModel(cfg)
    if cfg.region_head:
        if towers is None:
            raise ValueError("region_head needs the bundled towers (pass towers=)")
        init_region_head(model, towers)
    if options.init_from:  # fine-tune an existing reranker (its shape wins over the options)
        init_cfg, init_model = load_fusion(options.init_from)
        if (init_cfg.region_dim, init_cfg.num_regions, init_cfg.text_dim) != (region_dim, n_regions, cfg.text_dim):
            raise WeightsError(f"reranker in {options.init_from} reads other features than this encoder gives")
        cfg = FusionConfig(**{**init_cfg.__dict__, "base_spec": base_spec, "train": {}})
        model = FusionModel(cfg)
        model.load_state_dict(init_model.state_dict())
    n_twins = options.compositional_negatives
    if n_twins and twins is None:
        raise ValueError("compositional_negatives needs twins= (see twin_captions)")
    n_captions = int(train.caption_image.shape[0])
    if n_twins and len(twins.of) != n_captions:
        raise ValueError(f"twins were made for {len(twins.of)} captions, not these {n_captions}")
    text_feats: CaptionTokens = _joined_text(train, twins) if n_twins else train
    cap_img = train.caption_image.numpy()
    caps_of = [[] for _ in range(n_images)]
    for j, i in enumerate(cap_img.tolist()):
        caps_of[i].append(j)
    t2i, i2t = top_candidates(train_sims, options.hard_k + 5)
    # hard negatives: the top-k that are not the positive
    neg_img = [row[row != cap_img[j]][: options.hard_k] for j, row in enumerate(t2i)]
    neg_cap = [row[cap_img[row] != i][: options.hard_k] for i, row in enumerate(i2t)]
    steps_per_epoch = math.ceil(n_images / options.batch_size)
    total = steps_per_epoch * options.epochs
    warmup = max(1, int(options.warmup_epochs * steps_per_epoch))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=options.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    rng = np.random.default_rng(options.seed)
    dev_rows = dev_cols = None
    if dev is not None:
        dev_cols = np.arange(min(options.dev_queries, dev.regions.shape[1]))
        dev_rows = np.nonzero(np.isin(dev.caption_image.numpy(), dev_cols))[0]
    best, best_state, best_epoch, since, history = -1e9, None, 0, 0, []
    bar = tqdm(total=total, desc="train-reranker", unit="step", file=sys.stderr, disable=not show_progress)
    for epoch in range(1, options.epochs + 1):
        model.train()
        losses, accs = [], []
        order = rng.permutation(n_images)
        for s in range(0, n_images, options.batch_size):
            imgs = order[s:s + options.batch_size]
            b = len(imgs)
            caps = np.array([rng.choice(caps_of[i]) for i in imgs])
            m = options.negatives if options.listwise else 1
            h = min(m, options.hard_negatives) if options.listwise else 1
            nimg = np.stack([np.concatenate([rng.choice(neg_img[c], size=h, replace=len(neg_img[c]) < h),
                                             _random_other(rng, n_images, cap_img[c], m - h)]) for c in caps])
            ncap = np.stack([np.concatenate([rng.choice(neg_cap[i], size=h, replace=len(neg_cap[i]) < h),
                                             [rng.choice(caps_of[o]) for o in _random_other(rng, n_images, i, m - h)]])
                             for i in imgs]).astype(np.int64)
            nimg = nimg.astype(np.int64)
            all_imgs = np.concatenate([imgs, nimg.reshape(-1)])
            views = rng.integers(0, n_views, size=len(all_imgs))
            regions = train.regions[torch.as_tensor(views), torch.as_tensor(all_imgs)]
            if n_twins:  # twins of the positive caption first, else of the image's other captions
                tcap = np.stack([_twin_rows(rng, twins.of, c, i, n_twins, n_captions, caps_of)
                                 for c, i in zip(caps, imgs)]).astype(np.int64)
                ncap = np.concatenate([ncap, tcap], 1)
            text, mask = text_feats.caption_batch(torch.as_tensor(np.concatenate([caps, ncap.reshape(-1)])))
            ar = torch.arange(b)
            mc = m + n_twins  # captions per image list beside the positive
            neg = b + torch.arange(b * m).view(b, m)  # rows of the negative images in the image list
            negc = b + torch.arange(b * mc).view(b, mc)  # rows of the negative captions in the text list
            # t2i list per caption: [own image, m negative images]; i2t list per image: [own caption, m negatives]
            t2i_text = ar[:, None].expand(b, m + 1)
            t2i_img = torch.cat([ar[:, None], neg], 1)
            i2t_text = torch.cat([ar[:, None], negc], 1)
            i2t_img = ar[:, None].expand(b, mc + 1)
            text_index = torch.cat([t2i_text.reshape(-1), i2t_text[:, 1:].reshape(-1)])
            image_index = torch.cat([t2i_img.reshape(-1), i2t_img[:, 1:].reshape(-1)])
            x, r = model.embed_text(text), model.embed_regions(regions)
            logits = model(x, mask, r, image_index=image_index, text_index=text_index, embedded=True)
            itc = torch.zeros(())
            if options.itc_weight > 0:  # align before fuse (ALBEF): the fusion's inputs, contrastively
                m_ = mask[:b].unsqueeze(-1).float()
                tv = F.normalize((x[:b] * m_).sum(1) / m_.sum(1).clamp(min=1.0), dim=-1)
                iv = F.normalize(r[:b].mean(1), dim=-1)
                sim = tv @ iv.T / options.itc_temperature
                itc = 0.5 * (F.cross_entropy(sim, ar) + F.cross_entropy(sim.T, ar))
            lt = logits[: b * (m + 1)].view(b, m + 1)
            li = torch.cat([lt[:, :1], logits[b * (m + 1):].view(b, mc)], 1)
            labels = torch.zeros(b, m + 1)
            labels[:, 0] = 1
            labels_c = torch.zeros(b, mc + 1)
            labels_c[:, 0] = 1
            bce = 0.5 * (F.binary_cross_entropy_with_logits(lt, labels) + F.binary_cross_entropy_with_logits(li, labels_c))
            if options.listwise:
                target = torch.zeros(b, dtype=torch.long)
                loss = 0.5 * (F.cross_entropy(lt, target) + F.cross_entropy(li, target)) + options.bce_weight * bce
            else:
                loss = bce
            loss = loss + options.itc_weight * itc
            logits, labels = torch.cat([lt, li[:, 1:]], 1).reshape(-1), torch.cat([labels, labels_c[:, 1:]], 1).reshape(-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            accs.append(float(((logits > 0) == labels.bool()).float().mean()))
            bar.update(1)
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "acc": round(float(np.mean(accs)), 4)}
        if dev is not None:
            r = reranked_recall(dev_sims, dev.caption_image.numpy(), feature_pair_scorer(model, dev),
                                options.rerank_k, caption_rows=dev_rows, image_cols=dev_cols)
            row.update({"alpha": r["alpha"], "caption_alpha": r["caption_alpha"], "dev_t2i_R@1": r["with"]["text_to_image"]["R@1"],
                        "dev_i2t_R@1": r["with"]["image_to_text"]["R@1"],
                        "base_t2i_R@1": r["without"]["text_to_image"]["R@1"],
                        "base_i2t_R@1": r["without"]["image_to_text"]["R@1"]})
            score = row["dev_t2i_R@1"] + row["dev_i2t_R@1"]
        else:
            score = epoch
        history.append(row)
        log(f"epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"))
        bar.set_postfix({k: row[k] for k in ("loss", "acc", "dev_t2i_R@1", "dev_i2t_R@1") if k in row}, refresh=False)
        if score > best:
            best, best_epoch, since = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if dev is not None and since >= options.patience:
                break
    bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    dev_metrics: dict = {}
    if dev is not None:
        dev_metrics = reranked_recall(dev_sims, dev.caption_image.numpy(), feature_pair_scorer(model, dev),
                                      options.rerank_k)
        cfg.alpha = float(dev_metrics["alpha"])
        cfg.caption_alpha = float(dev_metrics["caption_alpha"])
    cfg.train = {"options": asdict(options), "best_epoch": best_epoch, "train_images": n_images,
                 "train_views": n_views, "dev": {k: dev_metrics[k] for k in ("without", "with", "alpha", "caption_alpha")} if dev_metrics else {}}
    return RerankTrainResult(cfg, best_state, dev_metrics, best_epoch, history, time.monotonic() - t0)


def dual_similarity(encoder: Encoder, dataset: Dataset, cache_dir: str | None = None, show_progress: bool = True
                    ) -> np.ndarray:
    """The dual encoder's (captions x images) cosine similarities on a dataset (clean view).

    Trained heads on the bundled towers reuse the cached tower features of ``imgsearch train``.
    """
    if isinstance(encoder, TrainedEncoder) and is_rich(encoder.base) and cache_dir:
        feats = compute_features(encoder.base, dataset, views=0, cache_dir=cache_dir, show_progress=show_progress,
                                 tokens=bool(encoder.config.text_layers))
        img, txt = embed_features(encoder.heads, feats, encoder.config.blend)
        return (txt @ img.T).numpy().astype(np.float32)
    img = embed_image_files(encoder, dataset.images, show_progress=show_progress)
    txt = encoder.encode_texts(dataset.captions)
    return (txt @ img.T).astype(np.float32)


def model_card(result: RerankTrainResult, dataset_root: str, command: str, feature_seconds: float,
               encoder_spec: str, extra_sections: str = "") -> str:
    """A short markdown model card: data, recipe, dev recall with and without reranking, timing, command."""
    cfg, o = result.config, result.config.train.get("options", {})

    def rows(r: dict, label: str) -> list[str]:
        return [f"| {label} | {name} | " + " | ".join(f"{r[key][k]:.1f}" for k in ("R@1", "R@5", "R@10")) + " |"
                for name, key in (("text → image", "text_to_image"), ("image → text", "image_to_text"))]

    parts = [
        "# imgsearch fusion reranker\n",
        "A cross-attention image-text matching (ITM) model that reranks the top results of the dual encoder"
        f" `{encoder_spec}`.",
        f"Dataset: `{os.path.basename(dataset_root.rstrip('/'))}` (train split for training, dev split for model"
        " selection and alpha). Only weights ship here (`reranker.safetensors`, `reranker.json`); no photos or"
        " captions are included.\n",
        "## Model\n",
        f"- regions: the image tower's spatial map as {cfg.num_regions} tokens of {cfg.region_dim} channels"
        + (f", through a frozen copy of the tower's 1×1 head (batch norm folded in, ReLU6) to {cfg.region_head}"
           " channels" if cfg.region_head else "")
        + " (+ their mean as a global token), LayerNorm + " + ("a GELU MLP" if cfg.region_mlp else "linear")
        + " to the fusion width, learned position embeddings",
        f"- text: the text tower's last-layer token states ({cfg.text_dim}-d), LayerNorm + linear",
        f"- fusion: {cfg.layers} pre-norm layers of text→region cross-attention"
        + (" + text self-attention" if cfg.self_attention else "") + f" + GELU feed-forward (width {cfg.width},"
        f" {cfg.heads} heads); ITM head: MLP on [first token, mean of tokens] → one logit",
        f"- final score = ITM logit + α · dual-encoder cosine, α = {cfg.alpha} for text→image and"
        f" {cfg.caption_alpha} for image→text (each chosen on dev)\n",
        "## Training\n",
        (f"- ITM loss, listwise and both directions: each image with one of its captions (the positive) against"
         f" {o.get('negatives')} negative images for that caption and {o.get('negatives')} negative captions for"
         f" that image; {o.get('hard_negatives')} of each are hard negatives from the dual encoder's top"
         f" {o.get('hard_k')} (ALBEF-style mining), the rest random. Loss: softmax cross-entropy over each list"
         f" + {o.get('bce_weight')} × binary cross-entropy on every pair (keeps the logit a calibrated match score)"
         + (f" + {o.get('itc_weight')} × in-batch contrastive loss on the pooled fusion inputs (align before fuse)"
            if o.get("itc_weight") else "")
         if o.get("listwise", True) else
         f"- ITM loss (binary cross-entropy): each image with one of its captions (positive), the caption with a"
         f" hard negative image from its top-{o.get('hard_k')} under the dual encoder, the image with a hard"
         f" negative caption from its top-{o.get('hard_k')} (ALBEF-style, both directions)"),
        *([f"- composition-aware negatives: each image's caption list also holds {o['compositional_negatives']}"
           " rewrites of its own train captions (colour swap, subject/object swap, count change, confusable noun;"
           " `retrieval/training/negatives.py`): the same words re-ordered or one word swapped, never seen as"
           " positives"] if o.get("compositional_negatives") else []),
        f"- AdamW lr {o.get('lr')}, weight decay {o.get('weight_decay')}, batch {o.get('batch_size')} images,"
        f" warmup {o.get('warmup_epochs')} epoch + cosine, up to {o.get('epochs')} epochs (an epoch pairs every"
        f" training image with one of its captions), early stopping on dev R@1 after reranking (first"
        f" {o.get('dev_queries')} dev images; best epoch {result.best_epoch}), seed {o.get('seed')};"
        f" region views per image: {cfg.train.get('train_views')} (clean + augmented)\n",
    ]
    if result.dev:
        parts += ["## Dev recall (same candidates: the dual encoder's top "
                  f"{o.get('rerank_k')} per query)\n",
                  "| | direction | R@1 | R@5 | R@10 |", "|---|---|---|---|---|",
                  *rows(result.dev["without"], "dual encoder"), *rows(result.dev["with"], "+ rerank"), ""]
    parts += ["## Training time\n",
              *([f"- features (frozen towers, cached): {feature_seconds / 60:.1f} min"] if feature_seconds > 0 else []),
              f"- reranker training: {result.seconds / 60:.1f} min\n",
              "## Reproduce\n", "```", command, "```\n"]
    return "\n".join(parts) + extra_sections
