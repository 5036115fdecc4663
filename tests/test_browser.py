"""The web UI in a real browser: `imgsearch serve` in a subprocess, driven by headless Chromium.

Needs Python Playwright and a system Chromium at /usr/bin/chromium (`playwright
install` cannot download here; the Makefile installs the Debian package). Set
IMGSEARCH_SKIP_BROWSER=1 to skip. Screenshots of each page go to test-artifacts/.

The server runs with `--rerank-model fusion:<folder>` over a randomly initialised fusion
reranker: its order means nothing, but it exercises loading a reranker on the serve
encoder's towers and the Rerank switches end to end.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageOps

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("IMGSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000

if os.environ.get("IMGSEARCH_SKIP_BROWSER") == "1":
    pytest.skip("IMGSEARCH_SKIP_BROWSER=1", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python Playwright is not installed: `pip install playwright` "
                    "(or set IMGSEARCH_SKIP_BROWSER=1 to skip the browser tests)")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (the Makefile does), "
                    "point IMGSEARCH_CHROMIUM at one, or set IMGSEARCH_SKIP_BROWSER=1 to skip")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


TRIP = "2019 Kyoto"
# A sub-folder of dated photos (mirrored sample photos, so no query's best match changes): newest first
TRIP_PHOTOS = {"evening_boats.jpg": ("lake_with_boats.jpg", "2019:11:03 17:40:00"),
               "pagoda_morning.jpg": ("chinese_pagoda_lake.jpg", "2019:11:02 08:15:00")}


def add_trip_folder(folder: Path) -> None:
    """TRIP_PHOTOS in ``folder``, each with an EXIF date taken."""
    folder.mkdir(parents=True)
    for name, (source, taken) in TRIP_PHOTOS.items():
        with Image.open(SAMPLE / source) as im:
            exif = Image.Exif()
            exif[306] = taken  # DateTime
            ImageOps.mirror(im.convert("RGB")).save(folder / name, "JPEG", exif=exif, quality=90)


def untrained_reranker(folder: Path) -> Path:
    """A fusion reranker folder with random (seeded) weights, in the bundled format."""
    import torch

    from retrieval.rerank.fusion import FusionConfig, FusionModel, save_reranker

    torch.manual_seed(0)
    cfg = FusionConfig()
    save_reranker(folder, cfg, FusionModel(cfg).state_dict())
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`imgsearch serve DIR --rerank-model fusion:...` on a free port; yields (url, photos dir)."""
    root = tmp_path_factory.mktemp("browser")
    photos, data = root / "photos", root / "data"
    shutil.copytree(SAMPLE, photos)
    add_trip_folder(photos / TRIP)
    reranker = untrained_reranker(root / "reranker")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    env.pop("IMGSEARCH_AUTH", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "serve", str(photos), "--db", str(data), "--port", str(port),
         "--no-progress", "--rerank-model", f"fusion:{reranker}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    deadline = time.monotonic() + 240
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", lines.get(timeout=1))
        except queue.Empty:
            continue
        url = m.group(1) if m else None
    if url is None:
        proc.kill()
        pytest.fail("`imgsearch serve` printed no URL:\n" + "".join(log))
    assert url == f"http://127.0.0.1:{port}/"
    yield url, photos
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def page(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server[0])
    pg.wait_for_selector("#query input, #query textarea")
    yield pg
    context.close()


def run_query(page, text: str) -> list[str]:
    """Type a query, press Enter, and return the gallery's caption labels in order."""
    box = page.locator("#query input, #query textarea").first
    box.fill(text)
    box.press("Enter")
    return labels_after(page, text)


def labels_after(page, status: str) -> list[str]:
    """Wait for the status line to include ``status``, then return the gallery's caption labels in order."""
    page.wait_for_function(
        """q => { const s = document.querySelector('#status-line');
                  return s && s.innerText.includes(q); }""", arg=status)
    labels = page.locator("#results .thumbnail-item .caption-label")
    labels.first.wait_for()
    return labels.all_inner_texts()


def names_of(labels: list[str]) -> list[str]:
    """The photo names of gallery labels ("0.31 · [match 0.90 · ]name [badges] — caption")."""
    return [re.sub(r" \[.*$| — .*$", "", t.split(" · ")[-1]) for t in labels]


def test_search_page(page):
    labels = run_query(page, "a cup of espresso")
    assert "espresso_cup.png" in labels[0]
    labels = run_query(page, "a cat")
    assert "cat_chelsea.png" in labels[0]
    page.locator("#results .thumbnail-item").first.click()
    detail = page.locator("#detail-md")
    detail.locator("li", has_text="A brown striped cat looking off to the side.").wait_for()
    text = detail.inner_text()
    assert "cat_chelsea.png" in text and "Dimensions" in text and "Taken" in text
    page.wait_for_function("() => { const i = document.querySelector('#detail-img img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    page.screenshot(path=str(ARTIFACTS / "search.png"), full_page=True)

    rerank = page.locator("#rerank input[type=checkbox]")
    assert rerank.is_enabled()
    assert page.get_by_text("better for detailed queries (colours, who does what)").is_visible()
    rerank.check()  # re-runs the search, reranked
    page.locator("#status-line").get_by_text("(reranked)").wait_for()
    labels = page.locator("#results .thumbnail-item .caption-label").all_inner_texts()
    assert labels and all(re.match(r"-?\d+\.\d\d · match \d\.\d\d · ", t) for t in labels), labels[:3]
    assert any("cat_chelsea.png" in t for t in labels)  # the same photos, in the reranker's order
    page.screenshot(path=str(ARTIFACTS / "search-reranked.png"), full_page=True)

    box = page.locator("#query input, #query textarea").first
    box.fill("")
    box.press("Enter")
    page.locator("#status-line").get_by_text("Type a few words").wait_for()


def test_search_filters_sort_badges_and_show_more(page):
    labels = run_query(page, "Hubble")  # a caption word: its photo first, with what it matched on
    badge = re.search(r"hubble_deep_field\.jpg \[([a-z, ]+)\]", labels[0])
    assert badge and {"caption", "name"} & set(badge.group(1).split(", ")), labels[0]
    page.locator("#results .thumbnail-item").first.click()
    detail = page.locator("#detail-md")
    detail.get_by_text("Matched caption").wait_for()
    assert "Relevance" in detail.inner_text() and "Hubble" in detail.inner_text()
    page.wait_for_function("() => { const i = document.querySelector('#detail-img img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    page.screenshot(path=str(ARTIFACTS / "search-badges.png"), full_page=True)

    folders = page.locator("#folders input").first
    folders.click()
    folders.fill("Kyoto")
    page.get_by_role("option", name=f"photos/{TRIP}").click()  # re-runs the search, in that folder
    page.keyboard.press("Escape")
    labels = labels_after(page, f"in {TRIP}")
    assert sorted(names_of(labels)) == sorted(TRIP_PHOTOS), labels
    page.locator("#sort").get_by_text("Date taken").click()  # re-runs it, newest first
    labels = labels_after(page, "newest first")
    assert names_of(labels) == list(TRIP_PHOTOS), labels

    after = page.locator("#taken-after input").first
    after.fill("2019-02-30")
    after.press("Enter")
    page.locator("#status-line").get_by_text("Taken after must be a date written YYYY-MM-DD").wait_for()
    after.fill("2019-11-03")
    after.press("Enter")  # and only the photos taken that day or later
    labels = labels_after(page, f"taken on or after 2019-11-03 · in {TRIP} · newest first")
    assert names_of(labels) == ["evening_boats.jpg"], labels
    page.wait_for_timeout(500)  # let the thumbnail paint
    page.screenshot(path=str(ARTIFACTS / "search-filters.png"), full_page=True)

    page.reload()  # every filter back to its default
    page.wait_for_selector("#query input, #query textarea")
    labels = run_query(page, "a photo")  # 12 of the 24 photos, then the next 12 appended
    assert len(labels) == 12
    page.locator("#show-more").click()
    labels = labels_after(page, "24 photos for")
    assert len(labels) == 24 and len(set(names_of(labels))) == 24
    page.screenshot(path=str(ARTIFACTS / "search-show-more.png"), full_page=True)


def test_find_by_photo_page(page):
    page.get_by_role("tab", name="Find by photo").click()
    page.locator("#photo-input input[type=file]").set_input_files(str(SAMPLE / "cat_chelsea.png"))
    table = page.locator("#captions-table")
    page.locator("#photo-status").get_by_text("best captions").wait_for()
    first_row = table.get_by_role("row").nth(1)  # row 0 is the header
    assert "cat_chelsea.png" in first_row.inner_text() and "cat" in first_row.inner_text().lower()
    labels = page.locator("#similar .thumbnail-item .caption-label")
    labels.first.wait_for()
    assert "cat_chelsea.png" in labels.first.inner_text()
    assert "Match" in table.get_by_role("row").first.inner_text()
    page.wait_for_timeout(500)  # let the thumbnails paint
    page.screenshot(path=str(ARTIFACTS / "find-by-photo.png"), full_page=True)

    page.locator("#photo-rerank input[type=checkbox]").check()  # re-runs the search, captions reranked
    page.locator("#photo-status").get_by_text("best captions (reranked)").wait_for()
    first_row = table.get_by_role("row").nth(1)
    assert re.search(r"\b[01]\.\d{1,3}$", first_row.inner_text().strip()), first_row.inner_text()  # its match
    page.screenshot(path=str(ARTIFACTS / "find-by-photo-reranked.png"), full_page=True)


def test_library_add_and_remove_a_folder(page, tmp_path):
    """A folder typed on the Library page is checked, indexed and searchable; removing it takes its photo out of
    the index again (so the library is as the other tests expect)."""
    added = tmp_path / "Added album"
    added.mkdir()
    with Image.open(SAMPLE / "espresso_cup.png") as im:
        ImageOps.mirror(im.convert("RGB")).save(added / "quokka_mug.jpg", quality=90)
    page.get_by_role("tab", name="Library").click()
    page.locator("#watch-status").get_by_text("Not watching").wait_for()
    box = page.locator("#folder-path input, #folder-path textarea").first
    box.fill(str(tmp_path / "no such folder"))
    page.locator("#add-folder-btn").click()
    page.locator("#folder-status").get_by_text(f"folder not found: {tmp_path / 'no such folder'}").wait_for()
    box.fill(str(added))
    page.locator("#add-folder-btn").click()
    page.locator("#folder-status").get_by_text("1 added").wait_for(timeout=120_000)
    assert str(added) in page.locator("#folders-table").inner_text()
    assert re.search(r"\b25\s+photos", page.locator("#lib-summary").inner_text())
    shots = Path("/tmp/shots")
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "library.png"), full_page=True)

    page.get_by_role("tab", name="Search").click()
    labels = run_query(page, "quokka")  # its file name: only the added photo holds the word
    assert "quokka_mug.jpg" in labels[0], labels[:3]

    page.get_by_role("tab", name="Library").click()
    picker = page.locator("#remove-folder input").first
    picker.click()
    page.get_by_role("option", name=str(added)).click()
    page.locator("#remove-folder-btn").click()
    page.locator("#folder-status").get_by_text("1 photo(s) left the index").wait_for()
    assert str(added) not in page.locator("#folders-table").inner_text()
    assert re.search(r"\b24\s+photos", page.locator("#lib-summary").inner_text())
    page.get_by_role("tab", name="Search").click()
    labels = run_query(page, "quokka mug")
    assert not any("quokka_mug.jpg" in label for label in labels), labels[:3]


def test_library_reindex_then_find_new_photo(page, server):
    _, photos = server
    with Image.open(SAMPLE / "cat_chelsea.png") as im:
        ImageOps.mirror(im.convert("RGB")).save(photos / "new_tabby.jpg", quality=90)
    page.get_by_role("tab", name="Library").click()
    page.locator("#lib-summary").get_by_text("24").first.wait_for()
    page.locator("#reindex-btn").click()
    page.locator("#lib-status").get_by_text("Reindex finished").wait_for(timeout=240_000)
    assert "1 added" in page.locator("#lib-status").inner_text()
    summary = page.locator("#lib-summary").inner_text()
    assert re.search(r"\b25\s+photos", summary), summary
    assert str(photos) in page.locator("#folders-table").inner_text()
    page.screenshot(path=str(ARTIFACTS / "library.png"), full_page=True)

    page.get_by_role("tab", name="Search").click()
    labels = run_query(page, "a cat")
    assert any("new_tabby.jpg" in label for label in labels[:2]), labels[:3]


SHOTS_DIR = Path("/tmp/shots")


def reindex_until(page, text: str) -> None:
    """Reindex from the Library tab and wait until its status line says ``text`` (e.g. "4 added")."""
    page.get_by_role("tab", name="Library").click()
    page.locator("#reindex-btn").click()
    page.locator("#lib-status").get_by_text(text).wait_for(timeout=240_000)


def test_duplicates_page_shows_groups_side_by_side(page, server):
    """Copies of one photo (resized, quality 40, 5 % crop, HEIC) appear as one group, best first, each with
    size, pixels, date and format, every thumbnail a cached JPEG; no delete button. The copies are removed
    again at the end, so the library is as the other tests expect."""
    from retrieval.images import HEIF_AVAILABLE  # registers Pillow's HEIF writer

    assert HEIF_AVAILABLE, "pillow-heif is not installed"
    _, photos = server
    copies = photos / "copies"
    im = Image.open(SAMPLE / "cat_chelsea.png").convert("RGB")
    w, h = im.size
    indexed = False
    try:
        copies.mkdir()
        im.resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(copies / "cat_small.jpg", quality=92)
        im.save(copies / "cat_q40.jpg", quality=40)
        im.crop((w // 40, h // 40, w // 40 + round(w * .95), h // 40 + round(h * .95))).save(copies / "cat_crop.jpg")
        im.save(copies / "cat_phone.heic", "HEIF", quality=60)
        reindex_until(page, "4 added")
        indexed = True
        page.get_by_role("tab", name="Duplicates").click()  # opening the tab finds the groups
        group = page.locator("#dup-groups .dup-group", has_text="cat_chelsea.png")
        group.wait_for()
        names = group.locator(".dup-file").all_inner_texts()  # best first: the original has the most pixels
        assert names[0] == "cat_chelsea.png" and sorted(names[1:]) == sorted(p.name for p in copies.iterdir()), names
        assert group.locator(".dup-photo").first.locator(".dup-best").count() == 1
        facts = group.locator(".dup-facts").all_inner_texts()
        assert all(re.fullmatch(r"[\d.]+ (bytes|KB|MB) · \d+ × \d+ px · (PNG|JPEG|HEIF)", f) for f in facts), facts
        assert facts[0].endswith(f"{w} × {h} px · PNG") and any(f.endswith("HEIF") for f in facts)
        assert all(re.fullmatch(r"(taken|modified) \d{4}-\d\d-\d\d \d\d:\d\d", d)
                   for d in group.locator(".dup-date").all_inner_texts())
        assert str(copies / "cat_phone.heic") in group.locator(".dup-path").all_inner_texts()
        assert "score 0." in group.locator(".dup-head").inner_text()
        status = page.locator("#dup-status")
        assert "never deletes a photo" in status.inner_text()
        page.wait_for_function("() => [...document.querySelectorAll('#dup-groups img')].every("
                               "i => i.complete && i.naturalWidth > 0)")
        srcs = page.eval_on_selector_all("#dup-groups img", "els => els.map(e => e.getAttribute('src'))")
        assert srcs and all("/thumbs/" in s and s.endswith(".jpg") for s in srcs), srcs  # never the photo itself
        assert page.get_by_role("button", name=re.compile("delete|remove", re.I)).count() == 0
        SHOTS_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS_DIR / "duplicates.png"), full_page=True)
        page.screenshot(path=str(ARTIFACTS / "duplicates.png"), full_page=True)

        box = page.locator("#dup-threshold input[type=number]")  # a stricter cutoff, found again
        box.fill("0.99")
        box.press("Enter")
        page.locator("#dup-find").click()
        status.get_by_text("threshold 0.99").wait_for()
    finally:
        shutil.rmtree(copies, ignore_errors=True)
        if indexed:
            reindex_until(page, "4 removed")
