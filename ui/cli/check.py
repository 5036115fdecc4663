"""`imgsearch check [--repair]`: compare the index's SQLite rows, FAISS files and photo folders.

Exit code 0 when nothing needs repair (vanished photo files are reported but do not count:
the next `imgsearch index` removes them), 1 otherwise.
"""

from __future__ import annotations

import argparse

from ui.cli.output import emit_json, out
from ui.cli.parser import add_common_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``check`` command to the imgsearch parser."""
    p = sub.add_parser("check", help="check the index for drift between SQLite and FAISS (and --repair it)")
    add_common_options(p)
    p.add_argument("--repair", action="store_true",
                   help="drop broken rows and rebuild the FAISS files from the stored vectors "
                        "(refused while an indexer runs)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Report (and with --repair fix) drift in the index; 0 when it is consistent, else 1."""
    from retrieval.store import Store

    store = Store(args.db, create=False)
    try:
        report = store.check(repair=args.repair)
    finally:
        store.close()
    if args.json:
        emit_json(report.as_dict())
        return 0 if report.ok else 1
    out(f"index:    {report.data_dir} (generation {report.generation}, {report.images} photos, "
        f"{report.captions} captions)")
    if not report.issues:
        out("ok: SQLite and the FAISS files agree")
        return 0
    for issue in report.issues:
        tag = "problem" if issue.repairable else "note"
        out(f"{tag}:  {issue.kind}: {issue.message}")
        if not issue.repairable and issue.examples:
            for ex in issue.examples[:5]:
                out(f"          {ex}")
    for line in report.repaired:
        out(f"repaired: {line}")
    if report.remaining is not None:
        left = [i for i in report.remaining if i.repairable]
        out("ok: repaired" if not left else f"still wrong after repair: {', '.join(i.kind for i in left)}")
    elif not report.ok:
        out("run `imgsearch check --repair` to fix it")
    return 0 if report.ok else 1
