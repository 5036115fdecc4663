"""Distributed indexing on Ray: embed a large folder on a Ray cluster, then build the index from shards.

Three steps, under the store's writer lock:

1. **Plan** (driver): the same scan and comparison with the store as the single-process indexer
   (``Indexer.plan``); the new and changed files, in path order, are cut into shards of
   ``shard_size`` files. A shard is named by a digest of its files (path, size, mtime), their
   caption texts and the encoder, so a rerun finds the shards it already finished.
2. **Embed** (Ray Data): the unfinished shards go through ``map_batches`` with an actor pool,
   one encoder per actor (a GPU per actor where the cluster has GPUs). An actor reads, hashes,
   decodes and embeds each file of its shard (plus its region features and caption texts) and
   writes one Parquet file atomically (temp file, then rename). Corrupt files become rows with an
   ``error``, not failures. A failed shard is retried by Ray (``max_task_retries``); a shard that
   still fails is reported, and the finished shards stay for the rerun.
3. **Build** (driver): the shards are replayed in order through the single-process indexer's own
   code (``Indexer.apply``) with the vectors read from them instead of computed, so ids, hashes,
   captions, skipped files and regions are exactly what ``imgsearch index`` would have written, and
   ``Store.save_indexes`` builds the FAISS index from SQLite in one go (IVF indexes train on a sample).

Photo paths must be the same on every node (a NAS mounted at the same place); with more than one
node, ``shard_dir`` must be shared storage too (an NFS path, or a URL pyarrow can write, e.g. s3://).
Ray is imported only here, and only when a Ray run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator
from urllib.parse import unquote, urlparse

import numpy as np
from tqdm import tqdm

from retrieval.encoders.base import Encoder
from retrieval.errors import DistributedIndexError
from retrieval.settings import RAY_FAIL_ENV, Settings
from retrieval.store import ImageRecord, Store

from .scan import FileEntry
from .sync import (Indexer, LoadedFile, ProgressFn, SyncPlan, SyncReport, check_folder, desired_captions,
                   embed_pixels, load_ahead, load_file)

if TYPE_CHECKING:
    import pyarrow as pa

INSTALL_HINT = "pip install 'imgsearch[ray]'"
SHARD_SIZE = 256
RETRIES = 3
_SHARD_META = b"imgsearch.shard"


def _arrow():
    """pyarrow (and its parquet and fs modules), or a DistributedIndexError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DistributedIndexError(f"distributed indexing needs Ray Data ({INSTALL_HINT}): {e}") from None
    return pa, pq, pafs


def require_ray() -> None:
    """Raise DistributedIndexError (saying how to install them) unless Ray and pyarrow are installed."""
    missing = [m for m in ("ray", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        raise DistributedIndexError(f"distributed indexing needs Ray Data ({INSTALL_HINT}); "
                                    f"not installed: {', '.join(missing)}")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise DistributedIndexError(f"distributed indexing needs Ray ({INSTALL_HINT}): {e}") from None
    return ray


def local_path(location: str) -> str:
    """A local path or ``file://`` URL as a local path."""
    return unquote(urlparse(location).path) if location.startswith("file://") else os.path.expanduser(location)


def local_root(root: str) -> str:
    """A folder to index, given as a local path or a ``file://`` URL, as an absolute local path."""
    if "://" in root and not root.startswith("file://"):
        raise DistributedIndexError(
            f"cannot index {root}: only local folders and file:// URLs are supported (mount the object "
            "store or NAS at the same path on every node, e.g. with rclone or s3fs, and index that path)")
    return check_folder(local_path(root))


# -- shards ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """A run of consecutive new or changed files, embedded by one Ray task into one Parquet file."""

    number: int  # position in this run's plan
    id: str  # digest of the files, their caption texts and the encoder
    files: tuple[FileEntry, ...]
    captions: dict[str, list[str]]  # path -> caption texts to embed (sidecar, manifest, file and folder names)

    @property
    def name(self) -> str:
        return f"shard-{self.id}.parquet"

    def to_json(self) -> str:
        return json.dumps({"number": self.number, "id": self.id, "captions": self.captions,
                           "files": [[f.path, f.size, f.mtime_ns] for f in self.files]})

    @classmethod
    def from_json(cls, text: str) -> "Shard":
        d = json.loads(text)
        return cls(d["number"], d["id"], tuple(FileEntry(*f) for f in d["files"]), d["captions"])


def plan_shards(todo: list[FileEntry], captions: dict[str, list[str]], *, fingerprint: str,
                region_key: str | None, shard_size: int) -> list[Shard]:
    """Cut the files to index into shards of ``shard_size``, in order, each named by its content."""
    shards = []
    for number, start in enumerate(range(0, len(todo), shard_size)):
        files = tuple(todo[start:start + shard_size])
        caps = {f.path: captions[f.path] for f in files if captions.get(f.path)}
        key = json.dumps([fingerprint, region_key, [[f.path, f.size, f.mtime_ns] for f in files], caps])
        shards.append(Shard(number, hashlib.sha256(key.encode()).hexdigest()[:24], files, caps))
    return shards


class ShardStore:
    """The folder (local path or pyarrow URL) holding the shard files."""

    def __init__(self, location: str) -> None:
        _, _, pafs = _arrow()
        if "://" in location and not location.startswith("file://"):
            self.fs, self.dir = pafs.FileSystem.from_uri(location)
        else:
            self.fs, self.dir = pafs.LocalFileSystem(), os.path.abspath(local_path(location))
        self.location = location

    def path(self, name: str) -> str:
        return f"{self.dir.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        _, _, pafs = _arrow()
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.File

    def finished(self, shard: Shard) -> bool:
        """True when the shard's file exists and holds this shard (its id, one row per file)."""
        _, pq, _ = _arrow()
        if not self.exists(shard.name):
            return False
        try:
            with self.fs.open_input_file(self.path(shard.name)) as f:
                meta = pq.read_metadata(f)
        except (OSError, ValueError):
            return False  # unreadable: embed it again
        return meta.num_rows == len(shard.files) and (meta.metadata or {}).get(_SHARD_META) == shard.id.encode()

    def write(self, shard: Shard, table: "pa.Table") -> None:
        """Write atomically: a temp file in the same folder, then a rename."""
        _, pq, _ = _arrow()
        self.fs.create_dir(self.dir, recursive=True)
        tmp = self.path(f".{shard.name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, self.path(shard.name))
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def read(self, shard: Shard) -> "pa.Table":
        _, pq, _ = _arrow()
        return pq.read_table(self.path(shard.name), filesystem=self.fs)

    def touch(self, name: str) -> None:
        self.fs.create_dir(self.dir, recursive=True)
        with self.fs.open_output_stream(self.path(name)):
            pass

    def remove(self, shards: list[Shard]) -> None:
        """Delete these shards' files and their leftovers (temp files of killed attempts, failure markers)."""
        _, _, pafs = _arrow()
        names = {s.name for s in shards}
        for info in self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True)):
            name = info.base_name
            if name in names or (name.startswith(".shard-") and name[1:].split(".parquet.")[0] + ".parquet" in names):
                self.fs.delete_file(info.path)


def _schema(dim: int, meta: dict[str, str]) -> "pa.Schema":
    pa, _, _ = _arrow()
    vector = pa.list_(pa.float32(), dim)
    return pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("hash", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()), ("taken_at", pa.timestamp("us")),
        ("description", pa.string()), ("vector", vector), ("regions", pa.binary()),
        ("captions", pa.list_(pa.struct([("text", pa.string()), ("vector", vector)]))), ("error", pa.string()),
    ], metadata={k.encode(): v.encode() for k, v in meta.items()})


def embed_shard(encoder: Encoder, shard: Shard, *, regions: bool, batch_size: int = 32,
                threads: int = 1) -> "pa.Table":
    """Read, hash, decode and embed every file of a shard (with its region features when ``regions``,
    and its caption texts): one row per file, in order; unreadable or corrupt files get an ``error``."""
    pa, _, _ = _arrow()
    items: list[LoadedFile] = []
    vectors: list[np.ndarray | None] = []
    region_rows: list[np.ndarray | None] = []
    batch: list[int] = []

    def flush() -> None:
        import torch

        vecs, regs = embed_pixels(encoder, torch.stack([items[i].pixels for i in batch]), regions=regions)
        for j, i in enumerate(batch):
            vectors[i] = np.asarray(vecs[j], dtype=np.float32)
            region_rows[i] = None if regs is None else np.asarray(regs[j])
            items[i].pixels = None  # free the decoded pixels
        batch.clear()

    window = max(2 * batch_size, 4 * threads)
    for item in load_ahead(lambda f: load_file(encoder, f), shard.files, threads, window):
        items.append(item)
        vectors.append(None)
        region_rows.append(None)
        if item.pixels is not None:
            batch.append(len(items) - 1)
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()

    texts_of = [sorted({it.description} - {None} | set(shard.captions.get(it.entry.path, ()))) if vec is not None
                else [] for it, vec in zip(items, vectors)]
    texts = sorted({t for ts in texts_of for t in ts})
    text_vecs = dict(zip(texts, encoder.encode_texts(texts))) if texts else {}
    first = next((r for r in region_rows if r is not None), None)
    meta = {_SHARD_META.decode(): shard.id, "encoder": encoder.spec, "fingerprint": encoder.fingerprint,
            "regions": json.dumps(None if first is None else {"dtype": str(first.dtype), "shape": list(first.shape)})}
    rows = []
    for it, vec, reg, ts in zip(items, vectors, region_rows, texts_of):
        rec = it.record
        rows.append({"path": it.entry.path, "size": it.entry.size, "mtime_ns": it.entry.mtime_ns,
                     "hash": it.hash or None, "width": rec and rec.width, "height": rec and rec.height,
                     "format": rec and rec.format, "taken_at": rec and rec.taken_at, "description": it.description,
                     "vector": None if vec is None else vec.tolist(),
                     "regions": None if reg is None else reg.tobytes(),
                     "captions": [{"text": t, "vector": np.asarray(text_vecs[t], np.float32).tolist()} for t in ts],
                     "error": it.error})
    return pa.Table.from_pylist(rows, schema=_schema(encoder.dim, meta))


@dataclass
class ShardRow:
    """One file of a finished shard, as read back on the driver."""

    path: str
    hash: str
    error: str | None
    record: ImageRecord | None
    description: str | None
    vector: np.ndarray | None
    regions: np.ndarray | None


def read_shard(table: "pa.Table", dim: int) -> tuple[list[ShardRow], dict[str, np.ndarray]]:
    """A shard's rows, in order, and its caption texts' vectors."""
    meta = json.loads((table.schema.metadata or {}).get(b"regions", b"null"))
    vec_col = table.column("vector").combine_chunks()
    ok = ~np.asarray(vec_col.is_null().to_numpy(zero_copy_only=False))
    flat = vec_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    vectors: list[np.ndarray | None] = [None] * len(ok)
    for pos, i in enumerate(np.flatnonzero(ok)):
        vectors[i] = flat[pos]
    rows = []
    fields = table.select(["path", "hash", "error", "size", "mtime_ns", "width", "height", "format", "taken_at",
                           "description", "regions"]).to_pylist()
    for r, vec in zip(fields, vectors):
        record = regions = None
        if vec is not None:
            record = ImageRecord(path=r["path"], size=r["size"], mtime_ns=r["mtime_ns"], hash=r["hash"],
                                 width=r["width"], height=r["height"], format=r["format"], taken_at=r["taken_at"])
            if r["regions"] is not None and meta:
                regions = np.frombuffer(r["regions"], dtype=meta["dtype"]).reshape(meta["shape"])
        rows.append(ShardRow(r["path"], r["hash"] or "", r["error"], record, r["description"], vec, regions))
    caps = table.column("captions").combine_chunks().flatten()
    texts = caps.field("text").to_pylist()
    cap_vecs = caps.field("vector").flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return rows, dict(zip(texts, cap_vecs))


# -- the Ray actor ------------------------------------------------------------------------------

class ShardWorker:
    """A Ray Data actor: one encoder, created once, embedding one shard per call."""

    def __init__(self, spec: str, fingerprint: str, regions: bool, shard_dir: str, batch_size: int,
                 threads: int, fail: dict[int, int] | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        from retrieval.encoders import create_encoder

        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, threads))
        self.encoder = create_encoder(spec)
        if self.encoder.fingerprint != fingerprint:
            raise DistributedIndexError(
                f"a Ray worker on {socket.gethostname()} loaded '{spec}' with fingerprint {self.encoder.fingerprint}, "
                f"the driver has {fingerprint}: install the same imgsearch (and weights) on every node")
        self.regions = regions
        self.shards = ShardStore(shard_dir)
        self.batch_size = batch_size
        self.threads = max(1, threads)
        self.fail = fail or {}

    def __call__(self, batch: dict) -> dict:
        results = [self._one(Shard.from_json(str(task))) for task in batch["task"]]
        return {k: np.asarray([r[k] for r in results]) for k in results[0]}

    def _one(self, shard: Shard) -> dict:
        self._maybe_fail(shard)
        t = time.perf_counter()
        table = embed_shard(self.encoder, shard, regions=self.regions, batch_size=self.batch_size,
                            threads=self.threads)
        self.shards.write(shard, table)
        return {"number": shard.number, "files": len(shard.files), "seconds": time.perf_counter() - t,
                "node": socket.gethostname()}

    def _maybe_fail(self, shard: Shard) -> None:
        """The test hook (RAY_FAIL_ENV): fail the first attempts of a shard, counted by marker files."""
        times = self.fail.get(shard.number, 0)
        for attempt in range(times):
            marker = f".{shard.name}.failed-{attempt}"
            if not self.shards.exists(marker):
                self.shards.touch(marker)
                raise RuntimeError(f"injected failure {attempt + 1} of {times} for shard {shard.number} ({RAY_FAIL_ENV})")


# -- the driver ---------------------------------------------------------------------------------

@dataclass
class RayReport(SyncReport):
    """What one Ray sync did: the SyncReport of the build, plus the Ray stage."""

    engine: str = "ray"
    shards: int = 0  # shards of new and changed files this run
    shards_run: int = 0  # embedded on Ray this run
    shards_reused: int = 0  # finished by an earlier run and read back
    workers: int = 0
    gpus_per_worker: int = 0
    worker_embedded: int = 0  # files read and embedded by the Ray workers this run
    worker_seconds: float = 0.0  # summed busy time of the workers on those shards
    ray_seconds: float = 0.0  # wall time of the Ray stage (cluster connect, actor start, model loads included)
    build_seconds: float = 0.0  # replaying the shards into SQLite, captions, FAISS
    shard_dir: str = ""
    nodes: list[str] = field(default_factory=list)

    @property
    def worker_photos_per_s(self) -> float | None:
        """Files embedded per second by one busy worker (None when no shard ran)."""
        return self.worker_embedded / self.worker_seconds if self.worker_seconds > 0 else None

    def as_dict(self) -> dict:
        d = super().as_dict()
        d["worker_photos_per_s"] = self.worker_photos_per_s
        return d

    def summary(self) -> str:
        line = super().summary()
        if not self.shards:
            return line
        rate = self.worker_photos_per_s
        workers = f"{self.workers} worker" + ("s" if self.workers != 1 else "")
        return (line + f"; Ray: {self.shards_run} of {self.shards} shards embedded by {workers}"
                + (f" ({rate:.1f} photos/s each)" if rate else "") + f", {self.shards_reused} reused")


class _ShardReplay(Indexer):
    """The single-process indexer, fed from finished shards instead of its encoder."""

    def __init__(self, encoder: Encoder, store: Store, shards: list[Shard], shard_store: ShardStore,
                 **kwargs) -> None:
        super().__init__(encoder, store, **kwargs)
        self.shards = shards
        self.shard_store = shard_store
        self.text_vectors: dict[str, np.ndarray] = {}

    def _load_all(self, todo: list[FileEntry], known: dict[str, int]) -> Iterator[LoadedFile]:
        if [f for s in self.shards for f in s.files] != todo:
            raise DistributedIndexError("the shards do not match the files to index (the folder changed?): rerun")
        for shard in self.shards:
            rows, texts = read_shard(self.shard_store.read(shard), self.encoder.dim)
            if [r.path for r in rows] != [f.path for f in shard.files]:
                raise DistributedIndexError(f"shard file {shard.name} does not hold its files: delete it and rerun")
            self.text_vectors.update(texts)
            for f, row in zip(shard.files, rows):
                yield self._loaded(f, row, known)

    def _loaded(self, f: FileEntry, row: ShardRow, known: dict[str, int]) -> LoadedFile:
        if row.error is not None:
            return LoadedFile(f, row.hash, error=row.error)
        if row.hash in known:
            return LoadedFile(f, row.hash)
        if self.region_key and row.regions is None:
            raise DistributedIndexError(f"a shard row for {f.path} has no region features: delete the shards, rerun")
        return LoadedFile(f, row.hash, record=row.record, description=row.description, vector=row.vector,
                          regions=row.regions)

    def _embed(self, batch: list[LoadedFile]) -> tuple[np.ndarray, np.ndarray | None]:
        vectors = np.stack([b.vector for b in batch])
        return vectors, np.stack([b.regions for b in batch]) if self.region_key else None

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        new = [t for t in texts if t not in self.text_vectors]
        if new:  # captions of unchanged photos edited since: embedded here
            self.text_vectors.update(zip(new, super()._encode_texts(new)))
        return np.stack([self.text_vectors[t] for t in texts])


class RayIndexer:
    """Keeps a store in sync with photo folders like ``Indexer``, embedding on a Ray cluster.

    ``address`` is a Ray cluster address (None starts a local Ray runtime, unless this process is
    already connected); ``workers`` the number of actors (default: one per GPU of the cluster,
    else one per ``cpus_per_worker`` CPUs); ``shard_dir`` where shards go (default DATA_DIR/shards;
    shared storage with more than one node); ``keep_shards`` keeps them after the build; ``fail`` the
    test hook {shard number: attempts that fail} (default: ``Settings.ray_fail_plan``).
    """

    def __init__(self, encoder: Encoder, store: Store, *, address: str | None = None, workers: int | None = None,
                 shard_size: int = SHARD_SIZE, shard_dir: str | None = None, batch_size: int = 32,
                 cpus_per_worker: int = 1, regions: bool | None = None, retries: int = RETRIES,
                 keep_shards: bool = False, show_progress: bool = True, fail: dict[int, int] | None = None) -> None:
        if min(shard_size, batch_size, cpus_per_worker, workers or 1) < 1 or retries < 0:
            raise ValueError("shard_size, batch_size, cpus_per_worker and workers must be >= 1, retries >= 0")
        require_ray()
        self.encoder, self.store = encoder, store
        self.address, self.workers, self.shard_size = address, workers, shard_size
        self.shard_store = ShardStore(shard_dir or str(store.data_dir / "shards"))
        self.batch_size, self.cpus_per_worker, self.retries = batch_size, cpus_per_worker, retries
        self.keep_shards, self.show_progress = keep_shards, show_progress
        self.fail = Settings.from_env().ray_fail_plan if fail is None else dict(fail)
        self.indexer = Indexer(encoder, store, batch_size=batch_size, show_progress=show_progress, regions=regions)
        self._owns_ray = False

    def sync(self, root: str, progress: ProgressFn | None = None) -> RayReport:
        """Bring the index up to date with ``root`` (a local folder or file:// URL); ``progress(done, total)``
        follows the files embedded on Ray."""
        root = local_root(root)
        store = self.store
        store.acquire_writer_lock()
        try:
            plan = self.indexer.plan(root)
            shards = self._shards(plan)
            report = RayReport(**plan.report.__dict__, shards=len(shards), shard_dir=self.shard_store.location)
            pending = [s for s in shards if not self.shard_store.finished(s)]
            report.shards_reused = len(shards) - len(pending)
            if pending:
                self._run(pending, report, progress)
            t = time.monotonic()
            replay = _ShardReplay(self.encoder, store, shards, self.shard_store, batch_size=self.batch_size,
                                  show_progress=self.show_progress, regions=self.indexer.regions)
            plan.report = report
            replay.apply(plan)
            report.build_seconds = time.monotonic() - t
            if not self.keep_shards:
                self.shard_store.remove(shards)
            return report
        finally:
            store.release_writer_lock()

    def close(self) -> None:
        """Shut down the Ray runtime if this indexer started it."""
        if self._owns_ray:
            _ray().shutdown()
            self._owns_ray = False

    def __enter__(self) -> "RayIndexer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- steps --------------------------------------------------------------------------------

    def _shards(self, plan: SyncPlan) -> list[Shard]:
        wanted = {f.path for f in plan.todo}
        desired, _ = desired_captions(plan.scan, weak_paths=wanted)  # errors are reported by the build
        captions = {p: sorted({t for t, _ in caps}) for p, caps in desired.items() if p in wanted}
        return plan_shards(plan.todo, captions, fingerprint=self.encoder.fingerprint,
                           region_key=self.indexer.region_key, shard_size=self.shard_size)

    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            local = not (self.address or os.environ.get("RAY_ADDRESS"))
            try:
                ray.init(address=self.address, logging_level=logging.WARNING,
                         **({"include_dashboard": False} if local else {}))
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray runtime"
                raise DistributedIndexError(f"cannot start or reach {where}: {_first_line(e)}") from None
            self._owns_ray = True
        return ray

    def _pool(self, ray, pending: int) -> tuple[int, int]:
        """(workers, GPUs per worker): as asked, else one per GPU of the cluster, else one per CPUs per worker."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        workers = self.workers or gpus or max(1, int(resources.get("CPU", 1)) // self.cpus_per_worker)
        return min(workers, pending), 1 if gpus else 0

    @contextlib.contextmanager
    def _data_context(self) -> Iterator[dict]:
        """Ray Data settings for this run (restored after): retry a failing shard ``retries`` times, let
        the other shards finish when one keeps failing, no Ray progress bars (ours is on stderr).
        Yields the extra map_batches arguments (older Ray retries through actor task retries)."""
        from ray.data import DataContext

        ctx = DataContext.get_current()
        settings: dict = {"max_errored_blocks": -1, "enable_progress_bars": False}
        extra = {}
        if hasattr(ctx, "max_map_retries"):
            settings.update(retried_map_errors=True, max_map_retries=self.retries)
        else:
            settings["actor_task_retry_on_errors"] = True
            extra["max_task_retries"] = self.retries
        saved = {k: getattr(ctx, k) for k in settings}
        for k, v in settings.items():
            setattr(ctx, k, v)
        try:
            yield extra
        finally:
            for k, v in saved.items():
                setattr(ctx, k, v)

    def _run(self, pending: list[Shard], report: RayReport, progress: ProgressFn | None) -> None:
        """Embed the pending shards on Ray; raise when some still fail after their retries."""
        t = time.monotonic()
        ray = self._connect()
        report.workers, report.gpus_per_worker = self._pool(ray, len(pending))
        worker_args = {"spec": self.encoder.spec, "fingerprint": self.encoder.fingerprint,
                       "regions": self.indexer.region_key is not None, "shard_dir": self.shard_store.location,
                       "batch_size": self.batch_size, "threads": self.cpus_per_worker, "fail": self.fail}
        total = sum(len(s.files) for s in pending)
        bar = tqdm(total=total, desc="embedding on Ray", unit="photo", file=sys.stderr,
                   disable=not self.show_progress, dynamic_ncols=True)
        done: set[int] = set()
        try:
            with self._data_context() as extra:
                ds = ray.data.from_items([{"task": s.to_json()} for s in pending], override_num_blocks=len(pending))
                ds = ds.map_batches(ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=report.workers),
                                    num_cpus=self.cpus_per_worker, num_gpus=report.gpus_per_worker,
                                    fn_constructor_kwargs=worker_args, **extra)
                for row in ds.iter_rows():
                    done.add(int(row["number"]))
                    report.worker_embedded += int(row["files"])
                    report.worker_seconds += float(row["seconds"])
                    if str(row["node"]) not in report.nodes:
                        report.nodes.append(str(row["node"]))
                    bar.update(int(row["files"]))
                    if progress:
                        progress(bar.n, total)
        except ray.exceptions.RayError as e:
            raise DistributedIndexError(f"the Ray run failed: {_first_line(e)}") from None
        finally:
            bar.close()
            report.ray_seconds = time.monotonic() - t
        report.shards_run = len(done)
        lost = [s for s in pending if s.number not in done or not self.shard_store.finished(s)]
        if lost:
            numbers = ", ".join(str(s.number) for s in lost[:5]) + (" …" if len(lost) > 5 else "")
            raise DistributedIndexError(
                f"{len(lost)} of {len(pending)} shards failed after {self.retries} retries (shard {numbers}; the Ray "
                "log above says why, or their files were written where this machine cannot see them: use a shared "
                f"--shard-dir); the {len(pending) - len(lost)} finished shards are kept in "
                f"{self.shard_store.location}: rerun to resume")


def _first_line(e: BaseException) -> str:
    """The line of a (Ray) error message that says what went wrong, not the traceback around it."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if "Error" in line and not line.lstrip().startswith(("File ", "ray::"))]
    line = (useful or lines or [type(e).__name__])[-1].strip()
    return line.removeprefix(f"{DistributedIndexError.__module__}.{DistributedIndexError.__name__}: ")[:300]


def ray_index(root: str, data_dir: str, *, model: str | None = None, address: str | None = None,
              workers: int | None = None, shard_size: int = SHARD_SIZE, progress: ProgressFn | None = None,
              **kwargs) -> RayReport:
    """Index ``root`` into the store in ``data_dir`` on Ray (see ``RayIndexer``) with encoder ``model``
    (default: the index's, else the bundled one); the library entry point."""
    from retrieval.encoders import create_encoder

    store = Store(data_dir)
    try:
        store.acquire_writer_lock()
        info = store.encoder_info
        encoder = create_encoder(model or (info.spec if info else "default"))
        store.check_encoder(encoder.fingerprint, encoder.spec)
        with RayIndexer(encoder, store, address=address, workers=workers, shard_size=shard_size, **kwargs) as ri:
            return ri.sync(root, progress)
    finally:
        store.close()
