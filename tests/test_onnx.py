"""ONNX Runtime inference: the same vectors as torch (photos, regions, texts), a self-healing graph cache,
and the engine switch with its torch fallback.

The encoders are the session's shipped ``default`` (trained heads with flip averaging) and its ``bridge``
base, so their graphs are exported once, into the cache folder the rest of the suite uses too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.encoders import runtime
from retrieval.encoders.runtime import use_engine
from retrieval.errors import ImgSearchError, SettingsError
from retrieval.settings import ENGINE_ENV, Settings

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
PHOTOS = ["cat_chelsea.png", "lake_with_boats.jpg", "dahlia_flower.webp", "gravel.tiff", "blurred_wall_clock.bmp"]
TEXTS = ["a dog", "two dogs playing in the snow beside a red wooden fence on a cold morning", "a cat on a sofa"]
LONG = " ".join(f"word{i}" for i in range(300))  # far over the tower's 128 tokens


@pytest.fixture(scope="module", params=["bridge", "default"])
def encoder(request, default_encoder):
    """The shipped heads (``default``, flip-averaged) or their label-bridge base, each able to run on onnx."""
    if runtime.load_onnxruntime() is None:
        pytest.skip("onnxruntime is not installed")
    enc = default_encoder.base if request.param == "bridge" else default_encoder
    assert enc.spec == request.param and hasattr(enc, "graphs")
    return enc


@pytest.fixture(scope="module")
def pixels(default_encoder) -> torch.Tensor:
    return torch.stack([default_encoder.preprocess(Image.open(SAMPLE / n).convert("RGB")) for n in PHOTOS])


@pytest.mark.slow
def test_photo_vectors_and_regions_match_torch(encoder, pixels):
    with use_engine(encoder, "torch"):
        want, want_regions = encoder.encode_pixels_with_regions(pixels)
    with use_engine(encoder, "onnx"):
        got, regions = encoder.encode_pixels_with_regions(pixels)
        alone = np.concatenate([encoder.encode_pixels(pixels[i:i + 1]) for i in range(len(pixels))])
    assert got.dtype == np.float32 and got.shape == want.shape == (len(PHOTOS), encoder.dim)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(alone, want, atol=1e-4)  # a batch of one gives the same rows
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert regions.dtype == np.float16 and regions.shape == want_regions.shape == (len(PHOTOS), 49, 320)
    np.testing.assert_allclose(regions.astype(np.float32), want_regions.astype(np.float32), rtol=2e-3, atol=2e-3)
    sims = got @ got.T
    assert sims[~np.eye(len(PHOTOS), dtype=bool)].max() < 0.99  # varied photos, not one vector
    with use_engine(encoder, "onnx"):
        empty, no_regions = encoder.encode_pixels_with_regions(pixels[:0])
    assert empty.shape == (0, encoder.dim) and no_regions.shape == (0, 49, 320)  # as torch gives


@pytest.mark.slow
def test_flip_averaging_runs_in_the_graph(default_encoder, pixels):
    """The shipped heads average each photo with its mirror image: the graph does it, not Python."""
    assert default_encoder.config.flip_average
    with use_engine(default_encoder, "onnx"):
        plain = default_encoder.encode_pixels(pixels[:2])
        mirrored = default_encoder.encode_pixels(pixels[:2].flip(-1))
    np.testing.assert_allclose(plain, mirrored, atol=1e-4)


@pytest.mark.slow
def test_text_vectors_match_torch(encoder):
    tokens = getattr(encoder, "base", encoder).text_tower.numpy_inputs([LONG])
    assert tokens["input_ids"].shape == (1, 128)  # truncated by the tokenizer, as before
    for texts in ([TEXTS[0]], TEXTS, [TEXTS[0], LONG, TEXTS[1]], [LONG]):
        with use_engine(encoder, "torch"):
            want = encoder.encode_texts(texts)
        with use_engine(encoder, "onnx"):
            got = encoder.encode_texts(texts)
        assert got.dtype == np.float32 and got.shape == (len(texts), encoder.dim)
        np.testing.assert_allclose(got, want, atol=1e-4)
    with use_engine(encoder, "onnx"):
        padded = encoder.encode_texts([TEXTS[0], LONG])[0]
        alone = encoder.encode_texts([TEXTS[0]])[0]
    np.testing.assert_allclose(padded, alone, atol=1e-5)  # padding does not leak into a short text


@pytest.mark.slow
def test_reranker_scores_match_torch(default_encoder, pixels):
    """The fusion reranker's query path (token states + fusion model) runs as one graph: same logits."""
    from retrieval.rerank import create_reranker

    if runtime.load_onnxruntime() is None:
        pytest.skip("onnxruntime is not installed")
    reranker = create_reranker("default", encoder=default_encoder)
    assert reranker.engine == "onnx"
    with use_engine(default_encoder, "torch"):
        _, regions = default_encoder.encode_pixels_with_regions(pixels)
    many = [TEXTS[i % 3] for i in range(70)]  # over one batch of pairs
    for texts, regs in (([TEXTS[1]], regions), (many, regions[:1]), (TEXTS, regions[:3]), ([LONG], regions[:2]),
                        (many[:len(PHOTOS)], regions)):
        with use_engine(reranker, "torch"):
            want = reranker.itm_scores(texts, regs)
        got = reranker.itm_scores(texts, regs)
        assert got.dtype == np.float32 and got.shape == want.shape == (max(len(texts), len(regs)),)
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.ptp(want) > 0.1  # the photos score differently: not one constant
    padded = reranker.itm_scores([TEXTS[0], LONG], regions[:2])[0]
    np.testing.assert_allclose(padded, reranker.itm_scores([TEXTS[0]], regions[:1])[0], atol=1e-4)


@pytest.mark.slow
def test_graphs_are_cached_under_the_fingerprint(encoder):
    with use_engine(encoder, "onnx"):
        encoder.encode_texts(["a dog"])
    path = encoder.graphs.text(None, None).path  # built above: the arguments are not used again
    assert path.is_file() and path.parent == Settings.from_env().cache_dir / "onnx"
    other = runtime.EncoderGraphs(encoder.fingerprint + "x", Settings.from_env(), torch.device("cpu"))
    assert other.text(lambda: None, lambda t: {}).path != path  # another encoder, another file


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.layer(x), dim=-1)


def tiny_graph(folder: Path) -> runtime.OnnxGraph:
    return runtime.OnnxGraph(Tiny, lambda: (torch.ones(2, 4),), ["x"], ["y"], {"x": {0: "n"}, "y": {0: "n"}},
                             "tiny", "key", folder, torch.device("cpu"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_cached_graph_is_rebuilt(tmp_path, damage, caplog):
    if runtime.load_onnxruntime() is None:
        pytest.skip("onnxruntime is not installed")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        want = Tiny()(torch.from_numpy(x)).numpy()
    graph = tiny_graph(tmp_path)
    np.testing.assert_allclose(graph.run(x=x)[0], want, atol=1e-6)
    good = graph.path.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind
    graph.path.write_bytes({"garbage": b"not an onnx model" * 10, "truncated": good[:len(good) // 2],
                            "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        again = tiny_graph(tmp_path)  # a new process would see the damaged file
        np.testing.assert_allclose(again.run(x=x)[0], want, atol=1e-6)
    assert graph.path.read_bytes() == good
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [f"rebuilding {graph.path.name}"]


def test_exporting_leaves_each_shared_module_in_its_own_mode(tmp_path):
    """A graph wraps shared towers in a fresh module (training mode, as every new module is); exporting it
    must not switch those eval-mode towers to training (dropout would then change every torch result)."""
    if runtime.load_onnxruntime() is None:
        pytest.skip("onnxruntime is not installed")
    tower = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tower(x)
    wrapper = torch.nn.Sequential(tower, torch.nn.Dropout(0.1))  # one wrapper in training mode, one tower in eval
    graph = runtime.OnnxGraph(lambda: wrapper, lambda: (torch.ones(2, 4),), ["x"], ["y"], {"x": {0: "n"}, "y": {0: "n"}},
                              "shared", "key", tmp_path, torch.device("cpu"))
    got = graph.run(x=x.numpy())[0]
    assert wrapper.training and not any(m.training for m in tower.modules())
    with torch.no_grad():
        np.testing.assert_allclose(tower(x).numpy(), before.numpy(), atol=1e-6)
    np.testing.assert_allclose(got, before.numpy(), atol=1e-5)  # exported in eval mode: no dropout in the graph


def test_a_read_only_cache_folder_still_runs(tmp_path):
    if runtime.load_onnxruntime() is None:
        pytest.skip("onnxruntime is not installed")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    graph = tiny_graph(blocker / "onnx")  # the folder cannot be made
    assert graph.run(x=np.ones((3, 4), np.float32))[0].shape == (3, 3)


def test_missing_onnxruntime_falls_back_to_torch_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    monkeypatch.setattr(runtime, "warned_messages", set())
    assert runtime.load_onnxruntime() is None
    with caplog.at_level(logging.WARNING):
        engines = [runtime.pick_engine(Settings(engine="onnx"), torch.device("cpu")) for _ in range(3)]
    assert engines == ["torch"] * 3
    assert len(caplog.records) == 1 and "onnxruntime" in caplog.records[0].getMessage()
    assert caplog.records[0].levelno == logging.WARNING and "\n" not in caplog.records[0].getMessage()


def test_torch_engine_is_a_switch_that_needs_no_onnxruntime(monkeypatch, caplog):
    monkeypatch.setenv(ENGINE_ENV, "torch")
    with caplog.at_level(logging.WARNING):
        assert runtime.pick_engine(Settings.from_env(), torch.device("cpu")) == "torch"
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        assert runtime.pick_engine(Settings.from_env(), torch.device("cpu")) == "torch"
    assert not caplog.records  # asked for: nothing to warn about


@pytest.mark.slow
@pytest.mark.parametrize("how", ["IMGSEARCH_ENGINE=torch", "no onnxruntime"])
def test_an_encoder_built_for_torch_never_touches_onnxruntime(how, monkeypatch, default_encoder):
    from retrieval.encoders.default import DefaultEncoder
    from retrieval.encoders.heads import TrainedEncoder
    from retrieval.encoders.registry import BUNDLED_WEIGHTS_DIR

    want = default_encoder.encode_texts(TEXTS)  # on the session's engine
    if how == "no onnxruntime":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    else:
        monkeypatch.setenv(ENGINE_ENV, "torch")
    monkeypatch.setattr(runtime.OnnxGraph, "session", lambda self: pytest.fail("ran on onnxruntime"))
    bridge = DefaultEncoder()
    heads = TrainedEncoder(BUNDLED_WEIGHTS_DIR, spec="default", base=bridge)
    assert bridge.engine == heads.engine == "torch"
    # the same vectors and fingerprints as the session's encoders: indexes stay valid across engines
    assert (bridge.fingerprint, heads.fingerprint) == (default_encoder.base.fingerprint, default_encoder.fingerprint)
    np.testing.assert_allclose(heads.encode_texts(TEXTS), want, atol=1e-4)


@pytest.mark.parametrize("value", ["tensorrt", "ONNX runtime", "1"])
def test_a_bad_engine_is_a_one_line_settings_error(value):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({ENGINE_ENV: value})
    assert isinstance(info.value, ImgSearchError) and "\n" not in str(info.value)
    assert str(info.value) == f"${ENGINE_ENV} must be onnx or torch, not {value!r}"


@pytest.mark.slow
def test_default_fast_shares_the_text_graph_of_default(default_encoder):
    from retrieval.encoders.heads import TrainedEncoder
    from retrieval.encoders.registry import BUNDLED_WEIGHTS_DIR

    fast = TrainedEncoder(BUNDLED_WEIGHTS_DIR, spec="default-fast", base=default_encoder.base, flip_average=False)
    assert fast.fingerprint != default_encoder.fingerprint  # its photos embed differently
    assert fast.graphs.text_key == default_encoder.graphs.text_key  # its texts do not
    np.testing.assert_array_equal(fast.encode_texts(TEXTS), default_encoder.encode_texts(TEXTS))
