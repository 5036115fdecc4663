"""Distributed indexing on a local Ray runtime: the same store as the single-process indexer.

Runs in CI (ray is in the `test` extra). One local Ray runtime (2 CPUs) serves the module; each Ray
run starts its own actors, each loading the bundled model once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from conftest import SAMPLE_DATA
from indexer.distributed import RayIndexer, ShardStore, local_root, plan_shards
from indexer.scan import FileEntry
from indexer.sync import Indexer
from retrieval.errors import DistributedIndexError
from retrieval.settings import RAY_FAIL_ENV as FAIL_ENV
from retrieval.store import Store

PHOTOS = ["bright_star_and_galaxies.jpg", "campus_buildings.png", "navy_cap_insignia.jpg", "optic_disc_closeup.jpg",
          "dahlia_flower.webp", "spiral_galaxy.png", "handwritten_math_notes.png", "space_shuttle_model.png",
          "grace_hopper_portrait.jpg", "cat_chelsea.png", "blurred_wall_clock.bmp"]
QUERIES = ["a cat", "a flower", "boats on a lake", "a galaxy in space", "an old clock on a wall"]
SHARD_SIZE = 4  # 14 files: 4 shards of 4, 4, 4, 2


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """11 sample photos (3 in sub/) with their manifest captions, a sidecar, a JPEG with EXIF caption and
    date, a duplicate and a corrupt file: 14 files, 13 photos indexed."""
    d = tmp_path_factory.mktemp("ray") / "photos"
    (d / "sub").mkdir(parents=True)
    own = {json.loads(line)["image"]: json.loads(line)["captions"]
           for line in (SAMPLE_DATA / "captions.jsonl").read_text().splitlines() if line.strip()}
    manifest = []
    for i, name in enumerate(PHOTOS):
        rel = f"sub/{name}" if i % 4 == 3 else name
        shutil.copy(SAMPLE_DATA / name, d / rel)
        manifest.append(json.dumps({"image": rel, "captions": own[name]}))
    (d / "captions.jsonl").write_text("\n".join(manifest) + "\n")
    (d / "cat_chelsea.txt").write_text("a tabby cat looking at the camera\n")
    exif = Image.Exif()
    exif[0x010E] = "Rowing boats moored on a calm lake"
    exif[0x0132] = "2021:06:05 14:30:00"
    Image.open(SAMPLE_DATA / "lake_with_boats.jpg").save(d / "lake_exif.jpg", exif=exif, quality=95)
    shutil.copy(SAMPLE_DATA / "dahlia_flower.webp", d / "sub" / "copy_of_dahlia.webp")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG " * 20)
    return d


@pytest.fixture(scope="module")
def local_db(photos, default_encoder, tmp_path_factory) -> Path:
    """The same folder indexed by the single-process indexer."""
    db = tmp_path_factory.mktemp("local") / "db"
    with Store(db) as store:
        report = Indexer(default_encoder, store, show_progress=False).sync(str(photos))
    assert (report.added, report.duplicates, report.embedded) == (12, 1, 12)
    assert [os.path.basename(p) for p, _ in report.skipped] == ["broken.jpg"]
    return db


def snapshot(db: Path, encoder) -> dict:
    """Everything that must match between two stores (vectors and scores compared with a tolerance)."""
    with Store(db) as s:
        states = sorted(s.file_states(1).values(), key=lambda st: st.id)
        ids = [st.id for st in states]
        rows = s.images(ids)
        caps = s.captions_of(ids)
        regions, found = s.get_regions(ids, s.region_key)
        queries = np.concatenate([encoder.encode_texts(QUERIES), s.image_vectors(ids)])
        img_scores, img_ids = s.search_images(queries, k=5)
        cap_scores, cap_ids = s.search_captions(queries, k=5)
        return {
            "images": [(r.id, r.path, r.size, r.mtime_ns, r.hash, r.width, r.height, r.format, r.taken_at)
                       for r in (rows[i] for i in ids)],
            "captions": [(c.id, c.image_id, c.text, c.source) for i in ids for c in caps[i]],
            "skipped": {p: v["reason"] for p, v in s.skipped().items()},
            "vectors": s.image_vectors(ids), "regions": regions, "regions_found": found.tolist(),
            "image_hits": img_ids.tolist(), "image_scores": img_scores,
            "caption_hits": cap_ids.tolist(), "caption_scores": cap_scores,
            "faiss": (s.index("images").ntotal, s.index("captions").ntotal),
        }


def assert_same_store(db: Path, reference: Path, encoder) -> None:
    got, want = snapshot(db, encoder), snapshot(reference, encoder)
    for key in ("images", "captions", "skipped", "regions_found", "image_hits", "caption_hits", "faiss"):
        assert got[key] == want[key], key
    for key in ("vectors", "image_scores", "caption_scores"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=0, err_msg=key)
    # regions are stored int8 with one scale per token: allow one quantisation step
    np.testing.assert_allclose(got["regions"], want["regions"], atol=2 / 127 * np.abs(want["regions"]).max())


def ray_indexer(store: Store, encoder, **kw) -> RayIndexer:
    return RayIndexer(encoder, store, shard_size=SHARD_SIZE, show_progress=False, **kw)


@pytest.mark.slow
def test_ray_index_equals_the_single_process_index_and_reruns_reuse_shards(ray_runtime, photos, local_db,
                                                                           default_encoder, tmp_path):
    db = tmp_path / "db"
    with Store(db) as store:
        report = ray_indexer(store, default_encoder, workers=2, keep_shards=True).sync(str(photos))
    assert (report.shards, report.shards_run, report.shards_reused, report.worker_embedded) == (4, 4, 0, 14)
    assert (report.added, report.duplicates, report.embedded) == (12, 1, 12)
    assert [os.path.basename(p) for p, _ in report.skipped] == ["broken.jpg"]
    assert report.worker_photos_per_s > 0 and report.workers == 2
    snap = snapshot(db, default_encoder)
    assert any(src == "exif" for *_, src in snap["captions"]) and any(r[8] for r in snap["images"])
    assert_same_store(db, local_db, default_encoder)

    # a rebuild finds every shard finished: nothing is embedded again, Ray is not even needed
    with Store(db) as store:
        store.acquire_writer_lock()
        store.clear()
        again = ray_indexer(store, default_encoder, workers=2).sync(str(photos))
    assert (again.shards, again.shards_run, again.shards_reused, again.worker_embedded) == (4, 0, 4, 0)
    assert_same_store(db, local_db, default_encoder)
    assert not list((db / "shards").glob("*.parquet"))  # removed after the build (no keep_shards)

    # the single-process indexer finds the Ray-built index up to date
    with Store(db) as store:
        plain = Indexer(default_encoder, store, show_progress=False).sync(str(photos))
    assert (plain.unchanged, plain.added, plain.updated, plain.embedded, plain.captions_added) == (13, 0, 0, 0, 0)


@pytest.mark.slow
def test_a_failing_shard_is_retried_and_a_lost_one_is_redone_on_rerun(ray_runtime, photos, local_db,
                                                                      default_encoder, tmp_path, monkeypatch):
    db = tmp_path / "db"
    monkeypatch.setenv(FAIL_ENV, "1:1,2:9")  # shard 1 fails once (retried); shard 2 fails every attempt
    with Store(db) as store:
        with pytest.raises(DistributedIndexError, match=r"1 of 4 shards failed after 2 retries \(shard 2;"):
            ray_indexer(store, default_encoder, workers=1, retries=2).sync(str(photos))
        assert store.count_images() == 0  # nothing is built from an incomplete set of shards
    markers = sorted(p.name.rsplit(".", 1)[1] for p in (db / "shards").glob(".*.failed-*"))
    assert markers == ["failed-0", "failed-0", "failed-1", "failed-2"]  # 1 + 3 attempts
    assert len(list((db / "shards").glob("*.parquet"))) == 3

    monkeypatch.delenv(FAIL_ENV)
    with Store(db) as store:
        report = ray_indexer(store, default_encoder, workers=1).sync(str(photos))
    assert (report.shards_run, report.shards_reused, report.worker_embedded) == (1, 3, 4)
    assert_same_store(db, local_db, default_encoder)


@pytest.mark.slow
def test_cli_engine_ray_prints_only_json(ray_runtime, photos, tmp_path):
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-c", "import sys; from ui.cli import main; sys.exit(main())",
                           "index", str(photos), "--engine", "ray", "--address", address, "--workers", "1",
                           "--shard-size", "8", "--db", str(tmp_path / "db"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [report] = json.loads(proc.stdout)
    assert (report["engine"], report["added"], report["shards"], report["shards_run"]) == ("ray", 12, 2, 2)
    assert [os.path.basename(s["path"]) for s in report["skipped"]] == ["broken.jpg"]
    assert "Ray: 2 of 2 shards" in proc.stderr


# -- fast checks, no Ray runtime --------------------------------------------------------------------

def test_shards_are_named_by_their_content():
    files = [FileEntry(f"/p/{i}.jpg", i, i) for i in range(10)]
    a = plan_shards(files, {"/p/1.jpg": ["x"]}, fingerprint="f", region_key=None, shard_size=4)
    assert [len(s.files) for s in a] == [4, 4, 2] and [s.number for s in a] == [0, 1, 2]
    assert a[0].captions == {"/p/1.jpg": ["x"]} and a[1].captions == {}
    b = plan_shards(files, {"/p/1.jpg": ["y"]}, fingerprint="f", region_key=None, shard_size=4)
    c = plan_shards(files, {"/p/1.jpg": ["x"]}, fingerprint="g", region_key=None, shard_size=4)
    assert a[0].id != b[0].id and a[1].id == b[1].id  # a caption edit redoes its shard only
    assert all(x.id != y.id for x, y in zip(a, c))  # another encoder redoes all


def test_roots_are_local_folders_or_file_urls(tmp_path):
    assert local_root(f"file://{tmp_path}") == str(tmp_path)
    with pytest.raises(DistributedIndexError, match="only local folders and file:// URLs"):
        local_root("s3://bucket/photos")
    assert ShardStore(f"file://{tmp_path}/shards").dir == f"{tmp_path}/shards"


def test_missing_ray_says_how_to_install_it(monkeypatch):
    import indexer.distributed as dist

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DistributedIndexError, match=r"pip install 'imgsearch\[ray\]'"):
        dist._ray()
