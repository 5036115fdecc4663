"""Composition rewrites of captions (retrieval/training/negatives.py): what each rule does, where it declines,
and that a rewrite keeps the caption's words (same length, re-ordered or one swapped) on real Flickr8k captions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from retrieval.training.negatives import (KINDS, colour_swap, count_change, noun_swap, rewrite, rewrites,
                                          role_swap, sample_twins, twin_table)

from conftest import FLICKR8K


@pytest.mark.parametrize("caption, expected", [
    ("a man in a red shirt and blue pants", "a man in a blue shirt and red pants"),
    ("A black dog is running after a white cat .", "A white dog is running after a black cat ."),
    ("The brown dog is wearing a black collar .", "The black dog is wearing a brown collar ."),
])
def test_colour_swap_swaps_colours_between_their_nouns(caption, expected):
    assert colour_swap(caption) == expected


@pytest.mark.parametrize("caption", [
    "a black and white dog runs",  # one description of one dog
    "a black and white dog and a brown cat",  # only one colour of the first dog would move
    "a red shirt",  # one colour
    "a red shirt and a red hat",  # the same colour twice
    "a white dog and a black dog",  # same noun: swapping changes nothing
    "a red apple and an orange ball",  # "an red ball" would not be fluent
])
def test_colour_swap_declines_where_it_would_not_change_the_meaning_or_be_fluent(caption):
    assert colour_swap(caption) is None


@pytest.mark.parametrize("caption, expected", [
    ("a dog chasing a man", "a man chasing a dog"),
    ("a cat on a table", "a table on a cat"),
    ("A brown dog sits on a couch .", "A couch sits on a brown dog ."),
    ("The small dog is chasing a ball .", "A ball is chasing the small dog ."),
    ("Two dogs chase two cats", None),  # "chase" is not in the verb list: no rule
    ("two dogs chasing two cats", "two cats chasing two dogs"),
])
def test_role_swap_swaps_subject_and_object(caption, expected):
    assert role_swap(caption) == expected


@pytest.mark.parametrize("caption", [
    "a dog chasing two cats",  # "two cats is ..." would not agree: numbers differ
    "a dog chasing a dog",  # the same noun on both sides
    "A girl in a pink shirt is riding a bicycle",  # "a pink shirt" is not the subject
    "A man wearing a green jacket and hat",  # the object is half of "a jacket and hat"
    "A guy is doing a skateboard trick",  # "skateboard" is the first half of a compound
    "dogs run in the park",
])
def test_role_swap_declines_outside_its_pattern(caption):
    assert role_swap(caption) is None


def test_count_change_and_noun_swap():
    assert count_change("Two dogs play in the snow .") == "Three dogs play in the snow ."
    assert count_change("three small children sit") == "two small children sit"
    assert count_change("one dog runs") is None  # "two dog" would not be fluent
    assert count_change("a dog runs") is None
    assert noun_swap("A dog runs on the beach") == "A cat runs on the beach"
    assert noun_swap("A man and the man with a dog") == "A woman and the woman with a dog"  # every occurrence
    assert noun_swap("a man and a woman") is None  # the twin noun is already there (and nothing else swaps)
    assert noun_swap("A man in his car") == "A man in his truck"  # gendered nouns stay with a pronoun
    assert noun_swap("an elephant") is None


def test_rewrite_names_its_kinds():
    assert rewrites("two dogs chasing two cats") == {"role_swap": "two cats chasing two dogs",
                                                      "count_change": "three dogs chasing two cats"}
    assert rewrites("two dogs chasing two cats", kinds=("count_change",)) == {
        "count_change": "three dogs chasing two cats"}
    with pytest.raises(ValueError, match="unknown rewrite kind"):
        rewrite("a dog", "shuffle")


def _flickr_dev_captions() -> list[str]:
    if not (FLICKR8K / "captions.jsonl").is_file():
        pytest.skip(f"Flickr8k not found at {FLICKR8K}")
    caps = []
    with open(FLICKR8K / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if obj.get("split") == "dev":
                caps += obj["captions"]
    return caps


def test_rewrites_of_real_captions_keep_their_words():
    """On Flickr8k dev captions every rule applies to a fair share, and each rewrite has the same number of
    words as its caption: the same words re-ordered (swaps) or exactly one word different (count, noun)."""
    caps = _flickr_dev_captions()
    counts = Counter()
    for cap in caps:
        words = [w.lower() for w in cap.split()]
        for kind, twin in rewrites(cap).items():
            counts[kind] += 1
            new = [w.lower() for w in twin.split()]
            assert len(new) == len(words), (kind, cap, twin)
            assert new != words, (kind, cap, twin)
            if kind in ("colour_swap", "role_swap"):
                assert sorted(new) == sorted(words), (kind, cap, twin)
            elif kind == "count_change":
                assert sum(a != b for a, b in zip(new, words)) == 1, (kind, cap, twin)
            else:  # the noun is replaced wherever it occurs, nothing else
                changed = {(a, b) for a, b in zip(words, new) if a != b}
                assert len(changed) == 1, (kind, cap, twin)
    for kind in KINDS:
        assert counts[kind] >= 100, counts  # each rule finds material in 5,000 captions
    assert counts["colour_swap"] < len(caps) / 4 and counts["role_swap"] < len(caps) / 4, counts


def test_twin_table_and_sample_twins_are_aligned_and_seeded():
    caps = ["a dog chasing a man", "a tree", "Two dogs play in the snow ."]
    table = twin_table(caps)
    assert [len(t) for t in table][1] == 0 and all(table[0]) and table[2]
    assert table[0][0] == "a man chasing a dog"
    picked = sample_twins(caps, 5, seed=3)
    assert picked == sample_twins(caps, 5, seed=3)
    assert {j for j, _, _ in picked} == {0, 2}
    for j, kind, twin in picked:
        assert rewrite(caps[j], kind) == twin
