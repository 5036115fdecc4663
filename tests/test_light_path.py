"""The light query path: with the ONNX graphs and their manifest cached, a bundled encoder is built without torch
or transformers, gives the torch-built encoder's fingerprint, tokens, pixels and vectors, and a damaged or stale
manifest sends the factory back to the torch path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.encoders import light
from retrieval.encoders.runtime import use_engine
from retrieval.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
PHOTOS = ["cat_chelsea.png", "lake_with_boats.jpg", "dahlia_flower.webp", "gravel.tiff"]
LONG = " ".join(f"word{i}" for i in range(300))  # far over the tower's 128 tokens
TEXTS = ["a dog", "", "Zwei Hunde spielen im Schnee — café, naïve, 東京の犬 🐕", LONG,
         "two dogs playing in the snow beside a red wooden fence", "   ", "UPPER case, punctuation!?"]

pytestmark = pytest.mark.skipif(light.load_onnxruntime() is None, reason="onnxruntime is not installed")


@pytest.fixture(scope="module")
def light_default(default_encoder):
    """The session's ``default`` with its manifest written, and the LightEncoder read back from it."""
    if default_encoder.engine != "onnx":
        pytest.skip("the session runs the torch engine")
    assert light.write_manifest(default_encoder) is not None
    enc = light.light_encoder("default")
    assert isinstance(enc, light.LightEncoder)
    return enc


def test_same_fingerprint_tokens_pixels_and_vectors_as_torch(light_default, default_encoder):
    assert (light_default.fingerprint, light_default.dim, light_default.image_size) == \
        (default_encoder.fingerprint, default_encoder.dim, default_encoder.image_size)
    assert light_default.region_key == default_encoder.region_key
    assert light_default.hubness is not None and set(light_default.hubness.sides) == set(default_encoder.hubness.sides)
    # tokens: exactly the transformers tokenizer's, with its truncation and padding
    for batch in (TEXTS, [TEXTS[0]], [""], [LONG], TEXTS[2:3]):
        want = default_encoder.base.text_tower.numpy_inputs(batch)
        got = light_default.tokenize(batch)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert light_default.tokenize([LONG])["input_ids"].shape == (1, 128)
    # texts: the torch engine's vectors
    with use_engine(default_encoder, "torch"):
        want = default_encoder.encode_texts(TEXTS)
    got = light_default.encode_texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), default_encoder.dim)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # photos: identical pixels (numpy path), then the torch engine's vectors (flip-averaged) and regions
    images = [Image.open(SAMPLE / n).convert("RGB") for n in PHOTOS]
    px = np.stack([light_default.preprocess(im) for im in images])
    np.testing.assert_array_equal(px, np.stack([default_encoder.preprocess(im).numpy() for im in images]))
    import torch

    with use_engine(default_encoder, "torch"):
        want, want_regions = default_encoder.encode_pixels_with_regions(torch.from_numpy(px))
    vecs, regions = light_default.encode_pixels_with_regions(px)
    np.testing.assert_allclose(vecs, want, atol=1e-4)
    np.testing.assert_allclose(regions.astype(np.float32), want_regions.astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(light_default.encode_images(images[:1]), want[:1], atol=1e-4)  # batch of one
    assert light_default.encode_pixels(px[:0]).shape == (0, default_encoder.dim)


def test_a_damaged_or_stale_manifest_is_not_used(light_default, tmp_path):
    """Garbage, a stale identity, or a graph whose size changed: the factory takes the torch path."""
    settings = Settings.from_env()
    good = light.manifest_path("default", settings).read_text()
    local = Settings(cache=tmp_path)
    (tmp_path / "onnx").mkdir()
    data = json.loads(good)
    for side in ("image_graph", "text_graph"):  # the same graph files, seen from another cache folder
        os.symlink(settings.cache_dir / "onnx" / data[side]["file"], tmp_path / "onnx" / data[side]["file"])
    path = light.manifest_path("default", local)
    path.write_text(good)
    assert light.read_manifest("default", local) is not None  # the same graph files: valid
    partial = {**data, "text_graph": {**data["text_graph"], "size": data["text_graph"]["size"] // 2}}
    for damaged in ("not json{", "", json.dumps({**data, "identity": {**data["identity"], "spec": "bridge"}}),
                    json.dumps(partial), json.dumps({k: v for k, v in data.items() if k != "fingerprint"})):
        path.write_text(damaged)
        assert light.read_manifest("default", local) is None
        assert light.light_encoder("default", settings=local) is None
    path.write_text(good)
    assert light.light_encoder("default", device="cuda", settings=local) is None  # the light path is CPU only
    assert light.light_encoder("default", settings=Settings(cache=tmp_path, engine="torch")) is None


@pytest.fixture(scope="module")
def light_rerank(light_default):
    """The bundled reranker beside the light encoder: the torch-built one (which caches its graph and manifest),
    then the LightReranker read back from them."""
    from retrieval.rerank import create_reranker
    from retrieval.rerank.fusion import FusionReranker
    from retrieval.rerank.light import LightReranker, reranker_manifest_path
    from retrieval.rerank.registry import BUNDLED_RERANKER_DIR

    reranker_manifest_path(BUNDLED_RERANKER_DIR, Settings.from_env()).unlink(missing_ok=True)
    built = create_reranker("default", encoder=light_default)
    assert isinstance(built, FusionReranker)  # nothing cached for it: built on torch, which writes the manifest
    again = create_reranker("default", encoder=light_default)
    assert isinstance(again, LightReranker)
    return built, again


def test_light_reranker_gives_the_torch_rerankers_scores(light_rerank, light_default):
    built, lite = light_rerank
    assert (lite.fingerprint, lite.region_key, lite.alpha, lite.caption_alpha) == \
        (built.fingerprint, built.region_key, built.alpha, built.caption_alpha)
    images = [Image.open(SAMPLE / n).convert("RGB") for n in PHOTOS]
    regions = lite.encode_regions(images)
    assert regions.dtype == np.float16 and regions.shape == (len(PHOTOS), 49, 320)
    np.testing.assert_allclose(regions.astype(np.float32), built.encode_regions(images).astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    with use_engine(built, "torch"):
        for texts, regs in (([TEXTS[4]], regions), (TEXTS, regions[:1]), (TEXTS[:4], regions), ([LONG], regions[:2])):
            want = built.itm_scores(texts, regs)
            np.testing.assert_allclose(lite.itm_scores(texts, regs), want, atol=1e-4)
    assert np.ptp(want) > 0.05
    with pytest.raises(ValueError):
        lite.itm_scores(TEXTS[:2], regions[:3])  # neither side broadcasts
    from retrieval.rerank.light import light_reranker, reranker_manifest_path

    torch_engine = Settings(cache=Settings.from_env().cache_dir, engine="torch")
    assert light_reranker(built.folder, "default", light_default, settings=torch_engine) is None
    assert light_reranker(built.folder, "default", built.towers) is None  # a torch-built encoder: torch reranker
    path = reranker_manifest_path(built.folder, Settings.from_env())
    good = path.read_text()
    data = json.loads(good)
    try:
        for damaged in ("{", json.dumps({**data, "graph": {**data["graph"], "size": 1}}),
                        json.dumps({k: v for k, v in data.items() if k != "alpha"})):
            path.write_text(damaged)
            assert light_reranker(built.folder, "default", light_default) is None
    finally:
        path.write_text(good)
    assert light_reranker(built.folder, "default", light_default) is not None


def test_index_search_and_serve_import_neither_torch_nor_transformers(light_default, light_rerank, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in PHOTOS:
        shutil.copy(SAMPLE / n, photos / n)
    db = tmp_path / "db"
    script = ("import json, sys\nfrom ui.cli import main\n"
              f"assert main(['index', {str(photos)!r}, '--db', {str(db)!r}]) in (0, None)\n"
              f"assert main(['search', 'a dog', '--db', {str(db)!r}, '--rerank', '--json']) in (0, None)\n"
              f"code = main(['search', 'a cat', '--db', {str(db)!r}, '--json', '-k', '2'])\n"
              "import ui.cli.serve, ui.web.app\n"
              "print(json.dumps([m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules]), "
              "file=sys.stderr)\nsys.exit(code)\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "IMGSEARCH_CACHE": str(Settings.from_env().cache_dir)})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stderr.strip().splitlines()[-1]) == []
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(run.stdout.strip()):  # the reranked search's JSON, then the plain one's
        doc, end = decoder.raw_decode(run.stdout, at)
        docs.append(doc["results"] if isinstance(doc, dict) else doc)
        at = end + 1
    reranked, results = docs
    assert Path(results[0]["path"]).name == "cat_chelsea.png"
    assert len(reranked) == len(PHOTOS) and "dog" not in reranked[0]["path"]  # ranked all, without torch
    from retrieval.store import Store

    with Store(db) as store:  # indexed by the light encoder, under the torch-built encoder's fingerprint
        assert store.encoder_info.fingerprint == light_default.fingerprint
