"""Training projection heads with symmetric InfoNCE on cached frozen base-encoder features.

The base features come from ``features.compute_features`` (cached), so retraining takes seconds to
minutes. Everything is seeded and reproducible.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..encoders import BUNDLED_SPECS
from ..encoders.heads import TOKEN_MASK, TOKEN_STATES, Heads, HeadsConfig, blend, build_heads
from ..errors import DatasetError, EncoderSpecError
from .features import FeatureSet
from .metrics import recall_from_similarity, rsum
from .short_texts import ShortTexts
from .twins import TwinCaptions


@dataclass
class TrainOptions:
    """Hyper-parameters of one training run (recorded in heads.json)."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.2
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    patience: int = 4  # epochs without a better dev score before stopping
    seed: int = 0
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.4
    blend: float = 0.7
    image_inputs: list[str] | None = None  # None: a good default for the base (see default_inputs)
    text_inputs: list[str] | None = None
    max_logit_scale: float = 100.0
    members: int = 1  # >1: an ensemble of heads trained with seeds seed, seed + 1, ... (see HeadsEnsemble)
    ensemble_dim: int = 0  # >0 (ensembles): project the joined embedding to this width (PCA on train)
    text_layers: int = 0  # 1: also train a copy of the text tower's last layer (needs FeatureSet.tokens)
    text_lr: float = 1e-4  # peak learning rate of that layer
    flip_average: bool = False  # the saved encoder averages each photo with its mirror image (search time only)
    short_texts: float = 0.0  # >0: weight of a loss on the captions' short noun phrases (needs ShortTexts)
    short_per_batch: int = 256  # short texts per batch, each drawn from one of the batch's images
    composition_negatives: bool = False  # each caption's rewritten twin joins the batch's texts (needs TwinCaptions)


def default_inputs(features: FeatureSet) -> tuple[list[str], list[str]]:
    """Image/text inputs for the heads: rich tower features when there, else the base embeddings."""
    if "pooled" in features.image_dims:
        return ["pooled", "maxpool", "bridge", "logprobs"], ["minilm", "minilm_max"]
    return ["base"], ["base"]


@dataclass
class TrainResult:
    """What a run gives: the best heads (by dev score), their config and the history."""

    config: HeadsConfig
    state_dict: dict[str, torch.Tensor]
    dev: dict  # recall both ways at the chosen blend, and of the learned space alone
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        out = {"dev": self.dev, "best_epoch": self.config.train.get("best_epoch", self.best_epoch),
               "epochs_run": len(self.history), "train_seconds": round(self.seconds, 1), "blend": self.config.blend}
        if self.config.members > 1:
            out["members"] = self.config.members
            out["member_dev"] = self.config.train.get("member_dev", [])
        return out


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def embed_features(heads: Heads, feats: FeatureSet, w: float, view: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blended (image, text) embeddings of a feature set's clean view, as the encoder would give."""
    heads.eval()
    cfg = heads.config
    if cfg.text_layers and feats.tokens is None:
        raise DatasetError("these heads tune the text tower's last layer: compute the features with tokens=True")
    img_in = {k: v[view] for k, v in feats.images.items()}
    img = torch.cat([blend(heads.embed_image({n: t[s] for n, t in img_in.items()}), img_in[cfg.image_blend_input][s].float(), w)
                     for s in _slices(img_in[cfg.image_blend_input].shape[0])])
    rows = torch.arange(feats.caption_image.shape[0])
    txt = torch.cat([blend(embed_captions(heads.embed_text, feats, rows[s], bool(cfg.text_layers)),
                           feats.texts[cfg.text_blend_input][s].float(), w)
                     for s in _slices(len(rows))])
    return img, txt


def embed_captions(embed_text: Callable[[dict[str, torch.Tensor]], torch.Tensor], feats: FeatureSet,
                   rows: torch.Tensor, from_tokens: bool, chunk: int = 256) -> torch.Tensor:
    """``embed_text`` of captions ``rows``: from the cached text features, or, ``from_tokens`` (heads with
    ``text_layers``), from the feature set's token states, in chunks of similar length (little padding)."""
    if not from_tokens:
        return embed_text({n: t[rows] for n, t in feats.texts.items()})
    order = feats.tokens.lengths(rows).argsort()
    parts = []
    for s in range(0, len(rows), chunk):
        states, mask = feats.tokens.caption_batch(rows[order[s:s + chunk]], prev=True)
        parts.append(embed_text({TOKEN_STATES: states, TOKEN_MASK: mask}))
    out = torch.cat(parts)
    return out[order.argsort()]


def _slices(n: int, size: int = 4096) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def dev_recall(heads: Heads, feats: FeatureSet, w: float) -> dict:
    """Recall@1/5/10 both ways on a feature set at blend ``w``."""
    img, txt = embed_features(heads, feats, w)
    return recall_from_similarity((txt @ img.T).numpy(), feats.caption_image.numpy())


def train_heads(train: FeatureSet, dev: FeatureSet | None, options: TrainOptions, base_spec: str,
                show_progress: bool = True, short: ShortTexts | None = None,
                twins: TwinCaptions | None = None) -> TrainResult:
    """Symmetric InfoNCE (learnable temperature, AdamW, warmup + cosine) on cached features.

    Each epoch sees every caption once; every batch holds distinct images (one random
    augmented view each), so there are no false negatives from shared images.
    The heads with the best dev rsum (at ``options.blend``) are kept; stops early after
    ``options.patience`` epochs without improvement. With ``options.members`` > 1, that many
    heads are trained one after another (seeds ``seed``, ``seed + 1``, ...) and joined into one
    ``HeadsEnsemble``. With ``options.short_texts`` > 0, each batch also scores ``short``'s texts of
    its images against all of them (every image a text describes is a target). With
    ``options.composition_negatives``, a rewritten twin of each caption (``twins``) joins the texts each
    image is told apart from (NegCLIP).
    """
    if options.members < 1:
        raise DatasetError(f"members must be >= 1, got {options.members}")
    if options.ensemble_dim and not (options.members > 1 and 0 < options.ensemble_dim <= options.members * options.embed_dim):
        raise DatasetError(f"ensemble_dim needs members > 1 and at most members x embed_dim "
                           f"({options.members} x {options.embed_dim}), got {options.ensemble_dim}")
    if options.short_texts and short is None:
        raise DatasetError("short_texts needs the split's short texts (short_texts.compute_short_texts)")
    if options.composition_negatives and (twins is None or not options.text_layers):
        raise DatasetError("composition_negatives needs the split's twins (twins.twin_captions) and text_layers 1")
    if options.members == 1:
        return _train_single(train, dev, options, base_spec, show_progress, short=short, twins=twins)
    t0 = time.monotonic()
    runs = [_train_single(train, dev, replace(options, members=1, ensemble_dim=0, seed=options.seed + i), base_spec,
                          show_progress, desc=f"train {i + 1}/{options.members}", short=short, twins=twins)
            for i in range(options.members)]
    config = replace(runs[0].config, members=options.members, ensemble_dim=options.ensemble_dim, train={})
    state = {f"members.{i}.{k}": v for i, r in enumerate(runs) for k, v in r.state_dict.items()}
    heads = build_heads(config)
    if options.ensemble_dim:
        heads.load_state_dict({**state, "projection": heads.projection})
        state["projection"] = _fit_projection(heads, train, options.ensemble_dim)
    heads.load_state_dict(state)
    dev_metrics: dict = {}
    if dev is not None:
        dev_metrics = {"blended": dev_recall(heads, dev, options.blend), "learned_only": dev_recall(heads, dev, 1.0)}
    config.train = {"options": asdict(options), "best_epoch": [r.best_epoch for r in runs],
                    "dev": dev_metrics.get("blended", {}), "member_dev": [r.dev.get("blended", {}) for r in runs],
                    "train_images": runs[0].config.train["train_images"],
                    "train_views": runs[0].config.train["train_views"]}
    history = [{"member": i + 1, **row} for i, r in enumerate(runs) for row in r.history]
    return TrainResult(config, state, dev_metrics, runs[0].best_epoch, history, time.monotonic() - t0)


@torch.no_grad()
def _fit_projection(heads, train: FeatureSet, dim: int) -> torch.Tensor:
    """The top ``dim`` right singular vectors (uncentred PCA) of the ensemble's joined embeddings of the
    train images (clean view) and captions, as a (members x embed_dim, dim) matrix."""
    heads.eval()
    img_in = {n: train.images[n][0] for n in heads.config.image_inputs}
    parts = [heads.joined("image", {n: t[s].float() for n, t in img_in.items()})
             for s in _slices(next(iter(img_in.values())).shape[0])]
    rows = torch.arange(train.caption_image.shape[0])
    parts += [embed_captions(lambda f: heads.joined("text", f), train, rows[s], bool(heads.config.text_layers))
              for s in _slices(len(rows))]
    _, _, vh = torch.linalg.svd(torch.cat(parts).double(), full_matrices=False)
    return vh[:dim].T.float().contiguous()


def _train_single(train: FeatureSet, dev: FeatureSet | None, options: TrainOptions, base_spec: str,
                  show_progress: bool = True, desc: str = "train", short: ShortTexts | None = None,
                  twins: TwinCaptions | None = None) -> TrainResult:
    """One pair of heads (see ``train_heads``)."""
    t0 = time.monotonic()
    _seed_all(options.seed)
    default_img, default_txt = default_inputs(train)
    image_inputs = list(options.image_inputs or default_img)
    text_inputs = list(options.text_inputs or default_txt)
    for side, names, known in (("image", image_inputs, train.image_dims), ("text", text_inputs, train.text_dims)):
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise DatasetError(f"unknown {side} input(s) {', '.join(unknown) or '(none given)'}; "
                               f"this base gives: {', '.join(known)}")
    dims = {f"image.{n}": train.image_dims[n] for n in image_inputs}
    dims.update({f"text.{n}": train.text_dims[n] for n in text_inputs})
    if options.text_layers:
        if options.text_layers != 1:
            raise DatasetError(f"text_layers must be 0 or 1, got {options.text_layers}")
        if train.tokens is None or (dev is not None and dev.tokens is None):
            raise DatasetError("text_layers needs caption token states (compute_features(..., tokens=True) "
                               "on the bundled towers)")
    config = HeadsConfig(base_spec=base_spec, image_inputs=image_inputs, text_inputs=text_inputs, input_dims=dims,
                         embed_dim=options.embed_dim, hidden_dim=options.hidden_dim, dropout=options.dropout,
                         blend=options.blend, image_blend_input=train.image_blend_input,
                         text_blend_input=train.text_blend_input, text_layers=options.text_layers,
                         flip_average=options.flip_average)
    heads = Heads(config)
    if heads.text_layers is not None:  # start from the tower's own last layer
        heads.text_layers.layers[0].load_state_dict(train.tokens.top_layer)
    # inputs as float32 once (features are small); only the ones the heads read
    img_feats = {n: train.images[n].float() for n in image_inputs}
    txt_feats = {n: train.texts[n].float() for n in text_inputs}
    n_images, n_views = train.images[image_inputs[0]].shape[1], train.views
    cap_img = train.caption_image
    caps_of = [[] for _ in range(n_images)]
    for j, i in enumerate(cap_img.tolist()):
        caps_of[i].append(j)
    if any(not c for c in caps_of):
        raise DatasetError("every training image needs at least one caption")
    per_image = max(len(c) for c in caps_of)
    batch = min(options.batch_size, n_images)
    steps_per_epoch = per_image * math.ceil(n_images / batch)
    total = steps_per_epoch * options.epochs
    warmup = max(1, int(options.warmup_epochs * steps_per_epoch))
    decay, no_decay, tower = [], [], []
    for name, p in heads.named_parameters():
        (tower if name.startswith("text_layers.") else no_decay if p.ndim < 2 or name == "logit_scale"
         else decay).append(p)
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tower:
        groups.append({"params": tower, "weight_decay": 0.01, "lr": options.text_lr})
    opt = torch.optim.AdamW(groups, lr=options.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(options.seed)
    best, best_state, best_epoch, history, since_best = -1.0, None, 0, [], 0
    dev_now: dict = {}
    bar = tqdm(total=options.epochs, desc=desc, unit="ep", file=sys.stderr, disable=not show_progress)
    for epoch in range(1, options.epochs + 1):
        heads.train()
        losses = []
        # per image, a random order of its captions; slot s uses the s-th one (wrapping)
        cap_perm = [torch.as_tensor(c)[torch.randperm(len(c), generator=gen)] for c in caps_of]
        for slot in range(per_image):
            order = torch.randperm(n_images, generator=gen)
            for s in range(0, n_images, batch):
                idx = order[s:s + batch]
                if len(idx) < 2:
                    continue
                view = torch.randint(0, n_views, (len(idx),), generator=gen)
                caps = torch.stack([cap_perm[i][slot % len(cap_perm[i])] for i in idx.tolist()])
                img = heads.embed_image({n: t[view, idx] for n, t in img_feats.items()})
                txt = (heads.embed_text({n: t[caps] for n, t in txt_feats.items()}) if heads.text_layers is None
                       else embed_captions(heads.embed_text, train, caps, from_tokens=True))
                scale = heads.logit_scale.exp().clamp(max=options.max_logit_scale)
                logits = scale * txt @ img.T
                target = torch.arange(len(idx))
                image_logits = logits.T
                if options.composition_negatives and twins is not None:
                    extra = _twin_texts(heads, twins, caps, gen)
                    if extra is not None:
                        image_logits = torch.cat([image_logits, scale * img @ extra.T], dim=1)
                loss = 0.5 * (F.cross_entropy(logits, target, label_smoothing=options.label_smoothing)
                              + F.cross_entropy(image_logits, target, label_smoothing=options.label_smoothing))
                if options.short_texts and short is not None:
                    loss = loss + options.short_texts * _short_text_loss(heads, short, idx, img, scale,
                                                                         options.short_per_batch, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    heads.logit_scale.clamp_(max=math.log(options.max_logit_scale))
                losses.append(loss.item())
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
               "temperature": round(float(heads.logit_scale.detach().neg().exp()), 4)}
        if dev is not None:
            dev_now = dev_recall(heads, dev, options.blend)
            row["dev_rsum"] = round(rsum(dev_now), 2)
            row["dev_t2i_R@1"] = dev_now["text_to_image"]["R@1"]
            row["dev_i2t_R@1"] = dev_now["image_to_text"]["R@1"]
            score = row["dev_rsum"]
        else:
            score = epoch  # no dev split: keep the last epoch
        history.append(row)
        if score > best:
            best, best_epoch, since_best = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in heads.state_dict().items()}
        else:
            since_best += 1
        bar.set_postfix({k: v for k, v in row.items() if k in ("loss", "dev_t2i_R@1", "dev_i2t_R@1")}, refresh=False)
        bar.update(1)
        if dev is not None and since_best >= options.patience:
            break
    bar.close()
    assert best_state is not None
    heads.load_state_dict(best_state)
    dev_metrics: dict = {}
    if dev is not None:
        dev_metrics = {"blended": dev_recall(heads, dev, options.blend), "learned_only": dev_recall(heads, dev, 1.0)}
    config.train = {"options": asdict(options), "best_epoch": best_epoch, "dev": dev_metrics.get("blended", {}),
                    "train_images": n_images, "train_views": n_views}
    return TrainResult(config, best_state, dev_metrics, best_epoch, history, time.monotonic() - t0)


def _short_text_loss(heads: Heads, short: ShortTexts, idx: torch.Tensor, img: torch.Tensor, scale: torch.Tensor,
                     n: int, gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy of up to ``n`` short texts (one each from random batch images) over the batch's
    images, the target spread evenly over every image the text describes."""
    owners = [i for i in idx[torch.randperm(len(idx), generator=gen)].tolist() if len(short.texts_of[i])][:n]
    if not owners:
        return img.sum() * 0.0
    texts = torch.stack([short.texts_of[i][torch.randint(len(short.texts_of[i]), (1,), generator=gen)][0]
                         for i in owners])
    txt = embed_captions(heads.embed_text, short.feats, texts, from_tokens=heads.text_layers is not None)
    target = short.positives(texts, idx).float()
    target = target / target.sum(1, keepdim=True)
    return -(target * F.log_softmax(scale * txt @ img.T, dim=1)).sum(1).mean()


def _twin_texts(heads: Heads, twins: TwinCaptions, caps: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
    """Embeddings of one random twin of each caption in ``caps`` that has any (None where none has)."""
    rows = [pool[int(torch.randint(len(pool), (1,), generator=gen))] for pool in (twins.of[c] for c in caps.tolist())
            if pool]
    if not rows:
        return None
    return embed_captions(heads.embed_text, twins.as_features(), torch.tensor(rows), from_tokens=True)


def base_spec_for(spec: str | None) -> str:
    """The base encoder spec heads are trained on: ``default`` means the bundled towers (``bridge``)."""
    spec = (spec or "bridge").strip()
    if spec in BUNDLED_SPECS:
        return "bridge"
    if spec.startswith("heads:"):
        raise EncoderSpecError("train on a base encoder ('bridge' or 'hf:...'), not on trained heads")
    return spec


def model_card(result: TrainResult, dataset_root: str, command: str, feature_seconds: float,
               extra_sections: str = "") -> str:
    """A short markdown model card: data, recipe, dev metrics, timing and the exact command."""
    cfg, o = result.config, result.config.train.get("options", {})

    def table(r: dict) -> str:
        rows = ["| direction | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
        for name, key in (("text → image", "text_to_image"), ("image → text", "image_to_text")):
            rows.append(f"| {name} | " + " | ".join(f"{r[key][k]:.1f}" for k in ("R@1", "R@5", "R@10")) + " |")
        return "\n".join(rows)

    dev = result.dev
    parts = [
        "# imgsearch projection heads\n",
        f"Projection heads trained with symmetric InfoNCE on top of the frozen base encoder `{cfg.base_spec}`.",
        f"Dataset: `{os.path.basename(dataset_root.rstrip('/'))}` (train split for training, dev split for model selection).",
        "Only weights ship here (`heads.safetensors`, `heads.json`); no photos or captions are included.\n",
        "## Recipe\n",
        f"- image head inputs: {', '.join(cfg.image_inputs)}; text head inputs: {', '.join(cfg.text_inputs)}",
        f"- heads: per-input LayerNorm, linear skip + 2-layer GELU MLP (hidden {cfg.hidden_dim}, dropout {cfg.dropout}),"
        f" output {cfg.embed_dim}-d, L2-normalised",
        f"- loss: symmetric InfoNCE, learnable temperature (init 0.07), label smoothing {o.get('label_smoothing')}",
        f"- AdamW lr {o.get('lr')}, weight decay {o.get('weight_decay')}, batch {o.get('batch_size')} distinct images,"
        f" warmup {o.get('warmup_epochs')} epoch + cosine, up to {o.get('epochs')} epochs, early stopping on dev rsum"
        f" (best epoch {cfg.train.get('best_epoch', result.best_epoch)}), seed {o.get('seed')}",
        *([f"- ensemble of {cfg.members} head pairs (seeds {o.get('seed')}..{o.get('seed', 0) + cfg.members - 1}), their"
           f" unit embeddings concatenated and scaled by 1/√{cfg.members}, so the learned cosine is the members' mean;"
           " each member selected on its own dev rsum"
           + (f"; the joined {cfg.embed_dim * cfg.members}-d embedding projected to {cfg.ensemble_dim}-d (uncentred PCA"
              " of the train photos' and captions' joined embeddings) and L2-normalised" if cfg.ensemble_dim else "")]
          if cfg.members > 1 else []),
        *([f"- text: a copy of the MiniLM tower's last layer, started from the tower's weights, trained with the heads"
           f" (AdamW lr {o.get('text_lr')}, weight decay 0.01) on the cached input states of that layer; the text head"
           " reads its mean- and max-pooled token states, and the blend keeps the frozen tower's embedding"]
          if cfg.text_layers else []),
        *([f"- short texts: each image's captions' noun phrases (\"a black dog\", \"dog\"; keys of at least 5 train"
           f" images), {o.get('short_per_batch')} a batch, each scored against the batch's photos with every photo"
           f" it describes as a target; loss weight {o.get('short_texts')}"] if o.get("short_texts") else []),
        *(["- composition negatives: one rewritten twin of each caption (colours or roles swapped, a count or noun"
           " changed) joins the texts each photo is told apart from (NegCLIP)"]
          if o.get("composition_negatives") else []),
        f"- image views per training image: {cfg.train.get('train_views')} (1 clean centre crop + augmented: random"
        " resized crop 0.35-1, flip, colour jitter, 10% greyscale); all captions of each image used every epoch",
        f"- final embedding: [√w·head, √(1−w)·base] with w = {cfg.blend}, so cosine = w·learned + (1−w)·base"
        f" (`{cfg.image_blend_input}` / `{cfg.text_blend_input}`), keeping the base's open vocabulary"
        + ("\n- photos at search time: the mean of a photo's vector and its mirror image's (`flip_average`; not in the"
           " dev metrics below, which embed the clean view only)\n" if cfg.flip_average else "\n"),
    ]
    if dev:
        parts += ["## Dev metrics (blended, at training time)\n", table(dev["blended"]), "",
                  "Learned space alone (w = 1):\n", table(dev["learned_only"]), ""]
    parts += ["## Training time\n",
              f"- feature extraction (frozen towers, cached): {feature_seconds / 60:.1f} min",
              f"- head training: {result.seconds / 60:.1f} min\n",
              "## Reproduce\n", "```", command, "```\n"]
    return "\n".join(parts) + extra_sections
