"""Near-duplicate groups: crafted vectors for the candidate step, real perceptual hashes of real sample_data photos
and generated variants for the check, the JSON shape and order, exact copies by hash, and the CLI's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.duplicates import components, find_duplicates, hamming, phash
from retrieval.store import ImageRecord, Store
from ui.cli.app import main

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
DISTINCT = sorted(p for p in SAMPLE.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:10]
# photos of things (a pure texture such as brick_wall.png loses its low frequencies to a 5 % crop: a known limit)
SHOTS = [SAMPLE / n for n in ("astronaut_eileen_collins.png", "cameraman_tripod.png", "cat_chelsea.png",
                              "chinese_pagoda_lake.jpg")]
DIM = 16


def _variants(src: Path, folder: Path) -> list[Path]:
    """A 50 % resize, a quality-40 re-encode and a 5 % crop of ``src``."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    out = []
    for name, make in (("resize", lambda: im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
                       ("q40", lambda: im), ("crop", lambda: im.crop((w // 40, h // 40, w // 40 + round(w * .95),
                                                                      h // 40 + round(h * .95))))):
        p = folder / f"{src.stem}_{name}.jpg"
        make().save(p, "JPEG", quality=40 if name == "q40" else 92)
        out.append(p)
    return out


def _store(tmp_path: Path, paths: list[Path], vectors: np.ndarray, hashes: list[str] | None = None) -> Store:
    store = Store(tmp_path / "db")
    store.bind_encoder("fake", "fp", DIM)
    fid = store.add_folder(str(tmp_path))
    recs = []
    for i, p in enumerate(paths):
        w, h = Image.open(p).size
        recs.append(ImageRecord(str(p), p.stat().st_size, p.stat().st_mtime_ns, hashes[i] if hashes else f"h{i}",
                                w, h, "JPEG"))
    store.add_images(fid, recs, vectors)
    return store


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_variants_grouped_and_distinct_photos_not(tmp_path: Path) -> None:
    """Every sample photo's variants are grouped with it; distinct photos whose vectors are made all alike
    (as one scene's would be) stay apart, because their pixels differ."""
    paths, vecs = [], []
    rng = np.random.default_rng(0)
    common = rng.standard_normal(DIM)
    for src in SHOTS:
        own = rng.standard_normal(DIM) * 0.3
        for p in [src, *_variants(src, tmp_path)]:
            paths.append(p)
            vecs.append(common + own + rng.standard_normal(DIM) * 0.01)  # every pair passes any cutoff
    with _store(tmp_path, paths, _unit(np.array(vecs))) as store:
        groups = find_duplicates(store, 0.5)
    assert len(groups) == 4
    for g, src in zip(sorted(groups, key=lambda g: g.paths[0]), sorted(SHOTS)):
        assert g.paths[0] == str(src)  # the original: the most pixels
        assert {Path(p).stem.split("_")[0] for p in g.paths} == {src.stem.split("_")[0]}
        assert len(g.paths) == 4


def test_no_false_groups_among_distinct_photos(tmp_path: Path) -> None:
    """Ten distinct sample photos with identical vectors: the vectors alone would join them, pHash does not."""
    vecs = _unit(np.ones((len(DISTINCT), DIM)))
    with _store(tmp_path, DISTINCT, vecs) as store:
        assert find_duplicates(store, 0.5) == []
        assert len(find_duplicates(store, 0.5, check="none")) == 1
    for a in DISTINCT:
        for b in DISTINCT:
            if a != b:
                assert hamming(phash(Image.open(a)), phash(Image.open(b))) > 12


def test_exact_copies_by_hash_json_shape_and_order(tmp_path: Path) -> None:
    """Byte copies are one group at score 1.0 whatever their vectors; --json prints paths best first, then score."""
    src = DISTINCT[0]
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    shutil.copy(src, old)
    shutil.copy(src, new)
    import os
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    vecs = _unit(np.eye(DIM)[:3] + 0.0)  # orthogonal: no candidate pair
    with _store(tmp_path, [new, old, DISTINCT[1]], vecs, ["same", "same", "other"]) as store:
        groups = find_duplicates(store)
    assert [g.as_dict() for g in groups] == [{"paths": [str(old), str(new)], "score": 1.0}]  # same size: oldest first
    assert groups[0].exact


def test_cli_json_and_bad_threshold(tmp_path: Path, capsys) -> None:
    src = DISTINCT[2]
    paths = [src, *_variants(src, tmp_path)]
    with _store(tmp_path, paths, _unit(np.ones((4, DIM)) + np.eye(4, DIM) * 0.01)):
        pass
    assert main(["duplicates", "--db", str(tmp_path / "db"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 1 and got[0]["paths"][0] == str(src) and len(got[0]["paths"]) == 4
    assert 0.9 < got[0]["score"] <= 1.0
    for bad in ("0", "1.5", "abc"):
        with pytest.raises(SystemExit) as e:
            main(["duplicates", "--db", str(tmp_path / "db"), "--threshold", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--threshold" in err and len(err.strip().splitlines()) == 1


def test_components_chain_and_weakest_link() -> None:
    """A chain a-b-c is one group; its score is the weakest edge of the maximum spanning tree."""
    pairs = np.array([[1, 2], [2, 3], [1, 3], [7, 8]])
    got = sorted(components(pairs, np.array([0.9, 0.8, 0.7, 0.95])))
    assert got == [([1, 2, 3], 0.8), ([7, 8], 0.95)]
