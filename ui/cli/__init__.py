"""The `imgsearch` command line: index, search, captions, eval, info, serve, train, bench, check, ...

With --json, stdout holds only the JSON; logs and progress bars go to stderr.
"""

from ui.cli.app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
