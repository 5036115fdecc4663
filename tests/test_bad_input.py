"""Bad input: every kind of broken file in one real indexing run, and hostile queries.

(Single-file decoding cases are unit-tested in test_images.py; this is the end-to-end view: one
run over all of them, each reported with a clear reason, the rest indexed, nothing lost.)
"""

from __future__ import annotations

import builtins
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import indexer.sync as sync_mod
from conftest import FakeEncoder, make_photo
from indexer.sync import Indexer
from retrieval.search import QueryError, Searcher
from retrieval.store import Store


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 100-byte PNG whose header claims 10 gigapixels (no pixel data to speak of)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore:.*Corrupt EXIF data")
def test_every_bad_file_in_one_run(tmp_path, monkeypatch):
    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(5):
        make_photo(photos / f"kept_{i}.jpg", seed=i)
    enc = FakeEncoder()
    store = Store(db)
    Indexer(enc, store, show_progress=False).sync(str(photos))
    before = {p: s.hash for p, s in store.file_states(1).items()}

    bad = {  # name -> the reason the report must give
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated or corrupt image data",
        "random_bytes.jpg": "not an image file (cannot identify format)",
        "text.png": "not an image file (cannot identify format)",
        "bomb.png": "image too large",
        "locked.jpg": "permission denied",
        "loop.jpg": "symbolic link loop",
        "vanishing.jpg": "file disappeared during indexing",
    }
    (photos / "empty.jpg").write_bytes(b"")
    good = (photos / "kept_0.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (photos / "random_bytes.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (photos / "text.png").write_text("this is a text file, not a PNG\n")
    png_bomb(photos / "bomb.png")
    make_photo(photos / "locked.jpg", seed=20)
    os.symlink("loop.jpg", photos / "loop.jpg")  # a link to itself
    os.symlink(photos, photos / "dir_loop")  # a folder loop: walked once
    make_photo(photos / "vanishing.jpg", seed=21)

    good_new = {  # odd but valid: indexed
        "one_pixel.png": lambda p: make_photo(p, seed=30, size=(1, 1)),
        "wide_30000x10.png": lambda p: make_photo(p, seed=31, size=(30000, 10)),
        "cmyk.jpg": lambda p: Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(p),
        "sixteen_bit.png": lambda p: Image.fromarray(
            (np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50)).convert("I;16").save(p),
        "palette_transparent.png": _palette_png,
        "animated.gif": _animated_gif,
        "broken_exif.jpg": lambda p: Image.new("RGB", (20, 20), (1, 2, 3)).save(
            p, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\x00" * 20),
        "фото с пробелами 😀 café.jpg": lambda p: make_photo(p, seed=32),
    }
    for name, make in good_new.items():
        make(photos / name)

    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # tests run as root: simulate a file we may not read
        if str(file).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    real_scan = sync_mod.scan_folder

    def scan_then_delete(*args, **kwargs):  # the file goes away between the scan and its reading
        result = real_scan(*args, **kwargs)
        os.unlink(photos / "vanishing.jpg")
        return result

    monkeypatch.setattr(sync_mod, "open", guarded_open, raising=False)
    monkeypatch.setattr(sync_mod, "scan_folder", scan_then_delete)
    report = Indexer(enc, store, show_progress=False).sync(str(photos))

    skipped = {os.path.basename(p): r for p, r in report.skipped}
    assert set(skipped) == set(bad), skipped
    for name, reason in bad.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    assert "decompression" in skipped["bomb.png"]
    assert report.added == len(good_new) and report.unchanged == 5
    assert f"{len(bad)} skipped" in report.summary()
    files = store.file_states(1)
    assert {os.path.basename(p) for p in files} == set(good_new) | {f"kept_{i}.jpg" for i in range(5)}
    assert all(files[p].hash == h for p, h in before.items())  # nothing already indexed was lost
    assert {os.path.basename(p) for p in store.skipped()} == set(bad) - {"loop.jpg"}  # scan errors are not stored
    rows = store.images(s.id for s in files.values())
    wide = next(r for r in rows.values() if r.path.endswith("wide_30000x10.png"))
    assert (wide.width, wide.height) == (30000, 10)
    assert store.check().issues == []
    assert len(Searcher(enc, store).search_text("anything", k=50)) == len(files)
    store.close()


def _palette_png(path: Path) -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] * 128)
    img.paste(1, (5, 5, 15, 15))
    img.save(path, transparency=0)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


# -- queries ---------------------------------------------------------------------------------------

HOSTILE = {
    "long": "dog " * 2500,  # 10,000 characters
    "emoji": "🐶🐱 dog and cat 🎉",
    "rtl": "כלב משחק בשלג",  # Hebrew: a dog playing in the snow
    "arabic": "قطة على الأريكة",
    "sql": "'; DROP TABLE images; --",
    "sql_like": "%' OR 1=1 --",
    "control": "cat\x00\x07\u202e dog",
}


@pytest.mark.slow
def test_hostile_queries_with_the_real_text_encoder(default_encoder, tmp_path):
    """The real tokenizer and model take every query; the index is the same afterwards."""
    store = Store(tmp_path / "db")
    enc = default_encoder
    store.bind_encoder(enc.spec, enc.fingerprint, enc.dim)
    folder = store.add_folder(str(tmp_path / "photos"))
    from retrieval.store import ImageRecord

    vecs = np.random.default_rng(0).normal(size=(12, enc.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.add_images(folder, [ImageRecord(str(tmp_path / "photos" / f"{i}.jpg"), 1, 1, f"h{i}") for i in range(12)], vecs)
    searcher = Searcher(enc, store)
    gen = store.generation
    for name, q in HOSTILE.items():
        hits = searcher.search_text(q, k=5)
        assert len(hits) == 5, name
        assert all(np.isfinite(h.score) for h in hits), name
    for q in ("", "   ", "\n\t  "):
        with pytest.raises(QueryError, match="empty query"):
            searcher.search_text(q)
    assert store.count_images() == 12 and store.generation == gen and store.check().ok
    store.close()


def test_hostile_queries_through_the_cli(tmp_path, monkeypatch, capsys):
    import json

    import retrieval.library as library_mod
    from ui.cli import main

    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(4):
        make_photo(photos / f"p{i}.png", seed=i)
    with Store(db) as store:
        Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos))
    monkeypatch.setattr(library_mod, "create_encoder", lambda spec, device=None, **kw: FakeEncoder())
    for name, q in HOSTILE.items():
        assert main(["search", q, "--db", str(db), "--json"]) == 0, name
        assert len(json.loads(capsys.readouterr().out)) == 4, name
    assert main(["search", "   ", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: empty query: type some words to search for"
    with Store(db) as store:
        assert store.count_images() == 4 and store.check().issues == []
