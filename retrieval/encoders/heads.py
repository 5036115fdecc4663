"""Trained projection heads on top of a frozen base encoder, and their on-disk format.

A heads folder holds ``heads.safetensors`` (weights only, no pickle), ``heads.json``
(a :class:`HeadsConfig`, including the base encoder spec) and optionally ``MODEL_CARD.md`` and
``hubness.safetensors`` (a search-time hubness correction, see ``hubness.py``).

The final embedding is a weighted concatenation of the learned space and the base space::

    image = [sqrt(w) * normalize(head_img(x)), sqrt(1 - w) * base_img(x)]
    text  = [sqrt(w) * normalize(head_txt(t)), sqrt(1 - w) * base_txt(t)]

so the cosine is exactly ``w * learned_sim + (1 - w) * base_sim``: the base space
(for ``default``, the open-vocabulary ImageNet label bridge) keeps its breadth.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import WeightsError
from ..weights_io import config_from_dict, load_weights_into, quantise_rows, read_json_config
from .base import EncoderBase, state_digest
from .hubness import load_hubness
from .runtime import EncoderGraphs, PixelsGraph, TextGraph, run_pixels, run_text
from .towers import ImageFeatures, TracedForward

WEIGHTS_FILE = "heads.safetensors"
CONFIG_FILE = "heads.json"
CARD_FILE = "MODEL_CARD.md"
FORMAT_VERSION = 1

# Feature names the bundled towers provide (see rich_image_features / rich_text_features).
RICH_IMAGE_DIMS = {"pooled": 1280, "maxpool": 1280, "grid": 4 * 1280, "logprobs": 1000, "bridge": 384}
RICH_TEXT_DIMS = {"minilm": 384, "minilm_max": 384, "cls": 384}


@dataclass
class HeadsConfig:
    """Everything needed to rebuild the heads and the blend (stored as ``heads.json``)."""

    base_spec: str = "bridge"
    image_inputs: list[str] = field(default_factory=lambda: ["pooled", "bridge"])
    text_inputs: list[str] = field(default_factory=lambda: ["minilm"])
    input_dims: dict[str, int] = field(default_factory=dict)  # "image.<name>"/"text.<name>" -> width
    embed_dim: int = 256
    hidden_dim: int = 1024
    dropout: float = 0.1
    blend: float = 0.7  # w: weight of the learned similarity in the final cosine
    image_blend_input: str = "bridge"  # base-space features used for the (1 - w) part
    text_blend_input: str = "minilm"
    # w for texts of at most SHORT_TEXT_WORDS words ("kitty", "chess"), which lean more on the label bridge;
    # None: ``blend`` for every text. Query-side only: photo vectors, and so the fingerprint, stay as they are.
    short_text_blend: float | None = None
    members: int = 1  # independently trained head pairs, their unit embeddings concatenated (an ensemble)
    ensemble_dim: int = 0  # >0: the members' joined embedding projected to this width (PCA fitted on train)
    text_layers: int = 0  # 1: a trained copy of MiniLM's last layer feeds the text head (bundled towers only)
    flip_average: bool = False  # a photo's vector is the mean of its own and its mirror image's (test-time)
    format_version: int = FORMAT_VERSION
    train: dict = field(default_factory=dict)  # provenance only (recipe, metrics); not used to build

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "HeadsConfig":
        cfg = config_from_dict(cls, data, "heads", FORMAT_VERSION)
        if not 0.0 <= cfg.blend <= 1.0:
            raise WeightsError(f"heads config blend must be in [0, 1], got {cfg.blend}")
        stb = cfg.short_text_blend
        if stb is not None and (isinstance(stb, bool) or not isinstance(stb, (int, float)) or not 0.0 <= stb <= 1.0
                                or not 0.0 < cfg.blend < 1.0):
            raise WeightsError(f"heads config short_text_blend must be null, or in [0, 1] with a blend strictly "
                               f"between 0 and 1; got {stb!r} with blend {cfg.blend}")
        if not isinstance(cfg.members, int) or cfg.members < 1:
            raise WeightsError(f"heads config members must be a whole number >= 1, got {cfg.members!r}")
        if not isinstance(cfg.ensemble_dim, int) or not 0 <= cfg.ensemble_dim <= cfg.embed_dim * cfg.members \
                or (cfg.ensemble_dim and cfg.members == 1):
            raise WeightsError(f"heads config ensemble_dim must be 0, or at most members x embed_dim for an "
                               f"ensemble, got {cfg.ensemble_dim!r}")
        if cfg.text_layers not in (0, 1) or isinstance(cfg.text_layers, bool):
            raise WeightsError(f"heads config text_layers must be 0 or 1, got {cfg.text_layers!r}")
        if cfg.text_layers and not set(cfg.text_inputs) <= set(RICH_TEXT_DIMS):
            raise WeightsError("heads config text_layers needs the bundled MiniLM tower's text inputs")
        if not isinstance(cfg.flip_average, bool):
            raise WeightsError(f"heads config flip_average must be true or false, got {cfg.flip_average!r}")
        return cfg

    @property
    def learned_dim(self) -> int:
        """Width of the learned part of an embedding (all members together, after any projection)."""
        return self.ensemble_dim or self.embed_dim * self.members

    def dims(self, side: str) -> list[int]:
        names = self.image_inputs if side == "image" else self.text_inputs
        try:
            return [int(self.input_dims[f"{side}.{n}"]) for n in names]
        except KeyError as e:
            raise WeightsError(f"heads config gives no width for input {e.args[0]}") from None

    def semantic_json(self) -> str:
        """The config without provenance: what changes the vectors."""
        data = asdict(self)
        data.pop("train", None)
        data.pop("short_text_blend")  # re-weights query texts only; stored photo vectors do not change
        if data["members"] == 1:  # as before ensembles existed: single heads keep their fingerprint
            data.pop("members")
            data.pop("ensemble_dim")
        if not data["text_layers"]:  # as before tuned text layers existed
            data.pop("text_layers")
        if not data["flip_average"]:
            data.pop("flip_average")
        return json.dumps(data, sort_keys=True)


class ProjectionHead(torch.nn.Module):
    """Per-input LayerNorm, concat, then a linear skip plus a 2-layer GELU MLP (residual)."""

    def __init__(self, in_dims: Sequence[int], out_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(d) for d in in_dims)
        total = sum(in_dims)
        self.input_dropout = torch.nn.Dropout(dropout)
        self.proj = torch.nn.Linear(total, out_dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(total, hidden_dim), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([norm(t.float()) for norm, t in zip(self.norms, inputs)], dim=-1)
        x = self.input_dropout(x)
        return self.proj(x) + self.mlp(x)


def minilm_layer_config():
    """The transformers config of one all-MiniLM-L6-v2 layer (what ``TunedTextLayers`` copies)."""
    from transformers import BertConfig

    return BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536, hidden_act="gelu",
                      layer_norm_eps=1e-12, attn_implementation="eager")


class TunedTextLayers(torch.nn.Module):
    """Trained copies of the text tower's top layers: the input states of those layers in, token states out."""

    def __init__(self, n: int) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLayer

        cfg = minilm_layer_config()
        self.layers = torch.nn.ModuleList(BertLayer(cfg) for _ in range(n))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = states.float()
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            out = layer(states, attention_mask=additive)
            states = out[0] if isinstance(out, (tuple, list)) else out
        return states


def pooled_text_features(states: torch.Tensor, mask: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named text inputs (``RICH_TEXT_DIMS``) from MiniLM token states (n, L, 384) and the (n, L) mask."""
    mask = mask.unsqueeze(-1).to(states.dtype)
    out: dict[str, torch.Tensor] = {}
    for n in names:
        if n == "minilm":
            out[n] = F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
        elif n == "minilm_max":
            out[n] = states.masked_fill(mask == 0, -1e4).amax(dim=1)
        elif n == "cls":
            out[n] = states[:, 0]
        else:
            raise WeightsError(f"unknown text input '{n}' for the bundled towers")
    return out


# names of the text tower's layer-input states and mask in a features dict (heads with text_layers)
TOKEN_STATES, TOKEN_MASK = "token_states_in", "token_mask"


class Heads(torch.nn.Module):
    """The image head, the text head and the learnable temperature (CLIP init 1/0.07); with
    ``config.text_layers``, a trained copy of the text tower's last layer in front of the text head."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        args = (config.embed_dim, config.hidden_dim, config.dropout)
        self.image = ProjectionHead(config.dims("image"), *args)
        self.text = ProjectionHead(config.dims("text"), *args)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.text_layers = TunedTextLayers(config.text_layers) if config.text_layers else None

    def embed_image(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised learned image embeddings from named base features."""
        return F.normalize(self.image([feats[n] for n in self.config.image_inputs]), dim=-1)

    def embed_text(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised learned text embeddings from named base features (with ``text_layers``: from
        ``feats[TOKEN_STATES]`` and ``feats[TOKEN_MASK]``, the input of the tower's last layer)."""
        if self.text_layers is not None:
            states = self.text_layers(feats[TOKEN_STATES], feats[TOKEN_MASK])
            feats = pooled_text_features(states, feats[TOKEN_MASK], self.config.text_inputs)
        return F.normalize(self.text([feats[n] for n in self.config.text_inputs]), dim=-1)


class HeadsEnsemble(torch.nn.Module):
    """``config.members`` independently trained ``Heads``: an embedding is their unit embeddings
    concatenated and scaled by 1/sqrt(members), so its cosine is the members' mean cosine; with
    ``config.ensemble_dim`` it is then projected to that width (``projection``, a PCA basis fitted
    on train embeddings) and L2-normalised again."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        single = HeadsConfig(**{**asdict(config), "members": 1, "ensemble_dim": 0, "train": {}})
        self.members = torch.nn.ModuleList(Heads(single) for _ in range(config.members))
        if config.ensemble_dim:
            self.register_buffer("projection", torch.zeros(config.embed_dim * config.members, config.ensemble_dim))
        else:
            self.projection = None

    def joined(self, side: str, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The members' joined embeddings of one side (``image`` or ``text``), before any projection."""
        parts = [getattr(m, f"embed_{side}")(feats) for m in self.members]
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def _project(self, joined: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return joined
        return F.normalize(joined @ self.projection.to(joined.dtype), dim=-1)

    def embed_image(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised learned image embeddings (all members) from named base features."""
        return self._project(self.joined("image", feats))

    def embed_text(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised learned text embeddings (all members) from named base features."""
        return self._project(self.joined("text", feats))


def build_heads(config: HeadsConfig) -> Heads | HeadsEnsemble:
    """The (untrained) heads module a config describes: one pair of heads, or an ensemble."""
    return Heads(config) if config.members == 1 else HeadsEnsemble(config)


def blend(learned: torch.Tensor, base: torch.Tensor, w: float) -> torch.Tensor:
    """[sqrt(w) * learned, sqrt(1 - w) * base] for unit rows: a unit vector whose cosine mixes both."""
    if w >= 1.0:
        return learned
    if w <= 0.0:
        return F.normalize(base.float(), dim=-1)
    return torch.cat([math.sqrt(w) * learned, math.sqrt(1 - w) * F.normalize(base.float(), dim=-1)], dim=-1)


# -- base features ---------------------------------------------------------------------------

def rich_image_features(encoder, pixels: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Named features of the bundled image tower (a ``DefaultEncoder``) for a preprocessed batch."""
    return features_from(encoder, encoder.image_features(pixels), names)


def features_from(encoder, f, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Named features from the bundled tower's raw outputs ``f`` (an ``ImageFeatures``)."""
    names = list(names or RICH_IMAGE_DIMS)
    out: dict[str, torch.Tensor] = {}
    for n in names:
        if n == "pooled":
            out[n] = f.pooled
        elif n == "maxpool":
            out[n] = f.spatial.amax(dim=(2, 3))
        elif n == "grid":
            out[n] = F.adaptive_avg_pool2d(f.spatial, 2).flatten(1)
        elif n == "logprobs":
            out[n] = f.logits.log_softmax(dim=-1)
        elif n == "bridge":
            out[n] = encoder.bridge(f.logits)
        else:
            raise WeightsError(f"unknown image input '{n}' for the bundled towers")
    return out


def rich_text_features(encoder, texts: list[str], names: Sequence[str] | None = None,
                       layer_input: bool = False) -> dict[str, torch.Tensor]:
    """Named features of the MiniLM tower (a ``DefaultEncoder``) for a batch of texts; with
    ``layer_input``, also the last layer's input states and the mask (``TOKEN_STATES``, ``TOKEN_MASK``)."""
    tower = encoder.text_tower
    batch = tower.tokenize(texts, encoder.device)
    if layer_input:
        states, before_last = tower.token_states_and_input(batch)
    else:
        states = tower.token_states(batch)
    out = pooled_text_features(states, batch["attention_mask"], list(names or RICH_TEXT_DIMS))
    if layer_input:
        out[TOKEN_STATES], out[TOKEN_MASK] = before_last, batch["attention_mask"].bool()
    return out


class TextVectors(torch.nn.Module):
    """Named text features, given as tensors in ``names`` order -> blended, L2-normalised text vectors
    (a plain-tensor signature, so the text side can be traced like the towers)."""

    def __init__(self, heads: torch.nn.Module, config: HeadsConfig, names: Sequence[str]) -> None:
        super().__init__()
        self.heads, self.config, self.names = heads, config, list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        feats = dict(zip(self.names, inputs))
        out = blend(self.heads.embed_text(feats), feats[self.config.text_blend_input], self.config.blend)
        return F.normalize(out.float(), dim=-1)


def is_rich(encoder) -> bool:
    """True when the base is the bundled EfficientNet-Lite + MiniLM towers (rich features)."""
    from .default import DefaultEncoder

    return isinstance(encoder, DefaultEncoder)


def feature_extractors(encoder) -> tuple[Callable, Callable, dict[str, int], dict[str, int], str, str]:
    """(image_fn(pixels), text_fn(texts), image dims, text dims, image blend input, text blend input).

    The bundled towers give rich features; any other encoder gives its own embeddings ("base").
    """
    if is_rich(encoder):
        return (lambda px: rich_image_features(encoder, px), lambda t: rich_text_features(encoder, t),
                dict(RICH_IMAGE_DIMS), dict(RICH_TEXT_DIMS), "bridge", "minilm")

    def image_fn(px: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"base": torch.from_numpy(encoder.encode_pixels(px))}

    def text_fn(texts: list[str]) -> dict[str, torch.Tensor]:
        return {"base": torch.from_numpy(encoder.encode_texts(texts))}

    return image_fn, text_fn, {"base": encoder.dim}, {"base": encoder.dim}, "base", "base"


# -- save / load -----------------------------------------------------------------------------

def save_heads(folder: str | os.PathLike, config: HeadsConfig, state_dict: dict[str, torch.Tensor],
               card_text: str | None = None, fp16: bool = True, int8: bool = False) -> None:
    """Write ``heads.safetensors`` (+ ``heads.json``, ``MODEL_CARD.md``) into ``folder``; with ``int8``
    the large matrices are stored as int8 with a scale per row (a quarter of float32)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        if fp16 and t.is_floating_point() and name != "logit_scale":
            t = t.half()
        tensors[name] = t.contiguous()
    if int8:
        tensors = quantise_rows(tensors, keep=("projection",))
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "imgsearch-heads", "version": str(FORMAT_VERSION)})
    _write_config(folder, config)
    if card_text is not None:
        with open(os.path.join(folder, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(card_text)


def _write_config(folder: str | os.PathLike, config: HeadsConfig) -> None:
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(config.to_json() + "\n")


def load_config(folder: str | os.PathLike) -> HeadsConfig:
    """Read and validate ``heads.json``; WeightsError when missing or malformed."""
    path = os.path.join(folder, CONFIG_FILE)
    data = read_json_config(path, "heads")
    try:
        return HeadsConfig.from_dict(data)
    except TypeError as e:
        raise WeightsError(f"heads config {path} is malformed: {e}") from None


def set_search_options(folder: str | os.PathLike, blend: float | None = None,
                       flip_average: bool | None = None, short_text_blend: float | None = None) -> HeadsConfig:
    """Change how a heads folder composes its vectors (the blend w, short texts' w, flip averaging) without retraining;
    rewrites ``heads.json`` (keeping the trained blend as ``train.trained_blend``) and returns the config.
    Any hubness correction in the folder was fitted to the old vectors: fit it again."""
    config = load_config(folder)
    data = asdict(config)
    if blend is not None and float(blend) != config.blend:
        data["train"] = {**config.train, "trained_blend": config.train.get("trained_blend", config.blend)}
        data["blend"] = float(blend)
    if flip_average is not None:
        data["flip_average"] = bool(flip_average)
    if short_text_blend is not None:
        data["short_text_blend"] = float(short_text_blend)
    config = HeadsConfig.from_dict(data)
    _write_config(folder, config)
    return config


def load_heads(folder: str | os.PathLike) -> tuple[HeadsConfig, Heads | HeadsEnsemble]:
    """Load a heads folder; any missing, corrupt or mismatched file raises a one-line WeightsError."""
    config = load_config(folder)
    heads = build_heads(config)
    load_weights_into(heads, os.path.join(folder, WEIGHTS_FILE), "heads")
    heads.eval()
    return config, heads


# -- the encoder -----------------------------------------------------------------------------

class TrainedEncoder(EncoderBase):
    """A base encoder plus trained heads and the blend (spec ``default`` or ``heads:<folder>``).

    With the bundled towers as base the heads read rich features (pooled/max-pooled image
    features, ImageNet log-probabilities, the label-bridge vector; MiniLM mean/max-pooled
    token states); with any other base (e.g. ``hf:...``) they read its embeddings.
    """

    def __init__(self, folder: str | os.PathLike, spec: str | None = None, device: str | None = None,
                 base=None, flip_average: bool | None = None) -> None:
        """``flip_average`` overrides the folder's setting (None: as saved)."""
        from . import BUNDLED_SPECS, create_encoder

        self.folder = os.path.abspath(folder)
        self.config, self.heads = load_heads(self.folder)
        if flip_average is not None:
            self.config = replace(self.config, flip_average=bool(flip_average))
        if base is None:
            if self.config.base_spec in BUNDLED_SPECS or self.config.base_spec.startswith("heads:"):
                raise WeightsError(f"heads in {self.folder} name base '{self.config.base_spec}'; "
                                   "the base must be 'bridge' or 'hf:...'")
            base = create_encoder(self.config.base_spec, device=device)
        self.base = base
        self.rich = is_rich(base)
        self.device = getattr(base, "device", None) or torch.device("cpu")
        self.heads.to(self.device)
        if self.rich:
            for n in self.config.image_inputs + [self.config.image_blend_input]:
                if n not in RICH_IMAGE_DIMS:
                    raise WeightsError(f"heads in {self.folder} read image input '{n}', which the base does not give")
        elif set(self.config.image_inputs + self.config.text_inputs) != {"base"} or self.config.text_layers:
            raise WeightsError(f"heads in {self.folder} were trained on the bundled towers, not on {base.spec}")
        for side, names, dims in (("image", self.config.image_inputs, RICH_IMAGE_DIMS),
                                  ("text", self.config.text_inputs, RICH_TEXT_DIMS)):
            for n in names:
                want = dims.get(n) if self.rich else base.dim
                if self.config.input_dims.get(f"{side}.{n}") != want:
                    raise WeightsError(f"heads in {self.folder} expect {side} input '{n}' of width "
                                       f"{self.config.input_dims.get(f'{side}.{n}')}, base gives {want}")
        w = self.config.blend
        base_dim = RICH_IMAGE_DIMS["bridge"] if self.rich else base.dim
        learned = self.config.learned_dim
        self.dim = learned if w >= 1 else base_dim if w <= 0 else learned + base_dim
        self.image_size = base.image_size
        self.spec = spec or f"heads:{self.folder}"
        digest = state_digest([self.heads], extra=base.fingerprint + self.config.semantic_json())
        self.fingerprint = f"heads:{digest}"
        # search-time only: reorders results, leaves the vectors (and so the fingerprint) alone
        self.hubness = load_hubness(self.folder, self.dim)
        stb = self.config.short_text_blend
        if stb is not None and stb != w:  # short texts: their two parts re-weighted from w to stb
            self.short_text_mix = (learned, math.sqrt(stb / w), math.sqrt((1 - stb) / (1 - w)))
        self._text_names = list(dict.fromkeys(self.config.text_inputs + [self.config.text_blend_input]))
        tokens = [TOKEN_STATES, TOKEN_MASK] if self.rich and self.config.text_layers else []
        self._text_vectors = TracedForward(TextVectors(self.heads, self.config, self._text_names + tokens))
        self._image_names = list(dict.fromkeys(self.config.image_inputs + [self.config.image_blend_input]))
        # ONNX Runtime runs whole computations on the bundled towers; heads on other bases stay in torch
        self.engine = base.engine if self.rich else "torch"
        if self.rich:  # flip averaging changes only the photos: one text graph for both settings
            text_side = replace(self.config, flip_average=False).semantic_json()
            text_key = "heads:" + state_digest([self.heads], extra=base.fingerprint + text_side)
            self.graphs = EncoderGraphs(self.fingerprint, base.graphs.settings, self.device, text_key=text_key)

    def _image_graph(self):
        towers = self.base.image_tower.features_module
        return self.graphs.image(lambda: PixelsGraph(towers, self._graph_image_head, self.config.flip_average,
                                                     [self.base.bridge, self.heads]), self.image_size)

    def onnx_graphs(self):
        """The (image, text) OnnxGraphs this encoder runs on the onnx engine (exported when first opened)."""
        return self._image_graph(), self._text_graph()

    def _graph_image_head(self, f: ImageFeatures) -> torch.Tensor:
        feats = features_from(self.base, f, self._image_names)
        out = blend(self.heads.embed_image(feats), feats[self.config.image_blend_input], self.config.blend)
        return F.normalize(out.float(), dim=-1)

    def _text_graph(self):
        tower = self.base.text_tower
        states = tower.states_module(with_input=bool(self.config.text_layers))
        return self.graphs.text(lambda: TextGraph(states, self._graph_text_head, [self.heads]), tower.numpy_inputs)

    def _graph_text_head(self, mask: torch.Tensor, states: torch.Tensor, before_last: torch.Tensor | None = None):
        feats = pooled_text_features(states, mask, self._text_names)
        if before_last is not None:
            feats[TOKEN_STATES], feats[TOKEN_MASK] = before_last, mask.bool()
        vectors = self._text_vectors.module
        return vectors(*(feats[n] for n in vectors.names))

    def preprocess(self, image):
        return self.base.preprocess(image)

    def _image_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(dict.fromkeys(self.config.image_inputs + [self.config.image_blend_input]))
        if self.rich:
            return rich_image_features(self.base, pixels, names)
        return {"base": torch.from_numpy(self.base.encode_pixels(pixels)).to(self.device)}

    def _text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.rich:
            return rich_text_features(self.base, texts, self._text_names, layer_input=bool(self.config.text_layers))
        return {"base": torch.from_numpy(self.base.encode_texts(texts)).to(self.device)}

    def _add_mirror(self, feats: dict[str, torch.Tensor], pixels: torch.Tensor,
                    features: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``feats`` (of ``pixels``), followed row-wise by ``features`` of the mirror images when the heads
        average flips (a second pass of the batch's size: one pass of twice the batch is slower per photo)."""
        if not self.config.flip_average:
            return feats
        mirror = features(pixels.flip(-1))
        return {k: torch.cat([v, mirror[k]]) for k, v in feats.items()}

    def _image_vectors(self, learned: torch.Tensor, base: torch.Tensor, n: int):
        """Blended, L2-normalised vectors of ``n`` photos (the mean with their mirror images' when flipped)."""
        out = F.normalize(blend(learned, base, self.config.blend).float(), dim=-1)
        if self.config.flip_average:
            out = F.normalize(out[:n] + out[n:], dim=-1)
        return out.cpu().numpy()

    def encode_pixels(self, pixels: torch.Tensor):
        """A preprocessed batch -> float32 (n, dim), L2-normalised."""
        if self.engine == "onnx":
            return run_pixels(self._image_graph(), pixels)
        with torch.inference_mode():
            feats = self._add_mirror(self._image_inputs(pixels), pixels, self._image_inputs)
            return self._image_vectors(self.heads.embed_image(feats), feats[self.config.image_blend_input],
                                       len(pixels))

    @property
    def region_key(self) -> str | None:
        """The base's region key (the heads do not change region features); None when it has none."""
        return getattr(self.base, "region_key", None)

    def encode_pixels_with_regions(self, pixels: torch.Tensor):
        """``encode_pixels`` plus the base's region tokens (of the photo as given) from the same forward pass."""
        n = len(pixels)
        if self.engine == "onnx":
            return run_pixels(self._image_graph(), pixels, regions=True)
        if not self.rich:
            if not hasattr(self.base, "encode_pixels_with_regions"):
                raise AttributeError("encode_pixels_with_regions")
            base_vecs, regions = self.base.encode_pixels_with_regions(pixels)
            with torch.inference_mode():
                feats = self._add_mirror({"base": torch.from_numpy(base_vecs).to(self.device)}, pixels,
                                         lambda px: {"base": torch.from_numpy(self.base.encode_pixels(px)).to(self.device)})
                return self._image_vectors(self.heads.embed_image(feats), feats["base"], n), regions
        with torch.inference_mode():
            names = list(dict.fromkeys(self.config.image_inputs + [self.config.image_blend_input]))
            f = self.base.image_features(pixels)
            regions = f.regions.flatten(2).transpose(1, 2).half().cpu().numpy()
            feats = self._add_mirror(features_from(self.base, f, names), pixels,
                                     lambda px: features_from(self.base, self.base.image_features(px), names))
            return (self._image_vectors(self.heads.embed_image(feats), feats[self.config.image_blend_input], n),
                    regions)

    def _encode_text_batch(self, texts: list[str]):
        if self.engine == "onnx":
            return run_text(self._text_graph(), self.base.text_tower.numpy_inputs(texts))
        with torch.inference_mode():
            feats = self._text_inputs(texts)
            vectors = self._text_vectors
            return vectors(self.heads.training, *(feats[n] for n in vectors.module.names)).cpu().numpy()

    def __repr__(self) -> str:
        return f"<TrainedEncoder {self.spec} base={self.base.spec} dim={self.dim} fp={self.fingerprint}>"
