"""The `imgsearch` parser and entry point: every command module registers here, in the order of --help.

Library errors (ImgSearchError) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ui.cli import bench, check, evaluate, index, info, rerank, search, serve, train
from ui.cli.output import log, own_stdout, quiet_libraries
from ui.cli.parser import EXIT_ERROR, EXIT_USAGE, UsageError

COMMANDS = (index, search, evaluate, info, serve, train, bench, check, rerank)


def default_data_dir() -> Path:
    """Where the index lives unless --db says otherwise: $IMGSEARCH_HOME, else the per-user data folder."""
    env = os.environ.get("IMGSEARCH_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("imgsearch", appauthor=False)


def build_parser() -> argparse.ArgumentParser:
    """The full `imgsearch` parser, with the subcommands of every module in COMMANDS."""
    parser = argparse.ArgumentParser(prog="imgsearch", description="Offline image–text photo search.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `imgsearch` command line and return its exit code."""
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given (model cards record it)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "db", "unset") is None:
        args.db = str(default_data_dir())
    from retrieval.errors import ImgSearchError

    try:
        with own_stdout():
            return int(args.func(args) or 0)
    except UsageError as e:
        log(f"imgsearch {args.command}: error: {e}")
        return EXIT_USAGE
    except ImgSearchError as e:
        log(f"error: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        log("interrupted (the index keeps everything committed so far; rerun to resume)")
        return 130
