"""The Duplicates page's data: near-duplicate variants of real sample photos (a resize, a quality-40 re-encode,
a 5 % crop, a HEIC copy) indexed with the FakeEncoder, grouped as `imgsearch duplicates` groups them, with
each photo's facts and a JPEG thumbnail; cached by index generation; rendered with paths and no delete."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

import retrieval.duplicates as duplicates
import ui.web.duplicates_page as page
from conftest import SAMPLE_DATA, FakeEncoder, with_date
from indexer.sync import Indexer
from retrieval.errors import QueryError
from retrieval.images import HEIF_AVAILABLE
from retrieval.store import Store
from ui.cli.app import main
from ui.web.duplicates_page import DuplicatesFinder, groups_html, summary, view_data
from ui.web.state import AppState

SHOTS = ["cat_chelsea.png", "chinese_pagoda_lake.jpg"]  # each gets three variants
OTHERS = ["astronaut_eileen_collins.png", "lake_with_boats.jpg", "espresso_cup.png", "dahlia_flower.webp",
          "grace_hopper_portrait.jpg", "spiral_galaxy.png"]


def variants(src: Path, folder: Path) -> list[Path]:
    """A 50 % resize, a quality-40 re-encode and a 5 % crop of ``src``, written in that order (oldest first)."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    stem = src.stem
    made = [(folder / f"{stem}_resize.jpg", im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), 92),
            (folder / f"{stem}_q40.jpg", im, 40),
            (folder / f"{stem}_crop.jpg", im.crop((w // 40, h // 40, w // 40 + round(w * .95),
                                                   h // 40 + round(h * .95))), 92)]
    for n, (path, image, quality) in enumerate(made):
        image.save(path, "JPEG", quality=quality)
        os.utime(path, ns=(1_600_000_000_000_000_000 + n * 10**9,) * 2)
    return [p for p, _, _ in made]


@pytest.fixture
def library(tmp_path: Path):
    """Two sample photos with three variants each, plus six distinct photos, indexed with the FakeEncoder."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in SHOTS + OTHERS:
        shutil.copy(SAMPLE_DATA / name, photos / name)
        os.utime(photos / name, ns=(1_500_000_000_000_000_000,) * 2)  # the originals: the oldest files
    for name in SHOTS:
        variants(photos / name, photos)
    data = tmp_path / "data"
    with Store(data) as store:
        assert Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos)).added == 14
    state = AppState(data)
    yield state, photos
    state.close()


def test_groups_best_first_with_each_photos_facts(library, capsys):
    state, photos = library
    view = DuplicatesFinder(state).find()
    assert not view.cached and view.indexed == 14 and view.threshold == duplicates.DEFAULT_THRESHOLD
    # the same groups, in the same order and best photo first, as `imgsearch duplicates --json` prints
    assert main(["duplicates", "--db", str(state.data_dir), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [[p.path for p in g.photos] for g in view.groups] == [g["paths"] for g in cli]
    assert [round(g.score, 4) for g in view.groups] == [g["score"] for g in cli]
    assert len(view.groups) == 2
    for g in view.groups:
        src = Path(g.photos[0].path)
        assert src.name in SHOTS  # the original first: the most pixels; then the oldest of the equal-sized
        assert [Path(p.path).name for p in g.photos] == [src.name] + [f"{src.stem}_{v}.jpg"
                                                                      for v in ("q40", "crop", "resize")]
        assert 0.9 < g.score <= 1.0 and not g.exact
        for p in g.photos:
            with Image.open(p.path) as im:
                assert (p.width, p.height) == im.size and p.format == im.format
            assert p.size == os.path.getsize(p.path)
            mtime = datetime.fromtimestamp(os.stat(p.path).st_mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
            assert (p.date_kind, p.date) == ("modified", mtime)
            thumb = Path(p.thumbnail)
            assert thumb.parent == state.thumbs.folder
            with Image.open(thumb) as im:
                assert im.format == "JPEG" and max(im.size) <= state.thumbs.size
    grouped = {Path(p.path).name for g in view.groups for p in g.photos}
    assert not grouped & set(OTHERS)  # distinct photos stay apart


def test_date_taken_heic_through_the_thumbnail_cache_and_html(library):
    state, photos = library
    with_date(SAMPLE_DATA / "cat_chelsea.png", photos / "cat_dated.jpg", "2019:11:03 17:40:00")
    heic = None
    if HEIF_AVAILABLE:
        heic = photos / "cat_phone.heic"
        Image.open(SAMPLE_DATA / "cat_chelsea.png").convert("RGB").save(heic, "HEIF", quality=60)
    with Store(state.data_dir) as store:
        Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos))
    view = DuplicatesFinder(state).find()
    cat = next(g for g in view.groups if Path(g.photos[0].path).name == "cat_chelsea.png")
    by_name = {Path(p.path).name: p for p in cat.photos}
    assert (by_name["cat_dated.jpg"].date_kind, by_name["cat_dated.jpg"].date) == ("taken", "2019-11-03 17:40")
    html = groups_html(view)
    if heic is not None:
        p = by_name["cat_phone.heic"]
        assert p.format == "HEIF" and Path(p.thumbnail).suffix == ".jpg"
        assert Path(p.thumbnail).parent == state.thumbs.folder
        assert str(heic) in html  # the path is shown, as text
    # every image the page loads is a cached JPEG thumbnail, never a photo file itself
    srcs = [s.split('"', 1)[0] for s in html.split('src="')[1:]]
    assert len(srcs) == sum(len(g.photos) for g in view.groups)
    thumbs_url = page.thumb_url(str(state.thumbs.folder))
    assert all(s.startswith(thumbs_url) and s.endswith(".jpg") for s in srcs), srcs[:3]
    for g in view.groups:
        for p in g.photos:
            assert f'<code class="dup-path">{p.path}</code>' in html
    assert "<button" not in html and "delete" not in html.lower()  # nothing here deletes a photo
    assert "never deletes a photo" in summary(view)
    data = view_data(view)
    assert [d["paths"] for d in data] == [[p.path for p in g.photos] for g in view.groups]
    assert data[0]["photos"][0]["photo"] == view.groups[0].photos[0].path and "path" not in data[0]["photos"][0]


def test_cached_until_the_index_changes_and_hashes_kept(library, monkeypatch):
    state, photos = library
    runs, hashed = [], []
    real_find, real_hash = page.find_duplicates, duplicates.photo_hash
    monkeypatch.setattr(page, "find_duplicates", lambda *a, **k: runs.append(a[1]) or real_find(*a, **k))
    monkeypatch.setattr(duplicates, "photo_hash", lambda *a, **k: hashed.append(a[0]) or real_hash(*a, **k))
    finder = DuplicatesFinder(state)
    first = finder.find(0.7)
    again = finder.find(0.7)
    assert again.cached and again.groups == first.groups and len(runs) == 1
    n_hashed = len(hashed)
    assert n_hashed >= 8
    stricter = finder.find(0.8)  # another threshold: found again, but no photo hashed twice
    assert not stricter.cached and len(runs) == 2 and len(hashed) == n_hashed
    # a new copy changes the index generation: the next view has it
    shutil.copy(photos / "lake_with_boats.jpg", photos / "lake_copy.jpg")
    with Store(state.data_dir) as store:
        Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos))
    fresh = finder.find(0.7)
    assert not fresh.cached and fresh.generation > first.generation and len(runs) == 3
    exact = [g for g in fresh.groups if g.exact]
    assert len(exact) == 1 and {Path(p.path).name for p in exact[0].photos} == {"lake_with_boats.jpg",
                                                                                  "lake_copy.jpg"}
    assert "identical files" in groups_html(fresh)


def test_bad_threshold_and_empty_index(tmp_path, library):
    state, _ = library
    for bad in (0, 1.5, "abc"):
        with pytest.raises(QueryError):
            DuplicatesFinder(state).find(bad)
    empty = AppState(tmp_path / "nothing")
    view = DuplicatesFinder(empty).find()
    assert view.groups == () and view.indexed == 0 and "index is empty" in summary(view)
