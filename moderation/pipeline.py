"""The nightly scoring job, as plain functions the DAG tasks and the CLI call.

Work is chosen by state, not by clock: a review needs scoring when it has no
score for the active model and its current text (``reviews.text_version``,
raised by a database trigger on every edit). The data interval is the run's
label and report; a run scores every review that needs it, whenever it was
ingested, committed or edited, up to :data:`MAX_REVIEWS_PER_RUN`.

Stages, each safe to retry:

1. :func:`plan_run` picks the active model and cuts the reviews that need
   scoring into chunks of the review-id range (small dicts, fit for XCom).
2. :func:`score_chunk` reads the reviews of one chunk that still need
   scoring, scores them and writes a Parquet file with the text version it
   scored (atomically: a retried task overwrites, never appends).
3. :func:`publish` writes everything in ONE transaction: the chunk files
   are bulk-loaded into a temporary staging table (COPY on PostgreSQL), then
   set-based statements upsert the scores on (review, model version) with
   their text version, move the queue (queue new flags; re-score, expire or
   re-open rows whose model or text changed; each flag gets the priority
   bucket its score reaches among the card's queue buckets), queue a
   small audit sample of unflagged reviews, append each transition to
   ``moderation_events``, and record the run. A score for a text that has
   changed since, or for a review deleted since, is left out.

Nothing reaches the database before step 3 commits, so a failed run leaves
no partial writes, and the same chunks published twice give the same tables.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    exists,
    func,
    insert,
    or_,
    literal,
    select,
    text,
    true,
)

from moderation import config, db, migrations
from moderation.errors import DatabaseError, InputDataError
from moderation.model import check_one_threshold_choice
from moderation.queue import bucket_expression
from moderation.registry import ModelChoice, active_model
from moderation.timeutil import utc, utc_now

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 50_000
#: Most reviews one run scores; a larger backlog (after a model promotion, say) is logged and left for later runs.
MAX_REVIEWS_PER_RUN = 2_000_000
#: Rows per bulk write into the staging table.
PUBLISH_BATCH = 50_000
UNSCORED = "unscored"

#: One run's scores on their way in: private to the publishing transaction
#: (a temporary table; PostgreSQL drops it at commit, SQLite at the end of publish).
_staging = Table(
    "publish_staging",
    MetaData(),
    Column("review_id", BigInteger, nullable=False),
    Column("score", Float, nullable=True),
    Column("skip_reason", String(64), nullable=True),
    Column("text_version", Integer, nullable=True),  # NULL: a chunk file of an earlier release
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
RATE_HISTORY = 7
#: Unflagged reviews each nightly run queues as an audit sample, unless the setting or the DAG Param says.
DEFAULT_AUDIT_SAMPLE = 50
AUDIT_SAMPLE_ENV = "MODERATION_AUDIT_SAMPLE"
MAX_AUDIT_SAMPLE = 10_000
#: A prime below 2**31: the audit order hashes review ids modulo it, in 64-bit integer arithmetic.
_AUDIT_PRIME = 2_147_483_647


@dataclass
class RunPlan:
    run_id: str
    interval_start: str
    interval_end: str
    model: ModelChoice
    chunks: list[dict[str, Any]] = field(default_factory=list)
    reviews: int = 0
    #: reviews ingested in the interval, scored or not; None in a plan made by an earlier release
    ingested: int | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def safe_run_name(run_id: str) -> str:
    """A run id as one path segment (Airflow's run ids hold ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def run_dir(run_id: str, base: Path | None = None) -> Path:
    """Folder for one run's chunk files; the run id made safe for a path."""
    return (base or config.data_dir() / "runs") / safe_run_name(run_id)


def _engine(db_url: str | None) -> Engine:
    """:func:`db.make_engine`, with an SQLite folder that cannot be created reported as a DatabaseError."""
    try:
        return db.make_engine(db_url)
    except OSError as exc:
        from sqlalchemy.engine import make_url

        url = make_url(db.resolve_db_url(db_url)).render_as_string(hide_password=True)
        raise DatabaseError(f"database {url} is unavailable: {exc.strerror or exc}: {exc.filename}") from exc


def _interval_filter(start: datetime, end: datetime) -> Any:
    return and_(db.reviews.c.ingested_at >= start, db.reviews.c.ingested_at < end)


def needs_score(model_version: str) -> Any:
    """Reviews with no score for this model and their current text: the work of a run."""
    s, r = db.review_scores.c, db.reviews.c
    return ~exists().where(s.review_id == r.review_id, s.model_version == model_version,
                           s.text_version == r.text_version)


def plan_run(db_url: str | None, run_id: str, start: datetime, end: datetime,
             chunk_size: int | None = DEFAULT_CHUNK_SIZE, threshold: float | None = None,
             max_reviews: int = MAX_REVIEWS_PER_RUN, operating_point: str | None = None,
             scoring_slots: int = 1) -> RunPlan:
    """Choose the model and cut the reviews needing a score into review-id chunks of ~``chunk_size`` rows.

    ``[start, end)`` labels the run; the work is every review lacking a score
    for the active model and its current text, the first ``max_reviews`` of
    them by review id when there are more. ``threshold`` or ``operating_point``
    (not both) choose the threshold, as in :func:`active_model`.
    ``chunk_size=None`` sizes the chunks from the backlog and the
    ``scoring_slots`` that score them at once (:func:`auto_chunk_size`).
    """
    start, end = utc(start), utc(end)
    check_one_threshold_choice(threshold, operating_point)
    if end <= start:
        raise ValueError(f"interval end {end} is not after its start {start}")
    if chunk_size is not None:
        _require_count(chunk_size, "chunk size")
    _require_count(scoring_slots, "scoring slots")
    engine = _engine(db_url)
    migrations.require_head(engine)  # never score into a schema the code does not know
    with db.translate_errors(engine), engine.connect() as conn:
        _check_run_id(conn, run_id, start, end)
    model = active_model(engine, threshold, operating_point)
    needed = needs_score(model.version)
    numbered = (
        select(db.reviews.c.review_id, func.row_number().over(order_by=db.reviews.c.review_id).label("n"))
        .where(needed)
        .subquery()
    )
    with db.translate_errors(engine), engine.connect() as conn:
        backlog = conn.execute(select(func.count()).select_from(db.reviews).where(needed)).scalar_one()
        if chunk_size is None:
            chunk_size = auto_chunk_size(min(int(backlog), max_reviews), scoring_slots)
        bounds = conn.execute(
            select(numbered.c.review_id).where((numbered.c.n - 1) % chunk_size == 0, numbered.c.n <= max_reviews)
            .order_by(numbered.c.review_id)
        ).scalars().all()
        cutoff = conn.execute(select(numbered.c.review_id).where(numbered.c.n == max_reviews + 1)).scalar() \
            if backlog > max_reviews else None
        in_interval = conn.execute(select(func.count()).select_from(db.reviews)
                                   .where(_interval_filter(start, end), needed)).scalar_one()
        ingested = conn.execute(select(func.count()).select_from(db.reviews)
                                .where(_interval_filter(start, end))).scalar_one()
    engine.dispose()
    total = min(int(backlog), max_reviews)
    if backlog > max_reviews:
        log.warning("run %s: %d reviews need a score for model %s; scoring the first %d by review id, "
                    "the rest in later runs", run_id, backlog, model.version, max_reviews)
    chunks = []
    for i, low in enumerate(bounds):
        high = bounds[i + 1] if i + 1 < len(bounds) else cutoff
        chunks.append({"index": i, "low_id": int(low), "high_id": None if high is None else int(high),
                       "rows": min(chunk_size, total - i * chunk_size),  # planned: edits since may change it
                       "interval_start": start.isoformat(), "interval_end": end.isoformat(), "run_id": run_id,
                       "model_version": model.version})
    log.info("run %s [%s, %s): %d reviews need a score (%d ingested in the interval, %d before or after it), "
             "%d chunks, model %s (threshold %.4f, operating point %s)", run_id, start, end, total, in_interval,
             total - min(int(in_interval), total), len(chunks), model.version, model.threshold,
             model.operating_point or "none: a threshold override")
    return RunPlan(run_id=run_id, interval_start=start.isoformat(), interval_end=end.isoformat(),
                   model=model, chunks=chunks, reviews=total, ingested=int(ingested))


def _require_count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputDataError(f"{name} must be a whole number of at least 1, not {value!r}")


#: Most rows ``auto_chunk_size`` puts in one chunk: bounds a scoring task's memory
#: (one chunk's texts, scores and Parquet table are held at once).
MAX_AUTO_CHUNK_ROWS = 500_000


def auto_chunk_size(reviews: int, scoring_slots: int, max_rows: int = MAX_AUTO_CHUNK_ROWS) -> int:
    """Rows per chunk so that a night is as few chunks as its scoring slots, none over ``max_rows``.

    Under a scheduler every chunk is a task process that pays a fixed start-up
    (process, imports, model load: seconds, not milliseconds) before it scores
    anything, so the fewest chunks that still keep every slot busy are fastest:
    one per slot, or a multiple of the slots when a chunk would grow past
    ``max_rows``. The chunks of one night then finish together.
    """
    if reviews <= 0:
        return max_rows
    chunks = scoring_slots * math.ceil(reviews / (scoring_slots * max_rows))
    return max(1, math.ceil(reviews / chunks))


def score_chunk(db_url: str | None, chunk: dict[str, Any], model_path: str, out_dir: Any,
                scorer: Any | None = None) -> dict[str, Any]:
    """Score one chunk into ``out_dir/chunk-<index>.parquet``; returns its path and counts.

    ``out_dir`` is a local :class:`~pathlib.Path` or an object-store path
    (Airflow's ``ObjectStoragePath``); the result's ``path`` is its string,
    a URL for the latter, which :func:`publish` turns back into a path.
    """
    import pandas as pd
    import pyarrow as pa

    from moderation.scoring import load_scorer

    started = time.perf_counter()
    if chunk.get("model_version"):  # still lacking a score when the chunk runs: a retry skips nothing new
        condition = and_(needs_score(chunk["model_version"]), db.reviews.c.review_id >= chunk["low_id"])
    else:  # a chunk planned by an earlier release: its interval
        start, end = datetime.fromisoformat(chunk["interval_start"]), datetime.fromisoformat(chunk["interval_end"])
        condition = and_(_interval_filter(start, end), db.reviews.c.review_id >= chunk["low_id"])
    if chunk["high_id"] is not None:
        condition = and_(condition, db.reviews.c.review_id < chunk["high_id"])
    engine = _engine(db_url)
    with db.translate_errors(engine), engine.connect() as conn:
        fetched = conn.execute(
            select(db.reviews.c.review_id, db.reviews.c.text, db.reviews.c.text_version).where(condition)
            .order_by(db.reviews.c.review_id)
        )
        # The driver's plain tuples: building SQLAlchemy's Row objects cost more than the fetch itself
        # (500,000 reviews: 1.0 s of 1.6 s). The columns are integers and text, which need no conversion.
        rows = fetched.cursor.fetchall() if fetched.cursor is not None else []
        fetched.close()
    engine.dispose()
    read_seconds = time.perf_counter() - started
    ids, texts, versions = zip(*rows) if rows else ((), (), ())
    scorer = scorer or load_scorer(model_path, rows=len(rows))
    result = scorer.score_texts(pd.Series(texts, dtype=object))
    table = pa.table({
        "review_id": pa.array(ids, type=pa.int64()),
        "score": pa.array(result.score, type=pa.float64(), from_pandas=True),
        "skip_reason": pa.array(result.skip_reason.tolist(), type=pa.string()),
        "text_version": pa.array(versions, type=pa.int64()),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"chunk-{chunk['index']:05d}.parquet"
    _write_whole(table, path)
    skipped = result.skip_reason.value_counts().to_dict()
    counts = {"path": str(path), "index": chunk["index"], "rows": len(rows),
              "scored": int(len(rows) - sum(skipped.values())), "skipped": {str(k): int(v) for k, v in skipped.items()},
              "read_seconds": round(read_seconds, 3), "seconds": round(time.perf_counter() - started, 3)}
    log.info("chunk %d: %d reviews, %d scored, skipped %s, %.1fs", chunk["index"], counts["rows"],
             counts["scored"], counts["skipped"] or "none", counts["seconds"])
    return counts


def _write_whole(table: Any, path: Any) -> None:
    """Write a Parquet file that readers see whole or not at all: a retry overwrites, never appends.

    A local file is written beside its name and renamed; an object store
    makes an object visible only once its upload completes, so it is
    written in place (a rename there would be a copy).
    """
    import pyarrow.parquet as pq

    if isinstance(path, Path):
        partial = path.with_suffix(".parquet.partial")
        pq.write_table(table, partial)
        partial.replace(path)
        return
    with path.open("wb") as sink:
        pq.write_table(table, sink)


def audit_sample_setting(env: dict[str, str] | None = None) -> int:
    """``MODERATION_AUDIT_SAMPLE`` (0 turns sampling off), else :data:`DEFAULT_AUDIT_SAMPLE`."""
    return config.int_setting(AUDIT_SAMPLE_ENV, DEFAULT_AUDIT_SAMPLE, 0, MAX_AUDIT_SAMPLE, env=env)


def check_audit_sample(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_AUDIT_SAMPLE:
        raise InputDataError(f"audit sample must be a whole number from 0 to {MAX_AUDIT_SAMPLE}, not {size!r}")
    return size


def publish(db_url: str | None, plan: RunPlan | dict[str, Any], chunk_results: list[dict[str, Any]],
            remove_chunks: bool = False, audit_sample: int = 0,
            locate: Callable[[str], Any] = Path) -> dict[str, Any]:
    """Write the run's scores, queue changes, their events and the run record in one transaction.

    ``remove_chunks``: delete the chunk files once that transaction has
    committed (a failed publish keeps them for its retry). ``audit_sample``:
    how many of the run's unflagged scored reviews to queue as kind
    ``audit`` (see :func:`_queue_audit_sample`). ``locate`` turns a chunk
    result's ``path`` into a path object (``ObjectStoragePath`` for chunk
    files in an object store).
    """
    audit_sample = check_audit_sample(audit_sample)
    plan = _as_plan(plan)
    expected = sorted(c["index"] for c in plan.chunks)
    got = sorted(r["index"] for r in chunk_results)
    if expected != got:
        raise DatabaseError(f"run {plan.run_id}: chunk results {got} do not match the plan {expected}")
    engine = _engine(db_url)
    now = utc_now()
    model = plan.model
    read = scored = flagged = 0
    skipped: Counter[str] = Counter()
    started = time.perf_counter()
    if plan.reviews and not plan.chunks:
        raise DatabaseError(f"run {plan.run_id}: the plan has {plan.reviews} reviews but no chunks")
    with db.translate_errors(engine), engine.begin() as conn:
        db.lock_interval(conn)
        _check_run_id(conn, plan.run_id, datetime.fromisoformat(plan.interval_start),
                      datetime.fromisoformat(plan.interval_end))
        # A run re-planned with nothing left to do (all scored by its first publish) keeps that publish's record;
        # otherwise a retried run replaces its row.
        keep_record = not plan.chunks and conn.execute(
            select(db.scoring_runs.c.run_id).where(db.scoring_runs.c.run_id == plan.run_id)).first() is not None
        if not keep_record:
            conn.execute(db.scoring_runs.delete().where(db.scoring_runs.c.run_id == plan.run_id))
        _create_staging(conn)
        for result in sorted(chunk_results, key=lambda r: r["index"]):
            chunk = _read_chunk(plan, locate(result["path"]))
            read += chunk.num_rows
            for start in range(0, chunk.num_rows, PUBLISH_BATCH):
                counts = _stage_scores(conn, chunk.slice(start, PUBLISH_BATCH), model.threshold)
                scored += counts["scored"]
                flagged += counts["flagged"]
                skipped.update(counts["skipped"])
        _keep_current_rows(conn)
        _upsert_scores(conn, plan, now)
        moves = _move_queue(conn, plan, now)
        audited = _queue_audit_sample(conn, plan, now, audit_sample)
        _drop_staging(conn)
        rate = flagged / scored if scored else 0.0
        if not keep_record:
            conn.execute(db.scoring_runs.insert().values(
                run_id=plan.run_id, interval_start=datetime.fromisoformat(plan.interval_start),
                interval_end=datetime.fromisoformat(plan.interval_end), model_version=model.version,
                threshold=model.threshold, operating_point=model.operating_point, reviews_read=read, reviews_scored=scored,
                reviews_skipped=sum(skipped.values()), reviews_flagged=flagged, reviews_audited=audited,
                skip_reasons=json.dumps(dict(skipped), sort_keys=True), started_at=now,
                finished_at=utc_now(), status="success",
            ))
        recent = _recent_flag_rates(conn, plan.run_id)
    engine.dispose()
    if remove_chunks:
        _remove_chunk_files([locate(result["path"]) for result in chunk_results])
    summary = {
        "run_id": plan.run_id, "interval_start": plan.interval_start, "interval_end": plan.interval_end,
        "model_version": model.version, "threshold": model.threshold, "operating_point": model.operating_point,
        "reviews_read": read,
        "reviews_scored": scored, "reviews_skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped),
        "reviews_flagged": flagged, "reviews_audited": audited, "newly_queued": moves["queued"] + moves["re-opened"],
        "queue_changes": moves, "flag_rate": round(rate, 5),
        "publish_seconds": round(time.perf_counter() - started, 3),
    }
    summary["warning"] = run_warning(plan, read, scored, dict(skipped), rate, recent)
    log.info("run summary: %s", json.dumps(summary, ensure_ascii=False))
    if summary["warning"]:
        log.warning(summary["warning"])
    return summary


def run_warning(plan: RunPlan, read: int, scored: int, skipped: dict[str, int], rate: float,
                recent: list[float]) -> str | None:
    """What an operator should look at after a run: an empty night, nothing scorable, an odd flag rate.

    A run that reads nothing because an earlier run already scored the
    interval's reviews (work is chosen by state) is not an empty night.
    """
    if read == 0:
        if plan.ingested:
            log.info("nothing left to score: the %d reviews ingested in [%s, %s) already have a score "
                     "for model %s", plan.ingested, plan.interval_start, plan.interval_end, plan.model.version)
            return None
        return (f"no reviews were ingested in [{plan.interval_start}, {plan.interval_end}): "
                f"check that the import ran for this night")
    if scored == 0:
        return f"none of the {read} reviews could be scored (skipped: {json.dumps(skipped, ensure_ascii=False)})"
    return flag_rate_warning(rate, recent)


def flag_rate_warning(rate: float, recent: list[float]) -> str | None:
    """A message when tonight's flag rate departs sharply from the recent runs' mean."""
    if len(recent) < 3:
        return None
    mean = sum(recent) / len(recent)
    if abs(rate - mean) > max(0.5 * mean, 0.05):
        return (f"flag rate {rate:.1%} departs from the mean of the last {len(recent)} runs ({mean:.1%}): "
                f"check the input data and the active model")
    return None


def _check_run_id(conn: Any, run_id: str, start: datetime, end: datetime) -> None:
    """A run id names one interval: reusing it for another would replace that night's record."""
    from sqlalchemy import inspect

    if not inspect(conn).has_table(db.scoring_runs.name):
        return
    row = conn.execute(select(db.scoring_runs.c.interval_start, db.scoring_runs.c.interval_end)
                       .where(db.scoring_runs.c.run_id == run_id)).first()
    if row is None:
        return
    recorded = (utc(row[0]), utc(row[1]))
    if recorded != (utc(start), utc(end)):
        raise InputDataError(f"run id {run_id!r} already records the interval [{recorded[0].isoformat()}, "
                             f"{recorded[1].isoformat()}): give this interval its own run id")


def _as_plan(plan: RunPlan | dict[str, Any]) -> RunPlan:
    if isinstance(plan, RunPlan):
        return plan
    values = dict(plan)
    values["model"] = ModelChoice(**values["model"])
    return RunPlan(**values)


def _read_chunk(plan: RunPlan, path: Any) -> Any:
    """A chunk file (local or object-store path) as an Arrow table of review_id, score, skip_reason."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatabaseError(f"run {plan.run_id}: chunk file is missing: {path}")
    import pyarrow as pa

    with path.open("rb") as source:
        table = pq.read_table(source)
    if "text_version" not in table.column_names:  # written by an earlier release: the current text is assumed
        table = table.append_column("text_version", pa.nulls(table.num_rows, pa.int64()))
    return table.select(["review_id", "score", "skip_reason", "text_version"])


def _remove_chunk_files(paths: list[Any]) -> None:
    """Delete a published run's chunk files, and their folder once it is empty (local or object store)."""
    folders = {}
    for path in paths:
        path.unlink(missing_ok=True)
        folders[str(path.parent)] = path.parent
    for folder in folders.values():
        try:
            for leftover in folder.glob("chunk-*.parquet.partial"):  # a killed attempt's, replaced by its retry
                leftover.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
        except (OSError, NotImplementedError):
            pass  # already gone, or a store without folders


def _create_staging(conn: Any) -> None:
    if conn.dialect.name != "postgresql":  # SQLite keeps temporary tables per connection: start clean
        _staging.drop(conn, checkfirst=True)
    _staging.create(conn)


def _drop_staging(conn: Any) -> None:
    if conn.dialect.name != "postgresql":  # PostgreSQL drops it at commit (ON COMMIT DROP)
        _staging.drop(conn)


def _stage_scores(conn: Any, rows: Any, threshold: float) -> dict[str, Any]:
    """Bulk-load one slice of a chunk into the staging table; returns its counts.

    A row has a score or the reason it has none ("unscored" where the
    chunk file gave neither), never both: the table's check constraint.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    score = rows.column("score").combine_chunks().cast(pa.float64())
    score = pc.if_else(pc.is_nan(score), pa.scalar(None, pa.float64()), score)  # NaN is "no score" too
    has_score = score.is_valid()
    reason = pc.if_else(has_score, pa.scalar(None, pa.string()),
                        pc.coalesce(rows.column("skip_reason").combine_chunks().cast(pa.string()),
                                    pa.scalar(UNSCORED)))
    ids = rows.column("review_id").combine_chunks().cast(pa.int64())
    versions = rows.column("text_version").combine_chunks().cast(pa.int64())
    staged = pa.table({"review_id": ids, "score": score, "skip_reason": reason, "text_version": versions})
    if conn.dialect.name == "postgresql":
        db.copy_arrow(conn, _staging.name, staged)
    else:
        conn.execute(_staging.insert(), staged.to_pylist())
    skipped = pc.value_counts(reason.drop_null()).to_pylist()
    return {"scored": len(score) - score.null_count,
            "flagged": int(pc.sum(pc.greater_equal(score, threshold)).as_py() or 0),
            "skipped": Counter({item["values"]: item["counts"] for item in skipped})}


def _keep_current_rows(conn: Any) -> None:
    """Leave in the staging table only the rows scored for their review's current text, with that text version.

    A review deleted since it was scored, or edited since, drops out here: its
    score is not written (a later run scores the new text), so neither a
    foreign key nor a stale score can stop or spoil the publish. Done once
    (one anti-join) instead of joining ``reviews`` in every statement after;
    the unique index then serves the queue moves' per-row lookups and
    refuses a review staged twice, and fresh statistics give the planner
    the staged row count.
    """
    s, r = _staging.c, db.reviews.c
    current = exists().where(r.review_id == s.review_id, r.text_version == func.coalesce(s.text_version, r.text_version))
    conn.execute(_staging.delete().where(~current))
    conn.execute(_staging.update().where(s.text_version.is_(None)).values(  # an earlier release's chunk file
        text_version=select(r.text_version).where(r.review_id == s.review_id).scalar_subquery()))
    # Built after the load, not kept up during it (a SQLAlchemy Index on the table would be created with it).
    conn.execute(text("CREATE UNIQUE INDEX ux_publish_staging_review ON publish_staging (review_id)"))
    if conn.dialect.name == "postgresql":
        conn.execute(text("ANALYZE publish_staging"))


def _upsert_scores(conn: Any, plan: RunPlan, now: datetime) -> int:
    """Every current staged row into review_scores; a row already there is rewritten only if its result changed."""
    insert = db.dialect_insert(conn)(db.review_scores)
    excluded = insert.excluded
    current = db.review_scores.c
    changed = (
        (current.score.is_(None) != excluded.score.is_(None))
        | (func.abs(func.coalesce(current.score, 0.0) - func.coalesce(excluded.score, 0.0)) > 1e-6)
        | (func.coalesce(current.skip_reason, "") != func.coalesce(excluded.skip_reason, ""))
        | (current.text_version != excluded.text_version)
    )
    rows = select(
        _staging.c.review_id, literal(plan.model.version, String), _staging.c.score, _staging.c.skip_reason,
        literal(now, DateTime(timezone=True)), literal(plan.run_id, String), _staging.c.text_version,
    ).where(true())  # SQLite needs a WHERE before ON CONFLICT to parse an INSERT ... SELECT
    statement = insert.from_select(
        ["review_id", "model_version", "score", "skip_reason", "scored_at", "run_id", "text_version"], rows
    ).on_conflict_do_update(
        index_elements=[current.review_id, current.model_version],
        set_={"score": excluded.score, "skip_reason": excluded.skip_reason,
              "scored_at": excluded.scored_at, "run_id": excluded.run_id, "text_version": excluded.text_version},
        where=changed,
    )
    return int(conn.execute(statement.execution_options(preserve_rowcount=True)).rowcount)


#: Queue statuses a moderator set; such a row moves again only when its text changed.
DECIDED = ("confirmed", "dismissed", "unsure")


def _move_queue(conn: Any, plan: RunPlan, now: datetime) -> dict[str, int]:
    """Move the queue for the current staged scores, each move with its event in ``moderation_events``.

    A queue row is judged again only when the score is for another model or
    another text than the one it holds:

    * pending: still at or over the threshold: re-scored (an audit item
      becomes a flag); below it: expired (an audit item stays as it is);
    * confirmed/dismissed, text edited since: over: re-opened (the decision
      stays in the history); below: expired. Same text, new model: kept;
    * expired, now over the threshold: re-opened;
    * not queued, at or over the threshold: queued.

    Every flag written gets the priority bucket its score reaches among the
    card's queue buckets. Returns how many rows each move touched.
    """
    q = db.moderation_queue.c
    threshold = plan.model.threshold
    version = _staging.c.text_version
    flag = and_(_staging.c.score.is_not(None), _staging.c.score >= threshold)
    bucket = bucket_expression(_staging.c.score, plan.model.buckets)
    new_judgement = or_(q.model_version != plan.model.version, q.text_version != version)
    edited = q.text_version != version
    moves = {
        "expired": or_(and_(q.status == "pending", q.kind == "flagged", new_judgement, ~flag),
                       and_(q.status.in_(DECIDED), edited, ~flag)),
        "re-opened": or_(and_(q.status.in_(DECIDED), edited, flag), and_(q.status == "expired", flag)),
        "re-scored": and_(q.status == "pending", new_judgement, flag),
    }
    new_status = {"expired": "expired", "re-opened": "pending", "re-scored": "pending"}
    counts: dict[str, int] = {}
    for move, condition in moves.items():  # exclusive on the rows' state before any of them
        source = _staging.join(db.moderation_queue, q.review_id == _staging.c.review_id)
        counts[move] = _append_events(conn, plan, now, move, new_status[move], source, condition,
                                      previous=q.status, note=_earlier_decision(q) if move != "re-scored" else None)
        if not counts[move]:
            continue
        def staged(value: Any) -> Any:  # the staged row's value, as a correlated subquery
            return select(value).where(_staging.c.review_id == q.review_id).scalar_subquery()

        values: dict[str, Any] = {
            "status": new_status[move], "score": staged(func.coalesce(_staging.c.score, q.score)),
            "model_version": plan.model.version, "threshold": threshold, "text_version": staged(version),
            "run_id": plan.run_id,
        }
        if move != "expired":  # a flag again: the model's, in the bucket of its new score
            values.update(kind="flagged", bucket=staged(bucket))
        if move == "re-opened":
            values.update(flagged_at=now, decided_by=None, decided_at=None, note=None, reason=None,
                          claimed_by=None, claim_expires_at=None)
        matching = select(_staging.c.review_id).where(_staging.c.review_id == q.review_id, condition)
        conn.execute(db.moderation_queue.update().where(exists(matching)).values(**values))
    not_queued = ~exists().where(q.review_id == _staging.c.review_id)
    counts["queued"] = _append_events(conn, plan, now, "queued", "pending", _staging, and_(flag, not_queued),
                                      previous=literal(None, String), note=None)
    _insert_queue_rows(conn, plan, now, flag, literal("flagged", String), bucket)
    return counts


def _insert_queue_rows(conn: Any, plan: RunPlan, now: datetime, condition: Any, kind: Any, bucket: Any) -> None:
    """Queue the current staged rows meeting ``condition`` as pending; a review already queued is left alone."""
    rows = select(
        _staging.c.review_id, literal(plan.model.version, String), _staging.c.score,
        literal(plan.model.threshold, Float), literal("pending", String), literal(now, DateTime(timezone=True)),
        literal(plan.run_id, String), _staging.c.text_version, kind, bucket,
    ).where(condition)
    conn.execute(db.dialect_insert(conn)(db.moderation_queue).from_select(
        ["review_id", "model_version", "score", "threshold", "status", "flagged_at", "run_id", "text_version",
         "kind", "bucket"], rows
    ).on_conflict_do_nothing(index_elements=["review_id"]))


def _queue_audit_sample(conn: Any, plan: RunPlan, now: datetime, size: int) -> int:
    """Queue ``size`` of the run's unflagged scored reviews as kind and bucket ``audit``; returns the sample size.

    Moderators' decisions on a random sample of what the model let through
    estimate its recall (and the flags' precision) without the bias of only
    seeing flags. The sample is chosen by a hash of the review id seeded by
    the run id, so a re-published run picks the same reviews: candidates are
    reviews not in the queue, or already queued as this run's audit sample.
    A review already queued for another reason is never touched.
    """
    if size <= 0:
        return 0
    q = db.moderation_queue.c
    unflagged = and_(_staging.c.score.is_not(None), _staging.c.score < plan.model.threshold)
    free = ~exists().where(q.review_id == _staging.c.review_id,
                           or_(q.kind != "audit", q.run_id != plan.run_id))
    seed = zlib.crc32(plan.run_id.encode("utf-8")) % _AUDIT_PRIME
    mixed = ((_staging.c.review_id % _AUDIT_PRIME) * 48271 + seed) % _AUDIT_PRIME
    order = (mixed * mixed + seed) % _AUDIT_PRIME  # squared: not a linear pattern over consecutive ids
    chosen = conn.execute(select(_staging.c.review_id).where(unflagged, free)
                          .order_by(order, _staging.c.review_id).limit(size)).scalars().all()
    for part in db.batches(sorted(set(chosen))):
        sampled = and_(_staging.c.review_id.in_(part), ~exists().where(q.review_id == _staging.c.review_id))
        _append_events(conn, plan, now, "queued", "pending", _staging, sampled, previous=literal(None, String),
                       note=literal("audit sample", String))
        _insert_queue_rows(conn, plan, now, sampled, literal("audit", String), literal("audit", String))
    return len(set(chosen))


def _earlier_decision(q: Any) -> Any:
    """The decision a move supersedes, for its event's note ("confirmed by kim"); NULL for none."""
    return case((q.decided_by.is_not(None), q.status + literal(" by ", String) + q.decided_by), else_=None)


def _append_events(conn: Any, plan: RunPlan, now: datetime, event: str, status: str, source: Any,
                   condition: Any, previous: Any, note: Any) -> int:
    """One ``moderation_events`` row per source row meeting ``condition``; returns how many."""
    e = db.moderation_events.c
    rows = select(
        _staging.c.review_id, literal(event, String), literal(status, String), previous,
        literal(plan.run_id, String), literal(now, DateTime(timezone=True)), _staging.c.score,
        literal(plan.model.version, String), literal(plan.model.threshold, Float), _staging.c.text_version,
        literal(plan.run_id, String), note if note is not None else literal(None, String),
    ).select_from(source).where(condition)
    statement = insert(db.moderation_events).from_select(
        [e.review_id, e.event, e.status, e.previous_status, e.actor, e.at, e.score, e.model_version,
         e.threshold, e.text_version, e.run_id, e.note], rows)
    return int(conn.execute(statement.execution_options(preserve_rowcount=True)).rowcount)


def _recent_flag_rates(conn: Any, exclude_run: str) -> list[float]:
    rows = conn.execute(
        select(db.scoring_runs.c.reviews_flagged, db.scoring_runs.c.reviews_scored)
        .where(db.scoring_runs.c.status == "success", db.scoring_runs.c.run_id != exclude_run,
               db.scoring_runs.c.reviews_scored > 0)
        .order_by(db.scoring_runs.c.finished_at.desc())
        .limit(RATE_HISTORY)
    ).all()
    return [f / s for f, s in rows]


def run_nightly(db_url: str | None, start: datetime, end: datetime, run_id: str | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE, threshold: float | None = None,
                work_dir: Path | None = None, max_reviews: int = MAX_REVIEWS_PER_RUN,
                operating_point: str | None = None, audit_sample: int = 0) -> dict[str, Any]:
    """The whole nightly job without Airflow: plan, score every chunk, publish (chunk files removed after)."""
    from moderation.scoring import load_scorer

    start, end = utc(start), utc(end)  # one interval, one label, whatever zone it was given in
    run_id = run_id or f"cli__{start.isoformat()}__{end.isoformat()}"
    plan = plan_run(db_url, run_id, start, end, chunk_size, threshold, max_reviews=max_reviews,
                    operating_point=operating_point)
    out_dir = work_dir or run_dir(run_id)
    results = []
    if plan.chunks:
        scorer = load_scorer(plan.model.path, threshold=plan.model.threshold, rows=plan.reviews)
        for chunk in plan.chunks:
            results.append(score_chunk(db_url, chunk, plan.model.path, out_dir, scorer=scorer))
    return publish(db_url, plan, results, remove_chunks=True, audit_sample=audit_sample)
