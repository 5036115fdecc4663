"""Watch latency (issue 22): file written -> searchable from another process, and a 1,000-file burst.

Runs ``imgsearch index DIR --watch`` (event mode, and ``--poll SECONDS``) as a child process, writes photos
into DIR from this process, and searches the index here (a second process, as a user's ``search`` or the
web UI would) until each new photo is among the hits. The burst writes 1,000 small PNGs at once and
times until every one is searchable. ``python -m benchmarks.watch [--model M] [--trials N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.library import open_library

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "sample_data"
SEED_PHOTOS = ("lake_with_boats.jpg", "brick_wall.png", "gravel.tiff")
CHECK_EVERY = 0.2  # seconds between the burst's searches
TRIAL_PHOTOS = ("cat_chelsea.png", "espresso_cup.png", "chinese_pagoda_lake.jpg", "grace_hopper_portrait.jpg",
                "dahlia_flower.webp", "retina_fundus.jpg", "astronaut_eileen_collins.png", "hubble_deep_field.jpg")
CLI = [sys.executable, "-c", "import sys; from ui.cli.app import main; sys.exit(main())"]


class WatchChild:
    """``imgsearch index FOLDER --watch`` in a child process; ``ready`` is set once it says it is watching."""

    def __init__(self, folder: Path, db: Path, model: str, extra: list[str]) -> None:
        cmd = CLI + ["index", str(folder), "--db", str(db), "--model", model, "--watch", "--no-progress", "--json",
                     *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.lines: list[str] = []
        self.batches: list[dict] = []  # the JSON line --watch --json prints per applied batch
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_batches, daemon=True).start()

    def _read_batches(self) -> None:
        for line in self.proc.stdout:
            try:
                batch = json.loads(line)
            except ValueError:
                continue
            if isinstance(batch, dict):
                self.batches.append(batch)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if line.startswith("watching "):
                self.ready.set()

    def wait_ready(self, timeout: float = 300) -> None:
        """Block until the first sync is done and the watcher runs (raises with its log otherwise)."""
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("the watcher did not start:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> None:
        """Ctrl+C the watcher, as a user would."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_until(check, timeout: float, every: float = 0.05) -> float | None:
    """Poll ``check`` until true; the monotonic time it first held, or None on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return time.monotonic()
        time.sleep(every)
    return None


def latency_trials(folder: Path, db: Path, model: str, extra: list[str], trials: int, log) -> dict:
    """Seconds from a new photo's write (closed) to its first appearance in a search from this process."""
    for name in SEED_PHOTOS:
        shutil.copy(SAMPLE_DIR / name, folder / name)
    child = WatchChild(folder, db, model, extra)
    try:
        child.wait_ready()
        lib = open_library(db)
        try:
            out = []
            for i in range(trials):
                src = SAMPLE_DIR / TRIAL_PHOTOS[i % len(TRIAL_PHOTOS)]
                word = f"trialphoto{i}"
                target = folder / f"{word}{src.suffix}"
                data = src.read_bytes()
                with open(target, "wb") as fh:
                    fh.write(data)
                written = time.monotonic()

                def found() -> bool:
                    return any(h.path == str(target) for h in lib.searcher.search_text(word, k=100))

                seen = wait_until(found, timeout=180)
                if seen is None:
                    raise RuntimeError(f"{target.name} was not searchable within 180 s:\n" + "\n".join(child.lines[-10:]))
                out.append(seen - written)
                log(f"{' '.join(extra) or 'events'}: {target.name} searchable after {seen - written:.2f}s")
                time.sleep(0.3)
        finally:
            lib.close()
    finally:
        child.stop()
    return {"trials": len(out), "p50_s": round(statistics.median(out), 2), "min_s": round(min(out), 2),
            "max_s": round(max(out), 2), "all_s": [round(x, 2) for x in out]}


def burst(folder: Path, db: Path, model: str, n: int, log) -> dict:
    """Write ``n`` small PNGs at once into a watched folder; seconds until all are searchable."""
    shutil.copy(SAMPLE_DIR / SEED_PHOTOS[0], folder / SEED_PHOTOS[0])
    child = WatchChild(folder, db, model, [])
    try:
        child.wait_ready()
        lib = open_library(db)
        try:
            rng = np.random.default_rng(0)
            t0 = time.monotonic()
            sub = folder / "burst"
            sub.mkdir()
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
                Image.fromarray(pixels, "RGB").save(sub / f"b{i:04d}.png")
            written = time.monotonic()
            log(f"burst: {n} files written in {written - t0:.2f}s")

            def all_in() -> bool:  # every photo is among the hits of a search from this process
                return len(lib.searcher.search_text("photo", k=n + 1)) == n + 1

            # A cheap row count first (a search of 1,000 hits every tick would slow the child it waits on).
            done = wait_until(lambda: lib.store.count_images() == n + 1, timeout=600, every=CHECK_EVERY)
            done = done and wait_until(all_in, timeout=60, every=CHECK_EVERY)
            if done is None:
                raise RuntimeError("the burst was not applied within 600 s:\n" + "\n".join(child.lines[-10:]))
            hits = lib.searcher.search_text(f"b{n - 1:04d}", k=5)
            found_last = any(h.path == str(sub / f"b{n - 1:04d}.png") for h in hits)
        finally:
            lib.close()
    finally:
        child.stop()
    time.sleep(0.5)  # the reader thread takes the child's last lines
    # The same files by a plain `imgsearch index` into a fresh index: what the watcher's batches cost beside it.
    plain = subprocess.run(CLI + ["index", str(folder), "--db", str(db) + "-plain", "--model", model, "--json",
                                  "--no-progress"], cwd=REPO, capture_output=True, text=True, check=True)
    plain_s = sum(r["seconds"] for r in json.loads(plain.stdout))
    return {"files": n, "write_s": round(written - t0, 2), "first_write_to_all_searchable_s": round(done - t0, 2),
            "last_write_to_all_searchable_s": round(done - written, 2),
            "files_per_s": round(n / (done - t0), 1), "last_file_found_by_name": found_last,
            "files_added_per_batch": [b.get("added") for b in child.batches],
            "watch_sync_s": round(sum(b.get("seconds", 0) for b in child.batches), 2),
            "plain_index_s": round(plain_s, 2)}


def main(argv: list[str] | None = None) -> int:
    """CLI entry: prints the figures (``--json``: only JSON on stdout, progress on stderr)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.watch", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--poll", type=float, default=2.0, help="the --poll SECONDS of the polling run")
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    res: dict = {"model": args.model, "debounce_s": 1.0, "cpu_threads": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for key, extra in (("events", []), ("poll", ["--poll", f"{args.poll:g}"])):
            folder, db = Path(tmp) / key / "photos", Path(tmp) / key / "db"
            folder.mkdir(parents=True)
            res[key] = latency_trials(folder, db, args.model, extra, args.trials, log)
        res["poll"]["poll_s"] = args.poll
        if args.burst:
            folder, db = Path(tmp) / "burst" / "photos", Path(tmp) / "burst" / "db"
            folder.mkdir(parents=True)
            res["burst"] = burst(folder, db, args.model, args.burst, log)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:10} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
