"""Thumbnails and browser-friendly previews of indexed photos, made once and cached on disk.

Files are named by the photo's content hash (as the store records it), so a
duplicate shares its thumbnail and an edited photo gets a new one. Writes are
atomic (temp file, then rename), so concurrent requests never serve half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

from PIL import Image

from retrieval.errors import ImageLoadError
from retrieval.images import load_image

THUMB_SIZE = 256
PREVIEW_SIZE = 1600
# Formats every current browser shows as they are; anything else gets a JPEG preview.
BROWSER_FORMATS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".avif"}


class ThumbnailCache:
    """``<folder>/<hash>.jpg`` thumbnails (longest side ``size``) and ``<hash>_preview.jpg`` previews."""

    def __init__(self, folder: str | os.PathLike, size: int = THUMB_SIZE, preview_size: int = PREVIEW_SIZE) -> None:
        self.folder = Path(folder).expanduser().absolute()
        self.size = size
        self.preview_size = preview_size
        self._lock = threading.Lock()

    def thumbnail(self, path: str, content_hash: str) -> str | None:
        """The cached thumbnail of the photo at ``path``, made now if missing; None if it cannot be read."""
        return self._cached(path, self.folder / f"{content_hash}.jpg", self.size)

    def display(self, path: str, content_hash: str) -> str | None:
        """What the detail view shows: the photo itself when a browser can show it, else a large JPEG preview."""
        if Path(path).suffix.lower() in BROWSER_FORMATS:
            return path
        return self._cached(path, self.folder / f"{content_hash}_preview.jpg", self.preview_size)

    def _cached(self, path: str, target: Path, size: int) -> str | None:
        if target.exists():
            return str(target)
        try:
            image = load_image(path, max_side=size)  # a reduced-scale JPEG, or a HEIC thumbnail, that still fills it
        except ImageLoadError:
            return None
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=target.stem + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                image.convert("RGB").save(f, "JPEG", quality=85, optimize=True)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return str(target)
