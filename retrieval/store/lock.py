"""The single-writer lock of a data folder: an flock, so a killed process never leaves it stale."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import StoreError
from .schema import LOCK_FILE


class WriterLock:
    """The indexer lock file of one data folder, held by at most one process at a time."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise StoreError if another indexer holds it (a no-op when held already)."""
        if self.fd is not None:
            return
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another imgsearch indexer is running on {self.data_dir}; wait for it to finish")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        """Let the lock go (a no-op when not held)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def active(self) -> bool:
        """True when any process (this one included) holds the lock: probed, never kept."""
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
