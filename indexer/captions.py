"""Caption sources beside the photos: <photo>.txt sidecars, captions.jsonl manifests, and the weak captions
made from file and folder names."""

from __future__ import annotations

import json
import os
import unicodedata

from retrieval.photo_metadata import xmp_captions
from retrieval.terms import name_words, weak_caption

MAX_CAPTION_CHARS = 2000
MAX_XMP_BYTES = 4 * 1024 * 1024  # a larger .xmp is not a sidecar a person wrote; only its description is tried
FILE_SOURCES = ("sidecar", "manifest")  # captions read from files beside the photos
# Bump when the name rules of retrieval.terms change, so every folder's name captions are compared again.
NAME_CAPTIONS_VERSION = "1"


def clean_caption(text: str) -> str:
    """Whitespace collapsed, control characters dropped, length capped."""
    text = "".join(ch for ch in unicodedata.normalize("NFC", text) if ch.isprintable() or ch.isspace())
    return " ".join(text.split())[:MAX_CAPTION_CHARS]


def read_sidecar(path: str) -> list[str]:
    """Captions from a sidecar: one per non-empty line of a ``.txt``; description and keywords of an ``.xmp``."""
    if path.lower().endswith(".xmp"):
        with open(path, "rb") as fb:
            return [c for c in (clean_caption(t) for t in xmp_captions(fb.read(MAX_XMP_BYTES + 1))) if c]
    with open(path, encoding="utf-8", errors="replace") as f:
        return [c for c in (clean_caption(line) for line in f) if c]


def read_manifest(path: str) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Captions from a captions.jsonl manifest, keyed by absolute image path.

    Each line is ``{"image": <path relative to the manifest's folder>, "captions": [...]}``.
    Returns (captions, errors); a bad line is reported, the rest still count.
    """
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, list[str]] = {}
    errors: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image, caps = obj["image"], obj.get("captions", [])
                if isinstance(caps, str):
                    caps = [caps]
                if not isinstance(image, str) or not isinstance(caps, list):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError):
                errors.append((f"{path}:{lineno}", 'not a {"image": ..., "captions": [...]} line'))
                continue
            target = os.path.normpath(os.path.join(base, image))
            texts = [c for c in (clean_caption(str(x)) for x in caps) if c]
            out.setdefault(target, []).extend(t for t in texts if t not in out.get(target, []))
    return out, errors


def weak_captions(path: str, root: str) -> set[tuple[str, str]]:
    """{(text, source)}: the words of a photo's file name (source "name") and of its folders below ``root``
    (source "folder") as captions to embed; none for camera boilerplate (``IMG_1234``) or names without words."""
    nw = name_words(path, root)
    out = set()
    for words, source in ((nw.name, "name"), (nw.folder, "folder")):
        text = weak_caption(words)
        if text:
            out.add((text, source))
    return out
