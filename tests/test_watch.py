"""Watch mode (indexer/watch.py): changes applied in debounced batches through the same sync code.

Real watchdog events on a temporary folder, the real Indexer with the fake encoder; a reader with
its own Store (as another process has) sees each batch. The kill test runs the watcher in a
subprocess and SIGKILLs it in the middle of a burst.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, FakeEncoder, make_photo
from conftest import wait_for as wait_within
from indexer.sync import Indexer
from indexer.watch import Watcher, listing
from retrieval.search import Searcher
from retrieval.store import Store

CRASH_OK = {"faiss_stale", "faiss_missing", "missing_file"}
wait_for = functools.partial(wait_within, timeout=8.0)


def tiny_png(path: Path, i: int) -> None:
    """An 8x8 PNG whose pixels encode ``i`` (so 1,000 of them are 1,000 distinct photos)."""
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = i % 256, (i // 256) * 40, (np.arange(8)[:, None] * 31 + i) % 256
    Image.fromarray(arr).save(path)


class Running:
    """A watcher over ``folder`` in a background thread, applying with a real Indexer."""

    def __init__(self, db: Path, folder: Path, **kw) -> None:
        self.store = Store(db)
        self.indexer = Indexer(FakeEncoder(), self.store, show_progress=False, workers=2)
        self.indexer.sync(str(folder))
        self.reports = []
        self.watcher = Watcher(self.indexer.sync, [str(folder)], ignore=[str(db)], on_report=self.reports.append,
                               **{"debounce": 0.3, **kw})
        self.watcher.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watcher.run, args=(self.stop, 0.05), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        assert self.watcher.status.mode == "stopped"
        self.store.close()


@pytest.fixture
def watched(tmp_path: Path):
    folder = tmp_path / "photos"
    for i in range(3):
        make_photo(folder / f"p{i}.png", seed=i)
    running = Running(tmp_path / "db", folder)
    reader = Store(tmp_path / "db", create=False)  # its own connection and FAISS copy, as another process
    yield folder, running, reader
    reader.close()
    running.close()


def paths(store: Store) -> set[str]:
    return {os.path.basename(p) for p in store.file_states(1)}


def test_add_change_move_delete_and_sidecar_applied_within_seconds(watched) -> None:
    folder, running, reader = watched
    searcher = Searcher(FakeEncoder(), reader)
    gen0 = reader.generation

    t0 = time.monotonic()
    make_photo(folder / "new.png", seed=10)
    wait_for(lambda: "new.png" in paths(reader))
    added_after = time.monotonic() - t0
    assert reader.generation > gen0
    with Image.open(folder / "new.png") as im:
        vec = FakeEncoder().encode_images([im])[0]
    assert searcher.images_near(vec, k=1)[0].path == str(folder / "new.png")  # searchable, not just a row
    assert added_after < 5

    old_hash = reader.image_by_path(str(folder / "p0.png")).hash
    make_photo(folder / "p0.png", seed=99)  # changed content, same name
    wait_for(lambda: reader.image_by_path(str(folder / "p0.png")).hash != old_hash)

    os.rename(folder / "p1.png", folder / "renamed.png")
    wait_for(lambda: paths(reader) == {"p0.png", "renamed.png", "p2.png", "new.png"})
    wait_for(lambda: any(r.moved == 1 for r in running.reports))  # a move, not a delete plus a new embedding

    (folder / "p2.png").unlink()
    wait_for(lambda: "p2.png" not in paths(reader))

    (folder / "new.txt").write_text("a lighthouse at dusk\n")  # a sidecar caption is a change too
    row = reader.image_by_path(str(folder / "new.png"))
    wait_for(lambda: any(c.text == "a lighthouse at dusk" for c in reader.captions_of([row.id])[row.id]))
    wait_for(lambda: running.watcher.status.batches >= 5)  # counted once the sync returns, after its commit
    assert running.watcher.status.last_change_at is not None
    assert not running.watcher.status.errors


def test_index_db_inside_folder_is_not_a_change(tmp_path: Path) -> None:
    """The index's own writes (data folder inside the watched one) must not set off syncs forever."""
    folder = tmp_path / "photos"
    make_photo(folder / "a.png", seed=1)
    running = Running(folder / ".imgsearch", folder)
    try:
        make_photo(folder / "b.png", seed=2)
        wait_for(lambda: running.watcher.status.batches >= 1)
        time.sleep(1.0)
        assert running.watcher.status.batches == 1, running.reports
    finally:
        running.close()


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_file_being_copied_waits_until_complete(tmp_path: Path) -> None:
    """A file whose size or mtime still moves across the debounce window is not applied yet."""
    folder = tmp_path / "photos"
    folder.mkdir()
    synced: list[str] = []
    clock = FakeClock()
    w = Watcher(lambda r: synced.append(r) or _report(r), [str(folder)], debounce=1.0, clock=clock)
    part = folder / "big.png"
    part.write_bytes(b"\x89PNG partial")
    w.notify(str(part))
    clock.t += 0.5
    assert w.step() == [] and synced == []  # not quiet long enough
    with open(part, "ab") as fh:
        fh.write(b"more bytes")  # the copy goes on, but no event arrives (say, a lagging share)
    clock.t += 1.0
    assert w.step() == [] and synced == []  # quiet, but the file grew: wait another window
    assert w.status.pending == 1
    clock.t += 1.0
    w.step()
    assert synced == [str(folder)] and w.status.pending == 0
    w.notify(str(tmp_path / "elsewhere.png"))  # outside every watched folder: ignored
    assert w.status.pending == 0


def _report(root: str):
    from indexer.sync import SyncReport

    return SyncReport(root=root)


def test_polling_mode_and_fallback_when_events_fail(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_photo(folder / "a.png", seed=1)

    class BrokenObserver:
        def schedule(self, *a, **k):
            raise OSError(28, "inotify watch limit reached")

        def stop(self):
            pass

        def is_alive(self):
            return False

    w = Watcher(_report, [str(folder)], observer_factory=BrokenObserver)
    w.start()
    assert w.status.mode == "polling" and w.poll and "inotify watch limit" in w.status.errors[0]

    running = Running(tmp_path / "db", folder, poll=0.2, debounce=0.2)
    reader = Store(tmp_path / "db", create=False)
    try:
        assert running.watcher.status.mode == "polling"
        make_photo(folder / "sub" / "b.png", seed=2)
        wait_for(lambda: "b.png" in paths(reader))
        (folder / "a.png").unlink()
        wait_for(lambda: "a.png" not in paths(reader))
        assert (str(folder / "sub" / "b.png"), *[os.stat(folder / "sub" / "b.png").st_size]) in \
            {(p, s) for p, s, _ in listing(str(folder))}
    finally:
        reader.close()
        running.close()


def test_burst_of_1000_new_files(watched) -> None:
    folder, running, reader = watched
    burst = folder / "burst"
    burst.mkdir()
    t0 = time.monotonic()
    for i in range(1000):
        tiny_png(burst / f"b{i:04d}.png", i)
    wait_for(lambda: reader.count_images() == 1003, timeout=60, every=0.2)
    took = time.monotonic() - t0
    assert reader.index("images").ntotal == 1003
    wait_for(lambda: sum(r.added for r in running.reports) == 1000)  # reported once each sync returns
    assert took < 60


WATCH_CHILD = """
import sys, threading
sys.path[:0] = [{tests!r}, {repo!r}]
from conftest import FakeEncoder
from indexer.sync import Indexer
from indexer.watch import Watcher
from retrieval.store import Store
store = Store({db!r})
indexer = Indexer(FakeEncoder(), store, show_progress=False, workers=2, batch_size=8)
indexer.sync({folder!r})
w = Watcher(indexer.sync, [{folder!r}], debounce=0.2, ignore=[{db!r}])
w.start()
print("watching", flush=True)
w.run(threading.Event(), 0.05)
"""


def test_kill_during_burst_leaves_nothing_half_applied(tmp_path: Path) -> None:
    """SIGKILL the watching process while it applies 1,000 new files: the rows, vectors and FAISS ids
    agree (FAISS files may lag), a reader in this process saw batches land, and the next run resumes."""
    folder, db = tmp_path / "photos", tmp_path / "db"
    folder.mkdir()
    make_photo(folder / "first.png", seed=1)
    code = WATCH_CHILD.format(tests=str(REPO / "tests"), repo=str(REPO), db=str(db), folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "watching"
        reader = Store(db, create=False)
        for i in range(1000):
            tiny_png(folder / f"b{i:04d}.png", i)
        seen = wait_for(lambda: reader.count_images() > 1 and reader.count_images(), timeout=60, every=0.02)
        assert reader.index("images").ntotal >= seen  # another process's search sees the new generation
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    store = Store(db)
    try:
        kinds = {i.kind for i in store.check().issues}
        assert kinds <= CRASH_OK, kinds
        n = store.count_images()
        assert 1 < n < 1001, n  # killed mid-burst
        enc = FakeEncoder()
        report = Indexer(enc, store, show_progress=False).sync(str(folder))
        assert store.count_images() == 1001 == store.index("images").ntotal
        assert enc.images_embedded == 1001 - n == report.added  # resumed: nothing embedded twice
        assert not store.check().issues
    finally:
        store.close()
