"""Domain errors: everything a user can cause is one of these, so the CLI and
the DAG tasks can turn them into one clear line instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterable

#: How many ids an error line names before it says how many more.
MAX_IDS_NAMED = 10


class ModerationError(Exception):
    """Base class of every error this package raises on purpose."""


class InputDataError(ModerationError):
    """An input file or table is missing, unreadable or lacks a required column."""


class ModelBundleError(ModerationError):
    """A model directory is missing a part, or its parts disagree."""


class OperatingPointError(ModelBundleError):
    """A named operating point the model's card lacks, or a threshold and a point given together."""


class DatabaseError(ModerationError):
    """The reviews database is unreachable or not in the expected shape."""


class DecisionError(ModerationError):
    """A moderator decision cannot be recorded (unknown or unflagged review)."""


class ClaimError(DecisionError):
    """Another moderator holds a live claim on the review (or the claim cannot be taken)."""


class AccountError(ModerationError):
    """A moderator account cannot be created or changed (bad name, short password, unknown account)."""


class SettingError(ModerationError, ValueError):
    """An environment setting has a value the package cannot use (still a ValueError for callers)."""


#: What to say about a review file whose every text had bytes that are not UTF-8.
NOT_UTF8_HINT = ("is it a Korean file saved as CP949/EUC-KR? convert it to UTF-8 first, "
                 "e.g. iconv -f cp949 -t utf-8 IN > OUT")


def name_ids(ids: Iterable[int]) -> str:
    """The first few ids and how many more: an error line must stay one line."""
    ordered = sorted(ids)
    shown = ", ".join(str(i) for i in ordered[:MAX_IDS_NAMED])
    more = len(ordered) - MAX_IDS_NAMED
    return shown + (f" and {more} more" if more > 0 else "")
