"""Reading a weights folder's JSON config and safetensors file, with one-line WeightsErrors."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .errors import WeightsError

if TYPE_CHECKING:  # torch loads only where weights are read into modules: the query path runs without it
    import torch

C = TypeVar("C")


def read_json_config(path: str, what: str) -> dict:
    """The JSON object in ``path`` (``what``: "heads", "reranker", ... for the messages)."""
    if not os.path.isfile(path):
        raise WeightsError(f"no {what} config: {path} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read {what} config {path}: {e}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{what} config {path} is not a JSON object")
    return data


def config_from_dict(cls: type[C], data: dict, what: str, version: int) -> C:
    """A config dataclass from its JSON object: unknown keys, bad values and other format versions refused."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise WeightsError(f"{what} config has unknown keys: {', '.join(unknown)}")
    try:
        cfg = cls(**data)
    except TypeError as e:
        raise WeightsError(f"{what} config is malformed: {e}") from None
    found = getattr(cfg, "format_version", None)
    if found != version:
        raise WeightsError(f"{what} format version {found} is not supported (expected {version})")
    return cfg


def load_weights_into(module: torch.nn.Module, path: str, what: str) -> None:
    """Fill ``module`` (as float32) from the safetensors file ``path``, which must hold exactly its tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise WeightsError(f"no {what} weights: {path} is missing")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    tensors = dequantise_rows(tensors, path)
    expected = module.state_dict()
    for name, ref in expected.items():
        if name not in tensors:
            raise WeightsError(f"weights file {path} does not fit {what} config: missing {name} {tuple(ref.shape)}")
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise WeightsError(f"weights file {path} does not fit {what} config: expected {name} "
                               f"{tuple(ref.shape)}, found {tuple(tensors[name].shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise WeightsError(f"weights file {path} does not fit {what} config: unexpected tensor {extra[0]}")
    module.load_state_dict({k: v.float() for k, v in tensors.items()})


SCALE_SUFFIX = ".int8_scale"


def int8_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and a float32 scale per row: q = round(x / s), s = max |x| of the row / 127
    (a quarter of float32; cosines of unit rows move by < 0.005)."""
    x = np.asarray(x, np.float32)
    scale = (np.maximum(np.abs(x).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    return np.round(x / scale[:, None]).astype(np.int8), scale


def from_int8_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 rows that ``int8_rows`` stored."""
    return q.astype(np.float32) * np.asarray(scale, np.float32)[:, None]


def quantise_rows(tensors: dict[str, torch.Tensor], min_numel: int = 4096,
                  keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Matrices of at least ``min_numel`` entries (names not in ``keep``) as ``int8_rows``, the scale
    as float16 in ``<name>.int8_scale``; other tensors unchanged."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if t.is_floating_point() and t.ndim == 2 and t.numel() >= min_numel and name not in keep:
            q, scale = int8_rows(t.detach().float().numpy())
            out[name] = torch.from_numpy(q)
            out[name + SCALE_SUFFIX] = torch.from_numpy(scale).half()
        else:
            out[name] = t
    return out


def dequantise_rows(tensors: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """The inverse of ``quantise_rows`` (float32 matrices); WeightsError on a scale without its int8 matrix
    or an int8 matrix without its scale."""
    import torch

    out = {k: v for k, v in tensors.items() if not k.endswith(SCALE_SUFFIX)}
    for key, scale in tensors.items():
        if not key.endswith(SCALE_SUFFIX):
            continue
        name = key[: -len(SCALE_SUFFIX)]
        q = out.get(name)
        if q is None or q.dtype != torch.int8 or q.ndim != 2 or tuple(scale.shape) != (q.shape[0],):
            raise WeightsError(f"weights file {path} holds a malformed int8 tensor {name}")
        out[name] = torch.from_numpy(from_int8_rows(q.numpy(), scale.float().numpy()))
    unscaled = sorted(k for k, v in out.items() if v.dtype == torch.int8)
    if unscaled:
        raise WeightsError(f"weights file {path} holds int8 tensor {unscaled[0]} without its scale")
    return out
