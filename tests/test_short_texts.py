"""Short queries ("kitty", "a black cat") use the heads' ``short_text_blend`` (issue 24): their vectors lean on
the label bridge, photo vectors and the fingerprint stay as they are, and short queries rank sample_data better."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmarks.everyday import sample_inputs, score_queries
from retrieval.encoders.base import SHORT_TEXT_WORDS
from retrieval.encoders.heads import HeadsConfig, TrainedEncoder, load_config
from retrieval.encoders.registry import BUNDLED_WEIGHTS_DIR
from retrieval.errors import WeightsError

SHORT = ["kitty", "a black cat", "chess", ""]
LONG = ["two dogs playing in the snow", "a man in a red shirt climbs a rock"]


@pytest.fixture(scope="module")
def plain_default(default_encoder, tmp_path_factory) -> TrainedEncoder:
    """The bundled heads with short_text_blend unset: every text at the one blend w."""
    folder = tmp_path_factory.mktemp("heads") / "plain"
    shutil.copytree(BUNDLED_WEIGHTS_DIR, folder, ignore=shutil.ignore_patterns("reranker"))
    data = {**load_config(folder).__dict__, "short_text_blend": None}
    (folder / "heads.json").write_text(HeadsConfig.from_dict(data).to_json())
    return TrainedEncoder(folder, spec="default", base=default_encoder.base)


def part_weights(encoder: TrainedEncoder, texts: list[str]) -> np.ndarray:
    """Squared norms of each vector's learned part: the weight of the learned similarity in its cosines."""
    vecs = encoder.encode_texts(texts)
    return (vecs[:, :encoder.config.learned_dim] ** 2).sum(axis=1)


def test_short_texts_get_the_short_blend_and_long_texts_keep_w(default_encoder):
    config = default_encoder.config
    assert config.short_text_blend is not None and config.short_text_blend < config.blend
    assert all(len(t.split()) <= SHORT_TEXT_WORDS for t in SHORT) and all(len(t.split()) > SHORT_TEXT_WORDS for t in LONG)
    np.testing.assert_allclose(part_weights(default_encoder, SHORT), config.short_text_blend, atol=1e-5)
    np.testing.assert_allclose(part_weights(default_encoder, LONG), config.blend, atol=1e-5)
    # mixed in one call, in any order, each text gets its own blend
    mixed = [LONG[0], SHORT[0], LONG[1], SHORT[1]]
    np.testing.assert_allclose(part_weights(default_encoder, mixed),
                               [config.blend, config.short_text_blend] * 2, atol=1e-5)


def test_the_short_blend_leaves_photo_vectors_and_the_fingerprint(default_encoder, plain_default):
    assert plain_default.short_text_mix is None and default_encoder.short_text_mix is not None
    assert plain_default.fingerprint == default_encoder.fingerprint  # existing indexes stay valid
    names, images, _ = sample_inputs()
    np.testing.assert_array_equal(plain_default.encode_images(images[:3]), default_encoder.encode_images(images[:3]))
    np.testing.assert_allclose(plain_default.encode_texts(LONG), default_encoder.encode_texts(LONG), atol=1e-6)
    short_cos = (plain_default.encode_texts(SHORT[:3]) * default_encoder.encode_texts(SHORT[:3])).sum(axis=1)
    assert (short_cos < 0.999).all()  # re-weighted, and still the same query (the same two parts)
    assert (short_cos > 0.8).all()


def test_short_queries_rank_the_sample_photos_better(default_encoder, plain_default):
    names, images, queries = sample_inputs()
    assert sum(len(q.split()) <= SHORT_TEXT_WORDS for q, _ in queries) > len(queries) / 2
    with_blend = score_queries(default_encoder, names, images, queries)
    without = score_queries(plain_default, names, images, queries)
    assert with_blend["top1"] + with_blend["all_in_top_k"] > without["top1"] + without["all_in_top_k"]


@pytest.mark.parametrize("bad, blend", [(1.5, 0.8), (-0.1, 0.8), ("0.4", 0.8), (True, 0.8), (0.4, 1.0), (0.4, 0.0)])
def test_a_bad_short_text_blend_is_refused(bad, blend):
    data = {**HeadsConfig().__dict__, "short_text_blend": bad, "blend": blend}
    with pytest.raises(WeightsError, match="short_text_blend"):
        HeadsConfig.from_dict(data)
