"""The fusion reranker on ONNX Runtime alone, without importing torch or transformers (the light query path).

The first reranked search of a light (ONNX-only) search encoder builds the torch ``FusionReranker``, which
exports its query graph (token states and fusion model); a manifest beside it then names the graph, the
scores' weights and the region key, under a name keyed by the reranker folder's files and the package
versions. Later processes read it and build a :class:`LightReranker`: the same logits from one onnxruntime
session and the ``tokenizers`` MiniLM tokenizer. A missing, damaged or stale manifest falls back to torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..encoders.light import (MiniLMTokens, code_digest, file_digest, graph_stamp, load_onnxruntime,
                              minilm_tokenizer_file, open_session, package_version, write_json_atomic, PACKAGES)
from ..settings import Settings

log = logging.getLogger(__name__)

TEXT_MAX_TOKENS = 64  # tokens of a text the fusion model reads
RERANK_MANIFEST_FORMAT = 1
RERANKER_FILES = ("reranker.json", "reranker.safetensors")  # fusion.CONFIG_FILE, fusion.WEIGHTS_FILE


def reranker_identity(folder: str | os.PathLike) -> dict[str, Any]:
    """What identifies a reranker folder's query graph without torch: its files, the packages, the code
    (hashed once per process and folder, as the encoders' identity is)."""
    return _identity(str(Path(folder).resolve()))


@functools.lru_cache(maxsize=8)
def _identity(folder: str) -> dict[str, Any]:
    return {"folder": folder, "files": {n: file_digest(Path(folder) / n) for n in RERANKER_FILES},
            "packages": {p: package_version(p) for p in PACKAGES}, "code": code_digest(),
            "manifest_format": RERANK_MANIFEST_FORMAT}


def reranker_manifest_path(folder: str | os.PathLike, settings: Settings) -> Path:
    """Where the manifest of the reranker in ``folder`` lives in the cache (its name hashes the identity)."""
    ident = json.dumps(reranker_identity(folder), sort_keys=True)
    return settings.cache_dir / "onnx" / f"light-rerank-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


def write_reranker_manifest(reranker: Any, settings: Settings | None = None) -> Path | None:
    """Export a ``FusionReranker``'s query graph (if not cached) and write its manifest atomically; None
    (nothing written) when it does not run on onnx on CPU or the cache cannot be written."""
    settings = Settings.from_env() if settings is None else settings
    if getattr(reranker, "engine", None) != "onnx" or getattr(reranker.device, "type", None) != "cpu":
        return None
    graph = reranker.onnx_graph()
    graph.session()  # exported now, so the file exists to be named
    data = {"identity": reranker_identity(reranker.folder), "spec": reranker.spec,
            "fingerprint": reranker.fingerprint, "alpha": reranker.alpha, "caption_alpha": reranker.caption_alpha,
            "region_key": reranker.region_key, "region_shape": [reranker.config.num_regions, reranker.config.region_dim],
            "graph": graph_stamp(graph.path)}
    return write_json_atomic(reranker_manifest_path(reranker.folder, settings), data)


def read_reranker_manifest(folder: str | os.PathLike, settings: Settings) -> dict[str, Any] | None:
    """The valid manifest of the reranker in ``folder``, or None (absent, unreadable, stale, graph changed)."""
    path = reranker_manifest_path(folder, settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["identity"] != reranker_identity(folder):
            return None
        if graph_stamp(path.parent / data["graph"]["file"]) != data["graph"]:
            log.info("the cached rerank graph changed: rebuilding it")
            return None
        float(data["alpha"]), float(data["caption_alpha"]), str(data["fingerprint"]), str(data["region_key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


def light_reranker(folder: str | os.PathLike, spec: str, encoder: Any, device: str | None = None,
                   settings: Settings | None = None) -> LightReranker | None:
    """A LightReranker for the reranker in ``folder`` when ``encoder`` is a light encoder whose regions it
    reads and the manifest is valid; else None (the caller builds the torch reranker)."""
    from ..encoders.light import LightEncoder

    settings = Settings.from_env() if settings is None else settings
    if not isinstance(encoder, LightEncoder) or settings.engine != "onnx" or device not in (None, "cpu"):
        return None
    if load_onnxruntime() is None or (tokens := minilm_tokenizer_file()) is None:
        return None
    data = read_reranker_manifest(folder, settings)
    if data is None or data["region_key"] != encoder.region_key:
        return None
    return LightReranker(spec, data, encoder, settings, MiniLMTokens(tokens, TEXT_MAX_TOKENS))


class LightReranker:
    """The fusion reranker from its manifest: one onnxruntime session, ``tokenizers`` tokens, and the light
    encoder's image graph for the regions of photos that have none stored."""

    batch_size = 64  # pairs per run, as FusionReranker
    engine = "onnx"

    def __init__(self, spec: str, manifest: dict[str, Any], encoder: Any, settings: Settings,
                 tokenize: MiniLMTokens) -> None:
        self.spec, self.manifest, self.encoder, self.tokenize = spec, manifest, encoder, tokenize
        self.fingerprint, self.region_key = str(manifest["fingerprint"]), str(manifest["region_key"])
        self.alpha, self.caption_alpha = float(manifest["alpha"]), float(manifest["caption_alpha"])
        self.region_shape = tuple(int(d) for d in manifest["region_shape"])
        self.path = settings.cache_dir / "onnx" / manifest["graph"]["file"]
        self.threads = settings.onnx_threads
        self._session = None
        self._lock = threading.Lock()

    def session(self):
        """The rerank graph's session, loaded on first use."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = open_session(str(self.path), self.threads)
        return self._session

    def encode_regions(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float16 regions (n, R, C), from the encoder's image graph."""
        if not images:
            return np.zeros((0, *self.region_shape), np.float16)
        pixels = np.stack([self.encoder.preprocess(im.convert("RGB")) for im in images])
        return self.encoder.encode_pixels_with_regions(pixels)[1]

    def itm_scores(self, texts: Sequence[str], regions: np.ndarray) -> np.ndarray:
        """Matching logits for aligned (text, regions) pairs; a single text or region broadcasts."""
        texts, regions, n = paired(texts, regions)
        return run_rerank_graph(self.session(), self.tokenize, texts, regions.astype(np.float32), n, self.batch_size)

    def __repr__(self) -> str:
        return f"<LightReranker {self.spec} alpha={self.alpha} fp={self.fingerprint}>"


def paired(texts: Sequence[str], regions: np.ndarray) -> tuple[list[str], np.ndarray, int]:
    """Whitespace-normalised texts, regions as an array, and the number of pairs they make (either side may be
    a single entry, which pairs with every entry of the other); ValueError when they cannot pair."""
    texts = [" ".join(str(t).split()) for t in texts]
    regions = np.asarray(regions)
    if regions.ndim != 3:
        raise ValueError(f"regions must be (n, R, C), got shape {regions.shape}")
    n = max(len(texts), regions.shape[0])
    if len(texts) not in (1, n) or regions.shape[0] not in (1, n):
        raise ValueError(f"cannot pair {len(texts)} texts with {regions.shape[0]} region sets")
    return texts, regions, n


def run_rerank_graph(session: Any, tokenize: Any, texts: list[str], regions: np.ndarray, n: int,
                     batch_size: int) -> np.ndarray:
    """Logits of ``n`` (text, regions) pairs (either side may be one entry) through the rerank graph, in
    batches of ``batch_size`` pairs; ``tokenize`` gives the graph's three token inputs as int64 arrays."""
    out = []
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        tokens = tokenize(texts if len(texts) == 1 else texts[s:e])
        rr = regions if regions.shape[0] == 1 else regions[s:e]
        pairs = np.arange(e - s, dtype=np.int64)
        single = np.zeros(e - s, np.int64)
        out.append(session.run(["logits"], {**tokens, "regions": np.ascontiguousarray(rr),
                                            "text_index": pairs if len(texts) > 1 else single,
                                            "image_index": pairs if rr.shape[0] > 1 else single})[0])
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
