"""Labels for retraining: imported from files, from star ratings, and the snapshot that merges them.

Every moderator decision becomes a label in ``review_labels`` with source
``moderator`` (:mod:`moderation.queue`), next to labels imported from files
(``import``) and weak labels from star ratings (``rating``);
:func:`labelled_snapshot` merges them for retraining, the moderator's word
winning over an import, an import over a rating.

Every statement is SQLAlchemy Core with bound parameters.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, case, func, literal, or_, select

from moderation import db
from moderation.data import rating_bands
from moderation.errors import InputDataError
from moderation.reading import (INTEGER, INVALID_UTF8, MAX_BIGINT, Rejecting, Rejection, arrow_values, check_header,
                                delimited_records, describe_rejections, file_kind, not_utf8, undecodable)
from moderation.timeutil import utc_now

log = logging.getLogger(__name__)

#: Precedence of label sources when a review has several (lower wins).
SOURCE_RANK = {"moderator": 0, "import": 1, "rating": 2}
#: Label words accepted in files besides 0/1 (1 = negative).
LABEL_WORDS = {"negative": 1, "positive": 0, "neg": 1, "pos": 0, "부정": 1, "긍정": 0}


def upsert_labels(conn: Connection, rows: list[dict[str, Any]], only_changed: bool) -> None:
    """Insert labels or overwrite the same source's label; ``only_changed`` keeps equal ones untouched."""
    if not rows:
        return
    insert = db.dialect_insert(conn)(db.review_labels)
    excluded = insert.excluded
    columns = {"label": excluded.label, "labelled_at": excluded.labelled_at, "labelled_by": excluded.labelled_by}
    if "text_version" in rows[0]:
        columns["text_version"] = excluded.text_version
    statement = insert.on_conflict_do_update(
        index_elements=[db.review_labels.c.review_id, db.review_labels.c.source],
        set_=columns,
        where=(db.review_labels.c.label != excluded.label) if only_changed else None,
    )
    conn.execute(statement, rows)



@dataclass
class LabelImportReport(Rejecting):
    """What ``labels import`` did; rejected rows are named, never silently dropped."""

    path: str
    source_format: str  # parquet, csv, tsv or nsmc
    unit: str = "line"  # what Rejection.line counts: "line" or "row"
    rows_read: int = 0
    loaded: int = 0  # new import labels
    updated: int = 0  # import labels whose value changed
    unchanged: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def summary(self, first: int = 0) -> str:
        """One line; ``first`` > 0 names the first rejected lines."""
        return (f"{self.path} ({self.source_format}): {self.rows_read} rows read, {self.loaded} labels loaded, "
                f"{self.updated} updated, {self.unchanged} unchanged, "
                f"{describe_rejections(self.rejected, self.rejections, self.unit, first)}")


@dataclass(frozen=True)
class _LabelSource:
    fmt: str
    unit: str
    flip: bool  # NSMC files use 1 = positive
    rows: list[tuple[int, Any, Any]]  # (line, review id value, label value)


def import_labels(engine: Engine, path: Path | str) -> LabelImportReport:
    """Upsert labels (source ``import``) from a file with ``review_id`` and ``label`` columns.

    Labels are 1/0 (1 = negative) or the words negative/positive; an NSMC
    file (``id, document, label``, 1 = positive) is flipped as everywhere
    else. Rows with a bad id or label, a repeated id, a review the table
    does not hold or bytes that are not UTF-8 (:mod:`moderation.reading`)
    are rejected with their number; the rest load in one
    transaction. A label equal to the stored one is left untouched, so its
    time still says when it was first learnt.
    """
    path = Path(path)
    source = _open_labels(path)
    report = LabelImportReport(path=str(path), source_format=source.fmt, unit=source.unit)
    parsed = _parse_label_rows(source, report)
    labelled_by = f"import:{path.name}"[:128]
    now = utc_now()
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.reviews, db.review_labels)
        for part in db.batches(list(parsed.items())):
            _write_label_batch(conn, dict(part), report, now, labelled_by)
    log.debug("label import: %s", report.summary())
    return report


def _open_labels(path: Path) -> _LabelSource:
    kind = file_kind(path)
    if kind == "parquet":
        return _parquet_labels(path)
    return _delimited_labels(path, "," if kind == "csv" else "\t")


def _label_columns(names: list[str], path: Path) -> tuple[int, int, bool]:
    """Positions of the id and label columns, and whether the file is NSMC (1 = positive)."""
    lowered = [str(n).strip().lower() for n in names]
    nsmc = lowered[:3] == ["id", "document", "label"]
    id_name = "review_id" if "review_id" in lowered else ("id" if "id" in lowered else None)
    if id_name is None or "label" not in lowered:
        raise InputDataError(f"{path} needs columns review_id and label (columns: {', '.join(map(str, names))})")
    return lowered.index(id_name), lowered.index("label"), nsmc


def _parquet_labels(path: Path) -> _LabelSource:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        ids_at, label_at, nsmc = _label_columns(names, path)
        table = pq.read_table(path, columns=[names[ids_at], names[label_at]])
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    ids, labels = arrow_values(table.column(0)), arrow_values(table.column(1))
    rows = [(i + 1, rid, label) for i, (rid, label) in enumerate(zip(ids, labels))]
    return _LabelSource("nsmc" if nsmc else "parquet", "row", nsmc, rows)


def _delimited_labels(path: Path, delimiter: str) -> _LabelSource:
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    records = delimited_records(path, delimiter, quoting)
    header = next(records, None)
    if header is None:
        raise InputDataError(f"{path} is empty: it needs a header with review_id and label")
    check_header(header[1], path)
    ids_at, label_at, nsmc = _label_columns(header[1], path)
    rows: list[tuple[int, Any, Any]] = []
    for start, record, _ in records:
        if all(not value.strip() for value in record):
            continue
        if max(ids_at, label_at) >= len(record):
            rows.append((start, None, _Missing()))
            continue
        rows.append((start, record[ids_at], record[label_at]))
    fmt = "nsmc" if nsmc else ("csv" if delimiter == "," else "tsv")
    return _LabelSource(fmt, "line", nsmc, rows)


class _Missing:
    """A row too short to hold the label column."""


def _parse_label_rows(source: _LabelSource, report: LabelImportReport) -> dict[int, tuple[int, int]]:
    """review id -> (line, label) for the rows that parse; the rest are rejected."""
    parsed: dict[int, tuple[int, int]] = {}
    not_decoded = 0
    for line, raw_id, raw_label in source.rows:
        report.rows_read += 1
        if isinstance(raw_label, _Missing):
            report.reject(line, "too few fields for the review_id and label columns")
            continue
        if undecodable([raw_id, raw_label]):
            not_decoded += 1
            report.reject(line, INVALID_UTF8)
            continue
        try:
            rid = _review_id(raw_id)
            label = _label(raw_label, source.flip)
        except ValueError as exc:
            report.reject(line, str(exc))
            continue
        if rid in parsed:
            report.reject(line, f"duplicate review_id {rid} (first at {source.unit} {parsed[rid][0]})")
            continue
        parsed[rid] = (line, label)
    if not_decoded and not_decoded == report.rows_read:  # a whole file in another encoding: say so
        raise not_utf8(report.path, not_decoded, "lines")
    return parsed


def _review_id(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip() if value is not None else ""
        if not INTEGER.fullmatch(text):
            raise ValueError(f"review_id is not an integer: {str(value)[:40]!r}")
        number = int(text)
    if not 0 <= number <= MAX_BIGINT:
        raise ValueError(f"review_id {number} is out of range")
    return number


def _label(value: Any, flip: bool) -> int:
    """1 = negative; a numeric NSMC label is flipped (there 1 = positive), a word never is."""
    if isinstance(value, bool):
        raise ValueError(f"label must be 0, 1, negative or positive, not {value!r}")
    if isinstance(value, (int, float)) and value in (0, 1):
        numeric = int(value)
    else:
        word = str(value).strip().lower() if value is not None else ""
        if word in LABEL_WORDS:
            return LABEL_WORDS[word]
        numeric = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}.get(word, -1)
        if numeric < 0:
            raise ValueError(f"label must be 0, 1, negative or positive, not {str(value)[:40]!r}")
    return 1 - numeric if flip else numeric


def _write_label_batch(conn: Connection, batch: dict[int, tuple[int, int]], report: LabelImportReport,
                       now: datetime, labelled_by: str) -> None:
    ids = list(batch)
    known = set(conn.execute(select(db.reviews.c.review_id).where(db.reviews.c.review_id.in_(ids))).scalars())
    stored = dict(conn.execute(
        select(db.review_labels.c.review_id, db.review_labels.c.label)
        .where(db.review_labels.c.review_id.in_(ids), db.review_labels.c.source == "import")
    ).tuples().all())
    rows = []
    for rid, (line, label) in batch.items():
        if rid not in known:
            report.reject(line, f"unknown review_id {rid}")
        elif rid not in stored:
            report.loaded += 1
            rows.append({"review_id": rid, "label": label, "source": "import", "labelled_at": now,
                         "labelled_by": labelled_by})
        elif stored[rid] != label:
            report.updated += 1
            rows.append({"review_id": rid, "label": label, "source": "import", "labelled_at": now,
                         "labelled_by": labelled_by})
        else:
            report.unchanged += 1
    upsert_labels(conn, rows, only_changed=True)


def rating_labels(engine: Engine, scale: int = 10) -> int:
    """Weak labels (source ``rating``) from the stored ratings; returns how many were written or changed.

    The table does not record a scale, so the caller names it: on 10 points
    1-4 is negative and 9-10 positive, on 5 points 1-2 and 4-5; the middle is
    left unlabelled. A rating above 5 refuses ``scale=5``; every rating at 5
    or below with ``scale=10`` is logged as a likely 5-point scale (4 stars
    would become negative). A rating label whose review's rating has left the
    bands is removed.
    """
    neg_low, neg_high, pos_low, pos_high = rating_bands(scale)
    r, lab = db.reviews.c, db.review_labels.c
    label = case((r.rating.between(neg_low, neg_high), 1), else_=0)
    in_bands = r.rating.between(neg_low, neg_high) | r.rating.between(pos_low, pos_high)
    now = utc_now()
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.reviews, db.review_labels)
        _check_scale(conn, scale)
        source = select(r.review_id, label, literal("rating", lab.source.type),
                        literal(now, lab.labelled_at.type),
                        literal(f"rating/{scale}", lab.labelled_by.type)).where(in_bands)
        insert = db.dialect_insert(conn)(db.review_labels).from_select(
            ["review_id", "label", "source", "labelled_at", "labelled_by"], source)
        written = _rating_changes(conn, label, in_bands)  # rowcount of INSERT ... SELECT is -1 on psycopg
        conn.execute(insert.on_conflict_do_update(
            index_elements=[lab.review_id, lab.source],
            set_={"label": insert.excluded.label, "labelled_at": insert.excluded.labelled_at,
                  "labelled_by": insert.excluded.labelled_by},
            where=lab.label != insert.excluded.label,
        ))
        stale = select(r.review_id).where(in_bands)
        removed = conn.execute(db.review_labels.delete().where(
            lab.source == "rating", lab.review_id.not_in(stale))).rowcount
    log.debug("rating labels on the %d-point scale: %d written or changed, %d removed", scale, written, removed)
    return int(written)


def _rating_changes(conn: Connection, label: Any, in_bands: Any) -> int:
    """Reviews in the bands whose rating label is missing or differs: what the upsert will write."""
    r, lab = db.reviews.c, db.review_labels.c
    joined = db.reviews.outerjoin(db.review_labels, (lab.review_id == r.review_id) & (lab.source == "rating"))
    query = select(func.count()).select_from(joined).where(in_bands, lab.label.is_(None) | (lab.label != label))
    return int(conn.execute(query).scalar_one())


def stored_rating_scale(engine: Engine) -> int:
    """The scale the stored ratings are on, read from them: 5 when none is above 5 (shop stars), else 10.

    A 10-point database whose ratings all happen to be 5 or below would be
    read as 5-point; an operator who knows better sets the scale.
    """
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.reviews)
        top = conn.execute(select(func.max(db.reviews.c.rating))).scalar()
    return 5 if top is None or top <= 5 else 10


def _check_scale(conn: Connection, scale: int) -> None:
    top = conn.execute(select(func.max(db.reviews.c.rating))).scalar()
    if top is None:
        return
    if scale == 5 and top > 5:
        above = conn.execute(select(func.count()).where(db.reviews.c.rating > 5)).scalar_one()
        raise InputDataError(f"{above} reviews have a rating above 5 (up to {top}): "
                             f"they are not on a 5-point scale; use scale 10")
    if scale == 10 and top <= 5:
        log.warning("every stored rating is 5 or below: if the reviews use a 5-point scale, "
                    "label them with scale 5 (on 10 points, 1-4 counts as negative)")


def labelled_snapshot(engine: Engine, include_rating: bool = False) -> pd.DataFrame:
    """One label per review for retraining: moderator over import over rating.

    A moderator's label whose review was edited after the decision is left
    out (it judged another text); an import or rating label may then stand.
    Columns ``review_id``, ``text``, ``label`` (1 = negative), ``source``,
    ``product_id``, ordered by review id; reviews without text are left
    out (nothing to learn from them).
    """
    sources = [s for s in SOURCE_RANK if include_rating or s != "rating"]
    lab, r = db.review_labels.c, db.reviews.c
    rank = case(*((lab.source == s, n) for s, n in SOURCE_RANK.items()), else_=len(SOURCE_RANK))
    ranked = (
        select(lab.review_id, lab.label, lab.source,
               func.row_number().over(partition_by=lab.review_id, order_by=rank).label("n"))
        .join_from(db.review_labels, db.reviews, lab.review_id == r.review_id)
        .where(lab.source.in_(sources), or_(lab.text_version.is_(None), lab.text_version == r.text_version))
        .subquery()
    )
    query = (
        select(ranked.c.review_id, r.text, ranked.c.label, ranked.c.source, r.product_id)
        .join_from(ranked, db.reviews, ranked.c.review_id == r.review_id)
        .where(ranked.c.n == 1, r.text.is_not(None), r.text != "")
        .order_by(ranked.c.review_id)
    )
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.reviews, db.review_labels)
        rows = conn.execute(query).tuples().all()
    frame = pd.DataFrame(rows, columns=["review_id", "text", "label", "source", "product_id"])
    return frame.astype({"review_id": "int64", "text": "object", "label": "int8", "source": "object",
                         "product_id": "int64"})



def audit_labels(engine: Engine) -> pd.DataFrame:
    """Moderator labels on audit items: an unbiased sample of what the model let through, and judged.

    Audit items are unflagged reviews sampled at random each night
    (:mod:`moderation.pipeline`), so their labels estimate a model's recall
    and precision without the bias of the flag queue. Same rules as
    :func:`labelled_snapshot`: the label must be for the review's current text,
    and the text non-empty. Columns ``review_id``, ``text``, ``label``,
    ``product_id``; 'unsure' decisions have no label and are not here.
    """
    lab, r, q = db.review_labels.c, db.reviews.c, db.moderation_queue.c
    query = (
        select(lab.review_id, r.text, lab.label, r.product_id)
        .join_from(db.review_labels, db.reviews, lab.review_id == r.review_id)
        .join(db.moderation_queue, q.review_id == lab.review_id)
        .where(lab.source == "moderator", q.kind == "audit", q.status.in_(["confirmed", "dismissed"]),
               or_(lab.text_version.is_(None), lab.text_version == r.text_version),
               r.text.is_not(None), r.text != "")
        .order_by(lab.review_id)
    )
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.reviews, db.review_labels, db.moderation_queue)
        rows = conn.execute(query).tuples().all()
    frame = pd.DataFrame(rows, columns=["review_id", "text", "label", "product_id"])
    return frame.astype({"review_id": "int64", "text": "object", "label": "int8", "product_id": "int64"})
