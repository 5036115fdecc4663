"""Hybrid search: the fusion rules (numpy), and pixels + captions + names + filters end to end on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import with_date
from retrieval.errors import QueryError
from retrieval.hybrid import FusionParams, Parts, fuse
from retrieval.query import SearchQuery
from retrieval.search import Searcher
from retrieval.store import Store

REPO = Path(__file__).resolve().parent.parent


def _parts(rng: np.random.Generator, n: int) -> Parts:
    """Random parts over n candidates: some captioned, some with weak captions, some with word matches."""
    caption = np.where(rng.random(n) < 0.5, rng.normal(0.3, 0.1, n), np.nan)
    weak = np.where(rng.random(n) < 0.3, rng.normal(0.3, 0.1, n), np.nan)
    lexical = np.where(rng.random(n) < 0.2, rng.random(n) * 10, np.nan)
    all_words = np.isfinite(lexical) & (rng.random(n) < 0.5)
    return Parts(pixel=rng.normal(0.2, 0.05, n), pixel_center=0.2, pixel_scale=0.05, caption=caption, weak=weak,
                 weak_kind=["name"] * n, caption_center=0.3, caption_scale=0.02, lexical=lexical,
                 lexical_fields=[("caption",)] * n, all_words=all_words)


def test_photos_with_every_query_word_rank_above_photos_with_none():
    for seed in range(200):
        parts = _parts(np.random.default_rng(seed), 60)
        f = fuse(parts)
        rank = np.empty(60, int)
        rank[f.order] = np.arange(60)
        words, none = parts.all_words, ~np.isfinite(parts.lexical)
        if words.any() and none.any():
            assert rank[words].max() < rank[none].min(), seed


def test_captions_lift_matches_and_never_bury_uncaptioned_photos():
    pixel = np.array([0.30, 0.25, 0.20, 0.15])  # photo 0 best by pixels, no caption
    parts = Parts(pixel=pixel, pixel_center=0.2, pixel_scale=0.05, caption=np.array([np.nan, 0.30, 0.70, 0.30]),
                  caption_center=0.3, caption_scale=0.05)
    f = fuse(parts)
    assert f.order[0] == 2 and "caption" in f.matched[2]  # a caption far above typical lifts its photo first
    assert list(f.order[1:]) == [0, 1, 3]  # an ordinary caption lowers its photo, by at most the floor
    assert f.scores[1] == pytest.approx((0.25 - 0.2) / 0.05 - FusionParams().caption_floor)
    weak = Parts(pixel=pixel, pixel_center=0.2, pixel_scale=0.05, weak=np.array([np.nan, 0.0, 0.0, 0.0]),
                 weak_kind=[None, "name", "folder", "name"], caption_center=0.3, caption_scale=0.05)
    f = fuse(weak)
    assert list(f.order) == [0, 1, 2, 3]  # a name that does not match the query costs nothing
    assert f.matched[0] == ("pixels",)


def test_not_lowers_photos_near_the_concept():
    pixel = np.array([0.30, 0.29, 0.10, 0.05])
    base = Parts(pixel=pixel, pixel_center=0.2, pixel_scale=0.05)
    assert fuse(base).order[0] == 0
    steered = Parts(pixel=pixel, pixel_center=0.2, pixel_scale=0.05, negative=np.array([0.9, 0.1, 0.1, 0.1]))
    assert fuse(steered).order[0] == 1


def test_bad_parts_are_refused():
    with pytest.raises(ValueError):
        fuse(Parts(pixel=np.array([0.1, np.nan]), pixel_center=0.0, pixel_scale=1.0))
    with pytest.raises(ValueError):
        fuse(Parts(pixel=np.array([0.1, 0.2]), pixel_center=0.0, pixel_scale=1.0, caption=np.array([0.1])))


def test_query_checks_are_one_line_errors():
    for bad in (SearchQuery(text="cat", k=0), SearchQuery(text="cat", k=-5), SearchQuery(text="   "),
                SearchQuery(), SearchQuery(text="cat", sort="size"), SearchQuery(text="cat", not_texts=(" ",)),
                SearchQuery(text="cat", offset=-1), SearchQuery(text="cat", taken_after=_day("2020-02-01"),
                                                                 taken_before=_day("2020-01-01"))):
        with pytest.raises(QueryError) as e:
            bad.check()
        assert "\n" not in str(e.value)


def _day(s: str):
    import datetime as dt

    return dt.date.fromisoformat(s)


# -- end to end, the bundled model on sample_data and renamed copies --------------------------------------------

@pytest.fixture(scope="module")
def library(tmp_path_factory, default_encoder):
    """sample_data plus a named cat, a pagoda in a "2019 Kyoto" folder and three dated copies, indexed."""
    from indexer.sync import Indexer

    root = tmp_path_factory.mktemp("hybrid") / "photos"
    shutil.copytree(REPO / "sample_data", root)
    shutil.copyfile(root / "cat_chelsea.png", root / "black cat sleeping on a chair.png")
    (root / "2019 Kyoto").mkdir()
    shutil.copyfile(root / "chinese_pagoda_lake.jpg", root / "2019 Kyoto" / "IMG_2041.jpg")
    for name, when in (("dated/a.jpg", "2018:05:01 10:00:00"), ("dated/b.jpg", "2019:07:04 12:00:00"),
                       ("dated/c.jpg", "2021:01:31 08:00:00")):
        with_date(root / "espresso_cup.png", root / name, when)
    db = root.parent / "db"
    store = Store(db)
    Indexer(default_encoder, store, show_progress=False).sync(str(root))
    searcher = Searcher(default_encoder, store)
    yield root, db, searcher
    store.close()


def _names(hits, root: Path) -> list[str]:
    return [Path(h.path).relative_to(root).as_posix() for h in hits]


def test_words_of_captions_names_and_folders_find_their_photo(library):
    root, _, searcher = library
    cases = {"Hubble": "hubble_deep_field.jpg", "optic disc": "optic_disc_closeup.jpg",
             "black cat sleeping on a chair": "black cat sleeping on a chair.png", "Kyoto": "2019 Kyoto/IMG_2041.jpg"}
    for query, target in cases.items():
        hits = searcher.search(SearchQuery(text=query, k=5))
        assert _names(hits, root)[0] == target, (query, _names(hits, root))
        assert set(hits[0].matched) & {"caption", "name", "folder"}, (query, hits[0])
    kyoto = searcher.search(SearchQuery(text="Kyoto", k=1))[0]
    assert "folder" in kyoto.matched
    for query in ("IMG_2041", "img_2041.JPG", "IMG_2041 kyoto"):  # a camera-made name is found as one token
        hit = searcher.search(SearchQuery(text=query, k=1))[0]
        assert _names([hit], root) == ["2019 Kyoto/IMG_2041.jpg"] and "name" in hit.matched, (query, hit)
    assert "2019 Kyoto/IMG_2041.jpg" not in _names(searcher.search(SearchQuery(text="IMG_2042", k=1)), root)
    pixels = searcher.search(SearchQuery(text="Hubble", k=5, hybrid=False))
    assert all(h.matched == ("pixels",) for h in pixels)
    hubble = searcher.search(SearchQuery(text="Hubble", k=1))[0]
    assert hubble.caption and "Hubble" in hubble.caption
    described = searcher.captions_for_image(root / "black cat sleeping on a chair.png", k=8)
    assert len(described) == 8 and not {h.source for h in described} & {"name", "folder"}  # names describe no picture


def test_fts_syntax_is_searched_as_words(library):
    _, _, searcher = library
    for q in ('"', 'AND', 'NEAR(', '*', 'cat*', 'a:b', '(', ')', '^cat', '"unbalanced', 'OR OR', 'hubble NOT',
              'caption:hubble', '{name}: cat', "'; DROP TABLE images; --"):
        hits = searcher.search(SearchQuery(text=q, k=3))
        assert len(hits) == 3, q


def test_filters_sort_and_paging(library):
    root, _, searcher = library
    dated = searcher.search(SearchQuery(text="a cup of coffee", k=10, taken_after=_day("2019-01-01")))
    assert _names(dated, root) and set(_names(dated, root)) == {"dated/b.jpg", "dated/c.jpg"}
    inclusive = searcher.search(SearchQuery(text="coffee", k=10, taken_after=_day("2019-07-04"),
                                            taken_before=_day("2019-07-04")))
    assert _names(inclusive, root) == ["dated/b.jpg"]
    by_date = searcher.search(SearchQuery(text="coffee", k=30, sort="date"))
    taken = [h.taken for h in by_date]
    dated = [t for t in taken if t is not None]
    assert taken[:len(dated)] == sorted(dated, reverse=True) and len(dated) >= 3  # newest first, undated last
    assert taken[0].startswith("2021-01-31") and all(t is None for t in taken[len(dated):])
    folder = searcher.search(SearchQuery(text="a photo", k=10, folders=(str(root / "dated"),)))
    assert sorted(_names(folder, root)) == ["dated/a.jpg", "dated/b.jpg", "dated/c.jpg"]
    full = searcher.search(SearchQuery(text="a photo", k=12))
    pages = searcher.search(SearchQuery(text="a photo", k=6)) + searcher.search(SearchQuery(text="a photo", k=6, offset=6))
    assert [h.path for h in pages] == [h.path for h in full]


def test_not_and_text_plus_photo(library):
    root, _, searcher = library
    plain = _names(searcher.search(SearchQuery(text="galaxy", k=30)), root)
    steered = _names(searcher.search(SearchQuery(text="galaxy", k=30, not_texts=("spiral galaxy",))), root)
    assert steered.index("spiral_galaxy.png") > plain.index("spiral_galaxy.png")
    both = searcher.search(SearchQuery(text="a cup of coffee", image=root / "cat_chelsea.png", k=3))
    names = _names(both, root)
    assert "cat_chelsea.png" in names and any(n.startswith("dated/") or n == "espresso_cup.png" for n in names)


def test_queries_file_equals_one_at_a_time(library, monkeypatch, capsys, tmp_path):
    import retrieval.library as library_mod
    from ui.cli import main

    root, db, searcher = library
    monkeypatch.setattr(library_mod, "create_encoder", lambda spec, device=None, **kw: searcher.encoder)
    queries = ["Hubble", "a cat", "optic disc"]
    (tmp_path / "q.txt").write_text("\n".join(queries) + "\n\n", encoding="utf-8")
    assert main(["search", "--queries", str(tmp_path / "q.txt"), "-k", "4", "--db", str(db), "--json"]) == 0
    batch = json.loads(capsys.readouterr().out)
    assert [b["query"] for b in batch] == queries
    for b in batch:
        assert main(["search", b["query"], "-k", "4", "--db", str(db), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == b["results"]
    assert all("matched" in h and "relevance" in h for b in batch for h in b["results"])
    for argv, needle in ((["search", "cat", "-k", "0"], "-k"), (["search", "cat", "-k", "-5"], "-k"),
                         (["search", "cat", "--taken-after", "2019-13-01"], "YYYY-MM-DD"),
                         (["search", "cat", "--sort", "size"], "--sort"),
                         (["search", "cat", "--folder", str(tmp_path / "nowhere")], "nowhere"),
                         (["search", "cat", "--taken-after", "2020-02-01", "--taken-before", "2020-01-01"], "2020")):
        try:
            code = main(argv + ["--db", str(db)])
        except SystemExit as e:  # argparse: a usage error
            code = e.code
        err = capsys.readouterr().err
        assert code != 0 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
