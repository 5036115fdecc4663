"""How the pages show things: escaped text, status lines, gallery items, and photo and library facts.

Plain functions from the library's facts (and ``AppState`` results) to Markdown, HTML and data, so
that what a page shows is decided here and the pages only wire components to them.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from typing import TYPE_CHECKING

from retrieval.hybrid import WEAK_SOURCES
from retrieval.raw import RAW_EXTENSIONS

from .state import ReindexStatus, Result

if TYPE_CHECKING:
    from .state import AppState

CAPTION_HEADERS = ["Score", "Caption", "Photo"]
RERANK_INFO_OFF = "install a reranker to enable"
RERANK_INFO_ON = "better for detailed queries (colours, who does what)"
RERANK_CAPTIONS_INFO_ON = "reorder the best captions with the reranker"
PAIR_EXTENSIONS = RAW_EXTENSIONS | {".jpg", ".jpeg", ".heic", ".heif"}  # a camera's RAW, and the JPEG/HEIC beside it


def esc(text: object) -> str:
    """Text safe inside HTML (quotes left as they are)."""
    return html.escape(str(text), quote=False)


def md_esc(text: object) -> str:
    """Text safe inside Markdown: HTML-escaped, and Markdown punctuation backslashed."""
    out = esc(text)
    for ch in "\\`*_[]#|<>":
        out = out.replace(ch, "\\" + ch)
    return out


def human_size(n: int | None) -> str:
    """A byte count as people read it ("12.3 MB"); "?" when unknown."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def when(ts: float | None) -> str:
    """A timestamp as local date and minute; "never" for none."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "never"


def msg(kind: str, text: str) -> str:
    """A status line; the kind only picks the CSS class (headless browsers often lack emoji fonts)."""
    return f'<div class="msg msg-{kind}">{esc(text)}</div>\n'


PAIR_BADGE = "RAW+JPEG"


def pair_key(path: str) -> tuple[str, str] | None:
    """(folder, lower-case stem) shared by a camera RAW and the JPEG shot with it; None for other files."""
    stem, ext = os.path.splitext(path)
    return (os.path.dirname(stem), os.path.basename(stem).lower()) if ext.lower() in PAIR_EXTENSIONS else None


def pair_results(results: list[Result]) -> list[tuple[Result, bool]]:
    """The results with each RAW+JPEG pair (``IMG_1.CR2`` + ``IMG_1.JPG`` in one folder) folded into one
    entry, shown as the JPEG, at the better-ranked one's place; the flag says it is a pair."""
    out: list[list] = []
    where: dict[tuple[str, str], int] = {}
    for r in results:
        key = pair_key(r.hit.path)
        is_raw = None if key is None else os.path.splitext(r.hit.path)[1].lower() in RAW_EXTENSIONS
        if key is not None and key in where:
            entry = out[where[key]]
            if entry[2] != is_raw:  # one RAW and one JPEG: the same shot
                if not is_raw:
                    entry[0] = r  # the JPEG stands for the pair
                entry[1] = True
                continue
        if key is not None:
            where[key] = len(out)
        out.append([r, False, is_raw])
    return [(r, paired) for r, paired, _ in out]


def gallery(state: AppState, results: list[Result]) -> tuple[list[tuple[str, str]], list[str]]:
    """Gallery items (thumbnail, label) and the photo path of each, in the same order; a RAW and its
    JPEG make one tile (the JPEG's), labelled "RAW+JPEG"."""
    items, paths = [], []
    for r, paired in pair_results(results):
        thumb = state.thumbnail(r)
        if thumb is None:
            continue  # unreadable since it was indexed (deleted or replaced): nothing to show
        label = f"{r.hit.score if r.hit.relevance is None else r.hit.relevance:.2f} · "  # relevance: the ranking
        if r.hit.match is not None:  # reranked: the reranker's match probability
            label += f"match {r.hit.match:.2f} · "
        label += r.name
        if paired:
            label += f" · {PAIR_BADGE}"
        if r.hit.matched:
            label += f" {badge(r.hit.matched)}"
        if r.caption:
            label += f" — {r.caption}"
        items.append((thumb, label))
        paths.append(r.hit.path)
    return items, paths


def badge(matched: tuple[str, ...] | list[str]) -> str:
    """What a hit matched on, as its gallery label shows it: "[caption, name]"."""
    return "[" + ", ".join(matched) + "]"


def hit_dict(r: Result) -> dict:
    """One search result as data for API clients (and for the page's detail view)."""
    h = r.hit
    return {  # "photo", not "path": see details_dict
        "photo": h.path, "name": r.name, "score": round(h.score, 4), "image_id": h.image_id,
        "caption": r.caption, "match": None if h.match is None else round(h.match, 4),
        "relevance": h.relevance, "matched": list(h.matched) if h.matched else [],
        "taken": h.taken, "matched_caption": h.caption, "source": h.source,
    }


def details_md(r: Result) -> str:
    """The detail view of one photo: its file facts and captions, as Markdown."""
    row = r.row
    lines = [f"### {md_esc(r.name)}", ""]
    if row is not None:
        dims = f"{row.width} × {row.height}" if row.width and row.height else "?"
        taken = row.taken_at.strftime("%Y-%m-%d %H:%M") if row.taken_at else "unknown"
        lines += [
            f"**Path** `{row.path}`  ",
            f"**Size** {human_size(row.size)} · **Dimensions** {dims} px · **Format** {md_esc(row.format or '?')}  ",
            f"**Taken** {taken}",
        ]
    else:
        lines.append(f"**Path** `{r.hit.path}`")
    lines += match_lines(r)
    lines += ["", "#### Captions"]
    real = [c for c in r.captions if c.source not in WEAK_SOURCES]  # not the words of its own names
    if real:
        lines += [f"- {md_esc(c.text)} <small>({md_esc(c.source)})</small>" for c in real]
    else:
        lines.append("_No captions: add a `<photo>.txt` beside it or a `captions.jsonl`, then reindex._")
    return "\n".join(lines)


def match_lines(r: Result) -> list[str]:
    """How a search result matched (relevance, what on, the caption), for the detail view; none
    for a photo opened outside a search."""
    h = r.hit
    if h.relevance is None and not h.matched:
        return []
    facts = []
    if h.relevance is not None:
        facts.append(f"**Relevance** {h.relevance:.2f} <small>(standard deviations above this query's "
                     "typical photo)</small>")
    if h.matched:
        facts.append(f"**Matched on** {md_esc(', '.join(h.matched))}")
    lines = ["", " · ".join(facts) + ("  " if h.caption else "")]
    if h.caption:
        lines.append(f"**Matched caption** “{md_esc(h.caption)}” <small>({md_esc(h.source or '?')})</small>")
    return lines


def details_dict(r: Result) -> dict:
    """The facts and captions of one photo, as data for API clients."""
    row = r.row
    return {  # no "path" key: gradio_client would take the dict for a file and download it
        "photo": r.hit.path,
        "name": r.name,
        "size": row.size if row else None,
        "width": row.width if row else None,
        "height": row.height if row else None,
        "format": row.format if row else None,
        "taken_at": row.taken_at.isoformat() if row and row.taken_at else None,
        "captions": [{"text": c.text, "source": c.source} for c in r.captions],
    }


def library_md(lib: dict, status: ReindexStatus) -> str:
    """The Library page summary: counts, encoder, last index time and index folder."""
    enc = lib["encoder"]
    enc_line = f"`{enc['spec']}` ({enc['fingerprint']}, {enc['dim']}-d)" if enc else "none yet"
    lines = [
        f"**{lib['images']}** photos · **{lib['captions']}** captions · **{len(lib['skipped'])}** skipped files  ",
        f"**Encoder** {enc_line}  ",
        f"**Last indexed** {when(lib['last_indexed'])}  ",
        f"**Index folder** `{lib['data_dir']}`",
    ]
    if not lib["folders"]:
        lines += ["", msg("info", "Nothing is indexed yet: start the server with “imgsearch serve DIR” "
                                   "or run “imgsearch index DIR”.")]
    return "\n".join(lines)


def status_md(status: ReindexStatus) -> str:
    """Where the background reindex stands, or how it ended; empty before the first one."""
    if status.running:
        where = f" {status.folder}" if status.folder else ""
        count = f" — {status.done}/{status.total} new or changed files" if status.total else ""
        return msg("info", f"Reindexing{where}{count}… searching keeps working meanwhile.")
    if status.finished_at is None:
        return ""
    lines = []
    if status.errors:
        lines.append(msg("error", f"Reindex finished {when(status.finished_at)} with "
                                  f"{len(status.errors)} error(s):"))
        lines += [f"- {md_esc(e)}" for e in status.errors]
    else:
        lines.append(msg("ok", f"Reindex finished {when(status.finished_at)} "
                               f"in {status.finished_at - (status.started_at or status.finished_at):.1f}s."))
    lines += [f"- {md_esc(s)}" for s in status.summaries]
    return "\n".join(lines)
