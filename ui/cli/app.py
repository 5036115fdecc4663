"""The `imgsearch` parser and entry point: every command module registers here, in the order of --help.

Library errors (ImgSearchError) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from retrieval.encoders.registry import spec_names
from retrieval.rerank.registry import reranker_spec_names
from ui.cli import bench, check, duplicates, evaluate, index, info, models, rerank, score, search, serve, train
from ui.cli.output import log, own_stdout, quiet_libraries
from ui.cli.parser import EXIT_ERROR, EXIT_USAGE, OneLineParser, UsageError

COMMANDS = (index, search, evaluate, info, models, serve, train, bench, check, rerank, score, duplicates)


def build_parser() -> argparse.ArgumentParser:
    """The full `imgsearch` parser, with the subcommands of every module in COMMANDS."""
    parser = OneLineParser(
        prog="imgsearch", description="Offline image–text photo search.",
        epilog=f"models (--model): {spec_names(quoted=False)}; rerankers (--rerank-model): "
               f"{reranker_spec_names(quoted=False)}. `imgsearch models` says what each is and whether it is installed.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
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
    from retrieval.errors import ImgSearchError
    from retrieval.settings import Settings

    try:
        args.settings = Settings.from_env()  # the environment, read once for the whole command
        if getattr(args, "db", "unset") is None:
            args.db = str(args.settings.data_dir)
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
