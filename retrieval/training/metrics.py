"""Recall metrics both ways (Flickr/COCO protocol), before and after reranking a dual encoder's top-k."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

KS = (1, 5, 10)

ALPHAS = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0, 80.0, 120.0, 200.0)


def recall_at_k(image_vecs: np.ndarray, text_vecs: np.ndarray, caption_image: np.ndarray,
                ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """Recall@k in percent both ways from unit vectors.

    text->image: each caption queries all images; a hit if its own image is in the top k.
    image->text: each image queries all captions; a hit if any of its own captions is in the top k.
    """
    sims = text_vecs @ image_vecs.T  # (captions, images)
    return recall_from_similarity(sims, caption_image, ks)


def recall_from_similarity(sims: np.ndarray, caption_image: np.ndarray,
                           ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """Recall@k (percent) both ways from a (captions, images) similarity matrix."""
    caption_image = np.asarray(caption_image)
    n_caps, n_images = sims.shape
    own = sims[np.arange(n_caps), caption_image]
    # rank of the true image for each caption = number of images scoring strictly higher
    t2i_rank = (sims > own[:, None]).sum(axis=1)
    # for each image, best rank over its captions when ranking all captions by sims[:, image]
    i2t_rank = np.full(n_images, n_caps, dtype=np.int64)
    order = np.argsort(-sims, axis=0, kind="stable")  # (captions, images)
    for img in range(n_images):
        positions = np.nonzero(caption_image[order[:, img]] == img)[0]
        if len(positions):
            i2t_rank[img] = positions[0]
    return {
        "text_to_image": {f"R@{k}": round(100.0 * float(np.mean(t2i_rank < k)), 2) for k in ks},
        "image_to_text": {f"R@{k}": round(100.0 * float(np.mean(i2t_rank < k)), 2) for k in ks},
    }


def rsum(r: dict) -> float:
    """Sum of R@1/5/10 both ways."""
    return float(sum(r["text_to_image"].values()) + sum(r["image_to_text"].values()))


def top_candidates(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(captions x k) best images per caption and (images x k) best captions per image, best first."""
    sims = np.asarray(sims, np.float32)
    k_img, k_cap = min(k, sims.shape[1]), min(k, sims.shape[0])
    t2i = np.argpartition(-sims, k_img - 1, axis=1)[:, :k_img]
    t2i = np.take_along_axis(t2i, np.argsort(-np.take_along_axis(sims, t2i, 1), axis=1, kind="stable"), 1)
    i2t = np.argpartition(-sims.T, k_cap - 1, axis=1)[:, :k_cap]
    i2t = np.take_along_axis(i2t, np.argsort(-np.take_along_axis(sims.T, i2t, 1), axis=1, kind="stable"), 1)
    return t2i, i2t


def reranked_recall(sims: np.ndarray, caption_image: np.ndarray,
                    pair_scores: Callable[[np.ndarray, np.ndarray], np.ndarray], k: int = 20,
                    alphas: Sequence[float] = ALPHAS, fixed_alpha: float | None = None,
                    caption_rows: np.ndarray | None = None, image_cols: np.ndarray | None = None,
                    fixed_caption_alpha: float | None = None, i2t_sims: np.ndarray | None = None) -> dict:
    """Recall both ways before and after reranking each query's top-k with ``itm + alpha * sim``.

    ``pair_scores(caption_idx, image_idx)`` gives ITM logits for pairs. Queries may be limited to
    ``caption_rows`` (text->image) and ``image_cols`` (image->text). Each direction gets its own
    alpha: the best of ``alphas`` by that direction's R@1 + R@5 (then R@1; as ``fit-hubness`` chooses
    k and beta), unless fixed (``fixed_alpha`` for text->image, ``fixed_caption_alpha`` for
    image->text, which defaults to ``fixed_alpha``). ``i2t_sims``: other scores for image->text (a
    hubness-corrected matrix), else ``sims``. Returns the recall without reranking, with it, ``alpha``,
    ``caption_alpha`` and ``by_alpha`` (R@1 and R@5 at every alpha tried).
    """
    sims = np.asarray(sims, np.float32)
    i2t_sims = sims if i2t_sims is None else np.asarray(i2t_sims, np.float32)
    caption_image = np.asarray(caption_image)
    rows = np.arange(sims.shape[0]) if caption_rows is None else np.asarray(caption_rows)
    cols = np.arange(sims.shape[1]) if image_cols is None else np.asarray(image_cols)
    t2i, _ = top_candidates(sims, k)
    _, i2t = top_candidates(i2t_sims, k)
    t2i, i2t = t2i[rows], i2t[cols]
    cap_a = np.concatenate([np.repeat(rows, t2i.shape[1]), i2t.reshape(-1)])
    img_a = np.concatenate([t2i.reshape(-1), np.repeat(cols, i2t.shape[1])])
    scores = np.asarray(pair_scores(cap_a, img_a), np.float64)
    s_t2i = scores[: t2i.size].reshape(t2i.shape)
    s_i2t = scores[t2i.size:].reshape(i2t.shape)
    # float64: at an offset of 1e4, float32 would tie candidates closer than ~1e-3
    sub_t = sims[rows].astype(np.float64)  # (queries, images)
    sub_i = i2t_sims[:, cols].T.astype(np.float64)  # (images, captions)
    sim_t2i = np.take_along_axis(sub_t, t2i, 1)
    sim_i2t = np.take_along_axis(sub_i, i2t, 1)
    own_caps = caption_image[None, :] == cols[:, None]  # (images, captions)
    ks = (1, 5, 10)

    def t2i_recall(alpha: float | None) -> dict:
        sub = sub_t.copy()
        if alpha is not None:  # reranked candidates go above the rest, in fused order
            np.put_along_axis(sub, t2i, 1e4 + s_t2i + alpha * sim_t2i, 1)
        own = sub[np.arange(len(rows)), caption_image[rows]]
        rank = (sub > own[:, None]).sum(1)
        return {f"R@{q}": round(100.0 * float(np.mean(rank < q)), 2) for q in ks}

    def i2t_recall(alpha: float | None) -> dict:
        sub = sub_i.copy()
        if alpha is not None:
            np.put_along_axis(sub, i2t, 1e4 + s_i2t + alpha * sim_i2t, 1)
        best_own = np.where(own_caps, sub, -np.inf).max(axis=1)  # the best-scoring own caption
        rank = (sub > best_own[:, None]).sum(1)
        return {f"R@{q}": round(100.0 * float(np.mean(rank < q)), 2) for q in ks}

    def pick(fn, fixed):
        tried = {a: fn(a) for a in ([fixed] if fixed is not None else list(alphas))}
        best = max(tried, key=lambda a: (tried[a]["R@1"] + tried[a]["R@5"], tried[a]["R@1"]))
        return best, tried

    a_t, by_t = pick(t2i_recall, fixed_alpha)
    a_i, by_i = pick(i2t_recall, fixed_caption_alpha if fixed_caption_alpha is not None else fixed_alpha)
    return {"without": {"text_to_image": t2i_recall(None), "image_to_text": i2t_recall(None)},
            "with": {"text_to_image": by_t[a_t], "image_to_text": by_i[a_i]},
            "alpha": a_t, "caption_alpha": a_i,
            "by_alpha": {direction: {str(a): {q: r[q] for q in ("R@1", "R@5")} for a, r in tried.items()}
                         for direction, tried in (("text_to_image", by_t), ("image_to_text", by_i))}}
