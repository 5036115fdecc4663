"""Name words, boilerplate names and FTS5 queries that can never be a syntax error."""

from __future__ import annotations

import random
import sqlite3

import pytest

from retrieval.terms import (FTS_COLUMNS, FTS_TOKENIZE, MAX_QUERY_TOKENS, content_tokens, file_key, fts_query,
                             is_boilerplate, is_boilerplate_folder, name_words, query_tokens, split_words, stem_of, weak_caption)

CAMERA_NAMES = [
    "IMG_1234", "IMG-20190412-WA0003", "DSC0042", "DSC_0042", "DSCN0042", "DSCF1234", "_DSC1234", "_MG_1234",
    "PXL_20240101_123456789", "PXL_20240101_123456789.MP", "PXL_20240101_123456789.PORTRAIT", "P1010001",
    "GOPR0001", "GP010001", "GH010001", "MVIMG_20190101_123456", "IMG_20190412_153012", "IMG_20190412_153012_HDR",
    "VID_20190412_153012", "20190412_153012", "2019-04-12 15.30.12", "IMG_1234 2", "IMG_1234(1)", "IMG_1234 (1)",
    "IMG_E1234", "DJI_0001", "100_1234", "SAM_1234", "CIMG0001", "PICT0001", "IMGP1234", "HPIM1234",
    "FB_IMG_1554401234567", "WhatsApp Image 2019-04-12 at 15.30.12", "photo_2019-04-12_15-30-12",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3F2504E04F8911D39A0C0305E82C3301", "2513260012_03d33305cf",
    "12345", "0001", "a1b2c3d4e5f6", "image", "image (3)", "Untitled-1", "unnamed",
]
WORD_NAMES = ["Screenshot_20190412-153012", "black-cat_2019", "2019 Kyoto", "cat", "facade", "deadline",
              "optic_disc_closeup", "Camera", "beach", "IMG of the sea"]


@pytest.mark.parametrize("stem", CAMERA_NAMES)
def test_camera_names_are_boilerplate(stem):
    assert is_boilerplate(stem)
    assert name_words(f"/lib/{stem}.JPG", "/lib").name == []


def test_camera_names_keep_one_file_key_token():
    assert [file_key(f"/lib/{s}.JPG") for s in ("IMG_2041", "DSC0042", "IMG-20190412-WA0003", "P1010001")] == \
        ["img2041", "dsc0042", "img20190412wa0003", "p1010001"]
    assert [file_key(f"/lib/{s}.jpg") for s in ("black cat", "2019", "0001", "image")] == [None] * 4
    assert query_tokens('IMG_2041 in "Kyoto"') == ["img2041", "in", "kyoto"]
    assert query_tokens("IMG_2041.jpg, 2019-04") == ["img2041", "2019", "04"]


@pytest.mark.parametrize("stem", WORD_NAMES)
def test_names_with_words_are_not_boilerplate(stem):
    assert not is_boilerplate(stem)
    assert name_words(f"/lib/{stem}.jpg", "/lib").name


def test_name_words_split_separators_case_and_digits():
    assert name_words("black-cat_2019.JPG") == (["black", "cat", "2019"], [])
    assert name_words("/p/black cat sleeping on a chair.JPG", "/p").name == ["black", "cat", "sleeping", "on", "a", "chair"]
    assert split_words("blackCatHTTPServer") == ["black", "cat", "http", "server"]
    assert split_words("Kyoto2019") == ["kyoto", "2019"]
    assert split_words("4k mp3 3d") == ["4k", "mp3", "3d"]  # short mixed tokens stay whole
    assert split_words("Screenshot 2019-04-12 at 15.30.12") == ["screenshot", "2019"]  # a timestamp keeps its year
    assert name_words("Screenshot_20190412-153012.png").name == ["screenshot", "2019"]


def test_extension_dropped_and_unicode_folded():
    assert stem_of("cat.JPG") == "cat" and stem_of("cat.heic") == "cat" and stem_of("v1.2") == "v1.2"
    nfd = "Cafe\u0301 Noir.jpg"  # macOS writes decomposed names
    assert name_words(nfd).name == ["caf\u00e9", "noir"]
    assert name_words("京都の寺.jpg").name == ["京都の寺"]


def test_folder_words_below_root_with_boilerplate_folders_dropped():
    w = name_words("/home/ann/Pictures/2019 Kyoto/DCIM/100APPLE/IMG_1234.JPG", "/home/ann/Pictures")
    assert w == ([], ["2019", "kyoto"])
    w = name_words(r"C:\Users\ann\Photos\Trip to Paris\Camera\sunset_over_seine.jpg", r"C:\Users\ann\Photos")
    assert w == (["sunset", "over", "seine"], ["trip", "to", "paris"])
    assert name_words("/lib/Photos from 2019/a.jpg", "/lib").folder == ["2019"]
    assert name_words("/lib/2019/04/x.jpg", "/lib").folder == ["2019", "04"]  # year and month folders keep their numbers
    for folder in ("DCIM", "100APPLE", "101MSDCF", "100_PANA", "Camera", "Camera Roll", "WhatsApp Images", "C:"):
        assert is_boilerplate_folder(folder), folder
    for folder in ("2019 Kyoto", "Screenshots", "2019", "Grandma's 80th"):
        assert not is_boilerplate_folder(folder), folder


def test_weak_caption_only_when_words_read_as_words():
    assert weak_caption(["black", "cat", "sleeping"]) == "black cat sleeping"
    assert weak_caption(["2019", "kyoto"]) == "2019 kyoto"
    assert weak_caption(["京都"]) == "京都"
    assert weak_caption([]) is None
    assert weak_caption(["2019", "04"]) is None
    assert weak_caption(["x", "b2"]) is None
    assert weak_caption(["img", "jpg"]) is None
    assert weak_caption(name_words("IMG_1234.JPG").name) is None


def test_query_tokens_and_content_tokens():
    assert query_tokens('Cat AND "dog" NEAR(x*, ^y) name:z (((') == ["cat", "and", "dog", "near", "x", "y", "name", "z"]
    assert content_tokens(query_tokens("a dog in the snow")) == ["dog", "snow"]
    assert content_tokens(query_tokens("the of")) == ["the", "of"]  # nothing but stopwords: all are kept
    assert len(query_tokens(" ".join(f"w{i}" for i in range(500)))) == MAX_QUERY_TOKENS


@pytest.fixture()
def fts():
    """An in-memory FTS5 table made as the store is meant to make it."""
    db = sqlite3.connect(":memory:")
    cols = ", ".join(FTS_COLUMNS)
    db.execute(f"CREATE VIRTUAL TABLE t USING fts5({cols}, tokenize='{FTS_TOKENIZE}')")
    rows = [
        (1, "The Hubble eXtreme Deep Field", "hubble xdf", "space"),
        (2, "the optic disc", "optic disc closeup", "eye"),
        (3, "A black dog runs AND jumps", "", "2019 kyoto"),
        (4, 'He said "NEAR" the café (sort of)', "black cat sleeping on a chair", ""),
        (5, "dogs running in the snow", "", ""),
        (6, "", "", ""),
    ]
    db.executemany(f"INSERT INTO t(rowid, {cols}) VALUES (?, ?, ?, ?)", rows)
    yield db
    db.close()


def match(db, text, **kw):
    """Rowids an FTS query for ``text`` finds (empty when the text has no tokens)."""
    expr = fts_query(text, **kw)
    if expr is None:
        return set()
    return {r for (r,) in db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t)", (expr,))}


HOSTILE = [
    '"', '""', '"""', "'", "\\", "*", "^", ":", "-", "+", "(", ")", "()", "(((", ")))", "{", "}", "[", "]",
    "AND", "OR", "NOT", "NEAR", "NEAR(", "NEAR(a b", "NEAR(a b, 3)", "a AND", "OR b", "NOT NOT", "a NOT",
    'cat" OR "dog', '"unbalanced', "unbalanced)", "col:cat", "caption:dog", "name : cat", "{name folder}: cat",
    "- dog", "^dog", "dog*", "*dog", "d*g", "dog^", "a:b:c", "'; DROP TABLE t; --", "\x00", "\x00dog",
    "\u200b", "🐱 cat", "𝔡𝔬𝔤", "ǅ", "İstanbul", "e\u0301", "\ufeff", "％", "a" * 5000, "dog " * 1000,
    "rowid", "rank", "bm25(t)", "MATCH", "t", "\n\t", "   ", "", "NEAR/3", "a + b", "dog\"cat",
]


@pytest.mark.parametrize("require_all", [False, True])
def test_hostile_queries_never_raise(fts, require_all):
    rng = random.Random(0)
    alphabet = list('"\'()*^:-+{}[]\\/,.; \t\nANDORNEARNOTdogcat0123\x00é€🐱')
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    fuzz += ["".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    for text in HOSTILE + fuzz:
        text = text.replace("\ud800", "")  # lone surrogates cannot be sent to sqlite at all
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            continue
        match(fts, text, require_all=require_all)  # never an OperationalError
        match(fts, text, require_all=require_all, columns=["name", "folder"])


def test_syntax_words_are_searched_as_words(fts):
    assert match(fts, "AND") == {3}  # the word "and" in a caption, not the operator
    assert match(fts, "NEAR(") == {4}
    assert match(fts, '"NEAR"') == {4}
    assert match(fts, "name:cat") == {4}  # not a column filter: "name" and "cat" are both searched
    assert match(fts, "optic disc*") == {2}  # no prefix query: "disc" as a word
    assert fts_query('say "hi"') == '"say" OR "hi"'
    assert fts_query("red car", require_all=True) == '"red" AND "car"'
    assert fts_query("") is None and fts_query("()*^") is None


def test_plain_words_still_match(fts):
    assert match(fts, "Hubble") == {1}
    assert match(fts, "optic disc", require_all=True) == {2}
    assert match(fts, "kyoto") == {3}
    assert match(fts, "2019 Kyoto", require_all=True) == {3}
    assert match(fts, "black") == {3, 4}
    assert match(fts, "black cat", require_all=True) == {4}
    assert match(fts, "cafe") == {4}  # diacritics folded
    assert match(fts, "CAFÉ") == {4}
    assert match(fts, "dog running", require_all=True) == {3, 5}  # porter: dogs ~ dog, runs ~ running
    assert match(fts, "a dog in the snow", require_all=True) == {5}  # stopwords do not have to match


def test_column_filter_finds_which_field_matched(fts):
    assert match(fts, "black", columns=["name"]) == {4}
    assert match(fts, "black", columns=["caption"]) == {3}
    assert match(fts, "kyoto", columns=["folder"]) == {3}
    assert match(fts, "kyoto", columns=["caption", "name"]) == set()
    with pytest.raises(ValueError):
        fts_query("x", columns=["name) OR (caption"])
