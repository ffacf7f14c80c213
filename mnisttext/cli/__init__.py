"""The `mnisttext` command (also `python -m mnisttext` and `python cli.py`).

    mnisttext generate --digits 0-9            # the main job: sample, rerank, save pictures
    mnisttext decode lines.txt --grid          # lines -> PNG
    mnisttext --help                           # every command, each with examples

Each command lives in its own module with a `register(subparsers)` that adds its parser and
sets its handler. Every failure a user can cause ends as one line on stderr and exit status 2;
a bug ends as one line too, with exit status 1; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__, env
from .common import EXIT_BAD_INPUT, EXIT_BUG, describe, error, user_errors

COMMANDS = ("data_cmds", "sample_cmds", "eval_cmd", "train_cmds", "serve_cmd")
# Commands whose module is all they need: only it is loaded for them, so they run without torch
# (decode of any input stays in about 100 MB; importing torch alone takes 600+ MB here).
LIGHT = {"decode": "data_cmds", "export": "data_cmds"}


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(modules=COMMANDS) -> argparse.ArgumentParser:
    p = Parser(
        prog="mnisttext", description="Handwritten digits as text: export, train, generate, decode.",
        epilog="examples:\n  mnisttext generate --digits 0-9\n  mnisttext decode outputs/lines.txt --grid\n"
               "  mnisttext train --minutes 5 --out runs/first\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mnisttext {__version__}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:      # each command module adds its own parsers
        importlib.import_module(f".{name}", __name__).register(sub)
    return p


def _command_of(argv: list[str]) -> str | None:
    """The command named in argv (the first word that is not a top-level switch)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv=None) -> int:
    """Run one command: 0 on success, 2 (one line on stderr) for bad input, 130 on Ctrl-C, and 1
    with one line naming the bug for anything else (`--debug` shows the traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    light = LIGHT.get(_command_of(argv))
    parser = build_parser((light,) if light else COMMANDS)
    args = parser.parse_args(argv)
    try:
        env.check()
        return args.func(args)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:          # e.g. `mnisttext generate | head`: the reader has all it wants
        _silence_stdout()
        return 0
    except user_errors() as e:
        if args.debug:
            raise
        error(describe(e))
        return EXIT_BAD_INPUT
    except Exception as e:           # a bug: still one line, and how to see more
        if args.debug:
            raise
        error(f"internal error ({type(e).__name__}: {e}); this is a bug: rerun with --debug "
              f"for the traceback and report it")
        return EXIT_BUG


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush into the closed pipe is quiet."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):   # stdout is not a real file (tests): nothing to do
        pass


if __name__ == "__main__":
    sys.exit(main())
