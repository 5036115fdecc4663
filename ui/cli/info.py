"""`imgsearch info`: what the index holds (encoder, counts, folders, skipped files)."""

from __future__ import annotations

import argparse

from ui.cli.output import emit_json, out
from ui.cli.parser import add_common_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``info`` command to the imgsearch parser."""
    p = sub.add_parser("info", help="what the index holds")
    add_common_options(p)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """Describe the index in --db, as text or JSON."""
    from retrieval.store import Store

    store = Store(args.db, create=False)
    try:
        info = store.encoder_info
        folders = store.folders()
        skipped = store.skipped()
        data = {
            "data_dir": str(store.data_dir),
            "encoder": info.__dict__ if info else None,
            "images": store.count_images(),
            "captions": store.count_captions(include_weak=False),
            "folders": folders,
            "regions": store.region_info(),
            "skipped": [{"path": p, "reason": s["reason"]} for p, s in sorted(skipped.items())],
        }
    finally:
        store.close()
    if args.json:
        emit_json(data)
        return 0
    out(f"index:    {data['data_dir']}")
    out(f"encoder:  {info.spec} ({info.fingerprint}, dim {info.dim})" if info else "encoder:  none yet")
    out(f"photos:   {data['images']}   captions: {data['captions']}   skipped: {len(data['skipped'])}")
    regions = data["regions"]
    if regions.get("count"):
        out(f"regions:  {regions['count']} photos ({regions['bytes_per_image']} bytes each, for reranking)")
    for f in folders:
        out(f"folder:   {f['path']} ({f['images']} photos)")
    for s in data["skipped"][:20]:
        out(f"skipped:  {s['path']}: {s['reason']}")
    return 0
