"""Projection heads: training on real tower features, save/load, weight validation, fingerprints, CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.encoders.heads import (CONFIG_FILE, WEIGHTS_FILE, Heads, HeadsConfig, TrainedEncoder, build_heads,
                                      load_heads, save_heads)
from retrieval.errors import DatasetError, WeightsError
from retrieval.training.datasets import load_dataset
from retrieval.training.features import compute_features
from retrieval.training.heads import TrainOptions, dev_recall, train_heads
from retrieval.training.metrics import rsum

from conftest import FLICKR8K, REPO, SAMPLE_DATA, FakeEncoder

needs_flickr = pytest.mark.skipif(not (FLICKR8K / "captions.jsonl").is_file(),
                                  reason=f"Flickr8k not found at {FLICKR8K} (../shared/data/flickr8k from the repo)")
needs_weights = pytest.mark.skipif(not (REPO / "retrieval" / "weights" / WEIGHTS_FILE).is_file(),
                                   reason="no shipped heads in retrieval/weights/")


def _small_config(**kw) -> HeadsConfig:
    base = dict(base_spec="fake", image_inputs=["base"], text_inputs=["base"],
                input_dims={"image.base": 16, "text.base": 16}, embed_dim=8, hidden_dim=32,
                image_blend_input="base", text_blend_input="base", blend=0.7)
    base.update(kw)
    return HeadsConfig(**base)


@pytest.fixture(scope="module")
def bridge():
    from retrieval.encoders import create_encoder

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return create_encoder("bridge")


@pytest.fixture(scope="module")
def tiny_features(bridge, tmp_path_factory):
    """Real tower features of 64 Flickr8k train images (1 clean + 1 augmented view) and 64 dev images."""
    if not (FLICKR8K / "captions.jsonl").is_file():
        pytest.skip(f"Flickr8k not found at {FLICKR8K} (../shared/data/flickr8k from the repo)")
    cache = str(tmp_path_factory.mktemp("features"))
    train = load_dataset(str(FLICKR8K), "train").subset(64)
    dev = load_dataset(str(FLICKR8K), "dev").subset(64)
    tr = compute_features(bridge, train, views=1, seed=0, cache_dir=cache, show_progress=False)
    dv = compute_features(bridge, dev, views=0, seed=0, cache_dir=cache, show_progress=False)
    return tr, dv, cache, train


# --------------------------------------------------------------------------- training
@needs_flickr
def test_training_lowers_loss_and_raises_recall(tiny_features):
    train, dev, _, _ = tiny_features
    options = TrainOptions(epochs=12, batch_size=64, seed=0, blend=1.0, hidden_dim=256, embed_dim=128, patience=100)
    result = train_heads(train, dev, options, "bridge", show_progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.7
    torch.manual_seed(0)
    untrained = Heads(result.config)
    before = rsum(dev_recall(untrained, dev, 1.0))
    after = rsum(result.dev["learned_only"])
    assert after > before + 30, (before, after)
    # the same seed gives the same run
    again = train_heads(train, dev, options, "bridge", show_progress=False)
    assert again.history == result.history


@needs_flickr
def test_feature_cache_is_reused(tiny_features, bridge):
    train_feats, _, cache, train = tiny_features
    again = compute_features(bridge, train, views=1, seed=0, cache_dir=cache, show_progress=False)
    for k in train_feats.images:
        assert torch.equal(again.images[k], train_feats.images[k])
    assert train_feats.images["pooled"].shape == (2, 64, 1280)
    assert not torch.equal(train_feats.images["pooled"][0], train_feats.images["pooled"][1])  # augmented view differs


@needs_flickr
def test_save_load_roundtrip_gives_identical_embeddings(tiny_features, bridge, tmp_path):
    train, dev, _, _ = tiny_features
    result = train_heads(train, None, TrainOptions(epochs=1, batch_size=64, hidden_dim=64, embed_dim=32, blend=0.6),
                         "bridge", show_progress=False)
    save_heads(tmp_path, result.config, result.state_dict, "# card\n", fp16=False)
    enc1 = TrainedEncoder(tmp_path, base=bridge)
    enc2 = TrainedEncoder(tmp_path, base=bridge)
    assert enc1.fingerprint == enc2.fingerprint and enc1.fingerprint != bridge.fingerprint
    assert enc1.dim == 32 + 384
    texts = ["a dog runs on the grass", "two children play in the water"]
    a, b = enc1.encode_texts(texts), enc2.encode_texts(texts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    ds = load_dataset(str(FLICKR8K), "dev").subset(2)
    from retrieval.training.evaluate import embed_image_files

    ia = embed_image_files(enc1, ds.images, show_progress=False)
    ib = embed_image_files(enc2, ds.images, show_progress=False)
    np.testing.assert_array_equal(ia, ib)
    # the encoder's vectors equal the training-side embedding of the cached clean view
    from retrieval.training.heads import embed_features

    heads = load_heads(tmp_path)[1]
    img, _ = embed_features(heads, dev.subset_images(2), 0.6)
    np.testing.assert_allclose(ia, img.numpy(), atol=2e-2)


@needs_flickr
def test_flip_average_is_the_mean_of_a_photo_and_its_mirror_image(bridge, tmp_path):
    """flip_average: a photo's vector is the normalised mean of its own and its mirror image's, so a photo
    and its mirror image get the same vector; the regions stay those of the photo as given."""
    from PIL import ImageOps

    from retrieval.encoders.heads import RICH_IMAGE_DIMS, RICH_TEXT_DIMS

    cfg = HeadsConfig(base_spec="bridge", image_inputs=["pooled", "bridge"], text_inputs=["minilm"],
                      input_dims={"image.pooled": RICH_IMAGE_DIMS["pooled"], "image.bridge": RICH_IMAGE_DIMS["bridge"],
                                  "text.minilm": RICH_TEXT_DIMS["minilm"]}, embed_dim=32, hidden_dim=64)
    torch.manual_seed(0)
    state = Heads(cfg).state_dict()
    save_heads(tmp_path / "plain", cfg, state, fp16=False)
    save_heads(tmp_path / "flip", replace(cfg, flip_average=True), state, fp16=False)
    plain, flip = TrainedEncoder(tmp_path / "plain", base=bridge), TrainedEncoder(tmp_path / "flip", base=bridge)
    assert plain.fingerprint != flip.fingerprint
    assert "flip_average" not in cfg.semantic_json()  # heads without it keep their fingerprint

    from retrieval.images import load_image

    photos = [load_image(p, target_size=bridge.image_size)
              for p in load_dataset(str(FLICKR8K), "dev").subset(3).images]  # 224 x 224: mirroring commutes
    mirrored = [ImageOps.mirror(im) for im in photos]
    a, m = plain.encode_images(photos), plain.encode_images(mirrored)
    assert np.abs(a - m).max() > 1e-2  # the heads do see a difference
    mean = (a + m) / np.linalg.norm(a + m, axis=1, keepdims=True)
    np.testing.assert_allclose(flip.encode_images(photos), mean, atol=1e-5)
    np.testing.assert_allclose(flip.encode_images(mirrored), mean, atol=1e-5)
    px = torch.stack([bridge.preprocess(im) for im in photos])
    vecs, regions = flip.encode_pixels_with_regions(px)
    np.testing.assert_allclose(vecs, mean, atol=1e-5)
    np.testing.assert_array_equal(regions, plain.encode_pixels_with_regions(px)[1])
    assert regions.shape[0] == 3


@needs_flickr
def test_tuned_text_layer_trains_saves_and_encodes_like_training(tiny_features, bridge, tmp_path):
    """--text-layers 1: a copy of MiniLM's last layer, started from the tower's own weights (so untrained it
    gives the cached text features), is trained with the heads; the saved encoder's text vectors equal the
    training-side embedding of the cached token states."""
    from retrieval.encoders.heads import TOKEN_MASK, TOKEN_STATES, pooled_text_features
    from retrieval.training.heads import embed_features

    _, _, cache, train_set = tiny_features
    dev_set = load_dataset(str(FLICKR8K), "dev").subset(64)
    train = compute_features(bridge, train_set, views=1, seed=0, cache_dir=cache, show_progress=False, tokens=True)
    dev = compute_features(bridge, dev_set, views=0, seed=0, cache_dir=cache, show_progress=False, tokens=True)
    assert len(train.tokens.offsets) == len(train_set.captions) + 1
    options = TrainOptions(epochs=6, batch_size=64, seed=0, blend=0.6, hidden_dim=128, embed_dim=64, patience=100,
                           text_layers=1, text_lr=3e-4)
    result = train_heads(train, dev, options, "bridge", show_progress=False)
    assert result.config.text_layers == 1
    tower_layer = train.tokens.top_layer
    tuned = {k[len("text_layers.layers.0."):]: v for k, v in result.state_dict.items() if k.startswith("text_layers.")}
    assert tuned.keys() == tower_layer.keys()
    assert not torch.allclose(tuned["intermediate.dense.weight"], tower_layer["intermediate.dense.weight"])

    # started from the tower's layer: untrained, the copy reproduces the cached (frozen) text features
    torch.manual_seed(0)
    untrained = Heads(result.config)
    untrained.text_layers.layers[0].load_state_dict(tower_layer)
    untrained.eval()
    states, mask = dev.tokens.caption_batch(torch.arange(8), prev=True)
    with torch.no_grad():
        again = pooled_text_features(untrained.text_layers(states, mask), mask, ["minilm", "minilm_max"])
    torch.testing.assert_close(again["minilm"], dev.texts["minilm"][:8].float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(again["minilm_max"], dev.texts["minilm_max"][:8].float(), atol=2e-2, rtol=0)
    assert rsum(result.dev["blended"]) > rsum(dev_recall(untrained, dev, 0.6)) + 20

    save_heads(tmp_path, result.config, result.state_dict, "# card\n", int8=True)
    enc = TrainedEncoder(tmp_path, base=bridge)
    assert enc.config.text_layers == 1 and enc.dim == 64 + 384
    heads = load_heads(tmp_path)[1]
    _, txt = embed_features(heads, dev, 0.6)
    vecs = enc.encode_texts(dev_set.captions[:20])
    np.testing.assert_allclose(vecs, txt[:20].numpy(), atol=2e-2)
    # heads that tune the text layer cannot be embedded from pooled features alone
    with pytest.raises(DatasetError, match="tokens=True"):
        embed_features(heads, replace(dev, tokens=None), 0.6)
    with pytest.raises(DatasetError, match="caption token states"):
        train_heads(replace(train, tokens=None), dev, options, "bridge", show_progress=False)
    # another base has no MiniLM token states: refused before any image is embedded
    from retrieval.errors import EncoderSpecError

    fake = FakeEncoder()
    with pytest.raises(EncoderSpecError, match="no token states"):
        compute_features(fake, dev_set.subset(2), tokens=True, show_progress=False)
    assert fake.images_embedded == 0


def _heads_with_a_tuned_layer(train, short=None, twins=None, **options) -> Heads:
    """Small heads with a tuned text layer, trained 6 epochs on ``train`` with ``options`` (no dev split)."""
    opts = TrainOptions(epochs=6, batch_size=64, seed=0, blend=1.0, hidden_dim=128, embed_dim=64, patience=100,
                        text_layers=1, text_lr=3e-4, **options)
    result = train_heads(train, None, opts, "bridge", show_progress=False, short=short, twins=twins)
    heads = Heads(result.config)
    heads.load_state_dict(result.state_dict)
    return heads


@needs_flickr
def test_short_text_loss_ranks_a_phrases_images_higher(tiny_features, bridge):
    """--short-texts: the captions' noun phrases ("a black dog") are trained against every image they describe,
    so the learned space ranks those images above the rest more than training on sentences alone does."""
    from retrieval.training.heads import embed_captions, embed_features
    from retrieval.training.short_texts import compute_short_texts

    _, _, cache, train_set = tiny_features
    train = compute_features(bridge, train_set, views=1, seed=0, cache_dir=cache, show_progress=False, tokens=True)
    short = compute_short_texts(bridge, train_set, cache, min_images=3, tokens=True, show_progress=False)
    assert short.texts > 20 and all(len(t.split()) <= 3 for t in short.strings)

    def positive_mass(weight: float) -> float:
        heads = _heads_with_a_tuned_layer(train, short=short, short_texts=weight)
        img, _ = embed_features(heads, train, 1.0)
        rows = torch.arange(short.texts)
        with torch.no_grad():
            txt = embed_captions(heads.embed_text, short.feats, rows, from_tokens=True)
            prob = (20 * txt @ img.T).softmax(dim=1)
        return float((prob * short.positives(rows, torch.arange(len(train_set.images)))).sum(1).mean())

    without, with_short = positive_mass(0.0), positive_mass(1.0)
    print(f"short texts: positive mass {without:.3f} -> {with_short:.3f}")
    assert with_short > without + 0.05, (without, with_short)
    with pytest.raises(DatasetError, match="short texts"):
        train_heads(train, None, TrainOptions(epochs=1, short_texts=1.0), "bridge", show_progress=False)


@needs_flickr
def test_composition_negatives_teach_heads_the_true_caption_over_its_twin(tiny_features, bridge):
    """--composition-negatives: each caption's rewritten twin joins the texts a photo is told apart from, so the
    learned space prefers a train caption over its twin more often than training without them does."""
    from retrieval.training.heads import embed_captions, embed_features
    from retrieval.training.twins import twin_captions

    _, _, cache, train_set = tiny_features
    train = compute_features(bridge, train_set, views=1, seed=0, cache_dir=cache, show_progress=False, tokens=True)
    twins = twin_captions(bridge, train_set, cache, show_progress=False)
    pairs = [(j, t) for j, rows in enumerate(twins.of) for t in rows]
    assert len(pairs) > 100

    def preferred(on: bool) -> float:
        heads = _heads_with_a_tuned_layer(train, twins=twins, composition_negatives=on)
        img, txt = embed_features(heads, train, 1.0)
        with torch.no_grad():
            twin_txt = embed_captions(heads.embed_text, twins.as_features(), torch.arange(twins.count),
                                      from_tokens=True)
        cap, twin = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        photo = img[train.caption_image[cap]]
        return float(((photo * txt[cap]).sum(1) > (photo * twin_txt[twin]).sum(1)).float().mean())

    without, with_twins = preferred(False), preferred(True)
    print(f"composition negatives: caption over twin {without:.3f} -> {with_twins:.3f}")
    assert 1 - with_twins < 0.75 * (1 - without), (without, with_twins)  # a quarter fewer twins preferred
    with pytest.raises(DatasetError, match="twins"):
        train_heads(train, None, TrainOptions(epochs=1, text_layers=1, composition_negatives=True), "bridge",
                    show_progress=False)


@needs_flickr
def test_ensemble_joins_members_trained_with_successive_seeds(tiny_features, bridge, tmp_path):
    """--members 2: the second member is the single run with seed + 1; the learned cosine is the members' mean."""
    train, dev, _, _ = tiny_features
    options = TrainOptions(epochs=3, batch_size=64, hidden_dim=64, embed_dim=32, blend=0.6, seed=5)
    ens = train_heads(train, dev, replace(options, members=2), "bridge", show_progress=False)
    second = train_heads(train, dev, replace(options, seed=6), "bridge", show_progress=False)
    assert ens.config.members == 2 and len(ens.config.train["best_epoch"]) == 2
    for k, v in second.state_dict.items():
        assert torch.equal(ens.state_dict[f"members.1.{k}"], v), k
    assert json.loads(ens.config.semantic_json())["members"] == 2
    assert "members" not in json.loads(second.config.semantic_json())  # single heads keep their fingerprint
    assert {"member": 2, **second.history[0]} in ens.history

    save_heads(tmp_path, ens.config, ens.state_dict, fp16=False)
    enc = TrainedEncoder(tmp_path, base=bridge)
    assert enc.dim == 2 * 32 + 384
    members = load_heads(tmp_path)[1].members
    feats = {"minilm": torch.randn(3, 384), "minilm_max": torch.randn(3, 384)}
    img_feats = {n: dev.images[n][0, :4].float() for n in ens.config.image_inputs}
    t = [m.embed_text(feats) for m in members]
    i = [m.embed_image(img_feats) for m in members]
    joined = enc.heads.embed_text(feats) @ enc.heads.embed_image(img_feats).T
    torch.testing.assert_close(joined, (t[0] @ i[0].T + t[1] @ i[1].T) / 2)
    vecs = enc.encode_texts(["a dog runs on the grass"])
    assert vecs.shape == (1, enc.dim) and abs(np.linalg.norm(vecs) - 1) < 1e-5

    # --ensemble-dim: a PCA basis with orthonormal columns; at full width it keeps every cosine
    full = train_heads(train, None, replace(options, members=2, ensemble_dim=64), "bridge", show_progress=False)
    P = full.state_dict["projection"]
    assert P.shape == (64, 64) and full.config.learned_dim == 64
    torch.testing.assert_close(P.T @ P, torch.eye(64), atol=1e-4, rtol=0)
    heads = build_heads(full.config)
    heads.load_state_dict(full.state_dict)
    heads.eval()
    projected = heads.embed_text(feats) @ heads.embed_image(img_feats).T
    unprojected = heads.joined("text", feats) @ heads.joined("image", img_feats).T
    torch.testing.assert_close(projected, unprojected, atol=1e-4, rtol=0)
    small = train_heads(train, None, replace(options, members=2, ensemble_dim=16), "bridge", show_progress=False)
    save_heads(tmp_path / "small", small.config, small.state_dict)
    enc = TrainedEncoder(tmp_path / "small", base=bridge)
    assert enc.dim == 16 + 384 and enc.encode_texts(["a dog"]).shape == (1, 16 + 384)
    with pytest.raises(DatasetError, match="ensemble_dim needs members > 1"):
        train_heads(train, None, replace(options, ensemble_dim=16), "bridge", show_progress=False)


@needs_flickr
def test_int8_weights_are_smaller_and_embed_alike(tiny_features, bridge, tmp_path):
    train, _, _, _ = tiny_features
    result = train_heads(train, None, TrainOptions(epochs=1, batch_size=64, hidden_dim=64, embed_dim=32), "bridge",
                         show_progress=False)
    save_heads(tmp_path / "fp16", result.config, result.state_dict)
    save_heads(tmp_path / "int8", result.config, result.state_dict, int8=True)
    size = {k: (tmp_path / k / WEIGHTS_FILE).stat().st_size for k in ("fp16", "int8")}
    assert size["int8"] < 0.6 * size["fp16"], size
    texts = ["a dog runs on the grass", "two children play in the water", "a man on a bike"]
    a = TrainedEncoder(tmp_path / "fp16", base=bridge).encode_texts(texts)
    b = TrainedEncoder(tmp_path / "int8", base=bridge).encode_texts(texts)
    assert np.abs(a - b).max() < 0.02 and np.all(np.sum(a * b, axis=1) > 0.999)

    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "int8" / WEIGHTS_FILE)
    scale = next(k for k in tensors if k.endswith(".int8_scale"))
    save_file({**tensors, scale: tensors[scale][:-1]}, tmp_path / "int8" / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="malformed int8 tensor"):
        load_heads(tmp_path / "int8")
    save_file({k: v for k, v in tensors.items() if k != scale}, tmp_path / "int8" / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="without its scale"):
        load_heads(tmp_path / "int8")


def test_roundtrip_on_any_base_encoder(tmp_path):
    """Heads on a non-bundled base read its embeddings ("base" inputs), e.g. an hf: CLIP."""
    fake = FakeEncoder()
    torch.manual_seed(0)
    cfg = _small_config()
    heads = Heads(cfg)
    save_heads(tmp_path, cfg, heads.state_dict(), fp16=False)
    enc = TrainedEncoder(tmp_path, base=fake)
    assert enc.dim == 8 + 16
    from PIL import Image

    im = Image.new("RGB", (20, 20), (200, 10, 10))
    v1 = enc.encode_images([im])
    v2 = TrainedEncoder(tmp_path, base=FakeEncoder()).encode_images([im])
    np.testing.assert_array_equal(v1, v2)
    t = enc.encode_texts(["a red square"])
    assert t.shape == (1, 24) and abs(float(np.linalg.norm(t)) - 1) < 1e-5
    # flip averaging on such a base: a photo and its mirror image get one vector, the mean of both
    from PIL import ImageOps

    save_heads(tmp_path / "flip", replace(cfg, flip_average=True), heads.state_dict(), fp16=False)
    flip = TrainedEncoder(tmp_path / "flip", base=FakeEncoder())
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    a, m = enc.encode_images([im]), enc.encode_images([ImageOps.mirror(im)])
    np.testing.assert_allclose(flip.encode_images([im]), (a + m) / np.linalg.norm(a + m), atol=1e-5)
    np.testing.assert_allclose(flip.encode_images([ImageOps.mirror(im)]), flip.encode_images([im]), atol=1e-5)


# --------------------------------------------------------------------------- validation
def test_mismatched_weights_fail_with_clear_message(tmp_path):
    torch.manual_seed(0)
    save_heads(tmp_path, _small_config(embed_dim=8), Heads(_small_config(embed_dim=8)).state_dict())
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["embed_dim"] = 12
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(WeightsError) as err:
        load_heads(tmp_path)
    msg = str(err.value)
    assert "does not fit heads config" in msg and "expected" in msg and "\n" not in msg
    assert "(12," in msg and "(8," in msg


def test_missing_or_corrupt_weights(tmp_path):
    save_heads(tmp_path, _small_config(), Heads(_small_config()).state_dict())
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_heads(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(WeightsError, match="is missing"):
        load_heads(tmp_path)
    with pytest.raises(WeightsError, match="is missing"):
        load_heads(tmp_path / "nowhere")


def test_extra_tensor_is_rejected(tmp_path):
    from safetensors.torch import save_file

    cfg = _small_config()
    state = Heads(cfg).state_dict()
    state["surprise"] = torch.zeros(3)
    save_heads(tmp_path, cfg, {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(WeightsError, match="unexpected tensor surprise"):
        load_heads(tmp_path)


def test_heads_spec_errors(tmp_path):
    from retrieval.encoders import create_encoder
    from retrieval.errors import EncoderSpecError

    with pytest.raises(EncoderSpecError):
        create_encoder("heads:")
    with pytest.raises(EncoderSpecError, match="no such folder"):
        create_encoder(f"heads:{tmp_path / 'missing'}")
    with pytest.raises(WeightsError):
        create_encoder(f"heads:{tmp_path}")  # a folder without heads.json


# --------------------------------------------------------------------------- shipped weights
@needs_weights
def test_shipped_default_differs_from_bridge(bridge):
    from retrieval.encoders import create_encoder

    default = create_encoder("default")
    assert isinstance(default, TrainedEncoder)
    assert default.spec == "default"
    assert default.fingerprint != bridge.fingerprint
    assert default.config.base_spec == "bridge"
    size = sum(p.stat().st_size for p in (REPO / "retrieval" / "weights").iterdir())
    # heads 11.7 MB (int8: two head pairs, each with its tuned copy of MiniLM's last layer) + hubness banks 2.6 MB
    assert size < 15_000_000
    card = (REPO / "retrieval" / "weights" / "MODEL_CARD.md").read_text()
    assert "Hodosh" in card and "imgsearch train" in card


@needs_weights
def test_default_fast_is_the_shipped_heads_without_flip_averaging(bridge):
    """``default-fast``: the same heads and text vectors, photos embedded once instead of twice (a different
    fingerprint, so an index knows which one built it)."""
    from retrieval.encoders import create_encoder

    default, fast = create_encoder("default"), create_encoder("default-fast")
    assert fast.spec == "default-fast" and not fast.config.flip_average
    texts = ["a dog runs on the grass"]
    np.testing.assert_array_equal(default.encode_texts(texts), fast.encode_texts(texts))
    assert default.config.flip_average and fast.fingerprint != default.fingerprint
    from retrieval.images import load_image

    im = load_image(str(SAMPLE_DATA / "cat_chelsea.png"), target_size=bridge.image_size)
    assert not np.allclose(default.encode_images([im]), fast.encode_images([im]), atol=1e-3)


@needs_weights
def test_shipped_default_keeps_open_vocabulary():
    """Queries far from Flickr8k still find the right sample photo in the top 3."""
    from retrieval.encoders import create_encoder
    from retrieval.training.evaluate import embed_image_files

    enc = create_encoder("default")
    ds = load_dataset(str(SAMPLE_DATA))
    names = [Path(p).name for p in ds.images]
    vecs = embed_image_files(enc, ds.images, show_progress=False)
    queries = {"cat": "cat_chelsea.png", "a cup of coffee": "espresso_cup.png", "flower": "dahlia_flower.webp",
               "clock": "blurred_wall_clock.bmp", "boats on a lake": "lake_with_boats.jpg"}
    t = enc.encode_texts(list(queries))
    hits = 0
    for row, want in zip(t @ vecs.T, queries.values()):
        hits += want in [names[i] for i in np.argsort(-row)[:3]]
    assert hits >= 4


# --------------------------------------------------------------------------- CLI
@pytest.mark.slow
@needs_flickr
def test_train_cli_json(tmp_path, tiny_features, capsys):
    _, _, cache, _ = tiny_features
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = []
    for split in ("train", "dev"):
        ds = load_dataset(str(FLICKR8K), split).subset(64)
        for i, path in enumerate(ds.images):
            name = Path(path).name
            (data / "images" / name).symlink_to(path)  # links only: photos are never copied
            caps = [c for c, k in zip(ds.captions, ds.caption_image) if k == i]
            lines.append(json.dumps({"image": name, "split": split, "captions": caps}))
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    from ui.cli import main

    out = tmp_path / "heads"
    rc = main(["train", str(data), "--out", str(out), "--epochs", "2", "--views", "1", "--cache", cache,
               "--json", "--no-progress", "--batch-size", "64", "--image-inputs", "pooled,bridge",
               "--text-inputs", "minilm,cls", "--flip-average"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 2 and "text_to_image" in summary["dev"]["blended"]
    assert (out / WEIGHTS_FILE).is_file() and (out / "MODEL_CARD.md").is_file()
    from retrieval.encoders import create_encoder

    enc = create_encoder(f"heads:{out}")
    assert enc.config.image_inputs == ["pooled", "bridge"] and enc.config.text_inputs == ["minilm", "cls"]
    assert enc.config.flip_average and "mirror image" in (out / "MODEL_CARD.md").read_text()
    assert enc.encode_texts(["a dog"]).shape[1] == enc.dim


@pytest.mark.parametrize("change, message", [
    ({"colour": "blue"}, "heads config has unknown keys: colour"),
    ({"format_version": 99}, "heads format version 99 is not supported"),
    ({"blend": 1.5}, "blend must be in [0, 1]"),
    ({"members": 0}, "members must be a whole number >= 1"),
    ({"ensemble_dim": 4}, "ensemble_dim must be 0, or at most members x embed_dim for an ensemble"),
    ({"members": 2, "ensemble_dim": 17}, "ensemble_dim must be 0, or at most members x embed_dim"),
    ({"text_layers": 2}, "text_layers must be 0 or 1"),
    ({"text_layers": 1}, "text_layers needs the bundled MiniLM tower's text inputs"),
    ({"flip_average": "yes"}, "flip_average must be true or false"),
])
def test_heads_config_refuses_unknown_keys_other_versions_and_bad_values(change, message):
    from dataclasses import asdict

    data = {**asdict(_small_config()), **change}
    with pytest.raises(WeightsError) as info:
        HeadsConfig.from_dict(data)
    assert message in str(info.value)

