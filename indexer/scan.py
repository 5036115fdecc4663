"""Walk a photo folder: image files with their (size, mtime), caption sidecars and manifests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from retrieval.images import IMAGE_EXTENSIONS

MANIFEST_NAME = "captions.jsonl"


@dataclass(frozen=True)
class FileEntry:
    """One image file found by the scan."""

    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    """Everything a scan of one root folder found."""

    root: str
    files: list[FileEntry] = field(default_factory=list)
    sidecars: dict[str, str] = field(default_factory=dict)  # image path -> its <photo>.txt
    xmp_sidecars: dict[str, str] = field(default_factory=dict)  # image path -> its <photo>.xmp (or IMG_1.CR2.xmp)
    manifests: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def scan_folder(root: str, skip_dirs: tuple[str, ...] = ()) -> ScanResult:
    """Recursively list images under ``root``; follows symlinks, never loops, skips hidden entries.

    Unreadable folders and broken links are reported in ``errors``, never raised.
    """
    root = os.path.abspath(root)
    result = ScanResult(root=root)
    skip = {os.path.abspath(d) for d in skip_dirs}
    seen_dirs: set[tuple[int, int]] = set()
    texts: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            result.errors.append((folder, _reason(e)))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue  # a symlink loop, or a second link to a folder already walked
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            result.errors.append((folder, _reason(e)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.path
            try:
                if entry.is_dir(follow_symlinks=True):
                    if path not in skip:
                        stack.append(path)
                    continue
                if not entry.is_file(follow_symlinks=True):
                    if entry.is_symlink():
                        result.errors.append((path, "broken symbolic link"))
                    continue
                lower = entry.name.lower()
                dot = lower.rfind(".")
                if dot > 0 and lower[dot:] in IMAGE_EXTENSIONS:  # what is_image_path checks, without splitext
                    st = entry.stat(follow_symlinks=True)
                    result.files.append(FileEntry(path, st.st_size, st.st_mtime_ns))
                elif lower == MANIFEST_NAME:
                    result.manifests.append(path)
                elif lower.endswith((".txt", ".xmp")):
                    texts.add(path)
            except OSError as e:
                result.errors.append((path, _reason(e)))
    for f in result.files if texts else ():
        stem = os.path.splitext(f.path)[0]
        for kind, found in ((".txt", result.sidecars), (".xmp", result.xmp_sidecars)):
            for candidate in (f.path + kind, stem + kind, f.path + kind.upper(), stem + kind.upper()):
                if candidate in texts:
                    found[f.path] = candidate
                    break
    result.files.sort(key=lambda f: f.path)
    return result


def _reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "file disappeared during the scan"
    if e.errno == 40:  # ELOOP
        return "symbolic link loop"
    return e.strerror or str(e)
