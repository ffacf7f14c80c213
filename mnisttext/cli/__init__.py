"""The `mnisttext` command (also `python -m mnisttext` and `python cli.py`).

    mnisttext generate --digits 0-9            # the main job: sample, rerank, save pictures
    mnisttext decode lines.txt --grid          # lines -> PNG
    mnisttext --help                           # every command, each with examples

Each command lives in its own module with a `register(subparsers)` that adds its parser and
sets its handler. Every failure a user can cause ends as one line on stderr and exit status 2;
`--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .common import EXIT_BAD_INPUT, UsageError, error, user_errors

COMMANDS = ("data_cmds", "sample_cmds", "eval_cmd", "train_cmds", "serve_cmd")


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mnisttext", description="Handwritten digits as text: export, train, generate, decode.",
        epilog="examples:\n  mnisttext generate --digits 0-9\n  mnisttext decode outputs/lines.txt --grid\n"
               "  mnisttext train --minutes 5 --out runs/first\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mnisttext {__version__}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:     # each command module adds its own parsers
        importlib.import_module(f".{name}", __name__).register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:          # e.g. `mnisttext generate | head`
        return 0
    except user_errors() as e:
        if args.debug:
            raise
        error(str(e) or type(e).__name__)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
