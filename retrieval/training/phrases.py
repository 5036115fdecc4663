"""Short texts from a caption: the noun phrases a user would type ("a black dog", "dog", "two dogs").

Rule-based over the word lists of ``negatives`` (no parser): a phrase opens with a determiner or
the sentence, takes up to two known modifiers, then a head noun and, where the next word reads as
a noun too, that second noun ("a tennis ball"). Each phrase gives keys (the phrase without its
article, and its head noun alone) that say which images a short text describes, and texts of at
most three words, the length the search treats as a short query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..encoders.base import SHORT_TEXT_WORDS
from .negatives import (COUNTS, DETERMINERS, FOLLOWERS, MAX_MODIFIERS, MODIFIERS, NOUNS, PLURAL_NOUNS,
                        SINGULAR_NOUNS, VERBS)

# words that end a phrase or cannot be its head
_STOP = frozenset("""a an the and or of is are was be been to it its their his her he she they them this that
there who which while with without some each other another one something someone very""".split())
_WORD = re.compile(r"[a-z][a-z'-]*$")


@dataclass(frozen=True)
class Phrase:
    """One noun phrase: its words without an article, and the head noun (or two-noun compound)."""

    words: tuple[str, ...]
    head: str
    article: str = ""  # "a" or "an" where the caption said so

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys this phrase matches images by: the whole phrase, and its head alone."""
        whole = " ".join(self.words)
        return (whole,) if whole == self.head else (whole, self.head)

    def texts(self) -> list[list[str]]:
        """Short texts for each key: bare, and with "a"/"an" where the caption had one."""
        out = []
        for key in self.keys:
            words = key.split()
            texts = [key] if len(words) <= SHORT_TEXT_WORDS else []
            if self.article and len(words) < SHORT_TEXT_WORDS:
                texts.append(f"{'an' if key[0] in 'aeiou' else 'a'} {key}")
            out.append(texts)
        return out


def _plural(word: str) -> bool:
    return word in PLURAL_NOUNS or (word.endswith("s") and not word.endswith("ss"))


def _is_noun(word: str | None) -> bool:
    return (word is not None and bool(_WORD.match(word)) and word not in _STOP and word not in FOLLOWERS
            and word not in VERBS and word not in DETERMINERS and not word.endswith(("ing", "ed", "ly")))


def phrases(caption: str) -> list[Phrase]:
    """The noun phrases of one caption, in order (lower case, punctuation dropped)."""
    low = [w.strip(".,;:!?\"()").lower() for w in caption.split()]
    low = [w for w in low if w]
    out: list[Phrase] = []
    k = 0
    while k < len(low):
        start = k + 1 if low[k] in DETERMINERS else k if k == 0 else None
        if start is None:
            k += 1
            continue
        j, mods = start, []
        while j < len(low) and low[j] in MODIFIERS and len(mods) < MAX_MODIFIERS:
            mods.append(low[j])
            j += 1
        head = low[j] if j < len(low) else None
        if mods and mods[-1] in SINGULAR_NOUNS and (not _is_noun(head) or _plural(head)):  # "a little baby plays"
            j -= 1
            head = mods.pop()
        if _is_noun(head) and (head not in MODIFIERS or head in NOUNS):
            nxt = low[j + 1] if j + 1 < len(low) else None
            second = (nxt if not _plural(head) and _is_noun(nxt) and not _plural(nxt) and nxt not in MODIFIERS
                      else None)
            head_words = [head, second] if second else [head]
            count = [low[k]] if low[k] in COUNTS else []
            article = low[k] if low[k] in ("a", "an") and not count else ""
            out.append(Phrase(tuple(count + mods + head_words), " ".join(head_words), article))
            k = j + len(head_words)
        else:
            k = max(k + 1, j)
    return out


def image_phrases(captions: Sequence[str]) -> dict[str, list[str]]:
    """Each key of an image's captions' phrases, with the short texts that say it (first seen first)."""
    out: dict[str, list[str]] = {}
    for caption in captions:
        for phrase in phrases(caption):
            for key, texts in zip(phrase.keys, phrase.texts()):
                known = out.setdefault(key, [])
                known.extend(t for t in texts if t not in known)
    return out
