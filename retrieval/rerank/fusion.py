"""The bundled cross-attention fusion reranker (ALBEF/BLIP-style image-text matching).

Text tokens (the text tower's per-token states) attend to image regions (the image
tower's spatial map as tokens) through a few cross-attention layers; an ITM head on the
fused first token gives a match logit. A reranker folder holds ``reranker.safetensors``,
``reranker.json`` (a :class:`FusionConfig`) and a ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..encoders.base import state_digest
from ..errors import WeightsError
from ..weights_io import config_from_dict, load_weights_into, read_json_config

WEIGHTS_FILE = "reranker.safetensors"
CONFIG_FILE = "reranker.json"
CARD_FILE = "MODEL_CARD.md"
FORMAT_VERSION = 1


@dataclass
class FusionConfig:
    """Shape of the fusion model and how its score is combined (stored as ``reranker.json``)."""

    base_spec: str = "bridge"  # the encoder whose towers give regions and text tokens
    region_dim: int = 320
    num_regions: int = 49
    text_dim: int = 384
    width: int = 256
    layers: int = 2
    heads: int = 4
    ffn_mult: int = 2
    self_attention: bool = True  # text self-attention in each layer (besides cross-attention)
    dropout: float = 0.1
    region_mlp: bool = False  # a GELU MLP (not just a linear map) from region channels to the fusion width
    region_head: int = 0  # >0: a frozen copy of the image tower's 1x1 head (region_dim -> region_head, BN, ReLU6) first
    alpha: float = 1.0  # final score = itm logit + alpha * dual-encoder cosine (text->image; chosen on dev)
    caption_alpha: float = 1.0  # the same for image->text (ranking captions)
    format_version: int = FORMAT_VERSION
    train: dict = field(default_factory=dict)  # provenance only

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def semantic_json(self) -> str:
        data = asdict(self)
        data.pop("train", None)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        cfg = config_from_dict(cls, data, "reranker", FORMAT_VERSION)
        if cfg.width % cfg.heads:
            raise WeightsError(f"reranker width {cfg.width} is not a multiple of heads {cfg.heads}")
        return cfg


class CrossAttention(torch.nn.Module):
    """Multi-head attention from text tokens to region tokens; keys/values computed once per image."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = torch.nn.Linear(width, width)
        self.kv = torch.nn.Linear(width, 2 * width)
        self.out = torch.nn.Linear(width, width)

    def keys_values(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, R, w) region tokens -> keys and values (u, heads, R, w / heads)."""
        u, r, w = regions.shape
        kv = self.kv(regions).view(u, r, 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, L, w = x.shape
        q = self.q(x).view(n, L, self.heads, w // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, L, w))


class FusionLayer(torch.nn.Module):
    """Pre-norm: [text self-attention], text->regions cross-attention, feed-forward."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        w = cfg.width
        self.self_attention = cfg.self_attention
        if cfg.self_attention:
            self.norm_self = torch.nn.LayerNorm(w)
            self.attn_self = torch.nn.MultiheadAttention(w, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm_cross = torch.nn.LayerNorm(w)
        self.norm_regions = torch.nn.LayerNorm(w)
        self.attn_cross = CrossAttention(w, cfg.heads)
        self.norm_ffn = torch.nn.LayerNorm(w)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(w, w * cfg.ffn_mult), torch.nn.GELU(),
                                       torch.nn.Dropout(cfg.dropout), torch.nn.Linear(w * cfg.ffn_mult, w))
        self.drop = torch.nn.Dropout(cfg.dropout)

    def region_memory(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of embedded region tokens (computed once per image)."""
        return self.attn_cross.keys_values(self.norm_regions(regions))

    def _traceable_self_attention(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``attn_self`` (eval mode) written out: traced, ``nn.MultiheadAttention`` fixes the batch and token
        counts of the example into the exported graph."""
        a = self.attn_self
        n, L, w = h.shape
        q, k, v = (t.view(n, L, a.num_heads, w // a.num_heads).transpose(1, 2)
                   for t in F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        return a.out_proj(y.transpose(1, 2).reshape(n, L, w))

    def forward(self, x: torch.Tensor, pad: torch.Tensor, regions: torch.Tensor | None, image_index: torch.Tensor,
                memory: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.self_attention:
            h = self.norm_self(x)
            x = x + self.drop(self._traceable_self_attention(h, pad) if torch.jit.is_tracing() else
                              self.attn_self(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        k, v = memory if memory is not None else self.region_memory(regions)
        x = x + self.drop(self.attn_cross(self.norm_cross(x), k[image_index], v[image_index]))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class FusionModel(torch.nn.Module):
    """Text tokens x region tokens -> image-text matching logit."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.config = cfg
        w = cfg.width
        region_in = cfg.region_dim
        if cfg.region_head:  # the tower's own (BN-folded) head convolution: ImageNet-semantic regions
            self.region_head = torch.nn.Linear(cfg.region_dim, cfg.region_head)
            self.region_head.requires_grad_(False)
            region_in = cfg.region_head
        self.region_norm = torch.nn.LayerNorm(region_in)
        self.region_proj = (torch.nn.Sequential(torch.nn.Linear(region_in, 2 * w), torch.nn.GELU(),
                                                torch.nn.Linear(2 * w, w))
                            if cfg.region_mlp else torch.nn.Linear(region_in, w))
        # one extra "global" region: the mean of all regions
        self.region_pos = torch.nn.Parameter(torch.zeros(1, cfg.num_regions + 1, w))
        self.text_norm = torch.nn.LayerNorm(cfg.text_dim)
        self.text_proj = torch.nn.Linear(cfg.text_dim, w)
        self.layers = torch.nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.layers))
        self.out_norm = torch.nn.LayerNorm(w)
        self.itm = torch.nn.Sequential(torch.nn.Linear(2 * w, w), torch.nn.GELU(), torch.nn.Linear(w, 1))
        torch.nn.init.normal_(self.region_pos, std=0.02)

    def embed_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """(u, R, C) raw regions -> (u, R + 1, width) region tokens (the global token first)."""
        regions = regions.float()
        if self.config.region_head:
            regions = torch.clamp(self.region_head(regions), 0.0, 6.0)  # ReLU6, as in the tower
        tokens = torch.cat([regions.mean(dim=1, keepdim=True), regions], dim=1)
        return self.region_proj(self.region_norm(tokens)) + self.region_pos[:, : tokens.shape[1]]

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """(t, L, text_dim) token states -> (t, L, width)."""
        return self.text_proj(self.text_norm(text.float()))

    def region_memory(self, regions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values of raw regions (u, R, C): reusable across many texts."""
        r = self.embed_regions(regions)
        return [layer.region_memory(r) for layer in self.layers]

    def forward(self, text: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor | None,
                image_index: torch.Tensor | None = None, text_index: torch.Tensor | None = None,
                embedded: bool = False, memory: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor:
        """Match logits (n,) for n pairs.

        ``text`` (t, L, text_dim) with ``mask`` (t, L) and ``regions`` (u, R, C): pair p joins text
        ``text_index[p]`` and image ``image_index[p]`` (default: pair p is text p with image p).
        With ``embedded`` both are already through ``embed_text`` / ``embed_regions``; with ``memory``
        (from ``region_memory``) the regions are not needed at all.
        """
        if memory is not None:
            r = memory[0][0]  # only its length is used below
        else:
            r = regions if embedded else self.embed_regions(regions)
        x = text if embedded else self.embed_text(text)
        n = max(x.shape[0], r.shape[0]) if text_index is None and image_index is None else None
        if text_index is not None:
            x, mask = x[text_index], mask[text_index]
        elif x.shape[0] == 1 and n:
            x, mask = x.expand(n, -1, -1), mask.expand(n, -1)
        if image_index is None:
            image_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if r.shape[0] == 1 \
                else torch.arange(x.shape[0], device=x.device)
        pad = ~mask
        for n_layer, layer in enumerate(self.layers):
            x = layer(x, pad, None if memory is not None else r, image_index,
                      memory[n_layer] if memory is not None else None)
        x = self.out_norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.itm(torch.cat([x[:, 0], mean], dim=-1)).squeeze(-1)


def init_region_head(model: FusionModel, towers) -> None:
    """Copy the bundled image tower's 1x1 head convolution with its batch norm folded in."""
    conv, bn = towers.image_tower.model._conv_head, towers.image_tower.model._bn1
    scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
    with torch.no_grad():
        model.region_head.weight.copy_(conv.weight.detach().flatten(1) * scale[:, None])
        model.region_head.bias.copy_(bn.bias.detach() - bn.running_mean.detach() * scale)


# -- save / load -----------------------------------------------------------------------------

def save_reranker(folder: str | os.PathLike, config: FusionConfig, state_dict: dict[str, torch.Tensor],
                  card_text: str | None = None) -> None:
    """Write ``reranker.safetensors`` (fp16), ``reranker.json`` and optionally ``MODEL_CARD.md``."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE),
              metadata={"format": "imgsearch-fusion-reranker", "version": str(FORMAT_VERSION)})
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(config.to_json() + "\n")
    if card_text is not None:
        with open(os.path.join(folder, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(card_text)


def load_fusion(folder: str | os.PathLike) -> tuple[FusionConfig, FusionModel]:
    """Load a reranker folder; a missing, corrupt or mismatched file raises a one-line WeightsError."""
    cfg = FusionConfig.from_dict(read_json_config(os.path.join(folder, CONFIG_FILE), "reranker"))
    model = FusionModel(cfg)
    load_weights_into(model, os.path.join(folder, WEIGHTS_FILE), "reranker")
    model.eval()
    return cfg, model


class RerankGraph(torch.nn.Module):
    """(token ids, regions, pair indices) -> match logits: the text tower's token states and the fusion
    model in one computation, which ONNX Runtime runs at query time."""

    def __init__(self, states: torch.nn.Module, model: FusionModel) -> None:
        super().__init__()
        self.states, self.model = states, model

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor,
                regions: torch.Tensor, text_index: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_text(self.states(input_ids, token_type_ids, attention_mask))
        r = self.model.embed_regions(regions)
        return self.model(x, attention_mask.bool(), r, image_index=image_index, text_index=text_index, embedded=True)


RERANK_INPUTS = ["input_ids", "token_type_ids", "attention_mask", "regions", "text_index", "image_index"]


# -- the reranker ----------------------------------------------------------------------------

class FusionReranker:
    """The fusion model on top of the bundled towers (spec ``default`` or ``fusion:<folder>``)."""

    batch_size = 64

    def __init__(self, folder: str | os.PathLike, spec: str | None = None, encoder=None,
                 device: str | None = None) -> None:
        from ..encoders import create_encoder
        from .towers import base_towers

        self.folder = os.path.abspath(folder)
        self.config, self.model = load_fusion(self.folder)
        towers = base_towers(encoder) if encoder is not None else None
        if towers is not None and not self._reads(towers):
            towers = None  # the search encoder's towers are not the ones this reranker was trained on
        if towers is None:
            towers = base_towers(create_encoder(self.config.base_spec, device=device))
        if towers is None:
            raise WeightsError(f"reranker in {self.folder} needs the bundled towers, not '{self.config.base_spec}'")
        self.towers = towers
        self.device = towers.device
        self.model.to(self.device)
        self.spec = spec or f"fusion:{self.folder}"
        self.alpha = float(self.config.alpha)
        self.caption_alpha = float(self.config.caption_alpha)
        self.region_key = towers.region_key
        self.fingerprint = "fusion:" + state_digest([self.model], towers.fingerprint + self.config.semantic_json())
        self.engine = towers.engine  # onnx: itm_scores (the query path) runs on ONNX Runtime
        self._graph = None
        self._tokens = None

    def _reads(self, towers) -> bool:
        """True when ``towers`` (a ``DefaultEncoder``) give the regions this reranker was trained on."""
        from ..encoders import BRIDGE_VARIANTS

        return towers.config.image_variant == BRIDGE_VARIANTS.get(self.config.base_spec, 0)

    def encode_regions(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float16 regions (n, R, C) (49 x 320 for the bundled towers)."""
        from .towers import image_regions

        if not images:
            return np.zeros((0, self.config.num_regions, self.config.region_dim), np.float16)
        pixels = torch.stack([self.towers.preprocess(im.convert("RGB")) for im in images])
        return image_regions(self.towers, pixels).half().cpu().numpy()

    @torch.inference_mode()
    def itm_scores(self, texts: Sequence[str], regions: np.ndarray) -> np.ndarray:
        """Matching logits for aligned (text, regions) pairs; a single text or region broadcasts."""
        from .light import paired
        from .towers import text_token_states

        texts, regions, n = paired(texts, regions)
        if n == 0:
            return np.zeros(0, np.float32)
        if self.engine == "onnx":
            return self._itm_onnx(texts, regions, n)
        r = self.model.embed_regions(torch.from_numpy(regions.astype(np.float32)).to(self.device))
        out = []
        for s in range(0, n, self.batch_size):
            e = min(n, s + self.batch_size)
            batch_texts = texts if len(texts) == 1 else texts[s:e]
            (states,), mask = text_token_states(self.towers.text_tower, batch_texts, self.device)
            x = self.model.embed_text(states)
            ti = torch.zeros(e - s, dtype=torch.long) if len(batch_texts) == 1 else torch.arange(e - s)
            if r.shape[0] == 1:
                rr, ii = r, torch.zeros(e - s, dtype=torch.long)
            else:
                rr, ii = r[s:e], torch.arange(e - s)
            out.append(self.model(x, mask.bool(), rr, image_index=ii, text_index=ti, embedded=True).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _itm_onnx(self, texts: list[str], regions: np.ndarray, n: int) -> np.ndarray:
        """``itm_scores`` on ONNX Runtime, in the same batches of pairs."""
        from ..encoders.light import MiniLMTokens, minilm_tokenizer_file
        from .light import TEXT_MAX_TOKENS, run_rerank_graph

        if self._tokens is None:  # the light reranker's tokenizer: the graph sees the same ids either way
            self._tokens = MiniLMTokens(minilm_tokenizer_file(), TEXT_MAX_TOKENS)
        return run_rerank_graph(self.onnx_graph().session(), self._tokens, texts, regions.astype(np.float32), n,
                                self.batch_size)

    def onnx_graph(self):
        """The exported ``RerankGraph``, keyed by this reranker's fingerprint (built on first use)."""
        if self._graph is None:
            from ..encoders.runtime import OnnxGraph

            settings, device = self.towers.graphs.settings, self.device

            def example() -> tuple[torch.Tensor, ...]:
                enc = self.towers.text_tower.numpy_inputs(["a photo", "two dogs playing in the snow"])
                ids = [torch.from_numpy(enc[k]).to(device) for k in RERANK_INPUTS[:3]]
                regions = torch.zeros(2, self.config.num_regions, self.config.region_dim, device=device)
                index = torch.tensor([0, 1, 1], device=device)
                return (*ids, regions, index, index.flip(0))

            axes = {k: {0: "texts", 1: "tokens"} for k in RERANK_INPUTS[:3]}
            axes.update(regions={0: "images"}, text_index={0: "pairs"}, image_index={0: "pairs"},
                        logits={0: "pairs"})
            self._graph = OnnxGraph(lambda: RerankGraph(self.towers.text_tower.states_module(), self.model),
                                    example, RERANK_INPUTS, ["logits"], axes, "rerank", self.fingerprint,
                                    settings.cache_dir / "onnx", device, settings.onnx_threads)
        return self._graph

    @torch.inference_mode()
    def itm_pairs(self, texts: Sequence[str], regions: np.ndarray, text_index: np.ndarray, image_index: np.ndarray,
                  batch_size: int = 512) -> np.ndarray:
        """Matching logits for many pairs (``texts[text_index[p]]``, ``regions[image_index[p]]``) at once.

        Texts are encoded in batches (not one query at a time), so scoring a whole dataset is fast.
        """
        from .towers import text_token_states

        text_index, image_index = np.asarray(text_index), np.asarray(image_index)
        out = np.empty(len(text_index), np.float32)
        used, image_index = np.unique(image_index, return_inverse=True)
        # keys/values of every image once (not once per batch of pairs)
        memory = [self.model.region_memory(torch.from_numpy(np.asarray(regions[used[c:c + 256]], np.float32))
                                           .to(self.device)) for c in range(0, len(used), 256)]
        memory = [tuple(torch.cat([m[n][j] for m in memory]) for j in (0, 1)) for n in range(len(memory[0]))]
        order = np.argsort(text_index, kind="stable")
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ut, ti = np.unique(text_index[idx], return_inverse=True)
            (states,), mask = text_token_states(self.towers.text_tower, [" ".join(str(texts[t]).split()) for t in ut],
                                                self.device)
            logits = self.model(states, mask.bool(), None, image_index=torch.as_tensor(image_index[idx]).to(self.device),
                                text_index=torch.as_tensor(ti).to(self.device), memory=memory)
            out[idx] = logits.float().cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"<FusionReranker {self.spec} alpha={self.alpha} fp={self.fingerprint}>"
