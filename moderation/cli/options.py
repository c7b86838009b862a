"""Argument types and options shared by the command groups.

Every numeric and path argument is checked here, at the edge, so a bad
value is refused in one line before any file is read or model loaded.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, type=db_url, metavar="URL",
                        help="database URL (default: $MODERATION_DB_URL, else the embedded SQLite file)")


def progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action="store_true",
                        help="report progress on stderr even when it is not a terminal")


def db_url(value: str) -> str:
    """A non-empty URL: an empty ``--db ''`` is a mistake, not a request for the default."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty: give a URL such as sqlite:///var/reviews.db, "
                                         "or leave --db out for the default")
    return value.strip()


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


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {value}")
    return number


def threshold(value: str) -> float:
    """A decision threshold: a score in (0, 1); 0 would flag every review, 1 none."""
    number = _finite(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), not {value}")
    return number


#: Longest operating point name (the width of ``scoring_runs.operating_point``).
MAX_POINT_NAME = 64
OPERATING_POINT_HELP = ("flag at a named operating point of the model card instead: default (the card's "
                        "threshold), maybe, likely or very_likely (precision 0.6, 0.8, 0.9 on the default "
                        "domain's validation rows), or DOMAIN:NAME for another domain, e.g. steam:likely; "
                        "`moderation models list` shows a card's points")


def operating_point(value: str) -> str:
    """A point name as the card spells it: ``likely``, ``steam:likely``, ``default``."""
    name = value.strip()
    if not name or len(name) > MAX_POINT_NAME or not name.isprintable():
        raise argparse.ArgumentTypeError(f"must be a point name of 1-{MAX_POINT_NAME} characters, such as likely "
                                         f"or steam:likely, not {value!r}")
    return name


def threshold_choice(parser: argparse.ArgumentParser, threshold_help: str) -> None:
    """``--threshold`` or ``--operating-point``, never both: each sets the threshold."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=threshold, default=None, help=threshold_help)
    group.add_argument("--operating-point", type=operating_point, default=None, metavar="NAME",
                       help=OPERATING_POINT_HELP)


def score(value: str) -> float:
    """A score bound in [0, 1]."""
    number = _finite(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return number


def positive_float(value: str) -> float:
    """A finite number above zero (a learning rate)."""
    number = _finite(value)
    if number <= 0.0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return number


def input_file(path: Path, what: str = "input file") -> Path:
    """An existing regular file, else a one-line error saying what is wrong with it."""
    from moderation.errors import InputDataError

    if path.is_dir():
        raise InputDataError(f"{path} is a directory, not a file")
    if not path.exists():
        raise InputDataError(f"{what} not found: {path}")
    return path


def output_file(path: Path, force: bool = False, option: str = "output") -> Path:
    """A path a command may write: not a directory, not an existing file unless ``force``."""
    from moderation.errors import InputDataError

    if path.is_dir():
        raise InputDataError(f"{option} {path} is a directory: give a file name")
    if path.exists() and not force:
        raise InputDataError(f"{option} {path} exists: give another name, or --force to overwrite it")
    return path
