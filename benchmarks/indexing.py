"""Indexing throughput (photos/s), end to end and by stage, and the unchanged-library reindex.

Photo sets are generated once into the cache folder (never into the repository):
``224``: Flickr8k photos resized so the shorter side is 224 px (JPEG q90);
``12mp``: Flickr8k photos upscaled to 4000x3000 (JPEG q90, ~12 megapixels).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from indexer.sync import Indexer, file_hash
from retrieval.encoders.runtime import use_engine
from retrieval.images import load_image_and_info
from retrieval.store import ImageRecord, Store

Log = Callable[[str], None]


def _flickr_sources(flickr_dir: Path, n: int) -> list[Path]:
    files = sorted(p for p in (flickr_dir / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no JPEGs in {flickr_dir / 'images'}")
    return files[:n]


def photo_set(kind: str, n: int, flickr_dir: Path, cache: Path, log: Log) -> Path:
    """A folder of ``n`` generated JPEGs of this kind ("224" or "12mp"), made once and cached."""
    folder = cache / f"photos-{kind}-{n}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    log(f"generating {n} {kind} JPEGs in {folder}")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".photos-{kind}-"))
    for i, src in enumerate(_flickr_sources(flickr_dir, n)):
        with Image.open(src) as im:
            im = im.convert("RGB")
            if kind == "12mp":
                im = im.resize((4000, 3000), Image.Resampling.BICUBIC)
            else:
                s = 224 / min(im.size)
                im = im.resize((max(224, round(im.width * s)), max(224, round(im.height * s))), Image.Resampling.BICUBIC)
            im.save(tmp / f"{i:05d}.jpg", quality=90)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def model_only(encoder, n: int, batch_size: int) -> float:
    """Photos/s of ``encode_pixels`` alone, on ready-made pixel batches."""
    x = torch.randn(batch_size, 3, encoder.image_size, encoder.image_size)
    encoder.encode_pixels(x)  # warm up
    done, t = 0, time.perf_counter()
    while done < n:
        encoder.encode_pixels(x)
        done += batch_size
    return done / (time.perf_counter() - t)


def engines(encoder) -> list[str]:
    """The inference engines an encoder can be switched between: torch and onnx when it runs on ONNX Runtime."""
    return ["torch", "onnx"] if getattr(encoder, "engine", None) == "onnx" else []


def model_only_by_engine(encoder, n: int, batch_size: int) -> dict:
    """``model_only_photos_per_s`` (the encoder's own engine) and, when it runs on ONNX Runtime, the
    figures of torch and onnx side by side (``..._torch``, ``..._onnx``) and their ratio."""
    names = engines(encoder)
    if not names:
        return {"model_only_photos_per_s": model_only(encoder, n, batch_size)}
    res = {}
    for name in names:
        with use_engine(encoder, name):
            res[f"model_only_photos_per_s_{name}"] = model_only(encoder, n, batch_size)
    res["model_only_photos_per_s"] = res[f"model_only_photos_per_s_{encoder.engine}"]
    res["model_only_onnx_vs_torch"] = res["model_only_photos_per_s_onnx"] / res["model_only_photos_per_s_torch"]
    return res


def text_latency_by_engine(encoder, texts: list[str]) -> dict:
    """p50 milliseconds to embed one text query (``text_encode_p50_ms``), per engine as ``model_only_by_engine``,
    and on the light path (``text_encode_p50_ms_light``: what ``search`` and ``serve`` run) where it has one."""
    def p50(enc=encoder) -> float:
        enc.encode_texts(texts[:1])  # warm up (trace or export)
        lat = []
        for t in texts:
            t0 = time.perf_counter()
            enc.encode_texts([t])
            lat.append((time.perf_counter() - t0) * 1000)
        return float(np.percentile(lat, 50))

    names = engines(encoder)
    if not names:
        return {"text_encode_p50_ms": p50()}
    res = {}
    for name in names:
        with use_engine(encoder, name):
            res[f"text_encode_p50_ms_{name}"] = p50()
    res["text_encode_p50_ms"] = res[f"text_encode_p50_ms_{encoder.engine}"]
    res["text_encode_onnx_vs_torch"] = res["text_encode_p50_ms_onnx"] / res["text_encode_p50_ms_torch"]
    from retrieval.encoders.light import light_encoder, write_manifest

    if write_manifest(encoder) is not None and (light := light_encoder(encoder.spec)) is not None:
        res["text_encode_p50_ms_light"] = p50(light)
    return res


def stage_times(encoder, folder: Path, n: int) -> dict:
    """Milliseconds per photo of each stage, one thread, no overlap: read+hash, decode, preprocess."""
    files = sorted(folder.glob("*.jpg"))[:n]
    read = dec = pre = 0.0
    for f in files:
        t0 = time.perf_counter()
        data = f.read_bytes()
        file_hash(data)
        t1 = time.perf_counter()
        image, _ = load_image_and_info(io.BytesIO(data), target_size=encoder.image_size)
        t2 = time.perf_counter()
        encoder.preprocess(image)
        t3 = time.perf_counter()
        read, dec, pre = read + t1 - t0, dec + t2 - t1, pre + t3 - t2
    k = 1000 / len(files)
    return {"read_hash_ms": read * k, "decode_ms": dec * k, "preprocess_ms": pre * k}


def end_to_end(encoder, folder: Path, *, batch_size: int, workers: int | None, log: Log) -> dict:
    """A fresh index of ``folder`` with the real Indexer: photos/s, and the store's share of the time."""
    db = Path(tempfile.mkdtemp(prefix="imgsearch-bench-db-"))
    try:
        store = Store(db)
        stored = {"s": 0.0}
        real_add = store.add_images

        def timed_add(*a, **kw):
            t = time.perf_counter()
            try:
                return real_add(*a, **kw)
            finally:
                stored["s"] += time.perf_counter() - t

        store.add_images = timed_add
        indexer = Indexer(encoder, store, batch_size=batch_size, workers=workers, show_progress=False)
        t = time.perf_counter()
        report = indexer.sync(str(folder))
        wall = time.perf_counter() - t
        store.close()
        n = report.embedded
        log(f"  indexed {n} photos from {folder.name} in {wall:.1f}s ({n / wall:.1f} photos/s)")
        return {"photos": n, "seconds": wall, "photos_per_s": n / wall, "store_ms": stored["s"] * 1000 / max(1, n)}
    finally:
        shutil.rmtree(db, ignore_errors=True)


class _StubEncoder:
    """Stands in for the model in the reindex benchmark: nothing may be embedded."""

    spec = "bench-stub"
    fingerprint = "bench-stub:1"
    image_size = 8

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def preprocess(self, image):  # pragma: no cover - an unchanged reindex never decodes
        raise AssertionError("an unchanged reindex decoded a photo")

    def encode_pixels(self, pixels):  # pragma: no cover
        raise AssertionError("an unchanged reindex embedded a photo")

    def encode_texts(self, texts):  # pragma: no cover
        raise AssertionError("an unchanged reindex embedded a caption")


def reindex_unchanged(n: int, dim: int, cache: Path, log: Log) -> dict:
    """Seconds to reindex an unchanged library of ``n`` files (tiny placeholder files; their store
    rows and vectors are written directly, as a first index would have left them)."""
    lib = cache / f"library-{n}"
    marker = lib / ".complete"
    if not marker.exists():
        log(f"creating {n:,} placeholder files in {lib}")
        shutil.rmtree(lib, ignore_errors=True)
        for i in range(n):
            d = lib / f"{i // 1000:04d}"
            if i % 1000 == 0:
                d.mkdir(parents=True, exist_ok=True)
            (d / f"IMG_{i:06d}.jpg").write_bytes(b"\xff\xd8placeholder%d" % i)
        marker.write_text("ok")
    db = Path(tempfile.mkdtemp(prefix="imgsearch-bench-reindex-"))
    try:
        store = Store(db)
        enc = _StubEncoder(dim)
        store.bind_encoder(enc.spec, enc.fingerprint, dim)
        folder_id = store.add_folder(str(lib))
        t = time.perf_counter()
        entries = sorted(lib.rglob("*.jpg"))
        _bulk_rows(store, folder_id, entries, dim)
        store.save_indexes()
        log(f"  wrote {len(entries):,} store rows in {time.perf_counter() - t:.1f}s")
        store.close()
        db_bytes = sum(f.stat().st_size for f in db.iterdir() if f.name.startswith("imgsearch.sqlite"))
        store = Store(db)  # a fresh process-like open, as `imgsearch index` does
        t = time.perf_counter()
        report = Indexer(enc, store, show_progress=False).sync(str(lib))
        secs = time.perf_counter() - t
        store.close()
        if report.unchanged != n or report.embedded:
            raise AssertionError(f"reindex was not a no-op: {report.summary()}")
        log(f"  reindexed {n:,} unchanged files in {secs:.2f}s")
        return {"files": n, "seconds": secs, "sqlite_bytes_per_photo": db_bytes / n}
    finally:
        shutil.rmtree(db, ignore_errors=True)


def _bulk_rows(store: Store, folder_id: int, paths: list[Path], dim: int) -> None:
    """Store rows and random unit vectors for these files in bulk (executemany), as a finished first
    index would have left them; an untracked transaction, so the FAISS files are rebuilt after."""
    rng = np.random.default_rng(0)
    with store.transaction():
        for i in range(0, len(paths), 10_000):
            records = []
            for p in paths[i:i + 10_000]:
                st = p.stat()
                records.append(ImageRecord(path=str(p), size=st.st_size, mtime_ns=st.st_mtime_ns,
                                           hash=f"h-{p.parent.name}-{p.name}"))
            v = rng.standard_normal((len(records), dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            store.bulk_add_images(folder_id, records, v)
