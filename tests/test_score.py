"""`imgsearch score` and retrieval.scoring: the score of a text against a photo is the number a search ranks
that photo by, without rerank (Hit.score) and with it (the fused score a reranked search orders by), on real
sample photos indexed by the bundled encoder with a randomly initialised fusion reranker; the CLI's JSON
shapes and its one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLE_DATA
from indexer.sync import Indexer
from retrieval.errors import QueryError
from retrieval.rerank import create_reranker
from retrieval.rerank.fusion import FusionConfig, FusionModel, save_reranker
from retrieval.scoring import Scorer, read_pairs
from retrieval.search import Searcher
from retrieval.store import Store
from ui.cli.app import main

pytestmark = pytest.mark.slow

PHOTOS = ["astronaut_eileen_collins.png", "cat_chelsea.png", "espresso_cup.png", "lake_with_boats.jpg",
          "spiral_galaxy.png", "dahlia_flower.webp", "grace_hopper_portrait.jpg", "chinese_pagoda_lake.jpg"]
QUERIES = ["a cat", "a woman in an orange suit", "boats on a lake", "a cup of coffee"]
RERANK_K = 6
# The index keeps a photo's reranker regions as int8: a search's ITM logits differ from those of the
# freshly decoded photo by this little (tests/test_rerank.py measures 3e-4), far less than their spread.
REGION_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def indexed(default_encoder, tmp_path_factory):
    """PHOTOS indexed by the bundled encoder (regions stored), a random fusion reranker on its towers."""
    root = tmp_path_factory.mktemp("score")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLE_DATA / name, photos / name)
    store = Store(root / "db")
    assert Indexer(default_encoder, store, batch_size=16, show_progress=False).sync(str(photos)).added == len(PHOTOS)
    cfg = FusionConfig(width=32, layers=1, heads=2, alpha=0.5)
    torch.manual_seed(0)
    save_reranker(root / "reranker", cfg, FusionModel(cfg).eval().state_dict())
    reranker = create_reranker(f"fusion:{root / 'reranker'}", encoder=default_encoder)
    yield Searcher(default_encoder, store, reranker, rerank_k=RERANK_K), photos, root
    store.close()


@pytest.fixture
def cli(indexed, default_encoder, monkeypatch):
    """`imgsearch score` in this process, on the session's bundled encoder (no second model load)."""
    import retrieval.encoders

    def create_encoder(spec, **kw):
        assert spec == "default"
        return default_encoder

    monkeypatch.setattr(retrieval.encoders, "create_encoder", create_encoder)
    return indexed


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def test_score_is_the_search_score_of_the_photo(indexed):
    searcher, photos, _ = indexed
    flat = Searcher(searcher.encoder, searcher.store, hubness=False)
    # every query against every photo, one call (one decode and forward pass) per photo
    scores = {str(photos / n): Scorer(searcher.encoder).score(photos / n, QUERIES) for n in PHOTOS}
    plain = {str(photos / n): Scorer(searcher.encoder, hubness=False).score(photos / n, QUERIES) for n in PHOTOS}
    for j, q in enumerate(QUERIES):
        hits = searcher.search_text(q, k=len(PHOTOS))
        assert len(hits) == len(PHOTOS)
        for h in hits:
            assert float(scores[h.path][j]) == pytest.approx(h.score, abs=1e-4), (q, h.path)
        for h in flat.search_text(q, k=len(PHOTOS)):  # --no-hubness: the plain cosine, on both sides
            assert float(plain[h.path][j]) == pytest.approx(h.score, abs=1e-4), (q, h.path)
    moved = max(float(np.abs(scores[p] - plain[p]).max()) for p in scores)
    assert moved > 0.01  # the hubness correction really changes the score, so both checks mean something
    # one text at a time gives the same score as several in one call
    one = Scorer(searcher.encoder).score(photos / PHOTOS[1], QUERIES[:1])
    assert one.shape == (1,) and float(one[0]) == pytest.approx(float(scores[str(photos / PHOTOS[1])][0]), abs=1e-5)


def test_reranked_score_is_what_a_reranked_search_orders_by(indexed):
    searcher, photos, _ = indexed
    rr = searcher.reranker
    fused = {str(photos / n): Scorer(searcher.encoder, rr).score(photos / n, QUERIES, rerank=True) for n in PHOTOS}
    reordered = 0
    for j, q in enumerate(QUERIES):
        plain = searcher.search_text(q, k=len(PHOTOS))
        hits = searcher.search_text(q, k=len(PHOTOS), rerank=True)
        # a permutation of the top RERANK_K candidates; the rest keep their place; each keeps its cosine
        assert sorted(h.image_id for h in hits[:RERANK_K]) == sorted(h.image_id for h in plain[:RERANK_K])
        assert hits[RERANK_K:] == plain[RERANK_K:] and all(h.match is None for h in hits[RERANK_K:])
        assert {h.image_id: h.score for h in hits} == {h.image_id: h.score for h in plain}
        got = np.array([float(fused[h.path][j]) for h in hits[:RERANK_K]])
        # what the search ordered by, read back from the hit: ITM logit (its match) + alpha * its score
        ordered_by = np.array([_logit(h.match) + rr.alpha * h.score for h in hits[:RERANK_K]])
        np.testing.assert_allclose(got, ordered_by, atol=REGION_TOLERANCE)
        assert (np.diff(ordered_by) <= 1e-6).all()
        assert (np.diff(got) <= 2 * REGION_TOLERANCE).all()  # score --rerank ranks them as the search did
        assert float(np.abs(got - [h.score for h in hits[:RERANK_K]]).max()) > 0.05  # not the plain score
        reordered += [h.image_id for h in hits] != [h.image_id for h in plain]
    assert reordered >= 1  # the reranker really reorders, so the order check means something
    with pytest.raises(QueryError, match="no reranker"):
        Scorer(searcher.encoder).score(photos / PHOTOS[0], ["a cat"], rerank=True)


def test_cli_pairs_and_image_json(cli, capsys, tmp_path):
    searcher, photos, root = cli
    pairs = tmp_path / "pairs.jsonl"
    shutil.copy(photos / "cat_chelsea.png", tmp_path / "cat.png")
    lines = [{"image": "cat.png", "texts": ["a cat", "a dog"]},  # relative: from the file's folder
             {"image": str(photos / "lake_with_boats.jpg"), "texts": ["boats on a lake"]},
             {"image": "cat.png", "texts": ["a  cat "]}]
    # a byte-order mark first (as Windows editors write), a blank line, then the other lines
    pairs.write_text("\ufeff" + json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[1:]) + "\n",
                     encoding="utf-8")
    scorer = Scorer(searcher.encoder)
    for rerank in (False, True):
        extra = ["--rerank", "--rerank-model", f"fusion:{root / 'reranker'}"] if rerank else []
        if rerank:
            scorer = Scorer(searcher.encoder, searcher.reranker)
        capsys.readouterr()
        assert main(["score", "--pairs", str(pairs), "--json", *extra]) == 0
        got = json.loads(capsys.readouterr().out)  # stdout holds only JSON
        assert [g["image"] for g in got] == [x["image"] for x in lines]
        for g, x in zip(got, lines):
            path = tmp_path / x["image"] if not Path(x["image"]).is_absolute() else x["image"]
            assert g["scores"] == pytest.approx(scorer.score(path, x["texts"], rerank=rerank).tolist(), abs=1e-5)
        assert got[0]["scores"][0] == pytest.approx(got[2]["scores"][0], abs=1e-6)  # whitespace as search reads it
    assert main(["score", "--image", str(tmp_path / "cat.png"), "--text", "a cat", "--text", "a dog", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one == {"image": str(tmp_path / "cat.png"), "scores": pytest.approx(
        Scorer(searcher.encoder).score(tmp_path / "cat.png", ["a cat", "a dog"]).tolist(), abs=1e-5)}
    assert main(["score", "--image", str(photos / "cat_chelsea.png"), "--text", "a cat", "--text", "a dog"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 2 and text[0].endswith("  a cat") and text[1].endswith("  a dog")
    assert float(text[0].split()[0]) > float(text[1].split()[0])  # the cat photo matches "a cat" better


@pytest.mark.parametrize("lines, message", [
    (['{"image": "cat.png", "texts": ["a cat"]}', '{"image": "cat.png", "texts": ["a cat"'], r"pairs\.jsonl:2: not JSON"),
    (['["cat.png", "a cat"]'], r'pairs\.jsonl:1: expected \{"image"'),
    (['{"image": "cat.png", "texts": []}'], r"pairs\.jsonl:1: no texts to score"),
    (['{"image": "cat.png", "texts": ["  "]}'], r"pairs\.jsonl:1: text 1 is empty"),
    (['{"image": "cat.png", "texts": "a cat"}'], r'pairs\.jsonl:1: "texts" must be a list of strings'),
    (['{"image": "gone.png", "texts": ["a cat"]}'], r"pairs\.jsonl:1: no such image file: gone\.png"),
    ([""], r"pairs\.jsonl: no pairs"),
])
def test_bad_pairs_files_give_one_line_and_load_no_model(tmp_path, capsys, monkeypatch, lines, message):
    import retrieval.encoders

    monkeypatch.setattr(retrieval.encoders, "create_encoder", lambda *a, **k: pytest.fail("loaded a model"))
    shutil.copy(SAMPLE_DATA / "cat_chelsea.png", tmp_path / "cat.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(QueryError, match=message):
        read_pairs(pairs)
    capsys.readouterr()
    assert main(["score", "--pairs", str(pairs), "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and __import__("re").search(message, err), err


def test_bad_arguments_give_one_line_and_nonzero_exit(cli, capsys, tmp_path):
    _, photos, _ = cli
    cat = str(photos / "cat_chelsea.png")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a photo")
    cases = [
        (["--image", str(tmp_path / "missing.jpg"), "--text", "a cat"], 1, "missing.jpg: file not found"),
        (["--image", str(tmp_path), "--text", "a cat"], 1, "is a folder"),
        (["--image", cat], 2, "no texts to score"),
        (["--image", cat, "--text", "   "], 1, "text 1 is empty"),
        (["--text", "a cat"], 2, "give --image FILE"),
        (["--pairs", str(tmp_path / "none.jsonl")], 1, "none.jsonl: file not found"),
        (["--pairs", str(tmp_path)], 1, "is a folder, not a JSONL file"),
        (["--pairs", str(tmp_path / "p.jsonl"), "--image", cat], 2, "give no --image or --text"),
        (["--image", str(not_image), "--text", "a cat"], 1, "notes.jpg"),
    ]
    for argv, code, message in cases:
        capsys.readouterr()
        assert main(["score", *argv, "--json"]) == code, argv
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
