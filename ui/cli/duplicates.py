"""`imgsearch duplicates`: list groups of near-duplicate photos (resized, re-encoded, cropped copies; exact copies).

imgsearch never deletes a photo: this command only lists the groups, best photo first.
"""

from __future__ import annotations

import argparse

from ui.cli.output import emit_json, out
from ui.cli.parser import add_common_options


def _threshold(text: str) -> float:
    """argparse type: a cosine cutoff in (0, 1]."""
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < t <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {t:g}")
    return t


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``duplicates`` command to the imgsearch parser."""
    from retrieval.duplicates import DEFAULT_THRESHOLD

    p = sub.add_parser("duplicates", help="list groups of near-duplicate photos (never deletes anything)")
    add_common_options(p)
    p.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"cosine the photos' vectors must pass before the pixel check (default {DEFAULT_THRESHOLD})")
    p.set_defaults(func=cmd_duplicates)


def cmd_duplicates(args: argparse.Namespace) -> int:
    """Print the near-duplicate groups of the index in --db, as text or JSON."""
    from retrieval.duplicates import find_duplicates
    from retrieval.store import Store

    store = Store(args.db, create=False)
    try:
        groups = find_duplicates(store, args.threshold)
    finally:
        store.close()
    if args.json:
        emit_json([g.as_dict() for g in groups])
        return 0
    if not groups:
        out("no duplicates found")
        return 0
    for n, g in enumerate(groups, 1):
        out(f"group {n} ({'identical files' if g.exact else f'score {g.score:.3f}'}):")
        for path in g.paths:
            out(f"  {path}")
    out(f"{len(groups)} group(s), {sum(len(g.paths) for g in groups)} photos")
    return 0
