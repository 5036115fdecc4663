"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2) through rawpy (LibRaw).

The camera's embedded JPEG preview is used when its shorter side is at least what
the caller needs (it is what the camera itself shows, and decodes many times faster);
otherwise the sensor data is demosaiced at half size with the camera's white balance.
Failures are :class:`~retrieval.errors.ImageLoadError` with a one-line reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

from PIL import Image

from retrieval.errors import ImageLoadError
from retrieval.photo_metadata import date_taken, description_of

try:
    import rawpy
except ImportError:  # the RAW formats are then simply not indexed
    rawpy = None

__all__ = ["MIN_PREVIEW_SIDE", "RAW_AVAILABLE", "RAW_EXTENSIONS", "RawDecoded", "decode_raw"]

RAW_AVAILABLE: bool = rawpy is not None
RAW_EXTENSIONS: frozenset[str] = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})
MIN_PREVIEW_SIDE = 224
"""Shorter side an embedded preview needs when the caller names no target size."""

_ORIENTATION_TAG = 0x0112
# LibRaw's ``sizes.flip`` -> the EXIF orientation it stands for (dcraw's "50132467" table, inverted).
_FLIP_TO_EXIF = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class RawDecoded:
    """An upright 8-bit RGB image (None for header-only reads) and the shot's metadata.

    ``width``/``height`` are the full developed size as displayed; ``source`` says which
    path made the pixels: ``"preview"`` (embedded JPEG) or ``"demosaic"``.
    """

    image: Image.Image | None
    width: int
    height: int
    taken_at: datetime | None
    description: str | None
    source: str


def _tiff_exif(data: bytes) -> Image.Exif | None:
    """IFD0 (and its EXIF IFD) of a TIFF-based RAW (DNG, CR2, NEF, ARW, ...); None for other containers."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    exif = Image.Exif()
    try:
        exif.load(data)
    except Exception:
        return None
    return exif


def _preview(raw: "rawpy.RawPy") -> Image.Image | None:
    """The embedded preview as an opened (not yet decoded) Pillow JPEG, or None when there is none."""
    try:
        thumb = raw.extract_thumb()
    except Exception:  # LibRawNoThumbnailError, unsupported thumbnail format, ...
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    try:
        img = Image.open(io.BytesIO(bytes(thumb.data)), formats=("JPEG",))
    except Exception:
        return None
    return img


def _orientation_of(exif: Image.Exif | None) -> int:
    try:
        value = int(exif.get(_ORIENTATION_TAG, 1)) if exif is not None else 1
    except Exception:
        return 1
    return value if value in _TRANSPOSE else 1


def decode_raw(data: bytes, label: str, target_size: int | None, max_pixels: int,
               pixels: bool = True) -> RawDecoded:
    """Decode RAW file bytes to an upright RGB image (or only its metadata when ``pixels`` is False).

    The preview is used when its shorter side is >= ``target_size`` (or :data:`MIN_PREVIEW_SIDE`
    when None); otherwise a half-size demosaic. ``max_pixels`` bounds the sensor size.
    """
    if rawpy is None:
        raise ImageLoadError(label, "camera RAW support is not installed (pip install rawpy)")
    tiff = _tiff_exif(data)
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except MemoryError:
        raise ImageLoadError(label, "not enough memory to decode image") from None
    except Exception:
        raise ImageLoadError(label, "not a readable camera RAW file (truncated, corrupt or unsupported)") from None
    with raw:
        try:
            sizes = raw.sizes
            width, height, flip = int(sizes.width), int(sizes.height), int(sizes.flip)
        except Exception:
            raise ImageLoadError(label, "truncated or corrupt RAW data") from None
        if width <= 0 or height <= 0:
            raise ImageLoadError(label, "truncated or corrupt RAW data")
        if width * height > max_pixels:
            raise ImageLoadError(label, f"image too large ({width}×{height} pixels, limit {max_pixels})")
        raw_orientation = _FLIP_TO_EXIF.get(flip, 1)
        if raw_orientation >= 5:
            width, height = height, width
        preview = _preview(raw)
        preview_exif = None
        if preview is not None:
            try:
                preview_exif = preview.getexif()
            except Exception:
                preview_exif = None
        taken = date_taken(preview_exif) or date_taken(tiff)
        description = None
        for exif, img in ((tiff, preview), (preview_exif, preview)):
            if exif is not None and img is not None and description is None:
                description = description_of(img, exif)
        if not pixels:
            return RawDecoded(None, width, height, taken, description, "header")
        need = target_size if target_size is not None else MIN_PREVIEW_SIDE
        image, source = None, "demosaic"
        if preview is not None and preview.width * preview.height <= max_pixels and min(preview.size) >= need:
            try:
                preview.draft("RGB", (need, need))
                preview.load()
                image = preview.convert("RGB")
                source = "preview"
            except Exception:
                image = None  # a broken preview: develop the sensor data instead
            if image is not None:
                # The preview's own EXIF orientation wins; a preview without one is stored as the sensor is.
                orientation = _orientation_of(preview_exif)
                if orientation == 1:
                    orientation = raw_orientation
                if orientation in _TRANSPOSE:
                    image = image.transpose(_TRANSPOSE[orientation])
        if image is None:
            try:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)  # applies the flip
            except MemoryError:
                raise ImageLoadError(label, "not enough memory to decode image") from None
            except Exception:
                raise ImageLoadError(label, "truncated or corrupt RAW data") from None
            image = Image.fromarray(rgb, "RGB")
    return RawDecoded(image, width, height, taken, description, source)
