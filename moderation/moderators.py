"""Moderators in the loop: the queue, their decisions, labels and model versions.

What the nightly job flags lands in ``moderation_queue``; moderators confirm
(the review IS negative) or dismiss (it is not) each one. Every decision also
becomes a label in ``review_labels`` with source ``moderator``, next to labels
imported from files (``import``) and weak labels from star ratings
(``rating``); :func:`labelled_snapshot` merges them for retraining, the
moderator's word winning over an import, an import over a rating.

Times are stored in UTC: SQLite keeps a date-time without its zone, so every
time is converted to UTC before it is bound and read back as UTC.
Every statement is SQLAlchemy Core with bound parameters.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, Table, case, func, inspect, literal, or_, select

from moderation import db
from moderation.errors import DatabaseError, DecisionError, InputDataError, ModelBundleError, ModerationError

log = logging.getLogger(__name__)

STATUSES = ("pending", "confirmed", "dismissed", "expired")
DECISIONS = ("confirmed", "dismissed")
#: A decision's label: confirmed means negative (1), dismissed positive (0).
DECISION_LABEL = {"confirmed": 1, "dismissed": 0}
#: Precedence of label sources when a review has several (lower wins).
SOURCE_RANK = {"moderator": 0, "import": 1, "rating": 2}
#: Label words accepted in files besides 0/1 (1 = negative).
LABEL_WORDS = {"negative": 1, "positive": 0, "neg": 1, "pos": 0, "부정": 1, "긍정": 0}
#: Rating bands per scale: (negative low, negative high, positive low, positive high), as in moderation.data.
RATING_BANDS = {10: (1, 4, 9, 10), 5: (1, 2, 4, 5)}
BATCH = 5_000
MAX_IDS_NAMED = 10
MAX_REJECTIONS_KEPT = 1_000
MAX_BIGINT = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


# ---------------------------------------------------------------- helpers


def utc(moment: datetime) -> datetime:
    """Aware UTC time; a naive one is taken as UTC (SQLite drops zones, so bind UTC only)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _read_time(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def _chunks(values: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _name_ids(ids: Iterable[int]) -> str:
    """The first few ids and how many more: an error line must stay one line."""
    ordered = sorted(ids)
    shown = ", ".join(str(i) for i in ordered[:MAX_IDS_NAMED])
    more = len(ordered) - MAX_IDS_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _insert_for(conn: Connection) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` on both databases."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def require_tables(conn: Connection, *tables: Table) -> None:
    """Say `run moderation db init` rather than a driver's 'no such table'."""
    inspector = inspect(conn)
    missing = [t.name for t in tables if not inspector.has_table(t.name)]
    if missing:
        where = conn.engine.url.render_as_string(hide_password=True)
        raise DatabaseError(f"database {where} has no {', '.join(missing)} table: run `moderation db init` first")


def _upsert_labels(conn: Connection, rows: list[dict[str, Any]], only_changed: bool) -> None:
    """Insert labels or overwrite the same source's label; ``only_changed`` keeps equal ones untouched."""
    if not rows:
        return
    insert = _insert_for(conn)(db.review_labels)
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


# ---------------------------------------------------------------- the queue


def flagged(engine: Engine, status: str | None = None, since: datetime | None = None,
            until: datetime | None = None, min_score: float | None = None, product: int | None = None,
            limit: int | None = 50) -> list[dict[str, Any]]:
    """Queued reviews with their text, newest flag first, then highest score.

    ``since`` is inclusive and ``until`` exclusive, on the time the review
    was flagged; ``limit=None`` returns every match. ``score`` is the score of
    the text shown: None while an edited text waits for the next run's score.
    """
    if status is not None and status not in STATUSES:
        raise InputDataError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if limit is not None and limit < 1:
        raise InputDataError(f"limit must be at least 1, not {limit}")
    q, r = db.moderation_queue.c, db.reviews.c
    query = (
        select(q.review_id, r.product_id, case((q.text_version == r.text_version, q.score), else_=None).label("score"),
               q.threshold, q.status, q.flagged_at, q.model_version,
               q.run_id, q.decided_by, q.decided_at, q.note, r.rating, r.text, r.created_at)
        .join_from(db.moderation_queue, db.reviews, q.review_id == r.review_id)
        .order_by(q.flagged_at.desc(), q.score.desc(), q.review_id)
    )
    if status is not None:
        query = query.where(q.status == status)
    if since is not None:
        query = query.where(q.flagged_at >= utc(since))
    if until is not None:
        query = query.where(q.flagged_at < utc(until))
    if min_score is not None:
        query = query.where(q.score >= min_score)
    if product is not None:
        query = query.where(r.product_id == product)
    if limit is not None:
        query = query.limit(limit)
    with db.translate_errors(engine), engine.connect() as conn:
        require_tables(conn, db.moderation_queue, db.reviews)
        rows = conn.execute(query).mappings().all()
    return [_flag_row(row) for row in rows]


def _flag_row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("flagged_at", "decided_at", "created_at"):
        out[key] = _read_time(out[key])
    return out


def decide(engine: Engine, review_ids: Iterable[int], decision: str, by: str, note: str | None = None,
           now: datetime | None = None) -> int:
    """Record one decision on queued reviews, and the matching moderator labels, atomically.

    All ids must be in the queue or nothing is written (a typo must not
    half-apply a batch). Deciding again overwrites: the queue keeps the
    latest decision, moderator, time and note.
    """
    ids = _decision_ids(review_ids)
    if decision not in DECISIONS:
        raise DecisionError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    by = (by or "").strip()
    if not by or len(by) > 128:
        raise DecisionError("a decision needs the moderator's name (1-128 characters)")
    when = utc(now) if now is not None else datetime.now(timezone.utc)
    q = db.moderation_queue.c
    with db.translate_errors(engine), engine.begin() as conn:
        require_tables(conn, db.moderation_queue, db.review_labels)
        _check_queued(conn, ids)
        for review_id, status, earlier_by, earlier_at in overturned_decisions(conn, ids, decision, by):
            log.warning("review %d was %s by %s at %s UTC; %s now overturns it as %s", review_id, status, earlier_by,
                        _read_time(earlier_at).strftime("%Y-%m-%d %H:%M"), by, decision)
        for part in _chunks(ids):
            _decided_events(conn, part, decision, by, when, note)  # before the update: the previous status
            conn.execute(db.moderation_queue.update().where(q.review_id.in_(part))
                         .values(status=decision, decided_by=by, decided_at=when, note=note))
        versions: dict[int, int] = {}
        for part in _chunks(ids):  # the text the moderator judged: its label must not follow a later edit
            versions.update(conn.execute(select(db.reviews.c.review_id, db.reviews.c.text_version)
                                         .where(db.reviews.c.review_id.in_(part))).tuples().all())
        labels = [{"review_id": rid, "label": DECISION_LABEL[decision], "source": "moderator",
                   "labelled_at": when, "labelled_by": by, "text_version": versions[rid]} for rid in ids]
        for part in _chunks(labels):
            _upsert_labels(conn, list(part), only_changed=False)
    log.debug("%s %d reviews by %s", decision, len(ids), by)  # the CLI prints the summary
    return len(ids)


def _decided_events(conn: Connection, ids: Sequence[int], decision: str, by: str, when: datetime,
                    note: str | None) -> None:
    """One ``decided`` event per queue row, in the decision's transaction (the audit trail)."""
    q, e = db.moderation_queue.c, db.moderation_events.c
    rows = select(q.review_id, literal("decided", e.event.type), literal(decision, e.status.type), q.status,
                  literal(by, e.actor.type), literal(when, e.at.type), q.score, q.model_version, q.threshold,
                  q.text_version, q.run_id, literal(note, e.note.type)).where(q.review_id.in_(ids))
    conn.execute(db.moderation_events.insert().from_select(
        [e.review_id, e.event, e.status, e.previous_status, e.actor, e.at, e.score, e.model_version, e.threshold,
         e.text_version, e.run_id, e.note], rows))


def events(engine: Engine, review_ids: Sequence[int] = (), event: str | None = None,
           since: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The queue's history (``moderation_events``), oldest first; filtered by review, event and time."""
    e = db.moderation_events.c
    query = select(db.moderation_events).order_by(e.event_id)
    if review_ids:
        query = query.where(e.review_id.in_(list(review_ids)))
    if event is not None:
        query = query.where(e.event == event)
    if since is not None:
        query = query.where(e.at >= utc(since))
    if limit is not None:
        query = query.order_by(None).order_by(e.event_id.desc()).limit(limit)
    with db.translate_errors(engine), engine.connect() as conn:
        require_tables(conn, db.moderation_events)
        rows = [dict(row) for row in conn.execute(query).mappings()]
    rows.sort(key=lambda row: row["event_id"])
    for row in rows:
        row["at"] = utc(row["at"]).isoformat()
    return rows


def overturned_decisions(conn: Connection, ids: list[int], decision: str, by: str) -> list[tuple[Any, ...]]:
    """(review, status, moderator, time) of the ids another moderator decided the other way."""
    q = db.moderation_queue.c
    found: list[tuple[Any, ...]] = []
    for part in _chunks(ids):
        found += conn.execute(select(q.review_id, q.status, q.decided_by, q.decided_at).where(
            q.review_id.in_(part), q.status != "pending", q.status != decision, q.decided_by.is_not(None),
            q.decided_by != by).order_by(q.review_id)).all()
    return found


def _decision_ids(review_ids: Iterable[int]) -> list[int]:
    ids: set[int] = set()
    for value in review_ids:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecisionError(f"review ids must be integers, not {value!r}")
        ids.add(value)
    if not ids:
        raise DecisionError("no review ids to decide")
    return sorted(ids)


def _check_queued(conn: Connection, ids: list[int]) -> None:
    """Raise naming the ids that are unknown and those never flagged."""
    queued: set[int] = set()
    for part in _chunks(ids):
        queued.update(conn.execute(select(db.moderation_queue.c.review_id)
                                   .where(db.moderation_queue.c.review_id.in_(part))).scalars())
    missing = [rid for rid in ids if rid not in queued]
    if not missing:
        return
    known: set[int] = set()
    for part in _chunks(missing):
        known.update(conn.execute(select(db.reviews.c.review_id).where(db.reviews.c.review_id.in_(part))).scalars())
    problems = []
    unknown = [rid for rid in missing if rid not in known]
    if unknown:
        problems.append(f"unknown review ids: {_name_ids(unknown)}")
    unflagged = [rid for rid in missing if rid in known]
    if unflagged:
        problems.append(f"not in the moderation queue: {_name_ids(unflagged)}")
    raise DecisionError("; ".join(problems) + " (nothing recorded)")


# ---------------------------------------------------------------- stats


def stats(engine: Engine, since: datetime | None = None) -> dict[str, Any]:
    """How the model's flags fare with moderators, per nightly run and over those runs.

    Per run: ``flagged`` counts the queue rows the run added (a review
    flagged again later stays with its first run), ``reviews_flagged`` and
    ``flag_rate`` what the run flagged among what it scored. ``precision`` is
    confirmed / decided, ``None`` before any decision. ``since`` keeps the
    runs whose interval starts at or after it; ``overall`` sums the kept runs.
    """
    with db.translate_errors(engine), engine.connect() as conn:
        require_tables(conn, db.scoring_runs, db.moderation_queue)
        runs = [_run_stats(row) for row in _one_per_interval(conn.execute(_runs_query(since)).mappings().all())]
    totals = {key: sum(r[key] for r in runs)
              for key in ("reviews_scored", "reviews_flagged", "flagged", "confirmed", "dismissed", "pending")}
    overall = {"runs": len(runs), "reviews_scored": totals["reviews_scored"],
               "reviews_flagged": totals["reviews_flagged"],
               "flag_rate": totals["reviews_flagged"] / totals["reviews_scored"] if totals["reviews_scored"] else None,
               **_decision_counts(totals)}
    return {"since": utc(since).isoformat() if since else None, "runs": runs, "overall": overall}


def _counts_columns(q: Any) -> list[Any]:
    def count_of(status: str) -> Any:
        return func.coalesce(func.sum(case((q.status == status, 1), else_=0)), 0)

    return [func.count().label("flagged"), count_of("confirmed").label("confirmed"),
            count_of("dismissed").label("dismissed"), count_of("pending").label("pending")]


def _runs_query(since: datetime | None) -> Any:
    q, s = db.moderation_queue.c, db.scoring_runs.c
    per_run = select(q.run_id, *_counts_columns(q)).group_by(q.run_id).subquery()
    query = (
        select(s.run_id, s.interval_start, s.interval_end, s.model_version, s.threshold, s.status,
               s.reviews_scored, s.reviews_flagged, s.finished_at,
               *(func.coalesce(per_run.c[name], 0).label(name)
                 for name in ("flagged", "confirmed", "dismissed", "pending")))
        .outerjoin(per_run, per_run.c.run_id == s.run_id)
        .order_by(s.interval_start.desc(), s.run_id)
    )
    return query.where(s.interval_start >= utc(since)) if since is not None else query


def _one_per_interval(rows: list[Any]) -> list[dict[str, Any]]:
    """Runs of the same interval (the CLI's and Airflow's, a re-run) as ONE run: counts summed.

    Work is chosen by state, so a second run of an interval scores only what
    the first left, and the sum is what the interval's runs did together. The
    latest run names the model, threshold and status; ``run_ids`` lists them all.
    """
    merged: dict[tuple[Any, Any], dict[str, Any]] = {}
    never = datetime.min.replace(tzinfo=timezone.utc)
    for row in rows:
        key = (utc(row["interval_start"]), utc(row["interval_end"]))
        found = merged.get(key)
        if found is None:
            merged[key] = dict(row) | {"run_ids": [row["run_id"]]}
            continue
        found["run_ids"].append(row["run_id"])
        for name in ("reviews_scored", "reviews_flagged", "flagged", "confirmed", "dismissed", "pending"):
            found[name] = int(found[name]) + int(row[name])
        finished = _read_time(row["finished_at"]) or never
        if finished >= (_read_time(found["finished_at"]) or never):
            found.update(run_id=row["run_id"], model_version=row["model_version"], threshold=row["threshold"],
                         status=row["status"], finished_at=row["finished_at"])
    return list(merged.values())


def _decision_counts(row: Any) -> dict[str, Any]:
    confirmed, dismissed = int(row["confirmed"]), int(row["dismissed"])
    decided = confirmed + dismissed
    return {"flagged": int(row["flagged"]), "decided": decided, "confirmed": confirmed, "dismissed": dismissed,
            "pending": int(row["pending"]), "precision": confirmed / decided if decided else None}


def _run_stats(row: Any) -> dict[str, Any]:
    scored, flagged_count = int(row["reviews_scored"]), int(row["reviews_flagged"])
    return {"run_id": row["run_id"], "run_ids": sorted(row["run_ids"]),
            "interval_start": utc(row["interval_start"]).isoformat(),
            "interval_end": utc(row["interval_end"]).isoformat(), "model_version": row["model_version"],
            "threshold": float(row["threshold"]), "status": row["status"], "reviews_scored": scored,
            "reviews_flagged": flagged_count, "flag_rate": flagged_count / scored if scored else None,
            **_decision_counts(row)}


# ---------------------------------------------------------------- labels


@dataclass(frozen=True)
class Rejection:
    line: int  # line (CSV/TSV, header included) or row (Parquet), 1-based
    reason: str


@dataclass
class LabelImportReport:
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

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS_KEPT:
            self.rejections.append(Rejection(line, reason))

    def summary(self) -> str:
        return (f"{self.path} ({self.source_format}): {self.rows_read} rows read, {self.loaded} labels loaded, "
                f"{self.updated} updated, {self.unchanged} unchanged, {self.rejected} rejected")


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
    else. Rows with a bad id or label, a repeated id or a review the table
    does not hold are rejected with their number; the rest load in one
    transaction. A label equal to the stored one is left untouched, so its
    time still says when it was first learnt.
    """
    path = Path(path)
    source = _open_labels(path)
    report = LabelImportReport(path=str(path), source_format=source.fmt, unit=source.unit)
    parsed = _parse_label_rows(source, report)
    labelled_by = f"import:{path.name}"[:128]
    now = datetime.now(timezone.utc)
    with db.translate_errors(engine), engine.begin() as conn:
        require_tables(conn, db.reviews, db.review_labels)
        for part in _chunks(list(parsed.items())):
            _write_label_batch(conn, dict(part), report, now, labelled_by)
    log.debug("label import: %s", report.summary())
    return report


def _open_labels(path: Path) -> _LabelSource:
    if not path.is_file():
        raise InputDataError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_labels(path)
    if suffix in {".csv", ".tsv", ".txt"}:
        return _delimited_labels(path, "," if suffix == ".csv" else "\t")
    raise InputDataError(f"unsupported file type {suffix!r} for {path}: use .parquet, .csv or .tsv")


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
    ids, labels = table.column(0).to_pylist(), table.column(1).to_pylist()
    rows = [(i + 1, rid, label) for i, (rid, label) in enumerate(zip(ids, labels))]
    return _LabelSource("nsmc" if nsmc else "parquet", "row", nsmc, rows)


def _delimited_labels(path: Path, delimiter: str) -> _LabelSource:
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows: list[tuple[int, Any, Any]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            header = next(reader, None)
            if header is None:
                raise InputDataError(f"{path} is empty: it needs a header with review_id and label")
            ids_at, label_at, nsmc = _label_columns(header, path)
            line = reader.line_num
            for record in reader:
                start, line = line + 1, reader.line_num
                if not record or all(not value.strip() for value in record):
                    continue
                if max(ids_at, label_at) >= len(record):
                    rows.append((start, None, _Missing()))
                    continue
                rows.append((start, record[ids_at], record[label_at]))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    fmt = "nsmc" if nsmc else ("csv" if delimiter == "," else "tsv")
    return _LabelSource(fmt, "line", nsmc, rows)


class _Missing:
    """A row too short to hold the label column."""


def _parse_label_rows(source: _LabelSource, report: LabelImportReport) -> dict[int, tuple[int, int]]:
    """review id -> (line, label) for the rows that parse; the rest are rejected."""
    parsed: dict[int, tuple[int, int]] = {}
    for line, raw_id, raw_label in source.rows:
        report.rows_read += 1
        if isinstance(raw_label, _Missing):
            report.reject(line, "too few fields for the review_id and label columns")
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
    return parsed


def _review_id(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip() if value is not None else ""
        if not _INTEGER.fullmatch(text):
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
    _upsert_labels(conn, rows, only_changed=True)


def rating_labels(engine: Engine, scale: int = 10) -> int:
    """Weak labels (source ``rating``) from the stored ratings; returns how many were written or changed.

    The table does not record a scale, so the caller names it: on 10 points
    1-4 is negative and 9-10 positive, on 5 points 1-2 and 4-5; the middle is
    left unlabelled. A rating above 5 refuses ``scale=5``; every rating at 5
    or below with ``scale=10`` is logged as a likely 5-point scale (4 stars
    would become negative). A rating label whose review's rating has left the
    bands is removed.
    """
    if scale not in RATING_BANDS:
        raise InputDataError(f"rating scale must be 5 or 10, not {scale}")
    neg_low, neg_high, pos_low, pos_high = RATING_BANDS[scale]
    r, lab = db.reviews.c, db.review_labels.c
    label = case((r.rating.between(neg_low, neg_high), 1), else_=0)
    in_bands = r.rating.between(neg_low, neg_high) | r.rating.between(pos_low, pos_high)
    now = datetime.now(timezone.utc)
    with db.translate_errors(engine), engine.begin() as conn:
        require_tables(conn, db.reviews, db.review_labels)
        _check_scale(conn, scale)
        source = select(r.review_id, label, literal("rating", lab.source.type),
                        literal(now, lab.labelled_at.type),
                        literal(f"rating/{scale}", lab.labelled_by.type)).where(in_bands)
        insert = _insert_for(conn)(db.review_labels).from_select(
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
        require_tables(conn, db.reviews)
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
        require_tables(conn, db.reviews, db.review_labels)
        rows = conn.execute(query).tuples().all()
    frame = pd.DataFrame(rows, columns=["review_id", "text", "label", "source", "product_id"])
    return frame.astype({"review_id": "int64", "text": "object", "label": "int8", "source": "object",
                         "product_id": "int64"})


# ---------------------------------------------------------------- models


def list_models(engine: Engine) -> list[dict[str, Any]]:
    """Registered versions, newest first, with the card's balanced test metrics."""
    m = db.model_versions.c
    query = select(m.version, m.path, m.is_active, m.threshold, m.created_at, m.registered_at, m.metrics,
                   m.fingerprint)
    with db.translate_errors(engine), engine.connect() as conn:
        require_tables(conn, db.model_versions)
        rows = conn.execute(query.order_by(m.created_at.desc(), m.version)).mappings().all()
    return [_model_row(row) for row in rows]


def model_files_state(path: str, registered: str | None) -> str:
    """``ok``, ``missing`` (folder or a file gone) or ``changed`` (not the registered files)."""
    from moderation.model import FINGERPRINT_FILES, bundle_fingerprint

    if not all((Path(path) / name).is_file() for name in FINGERPRINT_FILES):
        return "missing"
    if registered is not None and bundle_fingerprint(path) != registered:
        return "changed"
    return "ok"


def _model_row(row: Any) -> dict[str, Any]:
    balanced = _metrics(row["metrics"]).get("test_balanced")
    balanced = balanced if isinstance(balanced, dict) else {}
    files = model_files_state(row["path"], row["fingerprint"])
    default_domain, points = _operating_points(row["path"]) if files == "ok" else (None, {})
    return {"version": row["version"], "path": row["path"], "active": bool(row["is_active"]),
            "files": files,
            "threshold": float(row["threshold"]), "created": utc(row["created_at"]),
            "registered": utc(row["registered_at"]),
            "balanced_accuracy": _finite(balanced.get("balanced_accuracy")),
            "roc_auc": _finite(balanced.get("roc_auc")),
            "default_domain": default_domain, "operating_points": points}


def _operating_points(path: str) -> tuple[str | None, dict[str, dict[str, dict[str, Any]]]]:
    """The card's default domain and named points per domain (the card alone is read); none when unreadable."""
    from moderation.model import read_card

    try:
        card = read_card(Path(path))
    except ModerationError:
        return None, {}
    return card.default_domain, card.operating_points


def _metrics(payload: str | None) -> dict[str, Any]:
    try:
        value = json.loads(payload) if payload else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _finite(value: Any) -> float | None:
    """A metric as a float, or None when absent or NaN (JSON and tables cannot show NaN well)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def activate_model(engine: Engine, version: str) -> dict[str, Any]:
    """Make ``version`` the only active model, after checking its files still match its card.

    The nightly job would refuse a broken bundle anyway; refusing here keeps
    the previous model active instead of stopping the next night's run.
    """
    from moderation.pipeline import verify_registered

    m = db.model_versions.c
    with db.translate_errors(engine), engine.connect() as conn:
        require_tables(conn, db.model_versions)
        row = conn.execute(select(m.path, m.fingerprint).where(m.version == version)).first()
        known = conn.execute(select(m.version).order_by(m.version)).scalars().all() if row is None else []
    if row is None:
        listed = ", ".join(known[:MAX_IDS_NAMED]) or "none"
        raise ModelBundleError(f"unknown model version {version!r} (registered: {listed}); "
                               f"register it with `moderation models register DIR`")
    path = row[0]
    verify_registered(engine, version, Path(path), row[1])
    with db.translate_errors(engine), engine.begin() as conn:
        if conn.execute(select(m.version).where(m.version == version)).scalar() is None:
            raise ModelBundleError(f"model version {version!r} was removed while activating it")
        db.activate_only(conn, version)
    log.debug("model %s is now the active model", version)
    return next(row for row in list_models(engine) if row["version"] == version)
