"""Reports for moderators: how the model's flags fare, per nightly run and over the runs.

Run intervals and times are read back as UTC (:mod:`moderation.timeutil`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, case, func, select

from moderation import db
from moderation.timeutil import utc, utc_or_none


def stats(engine: Engine, since: datetime | None = None) -> dict[str, Any]:
    """How the model's flags fare with moderators, per nightly run and over those runs.

    Per run: ``flagged`` counts the queue rows the run added (a review
    flagged again later stays with its first run), ``reviews_flagged`` and
    ``flag_rate`` what the run flagged among what it scored. ``precision`` is
    confirmed / decided, ``None`` before any decision. ``since`` keeps the
    runs whose interval starts at or after it; ``overall`` sums the kept runs.
    """
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.scoring_runs, db.moderation_queue)
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
    # The model's flags only: audit samples are not flags and would dilute its precision.
    per_run = select(q.run_id, *_counts_columns(q)).where(q.kind == "flagged").group_by(q.run_id).subquery()
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
        finished = utc_or_none(row["finished_at"]) or never
        if finished >= (utc_or_none(found["finished_at"]) or never):
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

