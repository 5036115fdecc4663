"""What the CLI prints: its own output on the real stdout, logs on stderr, library chatter kept off stdout.

With --json, stdout holds only the JSON. The stdout handle lives here, in the one module every command
imports, so it is shared however the CLI is started (`python -m ui.cli`, the script, or `main()`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

_stdout: TextIO = sys.stdout


def quiet_libraries() -> None:
    """Keep model libraries offline and silent (no hub calls, warnings or progress bars of theirs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # read by transformers when (and only if) a command imports it: the ONNX query path never does
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def log(msg: str) -> None:
    """A line for the user on stderr (progress, summaries, errors)."""
    print(msg, file=sys.stderr, flush=True)


def out(text: str = "") -> None:
    """A line of the command's own output, on the real stdout (library chatter is sent to stderr)."""
    _stdout.write(text + "\n")
    _stdout.flush()


def emit_json(obj: Any) -> None:
    """The command's result as indented JSON on stdout."""
    out(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


@contextlib.contextmanager
def own_stdout() -> Iterator[None]:
    """Keep the current stdout for `out` and send anything else printed to stdout (model loaders do) to stderr."""
    global _stdout
    _stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield
