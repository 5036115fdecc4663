"""What a photo's own metadata says: when it was taken (EXIF) and the caption its owner wrote (EXIF/XMP).

Never raises: unreadable or odd fields are treated as absent, and camera boilerplate is not a caption.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime

from PIL import Image

_EXIF_IFD = 0x8769
_TAG_DATETIME = 306
_TAG_DATETIME_ORIGINAL = 36867
_TAG_DATETIME_DIGITIZED = 36868
_TAG_IMAGE_DESCRIPTION = 270
_TAG_MAKE = 271
_TAG_MODEL = 272
_TAG_USER_COMMENT = 0x9286
_TAG_XP_TITLE = 0x9C9B
_TAG_XP_COMMENT = 0x9C9C


def _exif_ifd(exif: Image.Exif | None) -> dict:
    if exif is None:
        return {}
    try:
        return dict(exif.get_ifd(_EXIF_IFD))
    except Exception:
        return {}


_DATETIME_RE = re.compile(
    r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})(?:[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?)?"
)


def _parse_exif_datetime(value: object) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _DATETIME_RE.match(value.replace("\x00", ""))
    if not match:
        return None
    parts = [int(p) if p else 0 for p in match.groups()]
    try:
        return datetime(*parts)
    except ValueError:  # "0000:00:00 00:00:00" and other placeholders
        return None


def date_taken(exif: Image.Exif | None) -> datetime | None:
    """When the photo was taken by its EXIF (original, else digitised, else file date), as naive local time."""
    if exif is None:
        return None
    ifd = _exif_ifd(exif)
    try:
        base_datetime = exif.get(_TAG_DATETIME)
    except Exception:
        base_datetime = None
    for value in (ifd.get(_TAG_DATETIME_ORIGINAL), ifd.get(_TAG_DATETIME_DIGITIZED), base_datetime):
        parsed = _parse_exif_datetime(value)
        if parsed is not None:
            return parsed
    return None


# Boilerplate that cameras and software write into description fields.
_JUNK_DESCRIPTIONS = frozenset(
    s.casefold()
    for s in (
        "OLYMPUS DIGITAL CAMERA",
        "SONY DSC",
        "DCIM",
        "DIGITAL CAMERA",
        "KODAK Digital Still Camera",
        "KONICA MINOLTA DIGITAL CAMERA",
        "MINOLTA DIGITAL CAMERA",
        "SAMSUNG DIGITAL CAMERA",
        "SAMSUNG",
        "PENTAX DIGITAL CAMERA",
        "Digital Still Camera",
        "DSC",
        "Camera",
        "Photo",
        "Picture",
        "Image",
        "Default",
        "Untitled",
        "No description",
        "Description",
        "Title",
        "LEAD Technologies Inc. V1.01",
        "Created with GIMP",
        "Exif_JPEG_PICTURE",
        "Exif JPEG",
        "JPEG",
        "Screenshot",
    )
)
# Camera file names (IMG_1234, DSC01234.JPG, P1010001, PXL_20210101_...) used as captions.
_FILENAME_LIKE = re.compile(
    r"^(?:img|dsc[nf]?|dscn|pict|sam|imag|pxl|mvimg|vid|p\d{3}|\d{3})[_\- ]?\d[\w\-]*"
    r"(?:\.(?:jpe?g|png|heic|tiff?))?$",
    re.IGNORECASE,
)


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _clean_description(value: object, junk: frozenset[str]) -> str | None:
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        try:
            value = bytes(value)
        except ValueError:
            return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    if not text:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return None  # binary garbage
    norm = _normalise(text)
    if norm in _JUNK_DESCRIPTIONS or norm in junk or _FILENAME_LIKE.match(norm):
        return None
    if not any(c.isalnum() for c in text):
        return None
    return text


def _decode_xp(value: object) -> str | None:
    """Windows XP* tags: UTF-16-LE bytes (Pillow gives bytes or a tuple of ints)."""
    if isinstance(value, (tuple, list)):
        try:
            value = bytes(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        return None
    return value.decode("utf-16-le", "ignore")


def _decode_user_comment(value: object) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return None
    prefix, body = value[:8], value[8:]
    if prefix.startswith(b"UNICODE"):
        # Byte order is not specified; guess from where the zero bytes are.
        le = body[1::2].count(0) >= body[0::2].count(0)
        return body.decode("utf-16-le" if le else "utf-16-be", "ignore")
    if prefix.startswith(b"ASCII") or prefix == b"\x00" * 8:
        return body.decode("utf-8", "ignore")
    return None  # JIS and unknown charsets


_XMP_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
}
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_XMP_MAX_BYTES = 4 * 1024 * 1024


def _xmp_packet(img: Image.Image) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = img.info.get(key)
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, (bytes, bytearray)) and value:
            return bytes(value)
    return None


def _xmp_description(packet: bytes | None) -> str | None:
    """``dc:description`` (x-default language first) from a raw XMP packet."""
    if not packet or len(packet) > _XMP_MAX_BYTES:
        return None
    packet = packet.strip(b"\x00 \t\r\n")
    try:
        root = ET.fromstring(packet)
    except ET.ParseError:
        return _xmp_description_regex(packet)
    for desc in root.iter(f"{{{_XMP_NS['dc']}}}description"):
        items = desc.findall(".//rdf:li", _XMP_NS)
        items.sort(key=lambda li: li.get(_XML_LANG, "") != "x-default")
        for li in items:
            if li.text and li.text.strip():
                return li.text
        if desc.text and desc.text.strip():
            return desc.text
    return None


_XMP_DESC_RE = re.compile(
    rb"<dc:description\b[^>]*>.*?<rdf:li\b[^>]*>(.*?)</rdf:li>", re.DOTALL
)


def _xmp_description_regex(packet: bytes) -> str | None:
    match = _XMP_DESC_RE.search(packet)
    if not match:
        return None
    text = match.group(1).decode("utf-8", "replace")
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        text = text.replace(entity, char)
    return text


def description_of(img: Image.Image, exif: Image.Exif | None) -> str | None:
    """First real caption among EXIF ImageDescription, XMP dc:description,
    XPComment, XPTitle, EXIF UserComment and a PNG ``Description`` text chunk."""
    candidates: list[object] = []
    junk: set[str] = set()
    if exif is not None:
        try:
            make = str(exif.get(_TAG_MAKE) or "").replace("\x00", "").strip()
            model = str(exif.get(_TAG_MODEL) or "").replace("\x00", "").strip()
            junk = {_normalise(s) for s in (make, model, f"{make} {model}") if s}
            candidates.append(exif.get(_TAG_IMAGE_DESCRIPTION))
        except Exception:
            pass
    try:
        candidates.append(_xmp_description(_xmp_packet(img)))
    except Exception:
        pass
    if exif is not None:
        try:
            candidates.append(_decode_xp(exif.get(_TAG_XP_COMMENT)))
            candidates.append(_decode_xp(exif.get(_TAG_XP_TITLE)))
        except Exception:
            pass
        candidates.append(_decode_user_comment(_exif_ifd(exif).get(_TAG_USER_COMMENT)))
    candidates.append(img.info.get("Description"))
    frozen_junk = frozenset(junk)
    for candidate in candidates:
        text = _clean_description(candidate, frozen_junk)
        if text is not None:
            return text
    return None


def xmp_captions(packet: bytes) -> list[str]:
    """Captions from an XMP packet or sidecar file: its ``dc:description`` and its ``dc:subject``
    keywords joined into one caption ("beach, sunset"); an unparsable packet gives the description only."""
    out: list[str] = []
    description = _xmp_description(packet)
    if description and description.strip():
        out.append(description.strip())
    if not packet or len(packet) > _XMP_MAX_BYTES:
        return out
    try:
        root = ET.fromstring(packet.strip(b"\x00 \t\r\n"))
    except ET.ParseError:
        return out
    keywords: list[str] = []
    for subject in root.iter(f"{{{_XMP_NS['dc']}}}subject"):
        for li in subject.findall(".//rdf:li", _XMP_NS):
            word = (li.text or "").strip()
            if word and word not in keywords:
                keywords.append(word)
    if keywords:
        out.append(", ".join(keywords))
    return out
