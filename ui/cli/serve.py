"""`imgsearch serve [DIR]`: the web UI.

With DIR, the folder is first brought up to date in the index (incrementally). With --watch the
library's folders (DIR, and those added earlier or later on the Library page) are then watched in a
background thread, their changes applied in debounced batches through the same sync.
Binds 127.0.0.1 unless --host says otherwise; never creates a public share link.
The reranker behind the Rerank switches (--rerank-model, the bundled one by default)
is loaded at start, on the search encoder's towers where it can share them.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from retrieval.rerank.registry import reranker_spec_names
from retrieval.settings import AUTH_ENV
from ui.cli.index import add_watch_options
from ui.cli.output import log, out
from ui.cli.parser import UsageError, add_common_options, positive_int

if TYPE_CHECKING:
    from retrieval.library import Library

NO_RERANKER = "none"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command to the imgsearch parser."""
    p = sub.add_parser("serve", help="start the web UI (optionally indexing DIR first)")
    p.add_argument("folder", nargs="?", metavar="DIR", help="photo folder to index (incrementally) before serving")
    add_common_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; use 0.0.0.0 to serve your network, with --auth)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require this login (default: ${AUTH_ENV} when set)")
    p.add_argument("--max-upload", default="25mb", metavar="SIZE", help="largest accepted upload (default 25mb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while indexing DIR")
    p.add_argument("--rerank-model", default="default", metavar="SPEC",
                   help=f"reranker behind the Rerank switches: {reranker_spec_names(quoted=False)}, "
                        "or none (default: default, the bundled one, when installed)")
    p.add_argument("--rerank-k", type=positive_int, default=20, metavar="N",
                   help="how many top results the Rerank switches reorder (default 20)")
    add_watch_options(p)
    p.set_defaults(func=cmd_serve)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """USER:PASSWORD as a (user, password) pair; None when empty, a UsageError when malformed."""
    if value is None or value == "":
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UsageError("--auth (or $IMGSEARCH_AUTH) must look like USER:PASSWORD")
    return user, password


def _index_first(args: argparse.Namespace) -> Library:
    """Index DIR into --db and return the Library it opened (the web app and the reranker share its encoder)."""
    from indexer.sync import Indexer
    from retrieval.library import open_library

    library = open_library(args.db, model=args.model, device=args.device, create=True)
    try:
        report = Indexer(library.encoder, library.store, show_progress=not args.no_progress).sync(args.folder)
        log(report.summary())
        for path, reason in report.skipped[:10]:
            log(f"  skipped {path}: {reason}")
        return library
    except BaseException:
        library.close()
        raise


def _open_existing(args: argparse.Namespace) -> Library | None:
    """The Library over the existing index in --db (None when there is none yet), so that the
    reranker can share its encoder instead of loading a second copy of the towers."""
    from retrieval.errors import ImgSearchError
    from retrieval.library import open_library
    from retrieval.store import DB_FILE

    if not os.path.exists(os.path.join(args.db, DB_FILE)):
        return None
    try:
        return open_library(args.db, model=args.model, device=args.device)
    except ImgSearchError:  # empty or unusable: the pages say why, as they do without a reranker
        return None


def _bundled_reranker_missing(spec: str) -> bool:
    from retrieval.rerank import BUNDLED_RERANKER_DIR
    from retrieval.rerank.fusion import WEIGHTS_FILE

    return spec == "default" and not os.path.isfile(os.path.join(BUNDLED_RERANKER_DIR, WEIGHTS_FILE))


def load_reranker(spec: str | None, encoder: Any = None, device: str | None = None) -> Any:
    """The reranker ``spec`` names, on ``encoder``'s towers where they fit; None for "none".

    The bundled reranker ("default") may not be installed: that is one line on stderr and no
    reranker. Any other failure raises the library's error.
    """
    from retrieval.rerank import create_reranker

    spec = (spec or "").strip()
    if not spec or spec.lower() == NO_RERANKER:
        return None
    if _bundled_reranker_missing(spec):
        log("no bundled reranker; the Rerank switch stays off")
        return None
    reranker = create_reranker(spec, encoder=encoder, device=device)
    log(f"reranker: {reranker.spec}")
    return reranker


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the web UI on --host:--port and block until it is stopped."""
    auth = parse_auth(args.auth if args.auth is not None else args.settings.auth)
    if not (0 < args.port < 65536):
        raise UsageError(f"--port must be 1-65535, not {args.port}")
    if not args.watch and args.poll is not None:
        raise UsageError("--poll needs --watch")

    from ui.web import AppState, build_app, launch

    spec = (args.rerank_model or "").strip()
    library = _index_first(args) if args.folder else None
    if library is None and spec.lower() not in ("", NO_RERANKER) and not _bundled_reranker_missing(spec):
        library = _open_existing(args)  # open now, so that the reranker shares its encoder
    try:
        reranker = load_reranker(spec, encoder=library.encoder if library else None, device=args.device)
    except BaseException:
        if library is not None:
            library.close()
        raise
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    state = AppState(args.db, model=args.model, device=args.device,
                     searcher=library.searcher if library else None, reranker=reranker, rerank_k=args.rerank_k,
                     folders_editable=bool(auth) or loopback)
    demo = build_app(state)
    state.warm_up()
    try:
        launch(demo, state, host=args.host, port=args.port, auth=auth, max_file_size=args.max_upload,
               prevent_thread_lock=True)
    except OSError as e:
        state.close()
        from retrieval.errors import ImgSearchError

        raise ImgSearchError(f"cannot serve on {args.host}:{args.port}: {e}") from e
    if not state.folders_editable:
        log("folders cannot be added or removed on the Library page of a network server without --auth")
    if args.watch:
        status = state.start_watching(debounce=args.debounce, poll=args.poll)
        how = f"rescanning every {status.poll_seconds:g}s" if status.mode == "polling" else "file-system events"
        log(f"watching {len(status.folders)} folder(s) ({how}); folders added on the Library page are watched too")
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown_host}:{args.port}/"
    if args.host in ("0.0.0.0", "::"):
        log(f"serving on all network interfaces ({args.host}) — anyone who can reach port {args.port} "
            + ("must sign in" if auth else "can browse these photos: consider --auth USER:PASSWORD"))
    log(f"index: {state.data_dir}")
    out(f"imgsearch is running at {url}  (Ctrl+C to stop)")
    try:
        demo.block_thread()
    finally:
        state.close()
    return 0
