"""`imgsearch check`: compare SQLite (the truth) with itself, the FAISS files and the photo folders,
and repair what can be repaired from the stored rows."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

import sqlalchemy as sa

from .database import Database
from .indexes import IndexSet
from .lock import WriterLock
from .schema import REGION_KEY_META, captions_table, image_vectors_table, images_table, read_meta, regions_table
from .terms_index import delete_rows, expected_rows, terms_drift, write_rows
from .vectors import VectorIndex

REGION_ISSUES = frozenset({"orphan_region", "region_size", "region_unbound"})
TERMS_ISSUES = frozenset({"terms_missing", "terms_stale", "terms_orphan"})  # lexical index rows: no vectors


@dataclass
class CheckIssue:
    """One kind of drift found by ``Store.check``."""

    kind: str  # e.g. faiss_ids_without_rows, image_without_vector, missing_file
    message: str
    count: int = 1
    repairable: bool = True  # False: reported only (a vanished photo file, say)
    examples: list = field(default_factory=list)  # a few of the ids or paths concerned

    def as_dict(self) -> dict:
        """The issue as a JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class CheckReport:
    """What ``Store.check`` found, and (with repair) what it did and what is left."""

    data_dir: str
    generation: int = 0
    images: int = 0
    captions: int = 0
    regions: int = 0  # images with stored region features
    writer_active: bool = False
    issues: list[CheckIssue] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    remaining: list[CheckIssue] | None = None  # after a repair: the issues a second check still finds

    @property
    def ok(self) -> bool:
        """True when nothing that needs repair is (left) wrong; vanished photo files do not count."""
        left = self.issues if self.remaining is None else self.remaining
        return not any(i.repairable for i in left)

    def as_dict(self) -> dict:
        """The report as a JSON-ready dict (the `imgsearch check --json` output)."""
        d = dict(self.__dict__)
        d["issues"] = [i.as_dict() for i in self.issues]
        d["remaining"] = None if self.remaining is None else [i.as_dict() for i in self.remaining]
        d["ok"] = self.ok
        return d


class Checker:
    """Check and repair of one store, from its database, its FAISS files and its writer lock."""

    def __init__(self, db: Database, indexes: IndexSet, lock: WriterLock) -> None:
        self.db = db
        self.indexes = indexes
        self.lock = lock

    def check(self) -> CheckReport:
        """Every drift between the rows, the FAISS files and the photo folders (see ``Store.check``)."""
        info = self.db.encoder_info
        gen = self.db.generation
        report = CheckReport(data_dir=str(self.db.data_dir), generation=gen, writer_active=self.lock.active())
        im, iv, cp, rg = images_table.c, image_vectors_table.c, captions_table.c, regions_table.c
        with self.db.connect() as conn:
            paths = dict(conn.execute(sa.select(im.id, im.path)).all())
            regions = {r.image_id: (r.n, r.tokens, r.channels) for r in conn.execute(
                sa.select(rg.image_id, rg.tokens, rg.channels, sa.func.length(rg.data).label("n")))}
            region_key = read_meta(conn, REGION_KEY_META)
            vec_len = dict(conn.execute(sa.select(iv.image_id, sa.func.length(iv.vector))).all())
            caps = {r.id: (r.image_id, r.n) for r in conn.execute(
                sa.select(cp.id, cp.image_id, sa.func.length(cp.vector).label("n")))}
            missing_terms, stale_terms, orphan_terms = terms_drift(conn)
        report.images, report.captions, report.regions = len(paths), len(caps), len(regions)
        nbytes = info.dim * 4 if info else None

        def issue(kind: str, ids, message: str, repairable: bool = True) -> None:
            ids = sorted(ids)
            if ids:
                report.issues.append(CheckIssue(kind, f"{len(ids)} {message}", len(ids), repairable, ids[:20]))

        issue("image_without_vector", set(paths) - set(vec_len), "image row(s) without a stored vector")
        issue("vector_without_image", set(vec_len) - set(paths), "stored vector(s) without an image row")
        if nbytes is None and (vec_len or caps):
            report.issues.append(CheckIssue("no_encoder", "vectors are stored but the index records no encoder "
                                            "(rebuild it with `imgsearch index DIR --rebuild`)", 1, False))
        bad_img = {i for i, n in vec_len.items() if nbytes is not None and n != nbytes}
        bad_cap = {i for i, (_, n) in caps.items() if nbytes is not None and n != nbytes}
        issue("image_vector_dim", bad_img, f"image vector(s) whose size is not {info.dim if info else '?'} floats")
        issue("orphan_caption", {i for i, (img, _) in caps.items() if img not in paths}, "caption(s) of no image")
        issue("caption_vector_dim", bad_cap, f"caption vector(s) whose size is not {info.dim if info else '?'} floats")
        # regions are optional (older indexes, encoders without them): only broken rows count
        issue("orphan_region", set(regions) - set(paths), "region row(s) of no image")
        issue("region_size", {i for i, (n, t, c) in regions.items() if n != t * (4 + c)},
              "region row(s) whose size does not match their shape")
        if regions and region_key is None:
            issue("region_unbound", set(regions), "region row(s) stored without a region key")
        issue("terms_missing", missing_terms, "photo(s) missing from the lexical index")
        issue("terms_stale", stale_terms, "lexical index row(s) whose words differ from the photo's name, folder "
                                          "or captions")
        issue("terms_orphan", orphan_terms, "lexical index row(s) of no photo")
        gone = [p for p in paths.values() if not os.path.lexists(p)]
        if gone:
            report.issues.append(CheckIssue("missing_file", f"{len(gone)} indexed photo(s) no longer on disk "
                                            "(the next `imgsearch index` of their folder removes them)",
                                            len(gone), False, sorted(gone)[:20]))
        if info is None:
            return report
        expected = {"images": set(vec_len) & set(paths) - bad_img,
                    "captions": {i for i, (img, _) in caps.items() if img in paths} - bad_cap}
        for kind, want in expected.items():
            self.check_faiss_file(kind, want, gen, info.dim, report)
        return report

    def check_faiss_file(self, kind: str, want: set[int], gen: int, dim: int, report: CheckReport) -> None:
        """Add to ``report`` what is wrong with one FAISS file and its sidecar, given the ids it should hold."""
        path, side = self.indexes.path(kind), self.indexes.path(kind).with_suffix(".json")

        def add(what: str, message: str, count: int = 1, examples=()) -> None:
            report.issues.append(CheckIssue(f"faiss_{what}", f"{path.name}: {message}", count, True,
                                            sorted(examples)[:20]))

        if not path.exists() and not side.exists():
            if want:
                add("missing", "missing (it is rebuilt from the stored vectors on first search)")
            return
        if not side.exists():
            add("stale", f"written without its generation file {side.name} (an interrupted save); "
                         "it is rebuilt on first search")
            return
        try:
            saved = json.loads(side.read_text())
            saved_gen = int(saved["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            add("corrupt", f"its generation file {side.name} is missing or unreadable")
            return
        deleted = saved.get("deleted") or ()
        try:
            vi = VectorIndex.load(path, dim, mmap=True, params=self.indexes.params, deleted=deleted)
        except ValueError as e:  # the file holds vectors of another dimension
            add("dim", str(e).replace(str(path), path.name))
            return
        except (RuntimeError, OSError) as e:
            add("corrupt", f"unreadable FAISS file ({str(e).strip().splitlines()[0][:120]})")
            return
        if saved.get("dim") not in (None, dim):
            add("dim", f"its generation file says {saved.get('dim')}-d vectors, the index is {dim}-d")
            return
        if saved_gen > gen:
            add("generation_mismatch", f"claims generation {saved_gen}, but the database is only at {gen} "
                                       "(restored from a backup, or copied from another index?)")
            return
        if saved_gen < gen:
            add("stale", f"reflects generation {saved_gen}, the database is at {gen}"
                         + (" (an indexer is running)" if report.writer_active else ""))
            return
        if "total" in saved and int(vi.index.ntotal) != int(saved["total"]):
            add("corrupt", f"holds {vi.index.ntotal} vectors, its generation file says {saved['total']} "
                           "(the file and its generation file come from different saves)")
            return
        stored = vi.ids().tolist()
        have = set(stored) - {int(i) for i in deleted}
        if len(set(stored)) != len(stored):
            add("duplicate_ids", "holds an id more than once", len(stored) - len(set(stored)))
        extra, lacking = have - want, want - have
        if extra:
            add("ids_without_rows", f"{len(extra)} id(s) with no row in the database", len(extra), extra)
        if lacking:
            add("rows_missing", f"{len(lacking)} row(s) of the database are not in it", len(lacking), lacking)

    def repair(self, report: CheckReport) -> list[str]:
        """Drop the rows the check found broken, then rebuild both FAISS files from the stored vectors."""
        by_kind = {i.kind: i for i in report.issues}
        # Region rows hold no vectors: fixing them is a tracked transaction that leaves the
        # generation (and so the FAISS files) alone.
        with self.db.tracked() as conn:
            region_done = self.repair_regions(conn)
        if not any(i.repairable and i.kind not in REGION_ISSUES | TERMS_ISSUES for i in report.issues):
            return region_done + (self.repair_terms() if TERMS_ISSUES & set(by_kind) else [])
        done: list[str] = []
        im, iv, cp = images_table.c, image_vectors_table.c, captions_table.c
        info = self.db.encoder_info
        nbytes = info.dim * 4 if info else None
        with self.db.transaction() as conn:
            paths = {r[0] for r in conn.execute(sa.select(im.id))}
            no_vec = [r[0] for r in conn.execute(sa.select(im.id).where(~im.id.in_(sa.select(iv.image_id))))]
            bad_img = [] if nbytes is None else [
                r[0] for r in conn.execute(sa.select(iv.image_id).where(sa.func.length(iv.vector) != nbytes))]
            drop = sorted(set(no_vec) | set(bad_img) & paths)
            for i in range(0, len(drop), 500):
                chunk = drop[i:i + 500]
                conn.execute(sa.delete(captions_table).where(cp.image_id.in_(chunk)))
                conn.execute(sa.delete(regions_table).where(regions_table.c.image_id.in_(chunk)))
                conn.execute(sa.delete(image_vectors_table).where(iv.image_id.in_(chunk)))
                conn.execute(sa.delete(images_table).where(im.id.in_(chunk)))
            if drop:
                done.append(f"dropped {len(drop)} image row(s) without a usable vector "
                            "(the next `imgsearch index` embeds those photos again)")
            n = conn.execute(sa.delete(image_vectors_table).where(~iv.image_id.in_(sa.select(im.id)))).rowcount
            if n:
                done.append(f"dropped {n} stored vector(s) without an image row")
            n = conn.execute(sa.delete(captions_table).where(~cp.image_id.in_(sa.select(im.id)))).rowcount
            if n:
                done.append(f"dropped {n} caption(s) of no image")
            if nbytes is not None:
                n = conn.execute(sa.delete(captions_table).where(sa.func.length(cp.vector) != nbytes)).rowcount
                if n:
                    done.append(f"dropped {n} caption(s) with a wrong-size vector (the next `imgsearch index` "
                                "adds sidecar and manifest captions again)")
        if info is not None and (done or any(k.startswith("faiss_") for k in by_kind)):
            for kind in ("images", "captions"):
                for p in (self.indexes.path(kind), self.indexes.path(kind).with_suffix(".json")):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            self.indexes.reset()
            self.indexes.save_all()
            done.append("rebuilt images.faiss and captions.faiss from the stored vectors")
        return region_done + done + self.repair_terms()  # rows dropped above take their lexical rows along

    def repair_terms(self) -> list[str]:
        """Rewrite the lexical index rows that are missing or stale and drop orphaned ones (a tracked
        transaction: no vectors change, so the generation stays)."""
        with self.db.tracked() as conn:
            missing, stale, orphan = terms_drift(conn)
            delete_rows(conn, orphan)
            write_rows(conn, expected_rows(conn, sorted(missing | stale)))
        if not (missing or stale or orphan):
            return []
        return [f"rewrote {len(missing) + len(stale)} lexical index row(s) and dropped {len(orphan)} orphaned one(s)"]

    def repair_regions(self, conn: sa.Connection) -> list[str]:
        """Drop region rows of no image, of the wrong size, or stored with no region key bound."""
        done = []
        rg = regions_table.c
        n = conn.execute(sa.delete(regions_table).where(~rg.image_id.in_(sa.select(images_table.c.id)))).rowcount
        if n:
            done.append(f"dropped {n} region row(s) of no image")
        n = conn.execute(sa.delete(regions_table).where(
            sa.func.length(rg.data) != rg.tokens * (4 + rg.channels))).rowcount
        if n:
            done.append(f"dropped {n} region row(s) of the wrong size")
        if read_meta(conn, REGION_KEY_META) is None:
            n = conn.execute(sa.delete(regions_table)).rowcount
            if n:
                done.append(f"dropped {n} region row(s) stored without a region key")
        return done
