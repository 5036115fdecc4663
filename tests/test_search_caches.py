"""The in-memory caches of the hybrid query path: the caption map, vectors read from FAISS, and word postings.

Each must give what SQLite gives, and follow a write made by another process (here: another Store on the
same folder) on the very next call.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.store import ImageRecord, Store
from retrieval.store import terms_index

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def library(path, n: int = 60) -> tuple[Store, list[int]]:
    """A store of n photos under /photos/<album>/, a third captioned, every photo with a folder caption."""
    store = Store(path)
    store.bind_encoder("fake", "fake:1", DIM)
    folder = store.add_folder("/photos")
    rng = np.random.default_rng(0)
    recs = [ImageRecord(path=f"/photos/{'kyoto' if i % 2 else 'lisbon'}/{'red bike' if i % 5 == 0 else f'IMG_{i:04d}'}"
                        f"{'' if i % 5 else f' {i}'}.jpg", size=i, mtime_ns=i, hash=f"h{i}") for i in range(n)]
    ids = store.add_images(folder, recs, unit(rng, n))
    items = [(iid, f"a {'man' if i % 3 else 'dog'} on a {'beach' if i % 4 else 'boat'}", "sidecar")
             for i, iid in enumerate(ids) if i % 3 == 0]
    items += [(iid, "kyoto" if i % 2 else "lisbon", "folder") for i, iid in enumerate(ids)]
    store.add_captions(items, unit(rng, len(items)))
    store.save_indexes()
    return store, ids


def sqlite_caption_rows(store: Store, image_ids) -> list[tuple]:
    caps = store.captions_of(image_ids)
    return [(c.id, c.image_id, c.source) for i in image_ids for c in caps[i]]


def test_caption_set_equals_sqlite_and_follows_another_writer(tmp_path):
    store, ids = library(tmp_path / "db")
    reader = Store(tmp_path / "db", create=False)
    pick = ids[::-3] + [10_000]  # any order, and an id that does not exist
    first = reader.caption_set(pick)  # read from SQLite: a first ask does not build the map
    assert reader.cache_info()["caption_map_bytes"] == 0
    got = reader.caption_set(pick)
    for a, b in zip((first.ids, first.image_ids, first.vectors), (got.ids, got.image_ids, got.vectors)):
        np.testing.assert_array_equal(a, b)
    assert [(int(a), int(b), got.source_names[int(c)]) for a, b, c in zip(got.ids, got.image_ids, got.source_codes)] \
        == sqlite_caption_rows(reader, pick)
    np.testing.assert_array_equal(got.vectors, reader.caption_vectors(got.ids.tolist()))
    assert reader.cache_info()["caption_map_bytes"] > 0  # it came from the map, not SQLite

    # another process drops the photo's last caption and adds one to another photo (SQLite reuses the freed id):
    # the reader's next call must not show it under its old photo
    victim = int(got.ids[got.image_ids == pick[0]][-1])
    row = reader.captions([victim])[victim]
    store.remove_captions(row.image_id, [(row.text, row.source)])
    new_id = store.add_captions([(ids[1], "a red bike", "sidecar")], unit(np.random.default_rng(9), 1))[0]
    assert new_id == victim
    after = reader.caption_set([row.image_id, ids[1]])
    assert [(int(a), int(b)) for a, b in zip(after.ids, after.image_ids)] == \
        [(c[0], c[1]) for c in sqlite_caption_rows(reader, [row.image_id, ids[1]])]
    assert (victim, row.image_id) not in zip(after.ids.tolist(), after.image_ids.tolist())
    assert reader.caption_images([victim, 10_000]).tolist() == [ids[1], -1]


def test_vectors_from_faiss_equal_sqlite(tmp_path):
    store, ids = library(tmp_path / "db")
    reader = Store(tmp_path / "db", create=False)
    reader.search_images(unit(np.random.default_rng(3), 1), 5)  # loads the FAISS index
    order = ids[::-1]
    from_faiss = reader.image_vectors(order)
    with reader.transaction(tracked=True):  # inside a transaction the store reads SQLite
        from_sqlite = reader.image_vectors(order)
    np.testing.assert_array_equal(from_faiss, from_sqlite)
    with pytest.raises(KeyError):
        reader.image_vectors([ids[0], 10_000])


def test_common_words_score_the_candidates_and_keep_the_all_words_rule(tmp_path, monkeypatch):
    store, ids = library(tmp_path / "db")
    monkeypatch.setattr(terms_index, "RANK_CAP", 15)  # "kyoto" (30 photos) is common here, "bike" (12) is not
    kyoto = [i for n, i in enumerate(ids) if n % 2]
    best = store.match_terms("kyoto", limit=4)
    assert len(best) == 4 and set(best) <= set(kyoto)
    pool = ids[:20]
    scored = store.match_terms("kyoto", limit=4, candidates=pool)
    assert set(scored) == set(best) | (set(pool) & set(kyoto))  # every candidate holding the word is scored
    assert all(m.all_words and m.fields == ("folder",) for m in scored.values())
    # mixed query: the rarer word picks the photos, the common one only adds to their score and fields
    bikes = [i for n, i in enumerate(ids) if n % 5 == 0]
    mixed = store.match_terms("kyoto bike", limit=10, candidates=pool)
    assert len(mixed) == 10 and set(mixed) <= set(bikes)
    assert {i for i, m in mixed.items() if m.all_words} == {i for i, m in mixed.items() if "folder" in m.fields} \
        == set(mixed) & set(kyoto) != set()
    alone = store.match_terms("bike", limit=50)
    assert all(mixed[i].score > alone[i].score for i in set(mixed) & set(kyoto))
    assert all(mixed[i].score == alone[i].score for i in set(mixed) - set(kyoto))


def test_word_cache_follows_a_rename_by_another_writer(tmp_path):
    store, ids = library(tmp_path / "db")
    reader = Store(tmp_path / "db", create=False)
    target = ids[3]
    assert target not in reader.match_terms("zanzibar")
    assert set(reader.match_terms("kyoto")) == {i for n, i in enumerate(ids) if n % 2}
    row = store.images([target])[target]
    store.update_file_state(target, path="/photos/zanzibar/beach.jpg", size=row.size, mtime_ns=row.mtime_ns)
    assert set(reader.match_terms("zanzibar")) == {target}  # no vector changed: the word cache still follows
    assert target not in reader.match_terms("kyoto")
