"""Words a text search can match besides pixels: the words of file and folder names, and safe FTS5 queries.

Pure Python (no heavy imports), so the indexer, the store and the CLI can all use it.

File names are split into words ("black-cat_2019.JPG" -> black, cat, 2019) with camera boilerplate
(``IMG_1234``, ``DSC_0042``, ``PXL_20240101_123456789``, ``IMG-20190412-WA0003``, UUIDs, hex and number
strings) and generic folders (``DCIM``, ``100APPLE``, ``Camera``) dropped. User text becomes an FTS5
MATCH expression in which every token is a quoted string, so FTS5 syntax in a query is searched as words.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import NamedTuple

# The FTS5 tokenizer the lexical index uses: Unicode word splitting, case and diacritics folded, English
# stemming ("dogs" matches "dog"), chosen on Flickr8k dev (benchmarks/hybrid_fusion.py).
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"
# Its columns, in this order: caption text, file-name words, folder-name words.
FTS_COLUMNS = ("caption", "name", "folder")
# A query keeps at most this many distinct tokens (an FTS5 expression grows with each one).
MAX_QUERY_TOKENS = 32
# A weak caption keeps at most this many words.
MAX_CAPTION_WORDS = 16
# The caption sources of the weak captions made from file and folder names (embedded like captions, but kept
# out of the lexical index's caption column: their words are its name and folder columns already).
WEAK_CAPTION_SOURCES = ("name", "folder")

# Words too common to decide whether a photo "matches the query's words" (an all-words query drops them
# while the query has other words).
STOPWORDS = frozenset("""
a an and are as at be been but by for from has have in into is it its of on or over that the their there
these this those to under up was were with without near next while
""".split())

# FTS5 tokens: runs of letters, digits and marks (the unicode61 token characters, roughly).
_TOKEN_RE = re.compile(r"[^\W_]+")

# Camera and phone file-name prefixes (DCF names are a 4-character prefix + 4 digits; phones add timestamps).
_CAMERA_PREFIX = (
    r"(?:img|imgp|imag|image|img_e|dsc|dscf|dscn|dsci|dscv|_dsc|_mg|mg|pict|pic|cimg|hpim|rimg|kimg|sdim|sdc|"
    r"sam|dji|gopr|gp|gh|gx|gs|pano|vid|mvi|mov|mvimg|pxl|burst|crw|dcp|pdr|kif|iph|wp|photo|picture|"
    r"fb_img|received|snapchat|signal|photo_id|dji_fly|insta360|lrg|dsc_|dcim|capture|pxl_edit)"
)
_TIMESTAMP = r"\d{4}[-_.]?\d{2}[-_.]?\d{2}(?:[-_. t]*(?:at[-_ ]*)?\d{2}[-_.]?\d{2}(?:[-_.]?\d{2,9})?)?"
_DUP_SUFFIX = r"(?:[-_. ~]*(?:\(\d+\)|\d{1,3}|copy|edited|edit|e|hdr|burst\d*|cover|mp|original|top|ls|portrait|night|pano|raw-?\d*|collage|animation|effects)){0,3}"
_BOILERPLATE_RES = tuple(re.compile(p, re.IGNORECASE) for p in (
    _CAMERA_PREFIX + r"[-_ ]*e?\d{3,}(?:[-_ ]*\d+)*" + _DUP_SUFFIX,  # IMG_1234, DSC0042, DSCN0042, GOPR0001
    r"(?:" + _CAMERA_PREFIX + r"[-_ ]*)?" + _TIMESTAMP + r"(?:[-_ ]*\d+)*" + _DUP_SUFFIX,  # PXL_2024..., 20190412_153012
    r"(?:img|vid|aud|ptt|stk)[-_]\d{8}[-_]wa\d+" + _DUP_SUFFIX,  # WhatsApp: IMG-20190412-WA0003
    r"whatsapp[-_ ]*(?:image|video)[-_ ]*" + _TIMESTAMP + r"[-_ ]*(?:at[-_ ]*)?[\d.]*" + _DUP_SUFFIX,
    r"p\d{7}" + _DUP_SUFFIX,  # Panasonic/Olympus P1010001
    r"\d{3}[-_]\d{4}(?:[-_]img)?" + _DUP_SUFFIX,  # Kodak 100_1234, Canon 100-0001_IMG
    r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}" + _DUP_SUFFIX,  # UUID
    r"(?=[0-9a-f_\-]*\d)[0-9a-f]{6,}(?:[-_][0-9a-f]+)*" + _DUP_SUFFIX,  # hex or number strings, Flickr ids
    r"[\d\W_]+",  # digits and punctuation only
    r"(?:image|photo|picture|pic|untitled|unnamed|download|file|img|default|scan)" + _DUP_SUFFIX,
))
# Names that camera software and photo apps give folders.
_FOLDER_BOILERPLATE_RES = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"dcim|misc|camera|camera[ _-]?roll|camera[ _-]?uploads|pictures|my[ _-]?pictures|photos|my[ _-]?photos|"
    r"images|media|sent|private|thumbnails?|\.thumbnails|\.trashed|originals?|import(?:ed)?|uploads?|"
    r"downloads?|desktop|documents|whatsapp[ _-]?images|google[ _-]?photos|takeout|icloud[ _-]?photos|"
    r"photos[ _-]?library|masters|gopro|dji[ _-]?album|snapseed|edited",
    r"\d{3}[a-z0-9_]{5}",  # DCF folders: 100APPLE, 100CANON, 101MSDCF, 100_PANA, 100GOPRO
    r"\d{3}_\d{4}|\d{3}-\d{4}",  # older Canon/Kodak: 100_0612
    r"[a-z]:",  # Windows drive letter
))
_FOLDER_NOISE_WORDS = frozenset({"photos", "from", "album"})  # Google Takeout "Photos from 2019"
_NOISE_WORDS = frozenset({"img", "jpg", "jpeg", "heic", "copy", "edited", "dsc", "scaled", "thumb", "thumbnail"})
_TIMESTAMP_RE = re.compile(r"(?<![0-9])(\d{4})(?:[-_.]?\d{2}[-_.]?\d{2})(?:[-_. T]*(?:at[-_ ]*)?\d{2}[-_.]?\d{2}(?:[-_.]?\d{2,9})?)?(?![0-9])",
                           re.IGNORECASE)
_IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif bmp tif tiff webp heic heif avif dng cr2 cr3 nef arw orf rw2 raf srw pef "
    "raw jxl psd ico ppm pgm pbm".split())


class NameWords(NamedTuple):
    """The words of a photo's file name and of its folder names (outermost folder first)."""

    name: list[str]
    folder: list[str]


def _fold(text: str) -> str:
    """Unicode-normalised, lower-cased text (as FTS5 unicode61 folds it: simple lower-casing, not casefold,
    so "ß" stays "ß" on both sides)."""
    return unicodedata.normalize("NFC", text).lower()


def stem_of(file_name: str) -> str:
    """A file name without its image extension ("cat.JPG" -> "cat"); other suffixes are kept."""
    base, dot, ext = file_name.rpartition(".")
    return base if dot and base and ext.lower() in _IMAGE_EXTENSIONS else file_name


def is_boilerplate(stem: str) -> bool:
    """True when a file-name stem is one a camera, phone or app made up (``IMG_1234``) rather than words."""
    s = stem.strip()
    return not s or any(r.fullmatch(s) for r in _BOILERPLATE_RES)


def file_key(path: str) -> str | None:
    """The one token a camera-made file name is still found by ("…/IMG_2041.JPG" -> "img2041"): its letters
    and digits run together; None for names that are words or hold no letters or no digits."""
    stem = stem_of(path.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if not (any(c.isalpha() for c in stem) and any(c.isdigit() for c in stem)) or not is_boilerplate(stem):
        return None
    return "".join(_TOKEN_RE.findall(_fold(stem))) or None


def is_boilerplate_folder(name: str) -> bool:
    """True when a folder name is one cameras and photo apps create (``DCIM``, ``100APPLE``, ``Camera``)."""
    s = name.strip()
    if not s or s in (".", "..") or any(r.fullmatch(s) for r in _FOLDER_BOILERPLATE_RES):
        return True
    return is_boilerplate(s) and not re.fullmatch(r"[\d\W_]+", s)  # a year or date folder still has words


def split_words(text: str) -> list[str]:
    """Lower-cased words of a name: split on separators, camelCase and long letter/digit runs."""
    text = _TIMESTAMP_RE.sub(r" \1 ", text)  # a date or timestamp in a name keeps its year only
    words = []
    for chunk in _TOKEN_RE.findall(unicodedata.normalize("NFC", text)):
        for part in _split_camel(chunk):
            words.extend(_split_letters_digits(part))
    return [w.lower() for w in words if w]


def _split_camel(chunk: str) -> list[str]:
    """Splits at a lower-to-upper change ("blackCat") and before the last capital of a run ("HTTPServer")."""
    if chunk.isupper() or not any(c.isupper() for c in chunk[1:]):
        return [chunk]  # no capital after a lower-case letter or before one: nothing to split (the common case)
    out, start = [], 0
    for i in range(1, len(chunk)):
        a, b = chunk[i - 1], chunk[i]
        if (a.islower() and b.isupper()) or (a.isupper() and b.isupper() and i + 1 < len(chunk) and chunk[i + 1].islower()):
            out.append(chunk[start:i])
            start = i
    out.append(chunk[start:])
    return out


def _split_letters_digits(part: str) -> list[str]:
    """Leaves short mixed tokens whole ("4k", "mp3", "3d"); splits longer ones ("kyoto2019")."""
    if part.isalpha() or part.isdigit():
        return [part]
    pieces = re.findall(r"\d+|\D+", part)
    if len(pieces) < 2 or any(len(p) < 2 for p in pieces):
        return [part]
    return pieces


def _keep_word(word: str) -> bool:
    """Whether a word of a name is worth indexing: not noise, not a long number or hex run."""
    if word in _NOISE_WORDS:
        return False
    if word.isdigit():
        return len(word) <= 4
    return not (len(word) >= 8 and re.fullmatch(r"[0-9a-f]+", word) and any(c.isdigit() for c in word))


def _dedupe(words: Iterable[str]) -> list[str]:
    """Words in first-seen order, each once."""
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


def name_words(path: str, root: str | None = None) -> NameWords:
    """The words of a photo's file name and of its folders (below ``root`` where given), boilerplate dropped.

    ``"2019 Kyoto/black-cat_2019.JPG"`` gives name ``[black, cat, 2019]`` and folder ``[2019, kyoto]``.
    """
    norm = path.replace("\\", "/")
    if root is not None:
        r = root.replace("\\", "/").rstrip("/")
        if r and (norm == r or norm.startswith(r + "/")):
            norm = norm[len(r):]
    parts = [p for p in norm.split("/") if p]
    if not parts:
        return NameWords([], [])
    stem = stem_of(parts[-1])
    name = [] if is_boilerplate(stem) else _dedupe(w for w in split_words(stem) if _keep_word(w))
    return NameWords(name, list(_folder_words(tuple(parts[:-1]))))


@functools.lru_cache(maxsize=4096)
def _folder_words(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The words of a run of folder names, boilerplate folders dropped (cached: a library's photos share folders)."""
    return tuple(_dedupe(w for p in parts if not is_boilerplate_folder(p)
                         for w in split_words(p) if _keep_word(w) and w not in _FOLDER_NOISE_WORDS))


def _reads_as_word(word: str) -> bool:
    """A word a text encoder can make sense of: letters, with a vowel when it is short ASCII."""
    if not word.isalpha():
        return False
    if not word.isascii():
        return True
    return len(word) >= 3 and any(c in "aeiouy" for c in word)


def weak_caption(words: Sequence[str]) -> str | None:
    """The words of a name as a phrase to embed as a weak caption; None when nothing in it reads as words."""
    kept = [w for w in words if w and w not in _NOISE_WORDS][:MAX_CAPTION_WORDS]
    if not any(_reads_as_word(w) for w in kept):
        return None
    return " ".join(kept)


def query_tokens(text: str) -> list[str]:
    """The distinct lower-cased tokens of user text, split as the FTS5 unicode61 tokenizer splits them; a
    camera-made file name ("IMG_2041") stays one token, as ``file_key`` indexes it."""
    tokens: list[str] = []
    for chunk in _fold(text).split():
        key = file_key(chunk.strip("\"'()[]{},;:!?"))
        tokens.extend([key] if key else _TOKEN_RE.findall(chunk))
    return _dedupe(tokens)[:MAX_QUERY_TOKENS]


def content_tokens(tokens: Sequence[str]) -> list[str]:
    """Tokens without stopwords, or all of them when nothing else is left."""
    kept = [t for t in tokens if t not in STOPWORDS]
    return kept or list(tokens)


def quote_token(token: str) -> str:
    """An FTS5 string literal: the token in double quotes, inner double quotes doubled."""
    return '"' + token.replace('"', '""') + '"'


def fts_query(text: str, require_all: bool = False, columns: Sequence[str] | None = None) -> str | None:
    """A safe FTS5 MATCH expression for user text, or None when the text has no tokens.

    Every token is a quoted string, so ``AND``, ``NEAR(``, ``*``, ``^``, ``:``, quotes and parentheses are
    searched as words and the expression is never a syntax error. ``require_all``: every content token
    (stopwords dropped while others remain) must match, else any token. ``columns``: only these columns.
    """
    tokens = query_tokens(text)
    if require_all:
        tokens = content_tokens(tokens)
    if not tokens:
        return None
    expr = (" AND " if require_all else " OR ").join(quote_token(t) for t in tokens)
    if columns:
        bad = [c for c in columns if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c)]
        if bad:
            raise ValueError(f"not an FTS5 column name: {bad[0]!r}")
        expr = "{" + " ".join(columns) + "} : (" + expr + ")"
    return expr
