"""Exit codes, the usage error, and the argument helpers the `imgsearch` commands share."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from retrieval.rerank.registry import reranker_spec_names

EXIT_ERROR = 1
EXIT_USAGE = 2

DEFAULT_MODEL_HELP = "encoder spec (default: the one the index was built with)"


class UsageError(Exception):
    """A command line that does not make sense."""


def existing_file(path: str) -> str:
    """``path`` when it names an existing file; else the library's ImageLoadError (not found, or a folder)."""
    from retrieval.errors import ImageLoadError

    if not os.path.exists(path):
        raise ImageLoadError(path, "file not found")
    if os.path.isdir(path):
        raise ImageLoadError(path, "is a folder, not an image file")
    return path


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_common_options(p: argparse.ArgumentParser, model_help: str = DEFAULT_MODEL_HELP) -> None:
    """--db, --model, --device and --json, which every command takes."""
    p.add_argument("--db", default=None, help="data folder holding the index (default: $IMGSEARCH_HOME or the per-user data folder)")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout (logs go to stderr)")


def add_hubness_option(p: argparse.ArgumentParser) -> None:
    """--no-hubness: rank by plain cosine."""
    p.add_argument("--no-hubness", action="store_true",
                   help="rank by plain cosine, without the model's hubness correction (where it ships one)")


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    """--rerank, --rerank-k and --rerank-model, for the commands that can rerank their results."""
    p.add_argument("--rerank", action="store_true", help="rerank the top results with the cross-attention reranker")
    p.add_argument("--rerank-k", type=positive_int, default=20, metavar="N", help="how many top results to rerank (default 20)")
    p.add_argument("--rerank-model", default="default", metavar="SPEC",
                   help=f"reranker spec: {reranker_spec_names(quoted=False)} (default: default)")


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr (and --help for the rest)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
