"""What hybrid text search costs over pixels-only search, on a synthetic library of realistic size.

The library (made once into the cache folder, keyed by size and dimension): ``n`` photos with random unit
vectors, mostly camera names (``IMG_001234.jpg``) and a fifth named in words ("black cat on a sofa.jpg"),
in album folders ("2019 Kyoto"); half of them carry one sidecar caption of Zipf-distributed words from a
~2,000-word vocabulary, so the FTS5 index holds posting lists from a few photos to most of them; and the
weak name and folder captions the indexer would add. A stub encoder turns text into unit vectors from a
hash, so the timing is the search and not the model. One timed query is ``Searcher.search`` as
``imgsearch search`` runs it, hybrid and pixels-only interleaved (their order alternating) over ~50
queries: common, mid and rare words, a word in no photo, three-word queries, and name and folder words.
The warm-up pass fills the store's in-memory caches (caption map, word postings) as a running server has them;
the first query on a freshly opened store, which builds them, is timed apart (``hybrid_first_query_ms``).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from indexer.captions import weak_captions
from retrieval.query import SearchQuery
from retrieval.search import Searcher
from retrieval.store import ImageRecord, Store
from retrieval.terms import name_words

Log = Callable[[str], None]
LIBRARY_VERSION = 1  # bump when the generated library changes: the cached store is rebuilt
TARGET_N = 100_000  # the size the target is stated at
VOCAB_SIZE = 2000
NAMED_SHARE = 0.2  # photos named in words rather than by the camera
CAPTIONED_SHARE = 0.5
CHUNK = 10_000

# the most frequent caption words (Zipf rank order); pseudo-words fill the vocabulary up to VOCAB_SIZE
COMMON_WORDS = """
man woman dog boy girl people child water grass shirt ball street snow beach red black white blue field
two group young running playing standing sitting walking jumping wearing holding looking front brown small
green yellow large little dogs men children person crowd bike rock air mountain hat jacket building car
road wall table chair sofa bench tree trees park lake river sea ocean sand wave surf pool city sky sunset
cat cats bird horse cow sheep toy camera phone bag hair face hand smile baby kitchen cake bread coffee
window door house garden flower flowers fence stairs bridge train bus boat plane sign light night dark
orange pink purple striped wooden stone metal glass old new tall short long wet dry muddy snowy sunny
climbing riding swimming throwing catching eating drinking reading sleeping dancing singing laughing
""".split()
NAME_WORDS = """black white red cat dog sofa beach sunset birthday cake mountain lake snow garden
kids party wedding dinner hike trip bike car boat bridge tree flowers portrait family friends""".split()
NAME_PHRASES = ("black cat on a sofa", "dog on the beach", "sunset over the lake", "birthday cake",
                "kids in the snow", "wedding dinner", "red bike", "family portrait", "mountain hike")
PLACES = """Kyoto Lisbon Paris Berlin Oslo Rome Vienna Prague Madrid Porto Seville Dublin Edinburgh Iceland
Tokyo Osaka Seoul Hanoi Bangkok Bali Sydney Melbourne Auckland Boston Chicago Denver Seattle Montreal Quebec
Havana""".split()
EVENTS = ("Birthday party", "Christmas", "Summer holiday", "Wedding", "Hiking trip", "Garden")
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def vocabulary(size: int = VOCAB_SIZE) -> list[str]:
    """The caption vocabulary in frequency-rank order: real photo words, then distinct pseudo-words."""
    words = list(dict.fromkeys(COMMON_WORDS))
    rng = np.random.default_rng(7)
    seen = set(words)
    while len(words) < size:
        w = "".join(rng.choice(_SYLLABLES, rng.integers(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words[:size]


class HashTextEncoder:
    """A stub encoder for search benchmarks: texts become deterministic unit vectors from their hash."""

    spec = "bench-hash"
    fingerprint = "bench-hash:1"
    image_size = 8
    hubness = None

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text, the same for the same text."""
        out = np.empty((len(texts), self.dim), np.float32)
        for n, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
            out[n] = v / np.linalg.norm(v)
        return out

    def encode_pixels(self, pixels):  # pragma: no cover - a text benchmark embeds no photo
        raise AssertionError("the hybrid benchmark embedded a photo")

    def encode_images(self, images):  # pragma: no cover
        raise AssertionError("the hybrid benchmark embedded a photo")


def library_paths(n: int, root: str, seed: int = 0) -> list[str]:
    """``n`` photo paths under ``root``: album folders of consecutive photos, camera or word file names."""
    rng = np.random.default_rng(seed)
    albums = max(1, n // 220)
    folders: list[str] = []
    trips: dict[str, int] = {}
    for _ in range(albums):
        year = 2010 + int(rng.integers(0, 15))
        name = f"{year} {rng.choice(PLACES)}" if rng.random() < 0.8 else f"{rng.choice(EVENTS)} {year}"
        trips[name] = trips.get(name, 0) + 1
        folders.append(name if trips[name] == 1 else f"{name} {trips[name]}")  # "2019 Kyoto 2": a second trip
    named = rng.random(n) < NAMED_SHARE
    seen: dict[str, int] = {}
    paths = []
    for i in range(n):
        folder = folders[i * albums // n]
        if named[i]:
            phrase = NAME_PHRASES[int(rng.integers(len(NAME_PHRASES)))] if rng.random() < 0.5 else \
                " ".join(rng.choice(NAME_WORDS, int(rng.integers(1, 4)), replace=False))
            key = f"{folder}/{phrase}"
            seen[key] = seen.get(key, 0) + 1
            name = phrase if seen[key] == 1 else f"{phrase} {seen[key]}"
        else:
            name = f"IMG_{i:06d}"
        paths.append(f"{root}/{folder}/{name}.jpg")
    return paths


def library_captions(n: int, vocab: list[str], seed: int = 1) -> dict[int, str]:
    """photo index -> its one sidecar caption, for a seeded ``CAPTIONED_SHARE`` of the ``n`` photos."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    out = {}
    for i in np.nonzero(rng.random(n) < CAPTIONED_SHARE)[0].tolist():
        words = [vocab[w] for w in rng.choice(len(vocab), int(rng.integers(5, 12)), p=p)]
        words.insert(int(rng.integers(1, len(words))), rng.choice(("in the", "on a", "with a", "near the")))
        out[i] = "a " + " ".join(words)
    return out


def build_library(n: int, dim: int, cache: Path, log: Log = print, *, weak: bool = True) -> Path:
    """The data folder of the synthetic library (built once; rebuilt when its marker is missing); ``weak``:
    with the name and folder captions the indexer adds (False: the sidecars only)."""
    data_dir = cache / f"hybrid-library-{n}-{dim}-v{LIBRARY_VERSION}{'' if weak else '-sidecars'}"
    marker = data_dir / ".complete"
    if marker.exists():
        return data_dir
    log(f"hybrid bench: building a {n:,}-photo library (cached in {data_dir})")
    shutil.rmtree(data_dir, ignore_errors=True)
    t = time.perf_counter()
    enc = HashTextEncoder(dim)
    root = str(data_dir / "photos")  # the files never exist: nothing here reads them
    paths = library_paths(n, root)
    captions = library_captions(n, vocabulary())
    rng = np.random.default_rng(2)
    with Store(data_dir) as store:
        store.bind_encoder(enc.spec, enc.fingerprint, dim)
        folder_id = store.add_folder(root)
        with store.transaction():  # untracked: the FAISS files are built once, after
            ids: list[int] = []
            for i in range(0, n, CHUNK):
                records = [ImageRecord(path=p, size=1000 + j, mtime_ns=1, hash=f"h{j}")
                           for j, p in enumerate(paths[i:i + CHUNK], start=i)]
                v = rng.standard_normal((len(records), dim), dtype=np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                ids += store.bulk_add_images(folder_id, records, v)
            items = [(ids[i], text, "sidecar") for i, text in captions.items()]
            for i, path in enumerate(paths if weak else ()):
                items += [(ids[i], text, source) for text, source in sorted(weak_captions(path, root))]
            for i in range(0, len(items), CHUNK):
                part = items[i:i + CHUNK]
                store.add_captions(part, enc.encode_texts([text for _, text, _ in part]))
        store.save_indexes()
        log(f"  {n:,} photos, {len(items):,} captions ({len(captions):,} sidecars) in "
            f"{time.perf_counter() - t:.0f}s")
    marker.write_text("ok")
    return data_dir


def bench_queries(vocab: list[str], seed: int = 5) -> list[tuple[str, str]]:
    """(kind, text) of the ~50 timed queries."""
    rng = np.random.default_rng(seed)
    out = [("common", w) for w in vocab[:8]]
    out += [("mid", vocab[int(r)]) for r in rng.integers(100, 400, 8)]
    out += [("rare", vocab[int(r)]) for r in rng.integers(len(vocab) - 500, len(vocab), 8)]
    out += [("absent", w) for w in ("xylograph", "quetzalcoatl", "zeppelinx", "blorptang", "vexquill", "jubbawock")]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    out += [("3 words", " ".join(vocab[int(r)] for r in rng.choice(len(vocab), 3, p=p))) for _ in range(12)]
    out += [("name/folder", t) for t in ("black cat", "Kyoto", "birthday cake", "2019 Lisbon", "sunset lake",
                                          "kids in the snow", "Christmas 2015", "red bike")]
    return out


def _row(path: str, n: int, queries: str, times: list[float]) -> dict:
    return {"path": path, "n": n, "queries": queries, "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95))}


def bench_hybrid(n: int, dim: int, cache: Path, *, rounds: int = 3, k: int = 10, weak: bool = True,
                 log: Log = print) -> dict:
    """Rows of p50/p95 ms of pixels-only and hybrid text search at ``n`` photos (all queries, then by
    kind), and the summary figures; raises AssertionError if the library has no lexical rows."""
    vocab = vocabulary()
    data_dir = build_library(n, dim, cache, log, weak=weak)
    enc = HashTextEncoder(dim)
    queries = bench_queries(vocab)
    with Store(data_dir) as store:
        store.bind_encoder(enc.spec, enc.fingerprint, dim)
        first = next(iter(store.images([1]).values()))
        place = [w for w in name_words(first.path, first.folder).folder if not w.isdigit()][0]
        caption_hits, folder_hits = store.match_terms(vocab[0], limit=10), store.match_terms(place, limit=10)
        if not caption_hits or not any("folder" in m.fields for m in folder_hits.values()):
            raise AssertionError(f"the hybrid bench library in {data_dir} has no lexical rows")
        captions = store.count_captions()
        searcher = Searcher(enc, store)
        plain = {False: [], True: []}
        times: dict[bool, list[tuple[str, float]]] = {False: [], True: []}
        hits: list[int] = []
        lexical = 0
        for kind, text in queries:  # warm-up: pages in the FAISS files and SQLite, builds the filter arrays
            for hybrid in (True, False):
                searcher.search(SearchQuery(text=text, k=k, hybrid=hybrid))
        for r in range(rounds):
            for m, (kind, text) in enumerate(queries):
                for hybrid in ((True, False) if (m + r) % 2 == 0 else (False, True)):
                    t = time.perf_counter()
                    found = searcher.search(SearchQuery(text=text, k=k, hybrid=hybrid))
                    ms = (time.perf_counter() - t) * 1000
                    times[hybrid].append((kind, ms))
                    plain[hybrid].append(ms)
                    if hybrid and r == 0:
                        hits.append(len(found))
                        lexical += any(set(h.matched or ()) - {"pixels"} for h in found)
        cache = store.cache_info()
    first = {}
    for hybrid in (False, True):  # a fresh store's first query of the most common word: what building the caches costs
        with Store(data_dir) as fresh:
            searcher = Searcher(enc, fresh)
            t = time.perf_counter()
            searcher.search(SearchQuery(text=vocab[0], k=k, hybrid=hybrid))
            first[hybrid] = (time.perf_counter() - t) * 1000
    rows = [_row(name, n, "all", plain[h]) for name, h in (("pixels", False), ("hybrid", True))]
    for kind in dict.fromkeys(q[0] for q in queries):
        for name, h in (("pixels", False), ("hybrid", True)):
            rows.append(_row(name, n, kind, [ms for kd, ms in times[h] if kd == kind]))
    pix, hyb = rows[0]["p50_ms"], rows[1]["p50_ms"]
    log(f"hybrid bench at {n:,} photos: pixels p50 {pix:.2f} ms, hybrid p50 {hyb:.2f} ms (+{hyb - pix:.2f} ms)")
    return {"hybrid_rows": rows, "hybrid_n": n, "hybrid_queries": len(queries), "pixels_p50_ms_100k": pix,
            "hybrid_p50_ms_100k": hyb, "hybrid_added_p50_ms_100k": hyb - pix,
            "hybrid_p95_ms_100k": rows[1]["p95_ms"], "pixels_p95_ms_100k": rows[0]["p95_ms"],
            "hybrid_min_hits": min(hits), "hybrid_queries_with_word_hits": lexical,
            "hybrid_library_captions": captions, "hybrid_first_query_ms": first[True],
            "pixels_first_query_ms": first[False], "hybrid_caption_map_bytes": cache["caption_map_bytes"],
            "hybrid_terms_cache_bytes": cache["terms_bytes"], "hybrid_terms_cache_tokens": cache["terms_tokens"]}


def table_lines(rows: list[dict]) -> list[str]:
    """The hybrid rows as a readable table."""
    lines = [f"{'n':>9} {'path':7} {'queries':12} {'p50 ms':>8} {'p95 ms':>8}"]
    for r in rows:
        lines.append(f"{r['n']:9d} {r['path']:7} {r['queries']:12} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f}")
    return lines

