"""Reading photos from disk: decoding to 8-bit RGB, and header-only metadata.

Every failure is reported as :class:`~retrieval.errors.ImageLoadError` with a
short reason; no Pillow or OS exception escapes this module.

Pixel-mode policy of :func:`load_image` (the result is always mode ``"RGB"``):

* ``RGB`` as is; ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and
  ``RGBX`` through Pillow's own conversion (Adobe-inverted CMYK JPEGs are
  un-inverted by Pillow's decoder).
* Anything with alpha or a transparency key (``RGBA``, ``LA``, ``PA``, ``P`` or
  ``L``/``RGB`` with ``transparency``) is composited over white.
* ``I;16*`` (16-bit unsigned): ``round(v / 257)``, so 65535 -> 255.
* ``I`` (32-bit signed): 16-bit PNM data (which Pillow decodes to ``I`` scaled
  to 0..65535) uses ``round(v / 257)``; otherwise values already in 0..255 are
  kept, values in 0..65535 are treated as 16-bit (``/ 257``), and any other
  range is min-max normalised to 0..255.
* ``F`` (float): min-max normalised to 0..255 (NaN/inf -> 0; a flat image
  keeps its value clipped to 0..255).

Importing this module raises ``PIL.Image.MAX_IMAGE_PIXELS`` to
:data:`MAX_PIXELS` when it is lower, so Pillow's global decompression-bomb
guard never rejects an image that the per-call :data:`MAX_PIXELS` check allows.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from retrieval.errors import ImageLoadError
from retrieval.photo_metadata import date_taken, description_of
from retrieval.raw import RAW_AVAILABLE, RAW_EXTENSIONS, decode_raw

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageInfo",
    "ImageSource",
    "is_image_path",
    "load_image",
    "load_image_and_info",
    "read_info",
]

ImageSource = Union[str, "os.PathLike[str]", bytes, BinaryIO]

MAX_PIXELS: int = 200_000_000
"""Largest width*height :func:`load_image` will decode (decompression-bomb guard)."""

if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF (phone photos) through pillow-heif, where it is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()  # it applies the EXIF orientation while decoding
    return True


HEIF_AVAILABLE = _register_heif()


# Suffix -> Pillow format id, for the formats we index.
_WANTED_EXTENSIONS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".jp2": "JPEG2000",
    ".j2k": "JPEG2000",
    ".jpx": "JPEG2000",
    ".pbm": "PPM",
    ".pgm": "PPM",
    ".ppm": "PPM",
    ".pnm": "PPM",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".hif": "HEIF",
    ".avif": "AVIF",
}
# Formats that need an optional codec compiled into Pillow.
_FORMAT_FEATURES: dict[str, str] = {"JPEG": "jpg", "PNG": "zlib", "WEBP": "webp", "JPEG2000": "jpg_2000",
                                    "AVIF": "avif"}


def _format_available(fmt: str) -> bool:
    feature = _FORMAT_FEATURES.get(fmt)
    try:
        return feature is None or bool(features.check(feature))
    except Exception:  # an unknown feature name on some Pillow build
        return False


def _supported_extensions() -> dict[str, str]:
    registered = Image.registered_extensions()
    return {
        ext: fmt
        for ext, fmt in _WANTED_EXTENSIONS.items()
        if registered.get(ext) == fmt and _format_available(fmt)
    }


_SUPPORTED = _supported_extensions()

IMAGE_EXTENSIONS: frozenset[str] = frozenset(_SUPPORTED) | (RAW_EXTENSIONS if RAW_AVAILABLE else frozenset())
"""Lowercase file suffixes (with the dot) of the image files we index."""

# Image.open() only tries these decoders, whatever the file is named: a file
# that is really EPS/PSD/ICO/... is rejected instead of handed to Ghostscript
# or an exotic plugin. (MPO, the multi-picture JPEG, is opened by "JPEG".)
_OPEN_FORMATS: tuple[str, ...] = tuple(sorted(set(_SUPPORTED.values())))

# Formats whose loader can decode a reduced copy: JPEG by DCT scaling, HEIF (pillow-heif) by
# decoding an embedded thumbnail that is a scaled copy of the photo and at least the size asked for.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO", "HEIF"})

_ORIENTATION_TAG = 0x0112

# EXIF orientation -> the transpose that displays the image upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_BYTES_LABEL = "<bytes>"
_STREAM_LABEL = "<stream>"


@dataclass(frozen=True)
class ImageInfo:
    """Header metadata of one image file.

    ``width``/``height`` are as displayed (after EXIF orientation);
    ``taken_at`` is the camera's naive local time; ``description`` is a
    user-written caption, never camera boilerplate.
    """

    width: int
    height: int
    format: str | None
    taken_at: datetime | None = None
    description: str | None = None


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True when the file's suffix (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    name = os.fsdecode(os.fspath(path))
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def load_image(source: ImageSource, target_size: int | None = None, max_side: int | None = None) -> Image.Image:
    """Decode an image file (path, bytes or binary file) to a loaded 8-bit RGB image.

    EXIF orientation is applied and animated images give their first frame.
    With ``target_size``, JPEGs may be decoded at a reduced scale, and HEICs from an
    embedded thumbnail, whose shorter side is still at least ``target_size``; with
    ``max_side`` (for a caller that shrinks the result to fit a square of that side),
    one whose longer side is still at least ``max_side``. Nothing is resized otherwise.
    Raises :class:`ImageLoadError` on any failure.
    """
    if target_size is not None and max_side is not None:
        raise ValueError("give target_size or max_side, not both")
    image, _ = _load(source, target_size, want_info=False, max_side=max_side)
    return image


def load_image_and_info(
    source: ImageSource, target_size: int | None = None
) -> tuple[Image.Image, ImageInfo]:
    """:func:`load_image` and :func:`read_info` from a single open of the file."""
    image, info = _load(source, target_size, want_info=True)
    assert info is not None
    return image, info


def read_info(source: ImageSource) -> ImageInfo:
    """Size, format, capture time and caption of an image, from its headers only.

    Broken or missing metadata gives ``None`` fields; only an unreadable or
    unrecognised file raises :class:`ImageLoadError`.
    """
    if _is_raw(source):
        return _raw(source, None, pixels=False)[1]
    with _open_source(source) as (fp, label):
        img = _open_image(fp, label)
        try:
            return _info_from_header(img)
        finally:
            img.close()


def _is_raw(source: ImageSource) -> bool:
    """A path (or a stream whose ``name`` is one) of a camera RAW file: those are developed by
    retrieval.raw, not Pillow, which would read a TIFF-based RAW's small first-IFD thumbnail instead."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return False
    name = _label_for(source)
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def _raw(source: ImageSource, target_size: int | None, pixels: bool = True) -> tuple[Image.Image, ImageInfo]:
    with _open_source(source) as (fp, label):
        try:
            data = fp.read()
        except OSError as exc:
            raise ImageLoadError(label, _os_error_reason(exc)) from None
    decoded = decode_raw(data, label, target_size, MAX_PIXELS, pixels=pixels)
    fmt = os.path.splitext(label)[1][1:].upper()  # "DNG", "CR2", ...: the container, not Pillow's id
    info = ImageInfo(decoded.width, decoded.height, fmt, decoded.taken_at, decoded.description)
    return decoded.image, info


# ---------------------------------------------------------------------------
# Opening


def _label_for(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _BYTES_LABEL
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else _STREAM_LABEL


def _os_error_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    detail = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot read file ({detail})"


@contextmanager
def _open_source(source: ImageSource) -> Iterator[tuple[BinaryIO, str]]:
    """Yield a readable binary stream for ``source`` and the label used in errors."""
    label = _label_for(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(label, "empty file")
        yield io.BytesIO(bytes(source)), label
        return
    if isinstance(source, (str, os.PathLike)):
        try:
            fp = open(os.fspath(source), "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ImageLoadError(label, _os_error_reason(exc)) from None
        except ValueError as exc:  # e.g. an embedded NUL in the path
            raise ImageLoadError(label, f"invalid path ({exc})") from None
        with fp:
            try:
                empty = os.fstat(fp.fileno()).st_size == 0
            except OSError:
                empty = False
            if empty:
                raise ImageLoadError(label, "empty file")
            yield fp, label
        return
    # A caller-owned binary stream: never closed here.
    try:
        if source.seekable():
            pos = source.tell()
            empty = source.read(1) == b""
            source.seek(pos)
            if empty:
                raise ImageLoadError(label, "empty file")
    except ImageLoadError:
        raise
    except (OSError, ValueError, AttributeError) as exc:
        raise ImageLoadError(label, f"cannot read stream ({exc})") from None
    yield source, label


def _too_large(width: int, height: int) -> str:
    return f"image too large ({width}×{height} pixels, limit {MAX_PIXELS})"


def _decode_reason(exc: BaseException) -> str:
    """A one-line reason for an exception raised while decoding pixel data."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large (decompression-bomb limit {MAX_PIXELS} pixels)"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode image"
    message = str(exc)
    if isinstance(exc, OSError):
        if "decoder" in message and "not available" in message:
            return f"unsupported image encoding ({message})"
        if exc.errno is not None:
            return _os_error_reason(exc)
    return "truncated or corrupt image data"


def _open_image(fp: BinaryIO, label: str) -> Image.Image:
    """Identify the image format and parse its header (no pixel decoding)."""
    try:
        return Image.open(fp, formats=_OPEN_FORMATS)
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not an image file (cannot identify format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's global guard (or a "warnings as errors" filter) fired first.
        raise ImageLoadError(label, f"image too large (decompression-bomb limit {MAX_PIXELS} pixels)") from None
    except OSError as exc:
        if exc.errno is not None:
            raise ImageLoadError(label, _os_error_reason(exc)) from None
        raise ImageLoadError(label, "truncated or corrupt image data") from None
    except Exception:
        raise ImageLoadError(label, "truncated or corrupt image data") from None


# ---------------------------------------------------------------------------
# Decoding


def _load(
    source: ImageSource, target_size: int | None, want_info: bool, max_side: int | None = None
) -> tuple[Image.Image, ImageInfo | None]:
    for name, value in (("target_size", target_size), ("max_side", max_side)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if _is_raw(source):
        # the RAW preview test is on the shorter side: max_side asks for more than it needs, never less
        return _raw(source, target_size if max_side is None else max_side)
    with _open_source(source) as (fp, label):
        img = _open_image(fp, label)
        try:
            return _decode(img, label, target_size, want_info, max_side)
        finally:
            img.close()


def _decode(
    img: Image.Image, label: str, target_size: int | None, want_info: bool, max_side: int | None = None
) -> tuple[Image.Image, ImageInfo | None]:
    width, height = img.size
    header_orientation = _orientation(_safe_exif(img))
    if width * height > MAX_PIXELS:
        raise ImageLoadError(label, _too_large(width, height))
    if max_side is not None and width > 0 and height > 0:
        # the shorter side a copy needs for its longer side to keep max_side
        target_size = max(1, math.ceil(max_side * min(width, height) / max(width, height)))

    if target_size is not None and img.format in _DRAFT_FORMATS:
        # JPEG DCT scaling picks the largest 1/1, 1/2, 1/4 or 1/8 scale, and HEIF the smallest
        # embedded thumbnail, that keeps *both* sides >= the requested ones, so asking for a
        # (t, t) box keeps the shorter side >= t whatever the aspect ratio.
        try:
            img.draft("RGB", (target_size, target_size))
        except Exception:
            pass  # decode at full size

    try:
        img.load()
    except Exception as exc:  # truncated data, missing codec, out of memory, ...
        raise ImageLoadError(label, _decode_reason(exc)) from None

    # Re-read once loaded: a PNG eXIf chunk after the pixel data is only seen
    # now, and Pillow's TIFF loader has already applied (and dropped) the tag.
    orientation = _orientation(_safe_exif(img, allow_load=True))
    info = None
    if want_info:
        info_orientation = header_orientation if header_orientation != 1 else orientation
        info = _info_from_header(img, orientation=info_orientation, size=(width, height))

    try:
        rgb = _to_rgb(img)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(label, f"cannot convert pixel mode {img.mode!r} ({exc})") from None
    if rgb is None:
        raise ImageLoadError(label, f"unsupported pixel mode {img.mode!r}")

    method = _TRANSPOSE.get(orientation)
    if method is not None:
        try:
            rgb = rgb.transpose(method)
        except Exception:
            pass  # never fail because of EXIF: keep the stored orientation
    if rgb is img:
        rgb = img.copy()  # detach from the (soon closed) file
    return rgb, info


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.ascontiguousarray(values, dtype=np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _int_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer grey to RGB, using the value range the data actually has."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") and not img.mode.endswith("S"):
        scaled = (arr.astype(np.uint32) + 128) // 257
        return _gray_to_rgb(scaled)
    arr64 = arr.astype(np.int64)
    if arr64.size == 0:
        return _gray_to_rgb(arr64)
    lo, hi = int(arr64.min()), int(arr64.max())
    if img.format == "PPM" or (lo >= 0 and 255 < hi <= 65535):
        # 16-bit data: Pillow decodes >8-bit PNM samples to 0..65535.
        return _gray_to_rgb((np.clip(arr64, 0, 65535) + 128) // 257)
    if lo >= 0 and hi <= 255:
        return _gray_to_rgb(arr64)
    return _gray_to_rgb(_min_max(arr64.astype(np.float64)))


def _min_max(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi > lo:
        out = (arr - lo) * (255.0 / (hi - lo))
    else:
        out = np.full(arr.shape, lo)
    out = np.where(finite, out, 0.0)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image | None:
    """Convert a loaded image of any mode to 8-bit RGB; None for unknown modes."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("La", "RGBa"):  # premultiplied alpha
        img = img.convert("LA" if mode == "La" else "RGBA")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        return _composite_on_white(img.convert("RGBA"))
    if mode.startswith("I"):
        return _int_to_rgb(img)
    if mode == "F":
        return _gray_to_rgb(_min_max(np.asarray(img, dtype=np.float64)))
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB")
    return None


# ---------------------------------------------------------------------------
# Metadata


def _safe_exif(img: Image.Image, allow_load: bool = False) -> Image.Exif | None:
    """The image's EXIF, or None when absent or unparsable; never decodes pixels
    unless ``allow_load`` (PNG's getexif() loads the image to find late chunks)."""
    if img.format == "PNG" and not allow_load and "exif" not in img.info:
        return None
    try:
        return img.getexif()
    except Exception:
        return None


def _orientation(exif: Image.Exif | None) -> int:
    if exif is None:
        return 1
    try:
        value = int(exif.get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if value in _TRANSPOSE else 1


def _info_from_header(
    img: Image.Image,
    orientation: int | None = None,
    size: tuple[int, int] | None = None,
) -> ImageInfo:
    exif = _safe_exif(img)
    if orientation is None:
        orientation = _orientation(exif)
    width, height = size if size is not None else img.size
    # Pillow reports a TIFF's size already in display orientation (its loader
    # transposes the pixels itself); other formats report the stored size.
    if orientation >= 5 and img.format != "TIFF":
        width, height = height, width
    return ImageInfo(
        width=width,
        height=height,
        format=img.format,
        taken_at=date_taken(exif),
        description=description_of(img, exif),
    )
