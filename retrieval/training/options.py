"""Reranker training options (kept free of heavy imports: the command line reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RerankTrainOptions:
    """Hyper-parameters of one reranker training run (recorded in reranker.json)."""

    epochs: int = 10  # an epoch pairs every image with one of its captions (sampled afresh)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.2
    hard_k: int = 20  # hard negatives come from the dual encoder's top-k
    negatives: int = 7  # negatives per list (listwise loss) or 1 per direction (pointwise)
    hard_negatives: int = 3  # of those, how many come from the dual encoder's top-k; the rest are random
    listwise: bool = True  # softmax over [positive + negatives] per query, both directions (+ BCE on all pairs)
    bce_weight: float = 0.5  # the pointwise BCE term added to the listwise loss (keeps logits calibrated)
    itc_weight: float = 0.0  # in-batch contrastive loss on the fusion's pooled inputs ("align before fuse")
    itc_temperature: float = 0.05
    patience: int = 4
    seed: int = 0
    width: int = 128
    layers: int = 2
    heads: int = 4
    self_attention: bool = False
    dropout: float = 0.1
    region_mlp: bool = True
    region_head: bool = False  # start regions with a frozen copy of the tower's 1x1 head (320 -> 1280 channels)
    rerank_k: int = 20  # candidates reranked when measuring dev recall
    init_from: str | None = None  # start from this reranker folder (fine-tuning) instead of random weights
    compositional_negatives: int = 0  # rewritten twins of the image's captions added to each image's caption list
    dev_queries: int = 200  # images (and their captions) that measure dev recall each epoch; all at the end
