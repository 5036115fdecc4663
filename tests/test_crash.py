"""Crashes and concurrency: SIGKILLed indexers, searching while another process indexes, the writer lock.

Indexer processes are forked from tests/indexer_zygote.py (imports paid once), run the real Indexer
with the fake encoder, and are killed with SIGKILL at seeded random moments.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, FakeEncoder, make_photo
from indexer.sync import Indexer
from retrieval.errors import StoreError
from retrieval.images import is_image_path
from retrieval.search import Searcher
from retrieval.store import ImageRecord, Store, destroy_store

ZYGOTE = Path(__file__).resolve().parent / "indexer_zygote.py"
# After a crash the FAISS files may lag SQLite (they are rebuilt on load); nothing else may be wrong.
CRASH_OK = {"faiss_stale", "faiss_missing", "missing_file"}


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, cwd=REPO)

    def start(self, db: Path, folder: Path, batch: int = 8, delay: float = 0.0) -> int:
        self.proc.stdin.write(f"sync\t{db}\t{folder}\t{batch}\t{delay}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), line
        return int(line.split()[1])

    def wait(self) -> int:
        line = self.proc.stdout.readline()
        assert line.startswith("exit "), line
        return int(line.split()[1])

    def run(self, db: Path, folder: Path, batch: int = 8) -> tuple[int, float]:
        t0 = time.monotonic()
        self.start(db, folder, batch)
        return self.wait(), time.monotonic() - t0

    def close(self) -> None:
        with _suppress():
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def image_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file() and is_image_path(str(p))}


def assert_consistent(db: Path, folder: Path, allowed: set[str] = frozenset()) -> None:
    """SQLite rows, stored vectors and FAISS ids agree; every photo on disk is indexed exactly once."""
    store = Store(db)
    try:
        report = store.check()
        kinds = {i.kind for i in report.issues}
        assert kinds <= set(allowed), report.issues
        if not allowed:
            paths = list(store.file_states(1))  # one root folder: id 1
            assert sorted(paths) == sorted(image_files(folder))  # none missing, none twice
            assert store.index("images").ntotal == store.count_images() == len(paths)
    finally:
        store.close()


def ranking(db: Path, queries: np.ndarray) -> list[dict[str, float]]:
    """For each query vector: path -> score over the whole index (so ties cannot reorder anything)."""
    store = Store(db)
    try:
        n = store.count_images()
        scores, ids = store.search_images(queries, n)
        out = []
        for s_row, i_row in zip(scores, ids):
            rows = store.images(i_row)
            out.append({rows[int(i)].path: round(float(s), 4) for s, i in zip(s_row, i_row)})
        return out
    finally:
        store.close()


def mutate(folder: Path, rng: random.Random, seed_base: int) -> None:
    """A realistic change set: new photos, deletions, moves, edits, duplicates and caption edits."""
    files = sorted(image_files(folder))
    for j in range(20):
        make_photo(folder / f"new_{seed_base}_{j}.png", seed=seed_base * 100 + j, size=(32, 24))
    for p in rng.sample(files, 6):
        os.unlink(p)
        files.remove(p)
    for p in rng.sample(files, 4):
        dst = folder / "moved" / f"{seed_base}_{Path(p).name}"
        dst.parent.mkdir(exist_ok=True)
        os.replace(p, dst)
        files.remove(p)
    for p in rng.sample(files, 3):
        make_photo(Path(p), seed=seed_base * 100 + 50 + files.index(p), size=(32, 24), fmt="PNG")
    for p in rng.sample(files, 2):
        shutil.copy(p, folder / f"dup_{seed_base}_{Path(p).name}")
    for p in rng.sample(files, 3):
        Path(p).with_suffix(".txt").write_text(f"caption {seed_base} of {Path(p).name}\n")


@pytest.mark.slow
def test_sigkilled_indexer_never_corrupts_the_store(zygote, tmp_path):
    rng = random.Random(20240607)
    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(300):
        make_photo(photos / f"p{i:03d}.png", seed=i, size=(32, 24))
    for i in range(0, 300, 10):
        (photos / f"p{i:03d}.txt").write_text(f"photo number {i}\n")
    code, full = zygote.run(tmp_path / "warmup", photos)  # how long a whole first index takes
    assert code == 0
    recent = full
    killed = 0
    trials = 30
    for trial in range(trials):
        fresh = trial % 6 == 0
        if fresh:
            destroy_store(db)  # kill during a first, bulk index
        else:
            mutate(photos, rng, trial)
        window = full if fresh else recent
        pid = zygote.start(db, photos)
        time.sleep(rng.uniform(0, 0.8 * window))
        with _suppress():
            os.kill(pid, signal.SIGKILL)
        code = zygote.wait()
        killed += code == -signal.SIGKILL
        assert code in (0, -signal.SIGKILL), f"trial {trial}: indexer exited {code}"
        if os.path.exists(db / "imgsearch.sqlite"):
            assert_consistent(db, photos, allowed=CRASH_OK)  # mid-run state: only lagging FAISS files
        code, took = zygote.run(db, photos)  # then run to completion
        recent = max(took, 0.5 * recent)
        assert code == 0, f"trial {trial}: the run after the crash failed"
        assert_consistent(db, photos)
    assert killed >= 20, f"only {killed} of {trials} trials killed the indexer mid-run"

    clean = tmp_path / "clean"
    store = Store(clean)
    Indexer(FakeEncoder(), store, show_progress=False).sync(str(photos))
    store.close()
    queries = FakeEncoder().encode_texts([f"query {i}" for i in range(8)])
    assert ranking(db, queries) == ranking(clean, queries)
    enc = FakeEncoder()
    for store_dir in (db, clean):  # captions came through too
        s = Store(store_dir)
        assert s.count_captions() == Store(clean).count_captions()
        s.close()
    crashed, fresh_s = Searcher(enc, Store(db)), Searcher(enc, Store(clean))
    for q in ("photo number 10", "caption 3"):
        a = [(os.path.relpath(h.path, photos), round(h.score, 4)) for h in crashed.captions_near(enc.encode_texts([q])[0], 5)]
        b = [(os.path.relpath(h.path, photos), round(h.score, 4)) for h in fresh_s.captions_near(enc.encode_texts([q])[0], 5)]
        assert sorted(a) == sorted(b)


# -- concurrency ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_search_library_and_cli_while_another_process_indexes(zygote, tmp_path, monkeypatch, capsys):
    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(120):
        make_photo(photos / f"p{i:03d}.png", seed=i, size=(32, 24))
    seed_dir = tmp_path / "first"
    for i in range(10):
        make_photo(seed_dir / f"s{i}.png", seed=1000 + i, size=(32, 24))
    assert zygote.run(db, seed_dir)[0] == 0  # something to search from the start
    enc = FakeEncoder()
    searcher = Searcher(enc, Store(db))
    import retrieval.library as library_mod
    from ui.cli import main

    monkeypatch.setattr(library_mod, "create_encoder", lambda spec, device=None, **kw: FakeEncoder())
    pid = zygote.start(db, photos, batch=4, delay=0.05)  # ~30 slow batches, each its own commit
    errors, searches, gens = [], 0, set()
    deadline = time.monotonic() + 60
    done = threading.Event()
    result: dict = {}

    def waiter():
        result["code"] = zygote.wait()
        done.set()

    threading.Thread(target=waiter, daemon=True).start()
    while not done.is_set() and time.monotonic() < deadline:
        try:
            hits = searcher.search_text(f"query {searches}", k=5)
            assert hits and all(h.path for h in hits)
            gens.add(searcher.store.generation)
            if searches % 5 == 0:
                assert main(["search", "some words", "--db", str(db), "--json", "-k", "3"]) == 0
        except Exception as e:  # noqa: BLE001 - collect, then fail with all of them
            errors.append(repr(e))
        searches += 1
    assert done.wait(60) and result["code"] == 0
    capsys.readouterr()
    assert not errors, errors[:5]
    assert searches > 10 and len(gens) > 3  # searched across many generations of the index
    assert searcher.store.count_images() == 130
    assert len(searcher.search_text("after", k=200)) == 130  # the reader reloaded the final index
    searcher.store.close()
    assert_consistent(db, photos, allowed={"missing_file"})


def test_reader_never_writes_faiss_while_a_writer_holds_the_lock(tmp_path):
    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(6):
        make_photo(photos / f"p{i}.png", seed=i)
    enc = FakeEncoder()
    writer = Store(db)
    Indexer(enc, writer, show_progress=False).sync(str(photos))
    faiss_file = db / "images.faiss"
    writer.acquire_writer_lock()  # an indexer is running...
    extra = make_photo(photos / "extra.png", seed=50)
    writer.add_images(writer.add_folder(str(photos)), [ImageRecord(str(extra), 1, 1, "extra")],
                      enc.encode_texts(["extra"]))  # ...and committed a new photo
    before = (faiss_file.stat().st_mtime_ns, (db / "images.json").read_text())
    reader = Store(db)
    assert len(Searcher(enc, reader).search_text("x", k=10)) == 7  # rebuilt in memory from SQLite
    assert (faiss_file.stat().st_mtime_ns, (db / "images.json").read_text()) == before
    writer.release_writer_lock()
    Searcher(enc, Store(db)).search_text("x")  # with no writer, a reader may bring the file up to date
    assert (db / "images.json").read_text() != before[1]
    writer.close()
    reader.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad_json", "no_json"])
def test_reader_survives_half_written_or_corrupt_faiss_files(tmp_path, damage):
    photos, db = tmp_path / "photos", tmp_path / "db"
    for i in range(6):
        make_photo(photos / f"p{i}.png", seed=i)
    enc = FakeEncoder()
    store = Store(db)
    Indexer(enc, store, show_progress=False).sync(str(photos))
    store.close()
    f, side = db / "images.faiss", db / "images.json"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garbage":
        f.write_bytes(os.urandom(4096))
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "bad_json":
        side.write_text('{"generation": ')
    else:
        side.unlink()
    hits = Searcher(enc, Store(db)).search_text("x", k=10)
    assert len(hits) == 6
    assert Store(db).check().ok  # the reader (no writer running) rewrote a good file


def test_second_indexer_is_refused_through_the_cli(tmp_path):
    """A real second `imgsearch index` process on a data folder whose lock another process holds."""
    db, photos = tmp_path / "db", tmp_path / "photos"
    make_photo(photos / "a.png", seed=1)
    holder = _lock_holder(db)
    try:
        r = subprocess.run([sys.executable, "-m", "ui.cli", "index", str(photos), "--db", str(db), "--no-progress"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1
        assert "another imgsearch indexer is running" in r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr  # one line, no traceback
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_sigkilled_indexer_is_recovered(tmp_path):
    db = tmp_path / "db"
    holder = _lock_holder(db)
    with pytest.raises(StoreError, match="another imgsearch indexer is running"):
        Store(db).acquire_writer_lock()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (db / "indexer.lock").read_text() == str(holder.pid)  # the file stays behind...
    store = Store(db)
    store.acquire_writer_lock()  # ...but the flock died with its process
    assert (db / "indexer.lock").read_text() == str(os.getpid())
    store.close()


def _lock_holder(db: Path) -> subprocess.Popen:
    code = ("import sys, time; from retrieval.store import Store; s = Store(sys.argv[1]); "
            "s.acquire_writer_lock(); print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(db)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p
