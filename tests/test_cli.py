"""End to end through the `imgsearch` command line, with the real bundled model on sample_data/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_photo
from ui.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path]:
    """sample_data/ indexed once with the default model: (data folder, photo folder)."""
    import shutil

    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    shutil.copytree(REPO / "sample_data", photos)
    db = root / "db"
    assert main(["index", str(photos), "--db", str(db), "--no-progress"]) == 0
    return db, photos


def run_json(capsys, *argv) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("query, expected", [
    ("a cat", "cat_chelsea.png"),
    ("a cup of coffee", "espresso_cup.png"),
    ("a flower", "dahlia_flower.webp"),
    ("boats on a lake", "lake_with_boats.jpg"),
])
def test_text_search_finds_the_right_photo_in_top_3(indexed, capsys, query, expected):
    db, _ = indexed
    hits = run_json(capsys, "search", query, "--db", str(db), "-k", "3")
    assert expected in [os.path.basename(h["path"]) for h in hits], hits
    assert all(os.path.isabs(h["path"]) and isinstance(h["score"], float) for h in hits)
    assert hits == sorted(hits, key=lambda h: -h["relevance"])  # ranked by fused relevance, not raw cosine


def test_limit_is_another_name_for_k(indexed, capsys):
    db, _ = indexed
    by_k = run_json(capsys, "search", "a flower", "--db", str(db), "-k", "4")
    assert run_json(capsys, "search", "a flower", "--db", str(db), "--limit", "4") == by_k and len(by_k) == 4
    photo = str(REPO / "sample_data" / "cat_chelsea.png")
    assert len(run_json(capsys, "captions", "--image", photo, "--db", str(db), "--limit", "2")) == 2


@pytest.mark.parametrize("photo", ["cat_chelsea.png", "espresso_cup.png", "dahlia_flower.webp"])
def test_uploaded_photo_gets_its_own_caption_first(indexed, capsys, photo):
    db, photos = indexed
    hits = run_json(capsys, "captions", "--image", str(REPO / "sample_data" / photo), "--db", str(db), "-k", "3")
    assert os.path.basename(hits[0]["path"]) == photo, hits
    own = [json.loads(l) for l in (REPO / "sample_data" / "captions.jsonl").read_text().splitlines()]
    assert hits[0]["caption"] in next(o["captions"] for o in own if o["image"] == photo)


def test_image_search_finds_the_photo_itself_first(indexed, capsys):
    db, photos = indexed
    hits = run_json(capsys, "search", "--image", str(photos / "grace_hopper_portrait.jpg"), "--db", str(db), "-k", "2")
    assert os.path.basename(hits[0]["path"]) == "grace_hopper_portrait.jpg"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_reindex_embeds_nothing_and_info_reports_counts(indexed, capsys):
    db, photos = indexed
    reports = run_json(capsys, "index", str(photos), "--db", str(db), "--no-progress")
    assert reports[0]["embedded"] == 0 and reports[0]["unchanged"] == 22
    info = run_json(capsys, "info", "--db", str(db))
    assert info["images"] == 22 and info["captions"] >= 22
    assert info["encoder"]["spec"] == "default"


def test_user_errors_are_one_line_with_non_zero_exit(indexed, capsys, tmp_path):
    db, photos = indexed
    cases = [
        (["index", str(tmp_path / "missing"), "--db", str(tmp_path / "db2")], "folder not found"),
        (["search", "--image", str(REPO / "pyproject.toml"), "--db", str(db)], "not an image"),
        (["search", "--image", str(tmp_path / "nope.jpg"), "--db", str(db)], "file not found"),
        (["search", "   ", "--db", str(db)], "empty query"),
        (["search", "cat", "--db", str(tmp_path / "no-index")], "no index"),
        (["eval", str(tmp_path)], "no captions.jsonl"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) != 0, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and message in err[-1], (argv, err)
        assert "Traceback" not in "\n".join(err)


def test_bad_files_are_skipped_and_the_rest_indexed(tmp_path, capsys):
    photos = tmp_path / "p"
    make_photo(photos / "good.jpg", seed=1)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    reports = run_json(capsys, "index", str(photos), "--db", str(tmp_path / "db"), "--no-progress")
    assert reports[0]["added"] == 1
    assert [os.path.basename(s["path"]) for s in reports[0]["skipped"]] == ["broken.jpg"]


def test_json_stdout_is_pure_json_in_a_real_process(indexed):
    db, _ = indexed
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "ui.cli", "search", "a cat", "--db", str(db), "--json", "-k", "2"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert len(hits) == 2 and os.path.basename(hits[0]["path"]) == "cat_chelsea.png"


# -- reranking (the bundled fusion reranker) ------------------------------------------------

def test_rerank_search_is_a_permutation_of_the_top_k_with_match_scores(indexed, capsys):
    db, _ = indexed
    plain = run_json(capsys, "search", "two people", "--db", str(db), "-k", "8")
    reranked = run_json(capsys, "search", "two people", "--db", str(db), "-k", "8", "--rerank", "--rerank-k", "8")
    assert sorted(h["image_id"] for h in reranked) == sorted(h["image_id"] for h in plain)
    assert all(0.0 < h["match"] < 1.0 for h in reranked)
    assert all("match" not in h for h in plain)
    # the cosine each hit carries is unchanged by reranking
    assert {h["image_id"]: h["score"] for h in reranked} == pytest.approx({h["image_id"]: h["score"] for h in plain})


@pytest.mark.parametrize("query, expected", [("a cat", "cat_chelsea.png"), ("boats on a lake", "lake_with_boats.jpg")])
def test_rerank_search_still_finds_the_right_photo(indexed, capsys, query, expected):
    db, _ = indexed
    hits = run_json(capsys, "search", query, "--db", str(db), "-k", "3", "--rerank")
    assert expected in [os.path.basename(h["path"]) for h in hits], hits


def test_rerank_captions_and_usage_errors(indexed, capsys):
    db, _ = indexed
    photo = REPO / "sample_data" / "cat_chelsea.png"
    hits = run_json(capsys, "captions", "--image", str(photo), "--db", str(db), "-k", "5", "--rerank")
    plain = run_json(capsys, "captions", "--image", str(photo), "--db", str(db), "-k", "20")
    assert {h["caption_id"] for h in hits} <= {h["caption_id"] for h in plain}
    assert all(0.0 < h["match"] < 1.0 for h in hits)
    own = [json.loads(l) for l in (REPO / "sample_data" / "captions.jsonl").read_text().splitlines()]
    cat_captions = next(o["captions"] for o in own if o["image"] == "cat_chelsea.png")
    assert any(h["caption"] in cat_captions for h in hits[:3]), hits
    capsys.readouterr()
    assert main(["search", "--image", str(photo), "--rerank", "--db", str(db)]) == 2
    assert "--rerank applies to text queries" in capsys.readouterr().err
    assert main(["search", "a cat", "--rerank", "--rerank-model", "fusion:/no/such/folder", "--db", str(db)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such folder" in err


def test_regions_are_stored_at_index_time_and_reported(indexed, capsys):
    db, _ = indexed
    info = run_json(capsys, "info", "--db", str(db))
    assert info["regions"]["count"] == info["images"]
    assert info["regions"]["shape"] == [49, 320]
    assert info["regions"]["bytes_per_image"] == 49 * 320 + 49 * 4


def test_eval_rerank_reports_both_rows_in_the_same_shape(capsys):
    res = run_json(capsys, "eval", str(REPO / "sample_data"), "--rerank", "--rerank-k", "5", "--no-progress")
    plain = run_json(capsys, "eval", str(REPO / "sample_data"), "--no-progress")
    for key in ("text_to_image", "image_to_text"):
        assert set(res[key]) == {"R@1", "R@5", "R@10"}
        # same candidates: the un-reranked row equals plain eval, and R@5 (= the reranked window) cannot change
        assert res["without_rerank"][key] == plain[key]
        assert res[key]["R@5"] == plain[key]["R@5"]
    assert res["rerank"]["k"] == 5 and res["rerank"]["model"] == "default"
    tuned = run_json(capsys, "eval", str(REPO / "sample_data"), "--rerank", "--rerank-k", "5", "--no-progress",
                     "--tune-alpha")
    assert tuned["rerank"]["tuned_alpha"] is True
    for key, alpha in (("text_to_image", "alpha"), ("image_to_text", "caption_alpha")):
        by_alpha = tuned["rerank"]["by_alpha"][key]  # R@1 and R@5 at every alpha tried
        chosen = by_alpha[str(tuned["rerank"][alpha])]  # the best by R@1 + R@5 is reported
        assert chosen == {q: tuned[key][q] for q in ("R@1", "R@5")}
        assert chosen["R@1"] + chosen["R@5"] == max(r["R@1"] + r["R@5"] for r in by_alpha.values())
        assert tuned["without_rerank"][key] == plain[key]
    nohub = run_json(capsys, "eval", str(REPO / "sample_data"), "--no-progress", "--no-hubness")
    assert "hubness" in plain and "hubness" not in nohub


def test_train_reranker_writes_a_loadable_reranker(indexed, capsys, tmp_path):
    db, _ = indexed
    data = tmp_path / "ds"
    data.mkdir()
    lines = [json.loads(l) for l in (REPO / "sample_data" / "captions.jsonl").read_text().splitlines() if l.strip()]
    for n, obj in enumerate(lines):
        (data / obj["image"]).symlink_to(REPO / "sample_data" / obj["image"])
        obj["split"] = "train" if n < 16 else "dev"
    (data / "captions.jsonl").write_text("\n".join(json.dumps(o) for o in lines) + "\n")
    out = tmp_path / "rr"
    summary = run_json(capsys, "train-reranker", str(data), "--out", str(out), "--epochs", "2", "--views", "0",
                       "--width", "32", "--heads", "2", "--layers", "1", "--negatives", "3", "--hard-negatives", "1",
                       "--hard-k", "3", "--rerank-k", "3", "--cache", str(tmp_path / "cache"), "--no-progress")
    assert summary["spec"] == f"fusion:{out}" and set(summary["dev"]) == {"without", "with"}
    assert {p.name for p in out.iterdir()} == {"reranker.safetensors", "reranker.json", "MODEL_CARD.md"}
    assert "train-reranker" in (out / "MODEL_CARD.md").read_text()
    hits = run_json(capsys, "search", "a cat", "--db", str(db), "-k", "5", "--rerank", "--rerank-model", summary["spec"])
    assert len(hits) == 5 and all(0.0 < h["match"] < 1.0 for h in hits)


def test_models_lists_every_registered_spec(capsys):
    """`imgsearch models --json` and the --help texts read the model registries."""
    from retrieval.encoders.registry import list_models, spec_names
    from retrieval.rerank.registry import list_rerankers
    from ui.cli import build_parser

    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["spec"] for m in listed["encoders"]] == [s.usage for s in list_models()]
    assert [m["spec"] for m in listed["rerankers"]] == [s.usage for s in list_rerankers()]
    by_spec = {m["spec"]: m for m in listed["encoders"]}
    assert by_spec["default"]["default"] and by_spec["default"]["installed"]  # the bundled model ships
    assert by_spec["default"]["dim"] == by_spec["default-fast"]["dim"] and by_spec["bridge"]["dim"] == 384
    assert by_spec["hf:<hub id or folder>"]["dim"] is None
    assert all(m["description"] for m in listed["encoders"] + listed["rerankers"])
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "heads:<folder>" in table and "hf-blip:<hub id or folder>" in table
    assert spec_names(quoted=False) in " ".join(build_parser().format_help().split())
