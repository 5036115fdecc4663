"""Region features: int8 quantisation of (R, C) region tokens and the regions table.

Regions are derived data bound to a region key (the encoder's region extractor); they hold no
vectors of the FAISS indexes, so changing them never moves the generation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import sqlalchemy as sa

from ..errors import StoreError
from .schema import REGION_KEY_META, SQL_CHUNK, read_meta, regions_table


def quantise_regions(regions: np.ndarray) -> list[bytes]:
    """(n, R, C) floats -> one blob per image: R float32 scales, then R*C int8 codes.

    Each region token gets its own scale s = max|x| over its channels, and q = round(x / s * 127),
    so x ~ q * s / 127 to within s / 254. Non-finite values (a float16 overflow, say) are clamped
    to the finite float16 range first (NaN -> 0).
    """
    x = np.asarray(regions, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"regions must be (n, R, C), not {x.shape}")
    if not np.isfinite(x).all():
        big = float(np.finfo(np.float16).max)
        x = np.nan_to_num(x, nan=0.0, posinf=big, neginf=-big)
    scale = np.abs(x).max(axis=2)  # (n, R)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[:, :, None] * 127.0), -127, 127).astype(np.int8)
    scale = scale.astype(np.float32)
    return [scale[i].tobytes() + q[i].tobytes() for i in range(len(x))]


def dequantise_region(blob: bytes, tokens: int, channels: int) -> np.ndarray:
    """One blob from ``quantise_regions`` -> float32 (R, C)."""
    if len(blob) != tokens * 4 + tokens * channels:
        raise StoreError(f"a stored region blob holds {len(blob)} bytes, not {tokens * (4 + channels)} "
                         "(run `imgsearch check --repair`)")
    scale = np.frombuffer(blob, dtype=np.float32, count=tokens)
    q = np.frombuffer(blob, dtype=np.int8, offset=tokens * 4).reshape(tokens, channels)
    return q.astype(np.float32) * (scale / 127.0)[:, None]


def check_region_shape(conn: sa.Connection, tokens: int, channels: int) -> None:
    """Refuse regions when no key is bound, or of another shape than those already stored under it."""
    if read_meta(conn, REGION_KEY_META) is None:
        raise StoreError("regions can only be stored after their key is bound (bind_regions)")
    r = regions_table.c
    have = conn.execute(sa.select(r.tokens, r.channels).limit(1)).first()
    if have is not None and tuple(have) != (tokens, channels):
        raise StoreError(f"regions of shape ({tokens}, {channels}) cannot join the stored ones of shape "
                         f"({have[0]}, {have[1]}) under the same region key")


def insert_regions(conn: sa.Connection, ids: Sequence[int], tokens: int, channels: int,
                   blobs: Sequence[bytes]) -> None:
    """Store the ``quantise_regions`` blobs of (R, C) = (tokens, channels) of images ``ids``."""
    conn.execute(regions_table.insert(), [{"image_id": i, "tokens": tokens, "channels": channels, "data": b}
                                          for i, b in zip(ids, blobs)])


def read_regions(conn: sa.Connection, image_ids: Sequence[int], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Dequantised regions (n, R, C) of these images in the order asked, and a bool (n,) ``found``
    (see ``Store.get_regions``)."""
    ids = [int(i) for i in image_ids]
    found = np.zeros(len(ids), dtype=bool)
    rows: dict[int, tuple[int, int, bytes]] = {}
    r = regions_table.c
    stored_key = read_meta(conn, REGION_KEY_META)
    if stored_key is None or stored_key != key:
        return np.zeros((len(ids), 0, 0), np.float32), found
    wanted = sorted(set(ids))
    for i in range(0, len(wanted), SQL_CHUNK):
        q = sa.select(r.image_id, r.tokens, r.channels, r.data).where(r.image_id.in_(wanted[i:i + SQL_CHUNK]))
        rows.update({iid: (t, c, d) for iid, t, c, d in conn.execute(q)})
    if rows:
        shape = next(iter(rows.values()))[:2]
    else:
        shape = tuple(conn.execute(sa.select(r.tokens, r.channels).limit(1)).first() or (0, 0))
    out = np.zeros((len(ids), *shape), np.float32)
    for pos, iid in enumerate(ids):
        row = rows.get(iid)
        if row is not None and row[:2] == shape:
            out[pos] = dequantise_region(row[2], *shape)
            found[pos] = True
    return out, found


def region_info(conn: sa.Connection) -> dict:
    """Key, count, shape [R, C], bytes per image (None where nothing is stored) and total bytes."""
    r = regions_table.c
    key = read_meta(conn, REGION_KEY_META)
    n, total = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(r.data)), 0))
                            .select_from(regions_table)).one()
    shape = conn.execute(sa.select(r.tokens, r.channels).limit(1)).first()
    return {"key": key, "count": int(n), "shape": list(shape) if shape else None,
            "bytes_per_image": round(int(total) / n) if n else None, "bytes": int(total)}
