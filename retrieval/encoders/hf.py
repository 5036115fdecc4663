"""Any transformers CLIP-family dual encoder (CLIP, SigLIP, SigLIP 2, ...) as an ``Encoder``.

Spec: ``hf:<hub id or local folder>``.  The model is loaded with ``AutoModel`` and must
offer ``get_image_features`` and ``get_text_features``; images go through the model's
own image processor and texts through its own tokenizer, so vectors match what the
checkpoint was trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import EncoderSpecError
from .base import EncoderBase, l2_normalize, pick_device, state_digest

# Model types whose text tower pools the *last* position and was trained on texts padded
# to the full length; their processors pad with "max_length" (SigLIP's own docs insist).
_MAX_LENGTH_PADDING = {"siglip", "siglip2"}
# Tokenizers that do not know their length say so with a huge sentinel (int(1e30)).
SANE_MAX_LENGTH = 100_000
# Image-processor settings that change the pixels a model sees.
_IMAGE_KEYS = (
    "size", "crop_size", "do_resize", "do_center_crop", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "resample", "do_convert_rgb",
    "patch_size", "max_num_patches", "do_pad",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers/huggingface_hub logging, progress bars, warnings and stdout."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _looks_like_path(name: str) -> bool:
    """A folder reference rather than an ``owner/name`` hub id."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
    )


def _features(out: Any, kind: str) -> torch.Tensor:
    """The embedding tensor from ``get_*_features``: a tensor (transformers 4) or a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds it (transformers 5)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", f"{kind}_embeds"):
        value = getattr(out, key, None)
        if value is None and isinstance(out, dict):
            value = out.get(key)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], torch.Tensor):
        return out[1]  # (last_hidden_state, pooler_output, ...) from return_dict=False
    raise TypeError(f"get_{kind}_features returned {type(out).__name__} without an embedding")


def _last_hidden_state(out: Any) -> torch.Tensor | None:
    """``last_hidden_state`` (n, R, C) of a vision tower output, if it has one."""
    if out is None or isinstance(out, torch.Tensor):
        return None
    value = getattr(out, "last_hidden_state", None)
    if value is None and isinstance(out, dict):
        value = out.get("last_hidden_state")
    if value is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        value = out[0]
    return value if isinstance(value, torch.Tensor) and value.ndim == 3 else None


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. SizeDict
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                 if getattr(value, f.name) is not None}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 8)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except Exception:
            pass
    return str(value)  # enums (resampling modes) and the like


def preprocessing_config(image_processor: Any, tokenizer: Any, max_length: int, *,
                         image_extra: dict[str, Any] | None = None,
                         text_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint's processor and tokenizer do to their inputs, as JSON-able data (part of the fingerprint)."""
    image = {key: _jsonable(getattr(image_processor, key)) for key in _IMAGE_KEYS if hasattr(image_processor, key)}
    image["class"] = type(image_processor).__name__
    image.update(image_extra or {})
    text = {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer), "max_length": max_length,
            "lowercase": _jsonable(getattr(tokenizer, "do_lower_case", None)), **(text_extra or {})}
    return {"image": image, "text": text}


def finish_loading(spec: str, source: str, kwargs: dict[str, Any], model: Any, device: torch.device,
                   image_processor: Any = None, tokenizer: Any = None) -> tuple[Any, Any, Any]:
    """(model on ``device`` in eval mode, image processor, tokenizer) of a checkpoint at ``source``: the
    processor and tokenizer loaded unless given; EncoderSpecError saying which part is unusable."""
    from transformers import AutoImageProcessor, AutoTokenizer

    if image_processor is None:
        try:
            image_processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        except Exception as exc:
            raise EncoderSpecError(f"cannot load {spec} — no usable image processor: {one_line(exc)}") from None
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except Exception as exc:
            raise EncoderSpecError(f"cannot load {spec} — no usable tokenizer: {one_line(exc)}") from None
    try:
        model = model.to(device).eval()
    except Exception as exc:
        raise EncoderSpecError(f"cannot load {spec} — cannot move the model to {device}: {one_line(exc)}") from None
    return model, image_processor, tokenizer


def resolve_target(prefix: str, name: str, local_files_only: bool | None) -> tuple[str, bool, bool]:
    """(source to load, whether it is a local folder, offline) for a ``prefix:<hub id or folder>`` spec.

    An empty name, an existing non-folder, or a path-looking name that is no folder raise EncoderSpecError.
    """
    spec = f"{prefix}{name}"
    if not name:
        raise EncoderSpecError(f"cannot load {prefix} — no model id or folder given")
    path = os.path.expanduser(name)
    is_dir = os.path.isdir(path)
    if not is_dir and os.path.exists(path):
        raise EncoderSpecError(f"cannot load {spec} — not a folder: {path}")
    if not is_dir and _looks_like_path(name):
        raise EncoderSpecError(f"cannot load {spec} — no such folder: {path}")
    offline = _hub_offline() if local_files_only is None else local_files_only
    return (path if is_dir else name), is_dir, offline


class HFDualEncoder(EncoderBase):
    """A transformers image-text dual encoder with ``get_image_features``/``get_text_features``."""

    # Patch-token regions are available (encode_pixels_with_regions) but not stored by the indexer
    # by default: no bundled reranker reads them, and they cost 50-200 KB per photo.
    store_regions = False

    def __init__(self, name_or_path: str, device: str | None = None,
                 local_files_only: bool | None = None) -> None:
        """Load ``name_or_path`` (hub id or folder); raise ``EncoderSpecError`` if that fails.

        ``local_files_only`` defaults to the hub's offline setting (``HF_HUB_OFFLINE``).
        """
        name = str(name_or_path).strip()
        self.spec = f"hf:{name}"
        source, is_dir, offline = resolve_target("hf:", name, local_files_only)
        self.device = pick_device(device)

        with quiet():
            model, image_processor, tokenizer = self._load(source, is_dir, offline)

        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.model_type = str(getattr(model.config, "model_type", "") or "")
        self.dtype = next(model.parameters()).dtype
        self._patch_size, self._max_patches = self._patch_layout(model, image_processor)
        self.image_size = self._pick_image_size()
        self.max_length = self._pick_max_length()
        self.padding: bool | str = "max_length" if self.model_type in _MAX_LENGTH_PADDING else True
        self.dim = self._pick_dim()
        extra = json.dumps(self._preprocessing_config(), sort_keys=True)
        self.fingerprint = f"hf:{type(model).__name__}:{state_digest([model], extra=extra)}"

    # ------------------------------------------------------------------ loading
    def _load(self, source: str, is_dir: bool, offline: bool) -> tuple[Any, Any, Any]:
        try:
            from transformers import AutoModel
        except Exception as exc:  # pragma: no cover - broken install
            raise EncoderSpecError(f"cannot load {self.spec} — transformers unavailable: {one_line(exc)}") from None

        kwargs: dict[str, Any] = {"local_files_only": True} if offline else {}
        try:
            model = AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs)
        except Exception as exc:
            if not is_dir and offline:
                raise EncoderSpecError(
                    f"cannot load {self.spec} — not found locally and the hub is offline (HF_HUB_OFFLINE=1)"
                ) from None
            where = "folder" if is_dir else "model"
            raise EncoderSpecError(f"cannot load {self.spec} — {where} does not hold a loadable model: "
                                   f"{one_line(exc)}") from None
        if not (callable(getattr(model, "get_image_features", None))
                and callable(getattr(model, "get_text_features", None))):
            raise EncoderSpecError(
                f"cannot load {self.spec} — {type(model).__name__} is not an image-text dual encoder "
                "(no get_image_features/get_text_features)")
        return finish_loading(self.spec, source, kwargs, model, self.device)

    @staticmethod
    def _patch_layout(model: Any, image_processor: Any) -> tuple[int | None, int | None]:
        """(patch size, max patches) for NaFlex processors (SigLIP 2) that emit patch
        sequences instead of images; (None, None) for ordinary image processors."""
        names = getattr(image_processor, "model_input_names", []) or []
        if "spatial_shapes" not in names:
            return None, None
        patch = getattr(image_processor, "patch_size", None)
        patch = getattr(model.config.vision_config, "patch_size", None) if patch is None else patch
        patch = patch.get("height") if isinstance(patch, dict) else patch
        max_patches = getattr(image_processor, "max_num_patches", None) or 256
        return int(patch), int(max_patches)

    def _pick_image_size(self) -> int:
        ip = self.image_processor
        if self._patch_size:
            # Images are squashed to the largest square the patch budget allows, so every
            # image yields the same (3, S, S) tensor and batches stack.
            side = int(math.isqrt(self._max_patches))
            return side * self._patch_size
        crop = getattr(ip, "crop_size", None)
        if getattr(ip, "do_center_crop", False) and crop:
            return int(crop.get("height") or crop.get("width"))
        size = getattr(ip, "size", None)
        if isinstance(size, int):
            return size
        for key in ("height", "shortest_edge", "width", "longest_edge"):
            if hasattr(size, "get") and size.get(key):
                return int(size.get(key))
        vision = getattr(self.model.config, "vision_config", None)
        return int(getattr(vision, "image_size", 224))

    def _fixed_size_output(self) -> bool:
        """Whether the image processor alone turns any image into image_size x image_size."""
        ip = self.image_processor
        if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None):
            return True
        size = getattr(ip, "size", None)
        return hasattr(size, "get") and bool(size.get("height")) and bool(size.get("width"))

    def _pick_max_length(self) -> int:
        lengths = []
        tok_len = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_len, int) and 0 < tok_len < SANE_MAX_LENGTH:
            lengths.append(tok_len)
        text_config = getattr(self.model.config, "text_config", None)
        pos = getattr(text_config, "max_position_embeddings", None)
        if isinstance(pos, int) and pos > 0:
            lengths.append(pos)
        return min(lengths) if lengths else 77

    def _pick_dim(self) -> int:
        """Embedding width: CLIP-style configs name it ``projection_dim``; SigLIP has no
        projection, so it is the text head's ``projection_size`` (= text hidden size by
        default), which equals the vision hidden size.  Anything else: measure it."""
        config = self.model.config
        text_config = getattr(config, "text_config", None)
        vision_config = getattr(config, "vision_config", None)
        for value in (getattr(config, "projection_dim", None),
                      getattr(text_config, "projection_size", None),
                      getattr(vision_config, "hidden_size", None)):
            if isinstance(value, int) and value > 0:
                return value
        return int(self._encode_text_batch([""]).shape[1])  # pragma: no cover - exotic configs

    def _preprocessing_config(self) -> dict[str, Any]:
        return preprocessing_config(self.image_processor, self.tokenizer, self.max_length,
                                    image_extra={"image_size": self.image_size}, text_extra={"padding": self.padding})

    # ------------------------------------------------------------------ images
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, image_size, image_size) float tensor via the model's processor."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.image_size
        if self._patch_size:
            image = image.resize((s, s), self._pil_resample())
            out = self.image_processor(images=image, do_resize=False, return_tensors="pt")
            patches = out["pixel_values"][0]
            h, w = (int(v) for v in out["spatial_shapes"][0])
            p = self._patch_size
            # Undo the processor's patching: (h*w, p*p*3) -> (3, h*p, w*p).
            grid = patches[: h * w].reshape(h, w, p, p, 3).permute(4, 0, 2, 1, 3)
            return grid.reshape(3, h * p, w * p).contiguous().float()
        if not self._fixed_size_output() and image.size != (s, s):
            image = image.resize((s, s), self._pil_resample())
        out = self.image_processor(images=image, return_tensors="pt")
        return out["pixel_values"][0].float()

    def _pil_resample(self) -> int:
        value = getattr(self.image_processor, "resample", None)
        try:
            return int(value) if value is not None else Image.BICUBIC
        except (TypeError, ValueError):
            return Image.BICUBIC

    def _image_forward(self, pixels: torch.Tensor, tokens: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One ``get_image_features`` pass over (n, 3, H, W): (embeddings, final token states,
        or None unless ``tokens``).

        The token states are the vision tower's final hidden states after its post-layernorm
        (CLIP applies that norm to the CLS token only, so it is applied here to every token;
        SigLIP's tower already returns normed states).  Call under ``inference_mode``."""
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(0)
        pixels = pixels.to(self.device, dtype=self.dtype)
        vision = getattr(self.model, "vision_model", None) if tokens else None
        norm = getattr(vision, "post_layernorm", None) if vision is not None else None
        seen: dict[str, Any] = {}
        hooks = []
        if isinstance(vision, torch.nn.Module):  # transformers 4 returns only the embedding
            hooks.append(vision.register_forward_hook(lambda m, i, o: seen.setdefault("tower", o)))
        if isinstance(norm, torch.nn.Module):
            hooks.append(norm.register_forward_hook(lambda m, i, o: seen.setdefault("norm", o)))
        try:
            if self._patch_size:
                n, c, hh, ww = pixels.shape
                p = self._patch_size
                h, w = hh // p, ww // p
                patches = (pixels.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
                           .reshape(n, h * w, p * p * c))
                mask = torch.ones(n, h * w, dtype=torch.long, device=self.device)
                shapes = torch.tensor([[h, w]] * n, dtype=torch.long, device=self.device)
                out = self.model.get_image_features(pixel_values=patches, pixel_attention_mask=mask,
                                                    spatial_shapes=shapes)
            else:
                out = self.model.get_image_features(pixel_values=pixels)
        finally:
            for hook in hooks:
                hook.remove()
        feats = _features(out, "image")
        if not tokens:
            return feats, None
        states = _last_hidden_state(out)  # transformers 5: the tower's own output, this call's
        if states is None:
            states = _last_hidden_state(seen.get("tower"))
        if states is not None and isinstance(norm, torch.nn.Module):
            normed = seen.get("norm")
            # The norm ran on the whole sequence (SigLIP): the tower's states are its output.
            # It ran on the pooled token only (CLIP): apply it to every token here.
            if not (isinstance(normed, torch.Tensor) and normed.ndim == states.ndim):
                states = norm(states)
        return feats, states

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) from ``preprocess`` -> float32 (n, dim), L2-normalised."""
        with torch.inference_mode():
            feats, _ = self._image_forward(pixels)
        return l2_normalize(feats.float().cpu().numpy())

    def encode_pixels_with_regions(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``encode_pixels`` plus the vision tower's final token states (n, R, C) float16 of
        the same forward pass: R = patches (+1 for a CLS token), C = vision hidden size."""
        with torch.inference_mode():
            feats, tokens = self._image_forward(pixels, tokens=True)
            if tokens is None:  # pragma: no cover - towers without per-token outputs
                raise EncoderSpecError(f"{self.spec} gives no region features (no vision token states)")
            regions = tokens.to(torch.float16).cpu().numpy()
        return l2_normalize(feats.float().cpu().numpy()), regions

    @property
    def region_key(self) -> str:
        """Identifies the region tokens (vision tower weights + preprocessing) stored for rerankers."""
        if not hasattr(self, "_region_key"):
            vision = getattr(self.model, "vision_model", None)
            modules = [vision] if isinstance(vision, torch.nn.Module) else [self.model]
            extra = json.dumps({"kind": "vit-final-tokens", "class": type(self.model).__name__,
                                "image": self._preprocessing_config()["image"]}, sort_keys=True)
            self._region_key = "hf-patches:" + state_digest(modules, extra=extra)
        return self._region_key

    # ------------------------------------------------------------------ texts
    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts), padding=self.padding, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        names = set(getattr(self.tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        names &= {"input_ids", "attention_mask", "position_ids"}
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in names or k == "input_ids"}
        with torch.inference_mode():
            feats = _features(self.model.get_text_features(**inputs), "text")
        return l2_normalize(feats.float().cpu().numpy())
