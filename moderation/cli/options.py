"""Argument types and options shared by the command groups."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime, timezone


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, metavar="URL",
                        help="database URL (default: $MODERATION_DB_URL, else the embedded SQLite file)")


def parse_time(value: str) -> datetime:
    """ISO date or date-time; naive values are taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers >= ``minimum``, with a message that says so."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {number}")
        return number

    return parse
