"""Loading review files into the ``reviews`` table, row by row checked.

Accepted files (format chosen by extension, then by the first line):

* Parquet, CSV or TSV with a header: ``review_id``, ``product_id`` (or
  ``item_id``), ``rating`` (1-10), ``text``, ``created_at`` (or ``created``);
  the shared corpus Parquet is one of these, as it is. Only ``text`` is
  required: no product means product 0, no review id means a generated one.
* NSMC TSV: ``id<TAB>document<TAB>label``; product 0, rating NULL (the label
  is checked but not stored: it is derived from the rating NSMC dropped).
* Naver shopping TSV: ``rating<TAB>review`` without a header, 1-5 stars. The
  stars are stored on the site's 10-point scale by :data:`STARS_TO_TEN`, which
  keeps each class (1-2 negative, 3 ambiguous, 4-5 positive) on the matching
  side of the 10-point convention (1-4, 5-8, 9-10).

Review ids that a file lacks come from :func:`generated_review_id`: a hash of
the line (or row) number and the text, in ``[2**62, 2**63)`` so they never meet
a site id; the same file imported again gives the same ids.

Upserts on ``review_id``: a known review whose values differ is updated (and
re-ingested at ``now``, so the next nightly run scores its new text), an equal
one is left alone, so importing a file twice changes nothing. An import fills
and corrects values but never erases them: a file without products, ratings or
dates keeps what the table already knows.

Broken rows are rejected with their line (CSV/TSV, 1-based, header included)
or row (Parquet, 1-based) and the reason; the rest load. A line that is not
valid UTF-8 is rejected too, and a file with no valid text refused, as every
reader does (:mod:`moderation.reading`), so mojibake never overwrites stored
texts. NUL characters are removed (PostgreSQL text cannot hold them); such rows
count as ``repaired``. Everything is written in one transaction, in batches:
``executemany`` upserts, or ``COPY`` into a staging table on PostgreSQL.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
import time
from contextlib import closing
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, select

from moderation import db
from moderation.errors import DatabaseError, InputDataError
from moderation.progress import progress as progress_bar
from moderation.reading import (INTEGER, INVALID_UTF8, MAX_BIGINT, Rejecting, Rejection, arrow_values, check_header,
                                delimited_records, describe_rejections, file_kind, not_utf8, undecodable)
from moderation.timeutil import utc, utc_now

#: A text that is only a number.
_NUMBER_ONLY = re.compile(r"\s*[+-]?\d+(?:[.,]\d+)?\s*")

BATCH_SIZE = 5_000
RATING_RANGE = (1, 10)
STARS_RANGE = (1, 5)
#: 5-star shop rating -> site's 10-point rating, class by class (see module docstring).
STARS_TO_TEN = {1: 2, 2: 4, 3: 6, 4: 9, 5: 10}
GENERATED_ID_BASE = 2**62

#: Canonical column <- accepted header names (case-insensitive).
ALIASES = {
    "review_id": ("review_id", "id"),
    "product_id": ("product_id", "item_id"),
    "rating": ("rating",),
    "text": ("text", "document", "review"),
    "created_at": ("created_at", "created"),
    "label": ("label",),
}


@dataclass
class ImportReport(Rejecting):
    path: str
    source_format: str  # parquet, csv, tsv, nsmc or shopping
    unit: str = "line"  # what Rejection.line counts: "line" or "row"
    rows_read: int = 0
    loaded: int = 0  # new reviews
    updated: int = 0  # known reviews whose values changed
    unchanged: int = 0
    rejected: int = 0
    repaired: int = 0  # kept after removing NULs
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, first: int = 5) -> str:
        """One line for a log or a terminal; names the first rejected lines."""
        return (f"{self.path} ({self.source_format}): {self.rows_read} rows read, {self.loaded} loaded, "
                f"{self.updated} updated, {self.unchanged} unchanged"
                f"{f', {self.repaired} repaired' if self.repaired else ''}, "
                f"{describe_rejections(self.rejected, self.rejections, self.unit, first)}")


@dataclass(frozen=True)
class _Row:
    review_id: int
    product_id: int | None  # None: the file does not know (0 for a new review)
    rating: int | None
    text: str | None
    created_at: datetime | None


class _Bad(ValueError):
    """A row's value cannot be used; the message is the rejection reason."""


#: (line or row number, values by canonical column) or (number, why the record is unusable).
_Rows = Generator[tuple[int, dict[str, Any] | str], None, None]


@dataclass
class _Source:
    fmt: str
    unit: str
    columns: set[str]
    rows: _Rows
    total: int | None = None  # rows, where the format says without reading them


def import_reviews(engine: Engine, path: Path | str, spread_days: int | None = None,
                   now: datetime | None = None, progress: bool = False) -> ImportReport:
    """Upsert a review file into ``reviews`` in one transaction; broken rows are reported, not loaded.

    ``ingested_at`` is ``now`` (default: the current time) or, with
    ``spread_days``, a point of the last ``spread_days`` days fixed by a hash of
    the review id, so a demo database has history for several nightly runs.
    """
    started = time.perf_counter()
    path = Path(path)
    if spread_days is not None and spread_days < 1:
        raise InputDataError(f"spread days must be at least 1, not {spread_days}")
    now = utc(now) if now is not None else utc_now()
    source = _open_source(path)
    report = ImportReport(path=str(path), source_format=source.fmt, unit=source.unit)
    seen: dict[int, int] = {}
    texts = numbers = not_decoded = 0  # non-empty texts, those only a number (a wrong column?), lines not UTF-8
    with closing(source.rows), db.translate_errors(engine), engine.begin() as conn, \
            progress_bar("importing", source.total, unit="rows", enabled=progress) as done:
        if not inspect(conn).has_table(db.reviews.name):
            raise DatabaseError(f"database {engine.url.render_as_string(hide_password=True)} has no reviews table: "
                                f"run `moderation db init` first")
        batch: list[_Row] = []
        for line, values in source.rows:
            report.rows_read += 1
            done.advance(1)
            try:
                if isinstance(values, str):
                    raise _Bad(values)
                if undecodable(values.values()):
                    not_decoded += 1
                    raise _Bad(INVALID_UTF8)
                row, repaired = _parse(values, source, line)
            except _Bad as exc:
                report.reject(line, str(exc))
                continue
            if row.review_id in seen:
                first = seen[row.review_id]
                report.reject(line, f"duplicate review_id {row.review_id} (first at {source.unit} {first})")
                continue
            seen[row.review_id] = line
            if row.text is not None and row.text.strip():
                texts += 1
                numbers += bool(_NUMBER_ONLY.fullmatch(row.text))
            report.repaired += repaired
            batch.append(row)
            if len(batch) >= BATCH_SIZE:
                _write_batch(conn, batch, now, spread_days, report)
                batch = []
        if texts and numbers == texts:  # raised inside the transaction: nothing is written
            raise InputDataError(f"{path}: every text is a number (is the text column the right one?); "
                                 f"nothing imported")
        if not_decoded and not texts:  # a whole file in another encoding: say so, not just reject every line
            raise not_utf8(path, not_decoded)
        _write_batch(conn, batch, now, spread_days, report)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def generated_review_id(line: int, text: str | None) -> int:
    """Stable id for a review the file gives none: BLAKE2b of line number and text, in [2**62, 2**63)."""
    digest = hashlib.blake2b(f"{line}\t{text or ''}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return GENERATED_ID_BASE | (int.from_bytes(digest, "big") & (GENERATED_ID_BASE - 1))


def ingestion_time(review_id: int, now: datetime, spread_days: int | None) -> datetime:
    """``now``, or a moment in ``(now - spread_days, now]`` fixed by the review id's hash."""
    if not spread_days:
        return now
    digest = hashlib.blake2b(str(review_id).encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest, "big") / 2**64
    return now - timedelta(seconds=fraction * spread_days * 86_400)


# --- reading -----------------------------------------------------------------

def _open_source(path: Path) -> _Source:
    kind = file_kind(path)
    if kind == "parquet":
        return _parquet_source(path)
    return _csv_source(path) if kind == "csv" else _tsv_source(path)


def _resolve(names: list[str], path: Path) -> dict[str, int]:
    """Canonical column -> position in the file's columns; the text column is required."""
    lowered = [str(n).strip().lower() for n in names]
    found: dict[str, int] = {}
    for canonical, aliases in ALIASES.items():
        for alias in aliases:
            if alias in lowered:
                found[canonical] = lowered.index(alias)
                break
    if "text" not in found:
        raise InputDataError(f"{path} has no text column (one of {', '.join(ALIASES['text'])}); "
                             f"columns: {', '.join(map(str, names)) or 'none'}")
    return found


def _parquet_source(path: Path) -> _Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    names = parquet.schema_arrow.names
    found = _resolve(names, path)
    wanted = {canonical: names[i] for canonical, i in found.items()}
    text_type = parquet.schema_arrow.field(wanted["text"]).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or pa.types.is_null(text_type)):
        raise InputDataError(f"{path}: column {wanted['text']} holds {text_type} values, not review texts")

    def rows() -> _Rows:
        number = 0
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_SIZE, columns=list(wanted.values())):
                columns = {canonical: arrow_values(batch.column(name)) for canonical, name in wanted.items()}
                for i in range(batch.num_rows):
                    number += 1
                    yield number, {canonical: column[i] for canonical, column in columns.items()}
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise InputDataError(f"cannot read {path} after row {number}: {exc}") from None

    return _Source("parquet", "row", set(found), rows(), total=parquet.metadata.num_rows)


def _csv_source(path: Path) -> _Source:
    header_records = delimited_records(path, ",", csv.QUOTE_MINIMAL)
    header = next(header_records, (1, [], ""))[1]
    header_records.close()
    check_header(header, path)
    found = _resolve(header, path)

    def rows() -> _Rows:
        body = delimited_records(path, ",", csv.QUOTE_MINIMAL)
        next(body, None)  # the header
        for line, fields, _ in body:
            yield line, _fields(fields, header, found)

    return _Source("csv", "line", set(found), rows())


def _fields(fields: list[str], header: list[str], found: dict[str, int]) -> dict[str, Any] | str:
    if len(fields) != len(header):
        return f"expected {len(header)} fields, found {len(fields)}"
    return {canonical: fields[i] for canonical, i in found.items()}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines split on LF only (a stray CR stays in the text); BOM dropped."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", "surrogateescape")
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            yield number, line


def _tsv_source(path: Path) -> _Source:
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise InputDataError(f"{path} is empty")
    head = first[1].split("\t")
    lowered = [h.strip().lower() for h in head]
    if lowered[:3] == ["id", "document", "label"]:
        fmt, header, found = "nsmc", head, {"review_id": 0, "text": 1, "label": 2}
    elif len(head) >= 2 and head[0].strip().isdigit():
        fmt, header, found = "shopping", [], {"rating": 0, "text": 1}
    else:
        check_header(head, path)
        fmt, header, found = "tsv", head, _resolve(head, path)

    def rows() -> _Rows:
        numbered = itertools.chain([first], lines) if fmt == "shopping" else lines  # no header to skip
        for number, line in numbered:
            if not line.strip():
                continue
            if fmt == "shopping":
                parts = line.split("\t", 1)  # the review is the rest of the line, tabs and all
                yield number, ("expected rating<TAB>review" if len(parts) != 2
                               else {"rating": parts[0], "text": parts[1]})
            else:
                yield number, _fields(line.split("\t"), header, found)

    return _Source(fmt, "line", set(found), rows())


# --- checking ----------------------------------------------------------------

def _parse(values: dict[str, Any], source: _Source, line: int) -> tuple[_Row, bool]:
    text, repaired = _clean_text(values.get("text"))
    review_id = _integer(values.get("review_id"), "review_id")
    if "review_id" not in source.columns:
        review_id = generated_review_id(line, text)
    elif review_id is None:
        raise _Bad("missing review_id")
    elif not 1 <= review_id <= MAX_BIGINT:
        raise _Bad(f"review_id {review_id} out of range")
    product_id = _integer(values.get("product_id"), "product_id")
    if "product_id" in source.columns:
        if product_id is None:
            raise _Bad("missing product_id")
        if not 0 <= product_id <= MAX_BIGINT:
            raise _Bad(f"product_id {product_id} out of range")
    rating = _integer(values.get("rating"), "rating")
    if source.fmt == "shopping":
        low, high = STARS_RANGE
        if rating is None or not low <= rating <= high:
            raise _Bad(f"rating {values.get('rating')!r} is not {low}-{high} stars")
        rating = STARS_TO_TEN[rating]
    elif rating is not None and not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
        raise _Bad(f"rating {rating} out of range {RATING_RANGE[0]}-{RATING_RANGE[1]}")
    if source.fmt == "nsmc" and str(values.get("label", "")).strip() not in {"0", "1"}:
        raise _Bad(f"label {values.get('label')!r} is not 0 or 1")
    return _Row(review_id, product_id, rating, text, _timestamp(values.get("created_at"))), repaired


def _integer(value: Any, name: str) -> int | None:
    """An int from an int, an integral float or a decimal string; None when empty."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Bad(f"{name} {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value:  # NaN: missing
            return None
        if value.is_integer():
            return int(value)
    elif isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if INTEGER.fullmatch(stripped):
            return int(stripped)
    raise _Bad(f"{name} {_short(value)} is not an integer")


def _timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO date or date-time (naive = UTC); None when empty."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        try:
            return utc(datetime.fromisoformat(stripped))
        except ValueError:
            pass
    raise _Bad(f"created_at {_short(value)} is not an ISO date")


def _clean_text(value: Any) -> tuple[str | None, bool]:
    """(text fit for both databases, whether it had to be changed)."""
    if value is None:
        return None, False
    text = value if isinstance(value, str) else str(value)
    cleaned = text.replace("\x00", "")
    return cleaned, cleaned != text


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# --- writing -----------------------------------------------------------------

_COLUMNS = ("review_id", "product_id", "rating", "text", "created_at", "ingested_at")


def _write_batch(conn: Connection, batch: list[_Row], now: datetime, spread_days: int | None,
                 report: ImportReport) -> None:
    """Compare with the stored rows, then upsert only the new and the changed ones."""
    if not batch:
        return
    t = db.reviews.c
    ids = [row.review_id for row in batch]
    stored = {r.review_id: r for r in conn.execute(
        select(t.review_id, t.product_id, t.rating, t.text, t.created_at).where(db.id_in(conn, t.review_id, ids)))}
    out: list[dict[str, Any]] = []
    for row in batch:
        old = stored.get(row.review_id)
        values = {"review_id": row.review_id, "product_id": row.product_id, "rating": row.rating,
                  "text": row.text, "created_at": row.created_at}
        if old is None:
            values["product_id"] = row.product_id if row.product_id is not None else 0
            report.loaded += 1
        else:
            old_created = utc(old.created_at) if old.created_at is not None else None
            # Never erase: what this file does not know, the table keeps.
            if row.product_id is None:
                values["product_id"] = old.product_id
            if row.rating is None:
                values["rating"] = old.rating
            if row.created_at is None:
                values["created_at"] = old_created
            if (values["product_id"], values["rating"], values["text"], values["created_at"]) == (
                    old.product_id, old.rating, old.text, old_created):
                report.unchanged += 1
                continue
            report.updated += 1
        values["ingested_at"] = ingestion_time(row.review_id, now, spread_days)
        out.append(values)
    if not out:
        return
    if conn.dialect.name == "postgresql":
        db.copy_upsert(conn, db.reviews, "review_id", out)
    else:
        insert = db.dialect_insert(conn)(db.reviews)
        conn.execute(insert.on_conflict_do_update(
            index_elements=[db.reviews.c.review_id],
            set_={name: insert.excluded[name] for name in _COLUMNS if name != "review_id"},
        ), out)
