"""Times in UTC, the one zone the tables hold.

SQLite keeps a date-time without its zone and compares stored text, not
instants, so every time is converted to UTC before it is bound and read back
as UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc(moment: datetime) -> datetime:
    """Aware UTC time; a naive one is taken as UTC (SQLite drops zones, so bind UTC only)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def utc_or_none(value: datetime | None) -> datetime | None:
    """:func:`utc` of a time read from a nullable column."""
    return None if value is None else utc(value)


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)
