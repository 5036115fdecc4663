"""The bundled offline encoder: EfficientNet-Lite0 images and MiniLM text in one space.

Without trained heads, images join the text space through the ImageNet label
bridge (ConSE, Norouzi et al. 2014): an image's embedding is the
probability-weighted mean of the text embeddings of its top-k class prompts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..settings import Settings
from .base import EncoderBase, pick_device, state_digest
from .runtime import EncoderGraphs, PixelsGraph, TextGraph, pick_engine, run_pixels, run_text
from .towers import EfficientNetLiteTower, ImageFeatures, MiniLMTower, imagenet_classes, mean_pool


@dataclass(frozen=True)
class BridgeConfig:
    """How the label bridge maps ImageNet predictions into the text space."""

    top_k: int = 10
    prompt_template: str = "a photo of a {}."
    image_variant: int = 0


def class_prompt_embeddings(text_tower: MiniLMTower, template: str, device: torch.device,
                            cache_dir: Path | None = None) -> np.ndarray:
    """MiniLM vectors of the 1,000 ImageNet class prompts, cached on disk (they only depend on the tower)
    in ``cache_dir`` (default: ``Settings.cache_dir``)."""
    key = state_digest([text_tower], template)
    cache = (Settings.from_env().cache_dir if cache_dir is None else cache_dir) / f"class-prompts-{key}.npy"
    try:
        emb = np.load(cache, allow_pickle=False)
        if emb.shape == (len(imagenet_classes()), text_tower.dim):
            return emb
    except (OSError, ValueError):
        pass
    prompts = [template.format(c) for c in imagenet_classes()]
    with torch.inference_mode():
        emb = torch.cat([text_tower.embed(prompts[i:i + 256], device) for i in range(0, len(prompts), 256)])
    emb = emb.float().cpu().numpy()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, emb, allow_pickle=False)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache folder only costs the recomputation
    return emb


class LabelBridge(torch.nn.Module):
    """ImageNet logits -> text space, as the weighted mean of the top-k class prompt embeddings."""

    def __init__(self, class_embeddings: torch.Tensor, top_k: int) -> None:
        super().__init__()
        self.register_buffer("class_embeddings", class_embeddings)  # (1000, dim), unit rows
        self.top_k = top_k

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
        mixed = torch.einsum("nk,nkd->nd", weights, self.class_embeddings[top_i])
        return F.normalize(mixed, dim=-1)


class DefaultEncoder(EncoderBase):
    """EfficientNet-Lite + MiniLM joined by the label bridge (spec ``bridge``).

    Subclasses (trained heads) reuse the towers and override ``_image_embed`` / ``_text_embed``.
    ``settings`` (default: ``Settings.from_env()``) gives the engine (``engine``: onnx or torch), the
    tracing switch and the cache folder.
    """

    def __init__(self, config: BridgeConfig | None = None, device: str | None = None, spec: str = "bridge",
                 settings: Settings | None = None) -> None:
        settings = Settings.from_env() if settings is None else settings
        self.config = config or BridgeConfig()
        self.device = pick_device(device)
        self.image_tower = EfficientNetLiteTower(self.config.image_variant, trace=settings.trace).to(self.device)
        self.text_tower = MiniLMTower(trace=settings.trace).to(self.device)
        self.image_size = self.image_tower.image_size
        class_emb = torch.from_numpy(class_prompt_embeddings(self.text_tower, self.config.prompt_template, self.device,
                                                             cache_dir=settings.cache_dir))
        self.bridge = LabelBridge(class_emb, self.config.top_k).to(self.device)
        self.dim = self.text_tower.dim
        self.spec = spec
        self.fingerprint = self._fingerprint()
        self.engine = pick_engine(settings, self.device)
        self.graphs = EncoderGraphs(self.fingerprint, settings, self.device)

    def _fingerprint(self) -> str:
        extra = json.dumps({"kind": "bridge", **asdict(self.config)}, sort_keys=True)
        return "bridge:" + state_digest([self.image_tower, self.text_tower], extra)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.image_tower.preprocess(image)

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        """Raw tower outputs (logits, pooled, spatial) for a preprocessed batch."""
        return self.image_tower(pixels.to(self.device))

    def _image_embed(self, feats: ImageFeatures) -> torch.Tensor:
        return self.bridge(feats.logits)

    def _text_embed(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower.embed(texts, self.device)

    def _image_graph(self):
        return self.graphs.image(lambda: PixelsGraph(self.image_tower.features_module, self._graph_image_head,
                                                     False, [self.bridge]), self.image_size)

    def onnx_graphs(self):
        """The (image, text) OnnxGraphs this encoder runs on the onnx engine (exported when first opened)."""
        return self._image_graph(), self._text_graph()

    def _graph_image_head(self, feats: ImageFeatures) -> torch.Tensor:
        return F.normalize(self._image_embed(feats).float(), dim=-1)

    def _text_graph(self):
        return self.graphs.text(lambda: TextGraph(self.text_tower.states_module(), self._graph_text_head, []),
                                self.text_tower.numpy_inputs)

    @staticmethod
    def _graph_text_head(mask: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(mean_pool(states, mask), dim=-1).float(), dim=-1)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        if self.engine == "onnx":
            return run_pixels(self._image_graph(), pixels)
        with torch.inference_mode():
            emb = self._image_embed(self.image_features(pixels))
            return F.normalize(emb.float(), dim=-1).cpu().numpy().astype(np.float32)

    def encode_pixels_with_regions(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``encode_pixels`` plus the region tokens (n, 49, 320) float16 of the same forward pass."""
        if self.engine == "onnx":
            return run_pixels(self._image_graph(), pixels, regions=True)
        with torch.inference_mode():
            feats = self.image_features(pixels)
            emb = self._image_embed(feats)
            regions = feats.regions.flatten(2).transpose(1, 2).half().cpu().numpy()
            return F.normalize(emb.float(), dim=-1).cpu().numpy().astype(np.float32), regions

    @property
    def region_key(self) -> str:
        """Identifies the region features (tower weights + preprocessing) stored for the reranker."""
        if not hasattr(self, "_region_key"):
            extra = json.dumps({"kind": "effnet-lite-blocks", "variant": self.config.image_variant,
                                "size": self.image_size}, sort_keys=True)
            self._region_key = "effnet:" + state_digest([self.image_tower], extra)
        return self._region_key

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        if self.engine == "onnx":
            return run_text(self._text_graph(), self.text_tower.numpy_inputs(texts))
        with torch.inference_mode():
            emb = self._text_embed(texts)
            return F.normalize(emb.float(), dim=-1).cpu().numpy().astype(np.float32)
