"""Watch mode: keep the index in step with photo folders after the first sync.

File-system events (watchdog) mark the touched paths; once the folder has been quiet for the
debounce window and every touched file has kept its size and mtime across it (so a file still
being copied waits until it is complete), each touched root is brought up to date by the same
incremental sync (``Indexer.sync``: scan, compare size+mtime, apply). Where events are unavailable
(network shares, an exhausted inotify watch limit) a periodic rescan compares the folders' file
listings instead. The sync function, observer and clock are passed in, so tests drive it directly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from retrieval.errors import ImgSearchError

from .sync import SyncReport

log = logging.getLogger("imgsearch.watch")

DEFAULT_DEBOUNCE = 1.0
DEFAULT_POLL = 60.0  # the rescan interval when the event observer cannot be started
WATCH_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})  # not "opened": our own reads

SyncFn = Callable[[str], SyncReport | None]  # None: nothing applied (the root left the library meanwhile)
Stat = tuple[int, int] | None  # (size, mtime_ns), None when the path is gone


def stat_of(path: str) -> Stat:
    """A path's (size, mtime_ns), or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def listing(root: str, ignore: Iterable[str] = ()) -> frozenset[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file under ``root`` (photos and caption files alike), skipping
    ``ignore`` folders: what the periodic rescan compares between polls."""
    skip = {os.path.abspath(p) for p in ignore}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = stat_of(p)
            if st is not None:
                out.append((p, *st))
    return frozenset(out)


@dataclass
class WatchStatus:
    """What the watcher is doing (the Library page shows it)."""

    mode: str = "stopped"  # "events", "polling" or "stopped"
    folders: list[str] = field(default_factory=list)
    poll_seconds: float | None = None
    pending: int = 0  # touched paths waiting for the debounce window
    batches: int = 0  # syncs applied since the watcher started
    last_change_at: float | None = None  # wall-clock time the last batch was applied
    last_summary: str = ""
    errors: list[str] = field(default_factory=list)


class Watcher:
    """Applies changes under ``roots`` through ``sync`` (root -> SyncReport) in debounced batches.

    ``observer_factory`` makes a watchdog observer (default: the platform's); when it fails, or
    when ``poll`` seconds are given, folders are rescanned every ``poll`` seconds instead.
    ``ignore`` holds folders whose events never count (the index's own data folder).
    ``on_report`` is called with each applied SyncReport, ``on_error`` with each failure's message.
    """

    def __init__(self, sync: SyncFn, roots: Iterable[str], *, debounce: float = DEFAULT_DEBOUNCE,
                 poll: float | None = None, ignore: Iterable[str] = (), clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, observer_factory: Callable[[], Any] | None = None,
                 on_report: Callable[[SyncReport], None] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._sync = sync
        self.debounce = float(debounce)
        self.poll = poll
        self.ignore = [os.path.abspath(p).rstrip("/") for p in ignore]
        self.clock, self.wall = clock, wall
        self._observer_factory = observer_factory
        self.on_report, self.on_error = on_report, on_error
        self.status = WatchStatus(poll_seconds=poll)
        self._lock = threading.Lock()
        self._roots: list[str] = []
        self._pending: dict[str, Stat] = {}  # touched path -> its stat when last seen
        self._last_event = 0.0
        self._observer: Any = None
        self._watches: dict[str, Any] = {}
        self._listings: dict[str, frozenset] = {}  # polling: root -> the listing last applied
        self._candidates: dict[str, tuple[frozenset, float]] = {}  # polling: changed listing, when seen
        self._next_poll = 0.0
        for r in roots:
            self._add(r)

    # -- roots ------------------------------------------------------------------------------

    @property
    def roots(self) -> list[str]:
        """The folders being watched."""
        with self._lock:
            return list(self._roots)

    def _add(self, root: str) -> str:
        root = os.path.abspath(root).rstrip("/") or "/"
        with self._lock:
            if root not in self._roots:
                self._roots.append(root)
            self.status.folders = list(self._roots)
        return root

    def add_root(self, root: str) -> None:
        """Watch one more folder (already synced by the caller)."""
        root = self._add(root)
        if self.status.mode == "events":
            self._schedule(root)
        elif self.status.mode == "polling":
            self._listings[root] = listing(root, self.ignore)

    def remove_root(self, root: str) -> None:
        """Stop watching a folder; its pending changes are dropped."""
        root = os.path.abspath(root).rstrip("/") or "/"
        with self._lock:
            if root in self._roots:
                self._roots.remove(root)
            self._pending = {p: s for p, s in self._pending.items() if self._root_of(p) is not None}
            self.status.folders = list(self._roots)
            self.status.pending = len(self._pending)
        watch = self._watches.pop(root, None)
        if watch is not None and self._observer is not None:
            try:
                self._observer.unschedule(watch)
            except (KeyError, OSError, RuntimeError):
                pass
        self._listings.pop(root, None)
        self._candidates.pop(root, None)

    def _root_of(self, path: str) -> str | None:
        """The watched root holding ``path`` (the deepest), or None; call with the lock held."""
        best = None
        for r in self._roots:
            if (path == r or path.startswith(r.rstrip("/") + "/")) and (best is None or len(r) > len(best)):
                best = r
        return best

    # -- events -----------------------------------------------------------------------------

    def notify(self, path: str) -> None:
        """Record that ``path`` changed (called from the observer's thread, or by tests)."""
        path = os.path.abspath(path)
        if any(path == d or path.startswith(d + "/") for d in self.ignore):
            return
        st = stat_of(path)
        with self._lock:
            if self._root_of(path) is None:
                return
            self._pending[path] = st
            self._last_event = self.clock()
            self.status.pending = len(self._pending)

    def dispatch(self, event: Any) -> None:
        """A watchdog event: its path (and a move's destination) count as touched."""
        if event.event_type not in WATCH_EVENTS:
            return
        if event.event_type == "closed" and event.is_directory:
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p:
                self.notify(os.fsdecode(p))

    def start(self) -> None:
        """Start the event observer, or the periodic rescan (``poll``, or when the observer fails)."""
        if self.poll is None:
            try:
                self._start_observer()
                self.status.mode = "events"
                return
            except (OSError, RuntimeError, ImportError) as e:
                self._stop_observer()
                self.poll = DEFAULT_POLL
                self.status.poll_seconds = self.poll
                self._error(f"file-system events unavailable ({e}); rescanning every {self.poll:g}s instead")
        for r in self.roots:
            self._listings[r] = listing(r, self.ignore)
        self._next_poll = self.clock() + float(self.poll or DEFAULT_POLL)
        self.status.mode = "polling"

    def _start_observer(self) -> None:
        factory = self._observer_factory
        if factory is None:
            from watchdog.observers import Observer

            factory = Observer
        self._observer = factory()
        for r in self.roots:
            self._schedule(r)
        self._observer.start()

    def _schedule(self, root: str) -> None:
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                watcher.dispatch(event)

        self._watches[root] = self._observer.schedule(Handler(), root, recursive=True)

    def _stop_observer(self) -> None:
        obs, self._observer = self._observer, None
        self._watches.clear()
        if obs is not None:
            try:
                obs.stop()
                if obs.is_alive():
                    obs.join(timeout=5)
            except (RuntimeError, OSError):
                pass

    def stop(self) -> None:
        """Stop watching (changes not yet applied are picked up by the next sync)."""
        self._stop_observer()
        self.status.mode = "stopped"

    # -- applying ---------------------------------------------------------------------------

    def due(self) -> list[str]:
        """The roots whose changes are ready to apply now: quiet for the debounce window, every touched
        file's size and mtime unchanged across it. Takes their paths off the pending set."""
        with self._lock:
            if not self._pending or self.clock() - self._last_event < self.debounce:
                return []
            pending = dict(self._pending)
        grown = {p: now for p, was in pending.items() if (now := stat_of(p)) != was}
        with self._lock:
            if grown:  # still being written (or the events lag the writes): wait another window
                self._pending.update(grown)
                self._last_event = self.clock()
                return []
            roots = sorted({r for p in pending if (r := self._root_of(p)) is not None})
            for p in pending:
                if self._pending.get(p, ...) == pending[p]:
                    del self._pending[p]
            self.status.pending = len(self._pending)
        return roots

    def _poll_due(self) -> list[str]:
        """Polling: roots whose listing changed and then held still for the debounce window."""
        now = self.clock()
        ready = []
        for root, (snap, seen) in list(self._candidates.items()):
            if now - seen >= self.debounce:
                current = listing(root, self.ignore)
                if current == snap:
                    ready.append(root)
                    self._listings[root] = current
                    del self._candidates[root]
                else:
                    self._candidates[root] = (current, now)
        if now >= self._next_poll:
            self._next_poll = now + float(self.poll or DEFAULT_POLL)
            for root in self.roots:
                if root in self._candidates:
                    continue
                current = listing(root, self.ignore)
                if current != self._listings.get(root):
                    self._candidates[root] = (current, now)
        self.status.pending = len(self._candidates)
        return ready

    def step(self) -> list[SyncReport]:
        """Apply what is due: one sync per touched root. Failures are reported, not raised."""
        return self._apply(self._poll_due() if self.status.mode == "polling" else self.due())

    def catch_up(self) -> list[SyncReport]:
        """Sync every watched root once: the changes made while nothing watched (call after ``start``)."""
        return self._apply(self.roots)

    def _apply(self, roots: list[str]) -> list[SyncReport]:
        reports = []
        for root in roots:
            if root not in self.roots or not os.path.isdir(root):
                if root in self.roots:
                    self._error(f"{root}: folder is gone; its photos stay indexed until it is removed")
                continue
            try:
                report = self._sync(root)
            except Exception as e:  # noqa: BLE001 — keep watching, say what happened
                if not isinstance(e, (ImgSearchError, OSError)):
                    log.exception("watch sync failed")
                self._error(f"{root}: {e}")
                continue
            if report is None:
                continue
            reports.append(report)
            self.status.batches += 1
            self.status.last_change_at = self.wall()
            self.status.last_summary = report.summary()
            if self.on_report:
                self.on_report(report)
        return reports

    def run(self, stop: threading.Event, tick: float = 0.2) -> None:
        """Start, then apply changes until ``stop`` is set (or KeyboardInterrupt); always stops the observer."""
        if self.status.mode == "stopped":
            self.start()
        try:
            while not stop.wait(tick):
                self.step()
        finally:
            self.stop()

    def _error(self, message: str) -> None:
        self.status.errors = (self.status.errors + [message])[-20:]
        log.warning("%s", message)
        if self.on_error:
            self.on_error(message)
