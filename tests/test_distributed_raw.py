"""The Ray path decodes camera RAW as the local path does: a shard row of a DNG is the developed photo (format,
full size, date, vector) and not its TIFF container, and a corrupt RAW gets the local path's reason. Runs
``embed_shard`` (the worker's whole job) in this process, without starting Ray."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeEncoder
from indexer.scan import FileEntry
from indexer.sync import load_file

pytest.importorskip("pyarrow")
pytest.importorskip("rawpy")
from test_formats import CAT, make_dng  # noqa: E402  (skips without pidng)

from indexer.distributed import embed_shard, plan_shards, read_shard  # noqa: E402


def entry(path: Path) -> FileEntry:
    st = os.stat(path)
    return FileEntry(str(path), st.st_size, st.st_mtime_ns)


def test_ray_shard_develops_raw_like_the_local_indexer(tmp_path):
    dng, cut = tmp_path / "IMG_0007.DNG", tmp_path / "IMG_0008.NEF"
    dng.write_bytes(make_dng(CAT, orientation=6))
    data = make_dng(CAT)
    cut.write_bytes(data[: len(data) // 3])
    files = [entry(dng), entry(cut)]
    encoder = FakeEncoder()
    (shard,) = plan_shards(files, {}, fingerprint=encoder.fingerprint, region_key=None, shard_size=8)
    rows, _ = read_shard(embed_shard(encoder, shard, regions=False), encoder.dim)
    local = [load_file(encoder, f) for f in files]

    raw_row, bad_row = rows
    assert raw_row.error is None and raw_row.record.format == "DNG"
    assert (raw_row.record.width, raw_row.record.height) == (300, 450)  # upright: orientation 6 applied
    assert raw_row.record.taken_at == datetime(2021, 7, 4, 10, 20, 30)
    assert raw_row.record == local[0].record
    np.testing.assert_allclose(raw_row.vector, encoder.encode_pixels(local[0].pixels[None])[0], atol=1e-6)
    assert bad_row.vector is None and bad_row.error == local[1].error and "RAW" in bad_row.error
