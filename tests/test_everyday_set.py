"""The everyday breadth set (benchmarks/everyday*.py, issue 24): the manifest, building it from sample_data/
when the source packages are missing, from a package folder when given, its variants, and the scoring."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import everyday, everyday_set
from benchmarks.everyday_set import SAMPLE_DIR, VARIANTS, build, load_manifest, locate, make_variant, relevant

MANIFEST = load_manifest()


def no_packages(monkeypatch) -> None:
    """Pretend none of the source packages is installed: only the sample_data/ copies are used."""
    monkeypatch.setattr(everyday_set, "package_root", lambda package, search_paths=None: None)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_manifest_is_complete_and_consistent():
    photos, queries = MANIFEST["photos"], MANIFEST["queries"]
    ids = [p["id"] for p in photos]
    assert len(ids) == len(set(ids))
    concepts = {p["concept"] for p in photos}
    assert len(concepts) >= 20 and sum(len(p["variants"]) for p in photos) >= 40  # the minimum
    assert set(queries) == concepts  # every concept has queries, every query's concept has a photo
    for p in photos:
        assert p["package"] in everyday_set.PACKAGE_MODULES and p["licence"].strip()
        assert p["path"].split("/")[0] == everyday_set.PACKAGE_MODULES[p["package"]]
        assert p["variants"] and set(p["variants"]) <= set(VARIANTS) and "orig" in p["variants"]
        if "sample" in p:
            assert (SAMPLE_DIR / p["sample"]).is_file()
        if "crop" in p:
            left, top, right, bottom = p["crop"]
            assert 0 <= left < right and 0 <= top < bottom
    for qs in queries.values():
        assert qs and all(1 <= len(q.split()) <= 3 for q in qs)  # short, everyday queries
    assert {v for vs in MANIFEST["also_relevant"].values() for v in vs} | set(MANIFEST["also_relevant"]) <= concepts
    for variant in ("gray", "1bit", "dark"):
        assert any(variant in p["variants"] for p in photos)
    sample_files = {p.name for p in SAMPLE_DIR.iterdir()}
    for q, rel in MANIFEST["sample_queries"].items():
        assert rel and set(rel) <= sample_files, q


def test_sample_data_fallbacks_build_with_their_crops(tmp_path, monkeypatch):
    no_packages(monkeypatch)
    got = build(tmp_path, manifest=MANIFEST)
    with_sample = [p for p in MANIFEST["photos"] if "sample" in p]
    assert [g.name for g in got] == [f"{p['id']}_{v}.png" for p in with_sample for v in p["variants"]]
    assert all(g.source.startswith("sample_data/") for g in got)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(g.name for g in got)
    # An uncropped copy keeps its pixels; the shuttle crop of the astronaut photo is the sample's own crop.
    assert np.array_equal(pixels(tmp_path / "cat_orig.png"), pixels(SAMPLE_DIR / "cat_chelsea.png"))
    assert np.array_equal(pixels(tmp_path / "shuttle_orig.png"), pixels(SAMPLE_DIR / "space_shuttle_model.png"))
    lake = pixels(tmp_path / "lake_orig.png")
    boats = pixels(SAMPLE_DIR / "lake_with_boats.jpg")  # the same crop, re-encoded as JPEG
    assert lake.shape == boats.shape and np.abs(lake - boats).mean() < 4
    # No two photos of different concepts are the same picture (a tie would decide the ranking).
    seen: dict[bytes, str] = {}
    for g in got:
        key = pixels(tmp_path / g.name).tobytes()
        assert seen.setdefault(key, g.concept) == g.concept, g.name
    queries = relevant(got, MANIFEST)
    assert queries and all(rel and rel <= {g.name for g in got} for _, rel in queries)
    assert {n for q, rel in queries if q == "boats on water" for n in rel} >= {"lake_orig.png", "pagoda_orig.png"}


def test_a_package_folder_is_preferred_to_the_sample_copy(tmp_path):
    site = tmp_path / "site"
    (site / "skimage" / "data").mkdir(parents=True)
    shutil.copy(SAMPLE_DIR / "cat_chelsea.png", site / "skimage" / "data" / "chelsea.png")
    entry = next(p for p in MANIFEST["photos"] if p["id"] == "cat")
    assert locate(entry, [str(site)]) == site / "skimage" / "data" / "chelsea.png"
    rocket = next(p for p in MANIFEST["photos"] if p["id"] == "rocket")  # no sample copy, not in this folder
    if everyday_set.package_root("scikit-image") is None:
        assert "sample" not in rocket and locate(rocket, [str(site)]) is None  # left out of the set
    got = build(tmp_path / "out", [str(site)], {**MANIFEST, "photos": [entry]})
    assert [g.source for g in got] == ["scikit-image:skimage/data/chelsea.png"] * len(entry["variants"])


def test_variants_are_gray_one_bit_and_dark():
    cat = Image.open(SAMPLE_DIR / "cat_chelsea.png").convert("RGB")
    orig = np.asarray(cat, dtype=np.float64)
    gray = np.asarray(make_variant(cat, "gray"))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    bit = np.asarray(make_variant(cat, "1bit"))
    assert set(np.unique(bit)) == {0, 255}
    dark = np.asarray(make_variant(cat, "dark"), dtype=np.float64)
    assert dark.mean() < 0.35 * orig.mean() and dark.max() <= 0.35 * 255 + 1
    assert np.corrcoef(dark.mean(2).ravel(), orig.mean(2).ravel())[0, 1] > 0.9  # the same photo, dimmed
    with pytest.raises(ValueError):
        make_variant(cat, "sepia")


class Stub:
    """An encoder whose photos and texts are given vectors (no hubness correction)."""

    def __init__(self, img: dict[str, list[float]], txt: dict[str, list[float]]) -> None:
        self.img, self.txt = img, txt

    def encode_images(self, images):
        return np.array([self.img[i] for i in images], dtype=np.float32)

    def encode_texts(self, texts):
        return np.array([self.txt[t] for t in texts], dtype=np.float32)


def test_scoring_counts_top1_and_all_relevant_in_top_k():
    names = ["cat1", "cat2", "dog"]
    enc = Stub({"cat1": [1, 0], "cat2": [0.8, 0.6], "dog": [0, 1]}, {"cat": [1, 0], "kitty": [0.5, 0.87], "dog": [0, 1]})
    res = everyday.score_queries(enc, names, names, [("cat", {"cat1", "cat2"}), ("kitty", {"cat1", "cat2"}),
                                                     ("dog", {"dog"})], hubness=False)
    # "kitty": cat2 first (top-1 right) but dog before cat1, so not all relevant in the top 2.
    assert res["top1"] == 1.0 and res["all_in_top_k"] == pytest.approx(2 / 3)
    assert res["misses"] == ["kitty -> cat2"]
