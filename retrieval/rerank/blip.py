"""BLIP's image-text matching head (transformers ``BlipForImageTextRetrieval``) as a ``Reranker``.

Spec: ``hf-blip:<hub id or local folder>`` (e.g. ``Salesforce/blip-itm-base-coco``).  Regions
are BLIP's vision-transformer token states (CLS + patches), the sequence its text encoder
cross-attends to; the ITM score is the match-minus-no-match logit of ``itm_head``, computed
exactly as ``BlipForImageTextRetrieval.forward(use_itm_head=True)`` does.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..encoders.base import batched, pick_device, state_digest
from ..encoders.hf import SANE_MAX_LENGTH, finish_loading, one_line, preprocessing_config, quiet, resolve_target
from ..errors import EncoderSpecError

PREFIX = "hf-blip:"


class BlipReranker:
    """A BLIP ITM checkpoint scoring (text, regions) pairs."""

    batch_size = 32  # (text, image) pairs per text-encoder pass
    image_batch_size = 32

    def __init__(self, target: str, device: str | None = None, local_files_only: bool | None = None) -> None:
        """Load ``target`` (hub id or folder); raise ``EncoderSpecError`` if that fails.

        ``local_files_only`` defaults to the hub's offline setting (``HF_HUB_OFFLINE``).
        """
        name = str(target).strip()
        self.spec = f"{PREFIX}{name}"
        source, is_dir, offline = resolve_target(PREFIX, name, local_files_only)
        self.device = pick_device(device)

        with quiet():
            self.model, self.image_processor, self.tokenizer = self._load(source, is_dir, offline)
        self.dtype = next(self.model.parameters()).dtype
        vision = self.model.config.vision_config
        self.region_dim = int(vision.hidden_size)
        self.num_regions = 1 + (int(vision.image_size) // int(vision.patch_size)) ** 2
        self.max_length = self._pick_max_length()
        self.alpha = 1.0
        settings = self._preprocessing_config()
        self.fingerprint = "blip:" + state_digest([self.model], extra=json.dumps(settings, sort_keys=True))
        image_extra = json.dumps({"kind": "blip-vit-tokens", "image": settings["image"]}, sort_keys=True)
        self.region_key = "blip:" + state_digest([self.model.vision_model], extra=image_extra)

    # ------------------------------------------------------------------ loading
    def _load(self, source: str, is_dir: bool, offline: bool) -> tuple[Any, Any, Any]:
        try:
            from transformers import AutoConfig, AutoProcessor, BlipForImageTextRetrieval
        except Exception as exc:  # pragma: no cover - broken install
            raise EncoderSpecError(f"cannot load {self.spec} — transformers unavailable: {one_line(exc)}") from None

        kwargs: dict[str, Any] = {"local_files_only": True} if offline else {}
        where = "folder" if is_dir else "model"
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
        except Exception as exc:
            if not is_dir and offline:
                raise EncoderSpecError(
                    f"cannot load {self.spec} — not found locally and the hub is offline (HF_HUB_OFFLINE=1)"
                ) from None
            raise EncoderSpecError(f"cannot load {self.spec} — {where} does not hold a loadable model: "
                                   f"{one_line(exc)}") from None
        model_type = str(getattr(config, "model_type", "") or "")
        if model_type != "blip":
            raise EncoderSpecError(f"cannot load {self.spec} — a {model_type or 'non-BLIP'} model, "
                                   "not a BLIP image-text matching model")
        try:
            model, info = BlipForImageTextRetrieval.from_pretrained(
                source, config=config, dtype=torch.float32, output_loading_info=True, **kwargs)
        except Exception as exc:
            raise EncoderSpecError(f"cannot load {self.spec} — {where} does not hold a loadable model: "
                                   f"{one_line(exc)}") from None
        missing = sorted(str(k) for k in (info or {}).get("missing_keys", ()) or ())
        if missing:
            head = [k for k in missing if "itm_head" in k]
            what = "no image-text matching head (itm_head)" if head else f"missing weights ({missing[0]}, ...)"
            raise EncoderSpecError(f"cannot load {self.spec} — not a BLIP ITM checkpoint: {what}")
        image_processor = tokenizer = None
        try:
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            image_processor = getattr(processor, "image_processor", None)
            tokenizer = getattr(processor, "tokenizer", None)
        except Exception:
            pass
        return finish_loading(self.spec, source, kwargs, model, self.device, image_processor, tokenizer)

    def _pick_max_length(self) -> int:
        lengths = []
        tok_len = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_len, int) and 0 < tok_len < SANE_MAX_LENGTH:
            lengths.append(tok_len)
        pos = getattr(self.model.config.text_config, "max_position_embeddings", None)
        if isinstance(pos, int) and pos > 0:
            lengths.append(pos)
        return min(lengths) if lengths else 512

    def _preprocessing_config(self) -> dict[str, Any]:
        return preprocessing_config(self.image_processor, self.tokenizer, self.max_length)

    # ------------------------------------------------------------------ regions
    def encode_regions(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float16 regions (n, 1 + patches, vision hidden): BLIP's vision
        ``last_hidden_state``, what its ITM text encoder cross-attends to."""
        out = []
        for batch in batched(images, self.image_batch_size):
            rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in batch]
            pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                states = self.model.vision_model(
                    pixel_values=pixels.to(self.device, dtype=self.dtype)).last_hidden_state
            out.append(states.to(torch.float16).cpu().numpy())
        if not out:
            return np.zeros((0, self.num_regions, self.region_dim), np.float16)
        return np.concatenate(out)

    # ------------------------------------------------------------------ scores
    @torch.inference_mode()
    def itm_scores(self, texts: Sequence[str], regions: np.ndarray) -> np.ndarray:
        """ITM logit difference (match - no match), float32 (n,), for aligned pairs; a single
        text or a single region set (1, R, C) is paired with every entry of the other."""
        texts = [str(t) for t in texts]
        regions = np.asarray(regions)
        if regions.ndim != 3:
            raise ValueError(f"regions must be (n, R, C), got shape {regions.shape}")
        if regions.shape[2] != self.region_dim:
            raise ValueError(f"regions have {regions.shape[2]} channels; {self.spec} needs {self.region_dim} "
                             f"(regions from another extractor?)")
        n = max(len(texts), regions.shape[0])
        if len(texts) not in (1, n) or regions.shape[0] not in (1, n):
            raise ValueError(f"cannot pair {len(texts)} texts with {regions.shape[0]} region sets")
        if n == 0:
            return np.zeros(0, np.float32)
        model = self.model
        all_regions = torch.from_numpy(np.ascontiguousarray(regions)).to(self.device, dtype=self.dtype)
        one_text = None
        if len(texts) == 1:
            one_text = self._tokens(texts)
        out = []
        for s in range(0, n, self.batch_size):
            e = min(n, s + self.batch_size)
            ids, mask = one_text if one_text is not None else self._tokens(texts[s:e])
            if ids.shape[0] == 1:
                ids, mask = ids.expand(e - s, -1), mask.expand(e - s, -1)
            image_embeds = all_regions if all_regions.shape[0] == 1 else all_regions[s:e]
            if image_embeds.shape[0] == 1:
                image_embeds = image_embeds.expand(e - s, -1, -1)
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
            states = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                                        encoder_attention_mask=image_atts).last_hidden_state
            logits = model.itm_head(states[:, 0, :]).float()
            out.append((logits[:, 1] - logits[:, 0]).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(self.device)
        return ids, mask

    def __repr__(self) -> str:
        return f"<BlipReranker {self.spec} alpha={self.alpha} fp={self.fingerprint}>"
