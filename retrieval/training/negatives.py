"""Composition rewrites of a caption: the same words re-ordered, or one word swapped, so the sentence is false.

Rule-based (a word list, no parser), in four kinds: swap two colours between their nouns, swap the
subject and object noun phrases around a verb or preposition, change a count, and replace a noun with a
frequent confusable one. Each rule returns None where it does not apply. A rewrite keeps the caption's
length and form (same tokens, re-ordered or one swapped), so a model trained against these twins must
read the image to reject them, not spot a generated sentence (NegCLIP, Yuksekgonul et al. 2023).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

KINDS = ("colour_swap", "role_swap", "count_change", "noun_swap")

# colours of things (not hair colours such as blond, which only fit hair)
COLOURS = frozenset("red blue green yellow black white brown pink orange purple gray grey tan silver".split())

# a, the, counts: words that open a noun phrase
DETERMINERS = frozenset("a an the one two three four five six another some several".split())
COUNTS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PLURAL_DETERMINERS = frozenset(COUNTS) | {"some", "several", "many"}

# nouns frequent in Flickr8k captions that can be the subject or object of a relation (people, animals, things)
_SINGULAR = """man woman boy girl child kid baby toddler person guy lady dog puppy cat horse bird cow sheep
player skier surfer biker rider climber skateboarder snowboarder ball frisbee stick toy bike bicycle motorcycle
car truck boat table bench chair rock tree wall fence bed couch sofa skateboard surfboard sled swing slide
ramp log box bag hat shirt jacket building house sign pole rope""".split()
_IRREGULAR_PLURAL = {"man": "men", "woman": "women", "child": "children", "person": "people", "sheep": "sheep",
                     "box": "boxes", "bench": "benches", "couch": "couches", "puppy": "puppies",
                     "baby": "babies", "lady": "ladies"}
SINGULAR_NOUNS = frozenset(_SINGULAR)
PLURAL_NOUNS = frozenset(_IRREGULAR_PLURAL.get(n, n + "s") for n in _SINGULAR)
NOUNS = SINGULAR_NOUNS | PLURAL_NOUNS

# words between a determiner and its noun (adjectives); a phrase holds at most MAX_MODIFIERS of them
MODIFIERS = COLOURS | frozenset("""little young small large big old older tall fluffy wet furry shaggy
spotted striped wooden muddy adult baby dark light long short curly-haired black-and-white""".split())
MAX_MODIFIERS = 2

# relation words between two noun phrases: prepositions, and verbs (-ing) with an optional particle
PREPOSITIONS = frozenset("on under behind above below beside near over with onto past toward towards".split())
AUXILIARIES = frozenset("is are".split())
PARTICLES = frozenset("after over at with on to into toward towards past by behind under".split())
VERBS = frozenset("""holds chases carries rides watches follows pulls pushes catches bites licks kisses hugs
feeds wears sits stands jumps runs lies lays walks climbs leads""".split())  # present tense, with -ing forms too
# words that may follow an object noun phrase (so its noun is not the first half of a compound: "a skateboard trick")
FOLLOWERS = PREPOSITIONS | PARTICLES | AUXILIARIES | frozenset(""". , ; in at through down up across into while as near
from for of along around outside during""".split())
# where a subject noun phrase may start: the sentence's start or a clause boundary
CLAUSE_STARTS = frozenset(", and while as where whilst . ; but".split())

# a noun and the frequent one it is confused with (both directions where both are frequent)
CONFUSABLE = {"dog": "cat", "cat": "dog", "dogs": "cats", "cats": "dogs", "puppy": "kitten", "kitten": "puppy",
              "man": "woman", "woman": "man", "men": "women", "women": "men", "boy": "girl", "girl": "boy",
              "boys": "girls", "girls": "boys", "guy": "lady", "lady": "guy", "horse": "cow", "cow": "horse",
              "ball": "frisbee", "frisbee": "ball", "bike": "motorcycle", "bicycle": "motorcycle",
              "motorcycle": "bicycle", "snow": "sand", "sand": "snow", "grass": "sand", "beach": "field",
              "field": "beach", "shorts": "pants", "pants": "shorts", "hat": "helmet", "helmet": "hat",
              "car": "truck", "truck": "car", "street": "beach", "pool": "lake", "lake": "pool", "ocean": "lake",
              "skateboard": "bicycle", "surfboard": "skateboard"}
_GENDERED = {"man", "woman", "men", "women", "boy", "girl", "boys", "girls", "guy", "lady"}
_PRONOUNS = frozenset("he she his her him hers himself herself".split())
_COUNT_CHANGE = {"two": "three", "three": "two", "four": "three", "five": "four", "six": "five",
                 "seven": "six", "eight": "seven", "nine": "eight", "ten": "nine"}


def tokens(caption: str) -> list[str]:
    """The caption's words as written (split on whitespace)."""
    return caption.split()


def _join(words: Sequence[str], original: Sequence[str]) -> str:
    """Words back to a sentence, the first word capitalised as the original's was and the rest as written."""
    out = list(words)
    if out and original:
        first_upper = original[0][:1].isupper()
        for k, w in enumerate(out):
            if k == 0:
                out[0] = w[:1].upper() + w[1:] if first_upper else w
            elif w != original[k] and w[:1].isupper() and w.lower() in DETERMINERS | NOUNS | MODIFIERS:
                out[k] = w[:1].lower() + w[1:]  # a sentence-initial word moved inward
    return " ".join(out)


def _low(words: Sequence[str]) -> list[str]:
    return [w.lower() for w in words]


def _article_fits(low: Sequence[str], k: int, new: str) -> bool:
    """Whether "a"/"an" before position ``k`` (if any) still agrees once ``low[k]`` becomes ``new``."""
    if k == 0 or low[k - 1] not in ("a", "an"):
        return True
    return (new[0] in "aeiou") == (low[k][0] in "aeiou")


def _joined_colour(low: Sequence[str], k: int, step: int) -> bool:
    """Whether the colour at ``k`` is joined to another on that side ("black white", "black and white")."""
    n = k + step
    if not 0 <= n < len(low):
        return False
    if low[n] in COLOURS:
        return True
    return low[n] in ("and", "or", "-", "&") and 0 <= n + step < len(low) and low[n + step] in COLOURS


def colour_swap(caption: str) -> str | None:
    """Swap the first two different colours that modify different nouns ("a red shirt and blue pants" ->
    "a blue shirt and red pants"); None if the caption has no such pair.

    Colours next to another colour or "and" ("black and white dog") are one description and are skipped.
    """
    words = tokens(caption)
    low = _low(words)
    found: list[int] = []
    for k, w in enumerate(low):
        if w not in COLOURS or k + 1 >= len(low):
            continue
        if low[k + 1] in (",", ".") or _joined_colour(low, k, 1) or _joined_colour(low, k, -1):
            continue
        found.append(k)
    for a in range(len(found)):
        for b in range(a + 1, len(found)):
            i, j = found[a], found[b]
            if low[i] != low[j] and low[i + 1] != low[j + 1] and _article_fits(low, i, low[j]) \
                    and _article_fits(low, j, low[i]):
                out = list(words)
                out[i], out[j] = words[j].lower(), words[i].lower()
                return _join(out, words)
    return None


def _phrase_ending(low: Sequence[str], end: int) -> int | None:
    """Start of the noun phrase (determiner, up to MAX_MODIFIERS modifiers) whose noun is ``low[end]``."""
    for start in range(end - 1, max(-1, end - 2 - MAX_MODIFIERS), -1):
        w = low[start]
        if w in DETERMINERS:
            return start
        if w not in MODIFIERS:
            return None
    return None


def _phrase_starting(low: Sequence[str], start: int) -> int | None:
    """Index of the noun that ends the noun phrase starting at ``low[start]`` (a determiner)."""
    if start >= len(low) or low[start] not in DETERMINERS:
        return None
    for end in range(start + 1, min(len(low), start + 2 + MAX_MODIFIERS)):
        if low[end] in NOUNS and (end + 1 >= len(low) or low[end + 1] not in NOUNS):
            return end
        if low[end] not in MODIFIERS:
            return None
    return None


def _plural(low: Sequence[str], start: int, end: int) -> bool:
    return low[end] in PLURAL_NOUNS and low[end] not in SINGULAR_NOUNS or low[start] in PLURAL_DETERMINERS


def role_swap(caption: str) -> str | None:
    """Swap the subject and object noun phrases around a verb or preposition ("a dog chasing a man" ->
    "a man chasing a dog", "a cat on a table" -> "a table on a cat"); None where no such pattern is found.

    Both phrases need a frequent noun (different ones) and the same number, so the sentence stays grammatical.
    """
    words = tokens(caption)
    low = _low(words)
    for end1 in range(1, len(low)):
        if low[end1] not in NOUNS:
            continue
        start1 = _phrase_ending(low, end1)
        if start1 is None or (start1 > 0 and low[start1 - 1] not in CLAUSE_STARTS):
            continue
        k = end1 + 1
        if k < len(low) and low[k] in AUXILIARIES:
            k += 1
        if k >= len(low):
            continue
        if low[k] in PREPOSITIONS:
            k += 1
        elif (low[k].endswith("ing") and len(low[k]) > 4) or low[k] in VERBS:
            k += 1
            if k < len(low) and low[k] in PARTICLES:
                k += 1
        else:
            continue
        start2 = k
        end2 = _phrase_starting(low, start2)
        if end2 is None or low[end2] == low[end1] or _plural(low, start1, end1) != _plural(low, start2, end2):
            continue
        if end2 + 1 < len(low) and not (low[end2 + 1] in FOLLOWERS or low[end2 + 1].endswith("ing")):
            continue  # "a jacket and hat", "a skateboard trick": moving the phrase would break the sentence
        first, second = words[start1:end1 + 1], words[start2:end2 + 1]
        out = words[:start1] + second + words[end1 + 1:start2] + first + words[end2 + 1:]
        return _join(out, words)
    return None


def count_change(caption: str) -> str | None:
    """Change the first count of a plural noun ("two dogs" -> "three dogs"); None if there is none."""
    words = tokens(caption)
    low = _low(words)
    for k, w in enumerate(low):
        if w not in _COUNT_CHANGE:
            continue
        for m in range(k + 1, min(len(low), k + 2 + MAX_MODIFIERS)):
            if low[m] in PLURAL_NOUNS or (low[m].endswith("s") and low[m] not in MODIFIERS and len(low[m]) > 3):
                out = list(words)
                new = _COUNT_CHANGE[w]
                out[k] = new.capitalize() if words[k][:1].isupper() else new
                return _join(out, words)
            if low[m] not in MODIFIERS:
                break
    return None


def noun_swap(caption: str) -> str | None:
    """Replace the first confusable noun, everywhere it occurs, with its confusable twin (dog -> cat,
    man -> woman, ...); None if there is none, if the twin is already in the caption, or if a gendered
    noun would disagree with a pronoun."""
    words = tokens(caption)
    low = _low(words)
    present = set(low)
    for w in low:
        new = CONFUSABLE.get(w)
        if new is None or new in present:
            continue
        if w in _GENDERED and present & _PRONOUNS:
            continue
        if (new[0] in "aeiou") != (w[0] in "aeiou") and any(
                low[k] in ("a", "an") and low[k + 1] == w for k in range(len(low) - 1)):
            continue  # "a"/"an" would no longer agree with the new noun
        out = [(new.capitalize() if words[k][:1].isupper() else new) if lw == w else words[k]
               for k, lw in enumerate(low)]
        return _join(out, words)
    return None


RULES: dict[str, Callable[[str], str | None]] = {"colour_swap": colour_swap, "role_swap": role_swap,
                                                   "count_change": count_change, "noun_swap": noun_swap}


def rewrite(caption: str, kind: str) -> str | None:
    """The caption rewritten by one rule (a name in KINDS), or None where that rule does not apply."""
    try:
        rule = RULES[kind]
    except KeyError:
        raise ValueError(f"unknown rewrite kind {kind!r} (one of {', '.join(KINDS)})") from None
    out = rule(caption)
    return out if out is not None and out.lower() != " ".join(tokens(caption)).lower() else None


def rewrites(caption: str, kinds: Sequence[str] = KINDS) -> dict[str, str]:
    """Every rule's rewrite of a caption that applies, by kind."""
    out = {}
    for kind in kinds:
        r = rewrite(caption, kind)
        if r is not None:
            out[kind] = r
    return out


def twin_table(captions: Sequence[str], kinds: Sequence[str] = KINDS) -> list[list[str]]:
    """For each caption, its rewrites (kinds in order; empty where none applies), to use as hard negatives."""
    return [list(rewrites(c, kinds).values()) for c in captions]


def sample_twins(captions: Sequence[str], n: int, seed: int = 0, kinds: Sequence[str] = KINDS
                 ) -> list[tuple[int, str, str]]:
    """Up to ``n`` (caption index, kind, rewrite) triples, at most one per caption, in a seeded random order."""
    order = list(range(len(captions)))
    random.Random(seed).shuffle(order)
    out = []
    for j in order:
        r = rewrites(captions[j], kinds)
        if r:
            kind = sorted(r)[random.Random(seed + j).randrange(len(r))]
            out.append((j, kind, r[kind]))
            if len(out) >= n:
                break
    return out
