"""ONNX Runtime inference for the bundled encoders: one session interface over a torch module.

An encoder hands over the torch module of a whole computation (pixels -> vectors and regions, or token
ids -> vectors); it is exported to ONNX once, on first use, into ``Settings.cache_dir / "onnx"`` under a
name keyed by the encoder's fingerprint, the graph and the onnxruntime version, and then run by one
thread-safe session. Torch stays the engine for training, for export and when onnxruntime is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..settings import Settings
from .light import GRAPH_FORMAT, OPSET, TEXT_INPUTS, code_digest, open_session
from .towers import ImageFeatures, quiet_stdout

log = logging.getLogger(__name__)

KEEP_FILES = 24  # exported graphs kept in the cache folder (the least recently used beyond are deleted)
warned_messages: set[str] = set()  # what warn_once has logged in this process


def load_onnxruntime():
    """The onnxruntime module, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message not in warned_messages:
        warned_messages.add(message)
        log.warning(message)


def pick_engine(settings: Settings, device: torch.device) -> str:
    """``onnx`` when the settings ask for it and onnxruntime can run on ``device``, else ``torch`` (the
    fallback logs one warning)."""
    if settings.engine != "onnx":
        return "torch"
    ort = load_onnxruntime()
    if ort is None or importlib.util.find_spec("onnx") is None:
        warn_once("onnxruntime or onnx is not installed: the encoders run in torch (pip install onnxruntime onnx)")
        return "torch"
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        log.info("onnxruntime has no CUDA provider (pip install onnxruntime-gpu): the encoders run in torch on the GPU")
        return "torch"
    return "onnx" if device.type in ("cpu", "cuda") else "torch"


@contextlib.contextmanager
def use_engine(encoder, name: str):
    """Run ``encoder`` on engine ``name`` (``torch`` or ``onnx``) inside the block (to compare the two)."""
    before = encoder.engine
    encoder.engine = name
    try:
        yield
    finally:
        encoder.engine = before


class PixelsGraph(torch.nn.Module):
    """pixels -> (vectors, regions): the image tower's features, ``head`` on them (unit vectors), with ``flip``
    the normalised mean with the mirror images' vectors; regions (n, 49, C) are of the photos as given."""

    def __init__(self, features: torch.nn.Module, head: Callable[[ImageFeatures], torch.Tensor], flip: bool,
                 owners: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.features = features
        self.owners = torch.nn.ModuleList(owners)  # the head's weights, exported as initialisers
        self.head, self.flip = head, flip

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, pooled, spatial, regions = self.features(pixels)
        vectors = self.head(ImageFeatures(logits=logits, pooled=pooled, spatial=spatial, regions=regions))
        if self.flip:
            m = self.features(pixels.flip(-1))
            mirror = self.head(ImageFeatures(logits=m[0], pooled=m[1], spatial=m[2], regions=m[3]))
            vectors = F.normalize(vectors + mirror, dim=-1)
        return vectors, regions.flatten(2).transpose(1, 2)


class TextGraph(torch.nn.Module):
    """(input_ids, token_type_ids, attention_mask) -> unit vectors: the text tower's token states (and with
    ``with_input`` its last layer's input states), then ``head(mask, *states)``."""

    def __init__(self, states: torch.nn.Module, head: Callable[..., torch.Tensor],
                 owners: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.states = states
        self.owners = torch.nn.ModuleList(owners)
        self.head = head

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.states(input_ids, token_type_ids, attention_mask)
        return self.head(attention_mask, *(states if isinstance(states, tuple) else (states,)))


class OnnxGraph:
    """A torch module run by ONNX Runtime: exported on first use (atomically, into ``folder``; a file the
    runtime cannot load is deleted and exported again), then one session shared by all threads."""

    def __init__(self, build: Callable[[], torch.nn.Module], example: Callable[[], tuple[torch.Tensor, ...]],
                 inputs: Sequence[str], outputs: Sequence[str], dynamic: dict[str, dict[int, str]],
                 name: str, key: str, folder: Path, device: torch.device, threads: int | None = None) -> None:
        self.build, self.example = build, example
        self.inputs, self.outputs, self.dynamic = list(inputs), list(outputs), dynamic
        self.name, self.device, self.threads = name, device, threads
        ort = load_onnxruntime()
        version = ort.__version__ if ort is not None else "none"
        ident = "|".join([key, name, version, torch.__version__, str(GRAPH_FORMAT), code_digest(), str(OPSET)])
        self.path = folder / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.onnx"
        self._session = None
        self._lock = threading.Lock()

    def run(self, outputs: Sequence[str] | None = None, **inputs: np.ndarray) -> list[np.ndarray]:
        """The named outputs (default: all) for numpy inputs."""
        return self.session().run(list(outputs or self.outputs), inputs)

    def session(self):
        """The inference session, exporting the graph first when no usable file is cached."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._load()
        return self._session

    def _load(self):
        if self.path.is_file():
            try:
                session = self._open(str(self.path))
                os.utime(self.path)  # recently used: kept by the pruning below
                return session
            except Exception as e:  # onnxruntime's load errors share no base class beyond Exception
                log.warning("rebuilding %s, which onnxruntime cannot load (%s)", self.path.name,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                self.path.unlink(missing_ok=True)
        data = self._export()
        tmp = self.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
            prune(self.path.parent)
        except OSError:  # a read-only or full cache folder only costs an export per process
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return self._open(data)

    def _export(self) -> bytes:
        module = self.build()
        # The exporter restores the wrapper's mode on the whole tree after, which would switch the shared,
        # eval-mode towers inside it to training (dropout on): each module's own mode is put back instead.
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        buffer = io.BytesIO()
        try:
            with torch.no_grad(), warnings.catch_warnings(), quiet_stdout():
                warnings.simplefilter("ignore")  # tracer notes on shape-dependent branches, exporter deprecation
                torch.onnx.export(module, self.example(), buffer, dynamo=False, opset_version=OPSET,
                                  input_names=self.inputs, output_names=self.outputs, dynamic_axes=self.dynamic)
        finally:
            for m, training in modes:
                m.training = training
        return buffer.getvalue()

    def _open(self, model: str | bytes):
        # default threads: torch's intra-op pool size (the physical cores, or what a Ray worker was given)
        return open_session(model, self.threads or torch.get_num_threads(),
                            (self.device.index or 0) if self.device.type == "cuda" else None)


def prune(folder: Path, keep: int = KEEP_FILES) -> None:
    """Delete all but the ``keep`` most recently used graphs in ``folder`` (each is tens of MB)."""
    try:
        files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # another process pruned first


class EncoderGraphs:
    """The image and text graphs of one encoder, keyed by its fingerprint, built when first run."""

    def __init__(self, key: str, settings: Settings, device: torch.device, text_key: str | None = None) -> None:
        """``text_key``: the text graph's own key when it is shared by encoders that differ only in images."""
        self.key, self.settings, self.device, self.threads = key, settings, device, settings.onnx_threads
        self.text_key = text_key or key
        self.folder = settings.cache_dir / "onnx"
        self._image: OnnxGraph | None = None
        self._text: OnnxGraph | None = None
        self._lock = threading.Lock()  # one graph object per side, however many threads ask first

    def image(self, build: Callable[[], PixelsGraph], size: int) -> OnnxGraph:
        """The pixels -> (vectors, regions) graph that ``build`` gives, for (n, 3, size, size) batches."""
        with self._lock:
            if self._image is None:
                batch = {0: "batch"}
                self._image = OnnxGraph(build, lambda: (torch.zeros(2, 3, size, size, device=self.device),),
                                        ["pixels"], ["vectors", "regions"],
                                        {"pixels": batch, "vectors": batch, "regions": batch},
                                        "image", self.key, self.folder, self.device, self.threads)
            return self._image

    def text(self, build: Callable[[], TextGraph], tokenize: Callable[[list[str]], dict[str, np.ndarray]]) -> OnnxGraph:
        """The token ids -> vectors graph that ``build`` gives, exported on a padded example from ``tokenize``."""
        def example() -> tuple[torch.Tensor, ...]:
            enc = tokenize(["a photo", "two dogs playing in the snow"])
            return tuple(torch.from_numpy(enc[n]).to(self.device) for n in TEXT_INPUTS)

        with self._lock:
            if self._text is None:
                axes = {n: {0: "batch", 1: "tokens"} for n in TEXT_INPUTS}
                self._text = OnnxGraph(build, example, TEXT_INPUTS, ["vectors"], {**axes, "vectors": {0: "batch"}},
                                       "text", self.text_key, self.folder, self.device, self.threads)
            return self._text


def run_pixels(graph: OnnxGraph, pixels: torch.Tensor, regions: bool = False):
    """float32 vectors (n, dim) of a preprocessed batch; with ``regions``, also the float16 region tokens."""
    x = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
    n = len(x)
    if not n:  # the runtime cannot reshape an empty batch: run one blank photo for the shapes
        x = np.zeros((1, *x.shape[1:]), np.float32)
    if not regions:
        return graph.run(["vectors"], pixels=x)[0][:n]
    vectors, tokens = graph.run(pixels=x)
    return vectors[:n], tokens[:n].astype(np.float16)


def run_text(graph: OnnxGraph, tokens: dict[str, np.ndarray]) -> np.ndarray:
    """float32 vectors (n, dim) of a tokenised batch."""
    return graph.run(**{n: tokens[n] for n in TEXT_INPUTS})[0]
