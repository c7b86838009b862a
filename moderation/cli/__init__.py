"""The one console script, ``moderation``, with a subcommand per job.

Each command group lives in its own module and registers its parsers here;
:func:`main` turns every :class:`~moderation.errors.ModerationError` (and a
missing file) into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from moderation import __version__
from moderation.errors import ModerationError

EXIT_USAGE_OR_INPUT = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same one line as every other error: no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE_OR_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from moderation.cli import account_commands, db_commands, model_commands, moderator_commands, web_commands

    parser = OneLineParser(prog="moderation", description="Korean review moderation: score, flag, decide, retrain.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at DEBUG level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    model_commands.register(commands)
    db_commands.register(commands)
    moderator_commands.register(commands)
    account_commands.register(commands)
    web_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits 2 here, after its one line
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    name = args.command
    try:
        return int(args.handler(args) or 0)
    except ModerationError as exc:
        print(f"moderation {name}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except OSError as exc:  # a file we could not read or write, named by the OS
        print(f"moderation {name}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except KeyboardInterrupt:
        print(f"moderation {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def one_line(message: str) -> str:
    """An error message on one line, whatever a driver or library put in it."""
    return " ".join(message.split())
