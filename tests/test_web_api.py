"""The web UI's endpoints, through gradio_client, against the app launched in-process.

One module-scoped app over a copy of sample_data/ indexed with the real default
encoder (the model loads once, ~8 s); a second app over the same kind of index with
a fake reranker; a third over an empty index.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

import ui.web.state  # noqa: E402
from indexer.sync import Indexer  # noqa: E402
from retrieval.encoders import create_encoder  # noqa: E402
from retrieval.images import load_image  # noqa: E402
from retrieval.rerank import Reranker  # noqa: E402
from retrieval.search import Searcher  # noqa: E402
from retrieval.store import Store  # noqa: E402
from ui.web import RERANK_INFO_OFF, RERANK_INFO_ON, AppState, build_app, launch  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, state: AppState, demo: gr.Blocks, url: str, photos: Path | None) -> None:
        self.state, self.demo, self.url, self.photos = state, demo, url, photos
        self.client = Client(url, verbose=False)


def _serve(state: AppState, photos: Path | None) -> App:
    demo = build_app(state)
    port = free_port()
    launch(demo, state, port=port, prevent_thread_lock=True)
    return App(state, demo, f"http://127.0.0.1:{port}/", photos)


class FakeReranker:
    """A tiny deterministic reranker: an image's regions are its mean colour (1 region x 3 channels).

    Its match logit is high for regions of the ``target`` colour (set by a test) and for the
    ``preferred`` text, so a test can tell which photo or caption must come first.
    """

    spec = "fake-rerank"
    fingerprint = "fake-rerank:1"
    region_key = "fake-mean-rgb"  # no index stores these: regions come from the photo files
    alpha = 0.0  # the ITM logit alone decides the order

    def __init__(self) -> None:
        self.target: np.ndarray | None = None
        self.preferred: str | None = None
        self.region_calls = 0

    def encode_regions(self, images) -> np.ndarray:
        self.region_calls += 1
        means = [np.asarray(im.convert("RGB"), np.float32).mean(axis=(0, 1)) / 255.0 for im in images]
        return np.asarray(means, np.float16).reshape(len(means), 1, 3)

    def itm_scores(self, texts, regions) -> np.ndarray:
        regions = np.asarray(regions, np.float32)
        n = max(len(texts), len(regions))
        texts = list(texts) * n if len(texts) == 1 else list(texts)
        regions = np.repeat(regions, n, axis=0) if len(regions) == 1 else regions
        out = np.zeros(n, np.float32)
        if self.target is not None:
            out += 5.0 - 100.0 * np.linalg.norm(regions[:, 0, :] - self.target, axis=1)
        if self.preferred is not None:
            out += np.array([8.0 if t == self.preferred else -8.0 for t in texts], np.float32)
        return out


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("default")


def _indexed_copy(root: Path, encoder) -> tuple[Path, Path, Store]:
    photos, data = root / "photos", root / "data"
    shutil.copytree(SAMPLE, photos)
    store = Store(data)
    Indexer(encoder, store, show_progress=False).sync(str(photos))
    return photos, data, store


@pytest.fixture(scope="module")
def app(tmp_path_factory, encoder):
    photos, data, store = _indexed_copy(tmp_path_factory.mktemp("web"), encoder)
    state = AppState(data, searcher=Searcher(encoder, store))
    a = _serve(state, photos)
    yield a
    a.demo.close()
    state.close()


@pytest.fixture(scope="module")
def rerank_app(tmp_path_factory, encoder):
    """The sample index with a FakeReranker reordering the top 5 (``app.reranker``)."""
    photos, data, store = _indexed_copy(tmp_path_factory.mktemp("web-rerank"), encoder)
    reranker = FakeReranker()
    assert isinstance(reranker, Reranker)
    state = AppState(data, searcher=Searcher(encoder, store), reranker=reranker, rerank_k=5)
    a = _serve(state, photos)
    a.reranker = reranker  # type: ignore[attr-defined]
    yield a
    a.demo.close()
    state.close()


@pytest.fixture(scope="module")
def empty_app(tmp_path_factory):
    state = AppState(tmp_path_factory.mktemp("empty") / "data")
    a = _serve(state, None)
    yield a
    a.demo.close()
    state.close()


def search(app: App, query: str, k: int = 5, min_relevance: float = 0.0, rerank: bool = False):
    gallery, status, hits = app.client.predict(query, k, min_relevance, rerank, api_name="/search")
    return gallery, status, hits


def find_by_photo(app: App, path: Path, k: int = 6, rerank: bool = False):
    status, table, gallery = app.client.predict(handle_file(str(path)), k, rerank, api_name="/find_by_photo")
    return status, table, gallery


def checkboxes(app: App) -> dict[str, gr.Checkbox]:
    return {b.label: b for b in app.demo.blocks.values() if isinstance(b, gr.Checkbox)}


# -- search ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("query,expected", [("a cat", "cat_chelsea.png"), ("a cup of espresso", "espresso_cup.png")])
def test_search_ranks_expected_photo_first(app, query, expected):
    gallery, status, hits = search(app, query)
    assert hits[0]["name"] == expected
    assert hits[0]["photo"] == str(app.photos / expected)
    assert len(gallery) == len(hits) == 5
    assert expected in gallery[0]["caption"] and f"{hits[0]['relevance']:.2f}" in gallery[0]["caption"]
    assert "5 photos" in status


def test_gallery_shows_cached_thumbnails(app):
    _, _, hits = search(app, "a cat", k=3)
    thumbs = app.state.thumbs.folder
    row = app.state.store().image_by_path(hits[0]["photo"])
    thumb = thumbs / f"{row.hash}.jpg"
    assert thumb.is_file()
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and max(im.size) <= 256
    mtime = thumb.stat().st_mtime_ns
    search(app, "a cat", k=3)
    assert thumb.stat().st_mtime_ns == mtime  # made once, then reused


def test_search_caption_label_has_a_caption(app):
    gallery, _, hits = search(app, "a cup of espresso", k=1)
    assert "espresso" in hits[0]["caption"].lower()
    assert hits[0]["caption"] in gallery[0]["caption"]


def test_empty_query_and_threshold_messages(app):
    gallery, status, hits = search(app, "   ")
    assert gallery == [] and not hits and "Type a few words" in status
    gallery, status, hits = search(app, "a cat", min_relevance=10)
    assert gallery == [] and "No photo has a relevance of at least 10.0" in status


def test_top_k_and_min_relevance(app):
    _, _, hits = search(app, "a cat", k=12)
    assert len(hits) == 12 and hits == sorted(hits, key=lambda h: -h["relevance"])
    cut = round(hits[2]["relevance"], 1)
    _, _, above = search(app, "a cat", k=12, min_relevance=cut)
    assert 1 <= len(above) < 12 and all(h["relevance"] >= cut for h in above)
    assert [h["name"] for h in above] == [h["name"] for h in hits if h["relevance"] >= cut]


def test_photo_details(app):
    d = app.client.predict(str(app.photos / "cat_chelsea.png"), api_name="/photo_details")
    assert d["name"] == "cat_chelsea.png" and d["width"] and d["height"] and d["size"] > 0
    assert {c["text"] for c in d["captions"]} >= {"A brown striped cat looking off to the side."}
    with pytest.raises(Exception, match="not an indexed photo"):
        app.client.predict("/etc/passwd", api_name="/photo_details")


def test_rerank_checkbox_disabled_without_reranker(app):
    boxes = checkboxes(app)
    assert set(boxes) == {"Rerank", "Rerank captions"}
    for box in boxes.values():
        assert box.interactive is False and box.info == RERANK_INFO_OFF
    # asking for a rerank without a reranker is no error: the plain search answers
    gallery, status, hits = search(app, "a cat", rerank=True)
    assert hits[0]["name"] == "cat_chelsea.png" and all(h["match"] is None for h in hits)
    assert "reranked" not in status and "match" not in gallery[0]["caption"]


# -- find by photo --------------------------------------------------------------------------------

def test_find_by_photo(app):
    status, table, gallery = find_by_photo(app, SAMPLE / "espresso_cup.png")
    rows = table["data"]
    assert table["headers"] == ["Score", "Caption", "Photo"]
    assert rows[0][2] == "espresso_cup.png" and "espresso" in rows[0][1].lower()
    assert rows[0][0] >= rows[-1][0]
    assert len(gallery) == 6 and gallery[0]["caption"].split(" · ")[1].startswith("espresso_cup.png")
    assert "best captions" in status and "reranked" not in status
    import json  # the captions are real ones, not the words of file names ("espresso cup")

    real = {c for line in (SAMPLE / "captions.jsonl").read_text().splitlines() for c in json.loads(line)["captions"]}
    assert len(rows) == 5 and all(r[1] in real for r in rows), rows


def test_find_by_photo_without_the_rerank_argument(app):
    """Clients written before the "Rerank captions" input still work: it defaults to off."""
    status, table, gallery = app.client.predict(handle_file(str(SAMPLE / "espresso_cup.png")), 6,
                                                api_name="/find_by_photo")
    assert table["data"][0][2] == "espresso_cup.png" and len(gallery) == 6 and "best captions" in status
    # and rerank=True without a reranker is the plain answer
    _, reranked, _ = find_by_photo(app, SAMPLE / "espresso_cup.png", rerank=True)
    assert reranked["data"] == table["data"]


def test_find_by_photo_rejects_non_image(app, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is not a picture")
    status, table, gallery = find_by_photo(app, bogus)
    assert "not an image" in status and gallery == [] and not table["data"]


# -- reranking ------------------------------------------------------------------------------------

def _regions_of(app: App, path: str) -> np.ndarray:
    """What the fake reranker sees for an indexed photo (the Searcher decodes it the same way)."""
    size = app.state.searcher().encoder.image_size
    return app.reranker.encode_regions([load_image(path, target_size=size)])[0, 0].astype(np.float32)


def test_rerank_checkboxes_enabled_with_reranker(rerank_app):
    boxes = checkboxes(rerank_app)
    assert boxes["Rerank"].interactive is True and boxes["Rerank"].info == RERANK_INFO_ON
    assert boxes["Rerank captions"].interactive is True and boxes["Rerank captions"].info != RERANK_INFO_OFF


def test_search_rerank_reorders_the_top_k(rerank_app):
    _, status, plain = search(rerank_app, "a cat", k=8)
    assert "reranked" not in status and all(h["match"] is None for h in plain)
    target = plain[4]  # last of the reranked top 5: the reranker lifts it to the front
    rerank_app.reranker.target = _regions_of(rerank_app, target["photo"])
    try:
        gallery, status, hits = search(rerank_app, "a cat", k=8, rerank=True)
    finally:
        rerank_app.reranker.target = None
    assert "(reranked)" in status and len(hits) == len(gallery) == 8
    assert hits[0]["photo"] == target["photo"]
    names = [h["name"] for h in hits]
    assert sorted(names[:5]) == sorted(h["name"] for h in plain[:5])  # the same top 5, reordered
    assert names[5:] == [h["name"] for h in plain[5:]]  # beyond rerank_k: untouched
    assert [h["score"] for h in hits] == [next(p["score"] for p in plain if p["name"] == n) for n in names]
    assert hits[0]["match"] > 0.9 and all(0.0 <= h["match"] <= 1.0 for h in hits[:5])
    assert all(h["match"] is None for h in hits[5:])
    m = re.match(r"(-?\d+\.\d\d) · match (\d\.\d\d) · (\S+)", gallery[0]["caption"])
    assert m and m.group(1) == f"{hits[0]['relevance']:.2f}" and m.group(2) == f"{hits[0]['match']:.2f}"
    assert m.group(3) == target["name"]
    assert " · match " not in gallery[5]["caption"]


def test_search_rerank_off_is_the_plain_search(rerank_app):
    rerank_app.reranker.target = np.ones(3, np.float32)
    try:
        _, _, hits = search(rerank_app, "a cup of espresso", k=5)
    finally:
        rerank_app.reranker.target = None
    assert hits[0]["name"] == "espresso_cup.png" and all(h["match"] is None for h in hits)


def test_find_by_photo_rerank_captions(rerank_app):
    status, plain, similar = find_by_photo(rerank_app, SAMPLE / "espresso_cup.png")
    assert plain["headers"] == ["Score", "Caption", "Photo", "Match"]
    assert "reranked" not in status and all(r[3] is None for r in plain["data"])
    preferred = plain["data"][-1][1]
    rerank_app.reranker.preferred = preferred
    calls = rerank_app.reranker.region_calls
    try:
        status, table, similar_rr = find_by_photo(rerank_app, SAMPLE / "espresso_cup.png", rerank=True)
    finally:
        rerank_app.reranker.preferred = None
    rows = table["data"]
    assert "best captions (reranked)" in status
    assert rows[0][1] == preferred and rows[0][3] > 0.9
    assert sorted(r[1] for r in rows) == sorted(r[1] for r in plain["data"])  # the same captions, reordered
    assert all(r[3] is not None for r in rows)
    assert rerank_app.reranker.region_calls == calls + 1  # the upload's regions, once
    assert [g["caption"] for g in similar_rr] == [g["caption"] for g in similar]  # similar photos: not reranked


def test_reranker_reaches_lazily_opened_and_reindexed_searchers(tmp_path, photo_dir, fake_encoder, monkeypatch):
    """The reranker goes to a searcher opened on first use, and to the one a reindex opens."""
    store = Store(tmp_path / "data")
    Indexer(fake_encoder, store, show_progress=False).sync(str(photo_dir))
    store.close()
    reranker = FakeReranker()

    real_open_library = ui.web.state.open_library

    def open_library(data_dir, model=None, device=None, encoder=None):
        return real_open_library(data_dir, encoder=encoder or fake_encoder)

    monkeypatch.setattr(ui.web.state, "open_library", open_library)
    lazy = AppState(tmp_path / "data", reranker=reranker, rerank_k=3)
    try:
        plain = lazy.search("anything", k=3)
        reranker.target = _mean_rgb(plain[2].hit.path, fake_encoder.image_size)
        found = lazy.search("anything", k=3, rerank=True)
        assert lazy.searcher().reranker is not None and lazy.searcher().rerank_k == 3
        assert found[0].hit.path == plain[2].hit.path and found[0].hit.match > 0.9
    finally:
        lazy.close()

    monkeypatch.setattr(ui.web.state, "create_encoder", lambda spec, device=None, **kw: fake_encoder)
    reindexed = AppState(tmp_path / "data", reranker=reranker, rerank_k=3)
    try:
        assert reindexed.start_reindex() and reindexed.wait_reindex(timeout=60)
        assert not reindexed.status.errors and reindexed._searcher is not None
        searcher = reindexed.searcher()  # opened by the reindex, around its encoder
        assert searcher.encoder._encoder is fake_encoder and searcher.reranker is not None
        assert reindexed.search("anything", k=3, rerank=True)[0].hit.path == plain[2].hit.path
    finally:
        reindexed.close()


def _mean_rgb(path: str, size: int) -> np.ndarray:
    im = load_image(path, target_size=size).convert("RGB")
    return FakeReranker().encode_regions([im])[0, 0].astype(np.float32)


# -- library and reindex --------------------------------------------------------------------------

def test_library_info(app):
    summary, status, folders, skipped = app.client.predict(api_name="/library_info")
    store = app.state.store()
    assert store.count_captions() > store.count_captions(include_weak=False)  # names made weak captions too
    assert "**22** photos" in summary and f"**{store.count_captions(include_weak=False)}** captions" in summary
    assert "default" in summary
    assert folders["data"][0][:2] == [str(app.photos), 22]


def test_reindex_finds_new_photo_and_lists_skips(app):
    with Image.open(SAMPLE / "dahlia_flower.webp") as im:
        ImageOps.mirror(im.convert("RGB")).save(app.photos / "mirrored_dahlia.jpg", quality=90)
    (app.photos / "mirrored_dahlia.txt").write_text("A mirrored orange dahlia from the web test.\n")
    (app.photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    job = app.client.submit(api_name="/reindex")
    _, _, hits = search(app, "a cat", k=1)  # searching keeps working while reindexing
    assert hits[0]["name"] == "cat_chelsea.png"
    summary, status, folders, skipped = job.result(timeout=300)
    assert "Reindex finished" in status and "1 added" in status
    assert "**23** photos" in summary and folders["data"][0][1] == 23
    assert [r[0] for r in skipped["data"]] == [str(app.photos / "broken.jpg")]
    _, _, hits = search(app, "an orange dahlia flower", k=2)
    assert "mirrored_dahlia.jpg" in {h["name"] for h in hits}
    status, table, _ = app.client.predict(handle_file(str(app.photos / "mirrored_dahlia.jpg")), 3,
                                          api_name="/find_by_photo")
    assert any("mirrored orange dahlia" in r[1] for r in table["data"])


# -- serving rules --------------------------------------------------------------------------------

def test_only_indexed_folders_and_thumbnails_are_served(app):
    base = app.url + "gradio_api/file="
    data_dir = app.state.data_dir
    search(app, "a cat", k=1)
    thumb = next(app.state.thumbs.folder.glob("*.jpg"))
    assert httpx.get(base + str(app.photos / "cat_chelsea.png")).status_code == 200
    assert httpx.get(base + str(thumb)).status_code == 200
    for path in ("/etc/passwd", str(data_dir / "imgsearch.sqlite"), str(Path(__file__).resolve()),
                 str(app.photos / ".." / "data" / "imgsearch.sqlite")):
        assert httpx.get(base + path).status_code == 403, path


def test_binds_localhost_and_caps_uploads(app, tmp_path):
    assert app.demo.server_name == "127.0.0.1" and app.demo.share is False
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * (26 * 1024 * 1024))
    with open(big, "rb") as f:
        r = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.jpg", f, "image/jpeg")}, timeout=60)
    assert r.status_code == 413


# -- empty index ----------------------------------------------------------------------------------

def test_empty_index_messages(empty_app):
    gallery, status, hits = search(empty_app, "a cat")
    assert gallery == [] and "index is empty" in status
    status, table, gallery = empty_app.client.predict(handle_file(str(SAMPLE / "cat_chelsea.png")), 4,
                                                      api_name="/find_by_photo")
    assert "Nothing to compare with yet" in status
    summary, _, folders, skipped = empty_app.client.predict(api_name="/library_info")
    assert "**0** photos" in summary and "Nothing is indexed yet" in summary
    summary, status, _, _ = empty_app.client.predict(api_name="/reindex")
    assert "no folders are indexed yet" in status


# -- hybrid search: filters, sort, "not", paging, badges --------------------------------------------

DATED = {"2019 Kyoto/temple_gate.jpg": "2019:04:02 10:00:00", "2019 Kyoto/moss_garden.jpg": "2019:04:05 16:30:00",
         "2021 Oslo/fjord_ferry.jpg": "2021:06:01 09:00:00", "2021 Oslo/opera_roof.jpg": "2021:06:20 21:15:00"}
UNDATED = [f"loose/undated_{i}.png" for i in range(4)]


@pytest.fixture(scope="module")
def filter_app(tmp_path_factory):
    """Eight made photos (four dated, in two named folders; four undated) indexed with the fake encoder."""
    from conftest import FakeEncoder, make_photo, with_date

    root = tmp_path_factory.mktemp("web-filters")
    photos = root / "photos"
    for n, (name, taken) in enumerate(DATED.items()):
        with_date(make_photo(photos / name, seed=n, fmt="JPEG"), photos / name, taken)
    for n, name in enumerate(UNDATED):
        make_photo(photos / name, seed=10 + n)
    store = Store(root / "data")
    Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos))
    state = AppState(root / "data", searcher=Searcher(FakeEncoder(), store))
    a = _serve(state, photos)
    yield a
    a.demo.close()
    state.close()


def hybrid(app: App, query: str, k: int = 10, *, taken_after: str = "", taken_before: str = "",
           folders: list[str] | None = None, sort: str = "relevance", not_text: str = "", offset: int = 0):
    return app.client.predict(query, k, 0.0, False, taken_after, taken_before, folders or [], sort, not_text,
                              offset, api_name="/search")


def rel(app: App, hit: dict) -> str:
    return str(Path(hit["photo"]).relative_to(app.photos))


def test_folder_filter_returns_only_that_folders_photos(filter_app):
    gallery, status, hits = hybrid(filter_app, "old town", folders=[str(filter_app.photos / "2019 Kyoto")])
    assert sorted(rel(filter_app, h) for h in hits) == sorted(n for n in DATED if n.startswith("2019"))
    assert len(gallery) == 2 and "2 photos" in status and "in 2019 Kyoto" in status
    both = [str(filter_app.photos / "2019 Kyoto"), str(filter_app.photos / "loose")]
    _, _, hits = hybrid(filter_app, "old town", k=3, folders=both)
    assert len(hits) == 3 and all(rel(filter_app, h).startswith(("2019 Kyoto/", "loose/")) for h in hits)


def test_date_filter_and_date_sort(filter_app):
    _, status, hits = hybrid(filter_app, "summer", taken_after="2021-01-01")
    assert sorted(rel(filter_app, h) for h in hits) == sorted(n for n in DATED if n.startswith("2021"))
    assert all(h["taken"].startswith("2021-06") for h in hits) and "taken on or after 2021-01-01" in status
    _, _, hits = hybrid(filter_app, "summer", taken_after="2019-04-05", taken_before="2021-06-01")  # inclusive
    assert sorted(rel(filter_app, h) for h in hits) == ["2019 Kyoto/moss_garden.jpg", "2021 Oslo/fjord_ferry.jpg"]
    _, status, hits = hybrid(filter_app, "summer", sort="date")
    assert [rel(filter_app, h) for h in hits[:4]] == ["2021 Oslo/opera_roof.jpg", "2021 Oslo/fjord_ferry.jpg",
                                                       "2019 Kyoto/moss_garden.jpg", "2019 Kyoto/temple_gate.jpg"]
    assert len(hits) == 8 and all(h["taken"] is None for h in hits[4:]) and "newest first" in status


def test_offset_pages_past_the_first_k(filter_app):
    _, _, whole_list = hybrid(filter_app, "anything", k=6)
    _, _, first = hybrid(filter_app, "anything", k=3)
    _, status, second = hybrid(filter_app, "anything", k=3, offset=3)
    assert [h["photo"] for h in first + second] == [h["photo"] for h in whole_list]
    _, _, beyond = hybrid(filter_app, "anything", k=3, offset=8)
    assert beyond == []


def test_old_clients_get_unfiltered_results(filter_app):
    _, status, hits = search(filter_app, "anything", k=8)  # the four parameters of before
    assert len(hits) == 8 and "·" not in status


@pytest.mark.parametrize("kwargs,message", [
    ({"taken_after": "2019-13-01"}, "Taken after must be a date written YYYY-MM-DD, not '2019-13-01'"),
    ({"taken_before": "last week"}, "Taken before must be a date written YYYY-MM-DD"),
    ({"taken_after": "2021-01-01", "taken_before": "2020-01-01"}, "is later than"),
    ({"folders": ["/etc"]}, "/etc"),
    ({"k": 0}, "from 1 to 100, not 0"),
    ({"k": 101}, "from 1 to 100, not 101"),
    ({"offset": -1}, "offset must be from 0"),
    ({"offset": 5000}, "offset must be from 0"),
    ({"sort": "sideways"}, "sort must be one of relevance, date"),
    ({"not_text": ",".join(f"thing{i}" for i in range(9))}, "at most 8"),
])
def test_bad_filters_are_one_line_messages(filter_app, kwargs, message):
    gallery, status, hits = hybrid(filter_app, "anything", **kwargs)
    assert gallery == [] and not hits
    assert 'class="msg msg-info"' in status and message.lower() in status.lower(), status
    assert "\n" not in status.strip() and "Traceback" not in status


def test_folder_choices_list_roots_and_photo_folders(filter_app):
    photos = str(filter_app.photos)
    choices = filter_app.state.folder_choices()
    assert choices[0] == (photos, photos)
    assert {label: value for label, value in choices[1:]} == {
        "photos/2019 Kyoto": photos + "/2019 Kyoto", "photos/2021 Oslo": photos + "/2021 Oslo",
        "photos/loose": photos + "/loose"}
    folders = next(b for b in filter_app.demo.blocks.values() if isinstance(b, gr.Dropdown))
    assert folders.multiselect and folders.label == "Folders"


def test_caption_word_puts_its_photo_first_with_a_badge(app):
    gallery, _, hits = hybrid(app, "Hubble", k=5)
    assert hits[0]["name"] == "hubble_deep_field.jpg"
    assert {"caption", "name"} & set(hits[0]["matched"]) and hits[0]["relevance"] is not None
    assert "hubble" in hits[0]["matched_caption"].lower()
    badge = re.search(r"hubble_deep_field\.jpg \[([a-z, ]+)\]", gallery[0]["caption"])
    assert badge and set(badge.group(1).split(", ")) == set(hits[0]["matched"])


def test_not_text_steers_away_from_a_concept(app):
    names = lambda hits: [h["name"] for h in hits]  # noqa: E731
    _, _, plain = hybrid(app, "an animal", k=22)
    _, status, steered = hybrid(app, "an animal", k=22, not_text="a cat")
    assert "not “a cat”" in status and len(steered) == 22
    assert names(plain).index("cat_chelsea.png") <= 2 and "cat_chelsea.png" not in names(steered)[:5]
    _, status, _ = hybrid(app, "an animal", k=3, not_text="a cat, a dog")
    assert "not “a cat”, “a dog”" in status


def test_find_by_photo_and_text(app):
    def rank(gallery, name):
        found = [n for n, g in enumerate(gallery) if g["caption"].split(" · ")[1].startswith(name)]
        return found[0] if found else len(gallery)

    _, _, plain = find_by_photo(app, SAMPLE / "espresso_cup.png", k=8)
    status, table, both = app.client.predict(handle_file(str(SAMPLE / "espresso_cup.png")), 8, False, "a cat",
                                             api_name="/find_by_photo")
    assert "photos like this one and “a cat”" in status and len(both) == 8
    assert table["data"][0][2] == "espresso_cup.png"  # the captions stay the photo's own
    assert rank(both, "cat_chelsea.png") < rank(plain, "cat_chelsea.png")
