"""The encoder protocol shared by every image/text encoder, and small helpers."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # imported where used: the ONNX-only query path (light.py) runs without torch
    import torch

T = TypeVar("T")


@runtime_checkable
class Encoder(Protocol):
    """Aligned image and text encoder: both map into one L2-normalised space.

    ``spec`` is the string that recreates the encoder through ``create_encoder``;
    ``fingerprint`` changes whenever the vectors it produces would change (other
    weights, other preprocessing), so indexes built with another encoder are caught.
    """

    spec: str
    fingerprint: str
    dim: int
    image_size: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> a (3, H, W) float tensor ready for ``encode_pixels``."""
        ...

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """A (n, 3, H, W) batch from ``preprocess`` -> float32 (n, dim), L2-normalised."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 (n, dim), L2-normalised."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> float32 (n, dim), L2-normalised."""
        ...


def pick_device(device: str | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when available, else CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batched(items: Sequence[T] | Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def stack_pixels(pixels: Sequence):
    """One batch of ``preprocess`` outputs: numpy arrays (the light encoder's) stack in numpy, tensors in torch."""
    if all(isinstance(p, np.ndarray) for p in pixels):
        return np.stack(pixels)
    import torch

    return torch.stack(list(pixels))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def state_digest(modules: Iterable[torch.nn.Module], extra: str = "", n: int = 64) -> str:
    """A short content hash of modules' weights (a sample of every tensor) plus ``extra``.

    Cheap enough to run on every load, yet any retrained or swapped weight changes it.
    """
    import torch

    h = hashlib.sha256(extra.encode())
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            if flat.numel():
                sample = torch.cat([flat[:n], flat[-n:]]).to(torch.float64).cpu().numpy()
                h.update(np.round(sample, 6).tobytes())
    return h.hexdigest()[:16]


SHORT_TEXT_WORDS = 3
"""Texts of at most this many words get the encoder's ``short_text_mix`` (see :func:`remix_short_texts`)."""


def remix_short_texts(texts: Sequence[str], vectors: np.ndarray, mix: tuple[int, float, float] | None) -> np.ndarray:
    """Re-weight the two parts of short texts' blended vectors ``[learned (first n dims), label bridge]``
    by ``mix = (n, learned scale, bridge scale)`` and renormalise: one- to three-word queries ("kitty",
    "chess") lean more on the ImageNet label bridge, whose vocabulary is broader than Flickr8k's."""
    if mix is None:
        return vectors
    n, a, b = mix
    rows = [i for i, t in enumerate(texts) if len(t.split()) <= SHORT_TEXT_WORDS]
    if rows:
        part = vectors[rows]
        part = np.concatenate([a * part[:, :n], b * part[:, n:]], axis=1)
        vectors[rows] = part / np.linalg.norm(part, axis=1, keepdims=True).clip(1e-12)
    return vectors


class EncoderBase:
    """Shared batching for encoders: subclasses supply preprocess/encode_pixels/_encode_text_batch."""

    spec: str
    fingerprint: str
    dim: int
    image_size: int
    batch_size: int = 32
    text_batch_size: int = 128
    hubness = None  # a Hubness that reorders search results (trained heads may ship one), or None
    short_text_mix: tuple[int, float, float] | None = None  # see remix_short_texts; None: texts as embedded

    def preprocess(self, image: Image.Image) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 (n, dim), L2-normalised."""
        import torch

        out = [self.encode_pixels(torch.stack([self.preprocess(im) for im in batch]))
               for batch in batched(images, self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> float32 (n, dim), L2-normalised, in the order given."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # batches of similar length pad less (a third less work on Flickr captions); rows go back in order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.concatenate([self._encode_text_batch([texts[i] for i in batch])
                              for batch in batched(order, self.text_batch_size)])
        result = np.empty_like(out)
        result[order] = out
        return remix_short_texts(texts, result, self.short_text_mix)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec} dim={self.dim} fp={self.fingerprint}>"
