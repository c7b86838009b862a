"""Reports for moderators: how the model's flags fare, per nightly run and over the runs.

Run intervals and times are read back as UTC (:mod:`moderation.timeutil`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, Integer, case, cast, func, select

from moderation import db
from moderation.errors import DatabaseError
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



# ---------------------------------------------------------------- the web stats page

#: Score histogram bins over [0, 1].
SCORE_BINS = 20
#: Nights the stats page looks back over (the drift reference is the runs before the latest, up to this many).
STATS_NIGHTS = 30
#: Lower edges (hours) of the backlog's age histogram; the last bin is open.
AGE_EDGES_HOURS = (0, 6, 12, 24, 48, 72, 168)


def web_stats(engine: Engine, now: datetime | None = None, nights: int = STATS_NIGHTS) -> dict[str, Any]:
    """Everything the stats page draws: per night, the backlog now, decisions per moderator, score drift.

    Per night (the UTC date a run's interval starts; re-runs of a night are
    summed): reviews scored and flagged, the flag rate, observed precision
    (confirmed / (confirmed + dismissed) among ``kind='flagged'`` items;
    ``unsure`` counts in neither), and the recall estimated from that night's
    audit samples (:func:`audit_recall`). The backlog is every pending item
    now, with the age p50/p95 of its flags in hours. Decisions per moderator
    count the decisions made in the window. ``drift`` compares the score
    histogram of the latest run with the runs of the ``nights`` before it.
    """
    now = utc(now) if now is not None else datetime.now(timezone.utc)
    since = now - timedelta(days=nights)
    q, s = db.moderation_queue.c, db.scoring_runs.c
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.scoring_runs, db.moderation_queue)
        runs = conn.execute(select(s.run_id, s.interval_start, s.model_version, s.reviews_scored, s.reviews_flagged)
                            .where(s.interval_start >= since).order_by(s.interval_start, s.run_id)).mappings().all()
        counts = conn.execute(select(q.run_id, q.kind, q.status, func.count().label("n"))
                              .group_by(q.run_id, q.kind, q.status)).all()
        pending = conn.execute(select(q.flagged_at).where(q.status == "pending")).scalars().all()
        per_moderator = conn.execute(
            select(q.decided_by, q.status, func.count().label("n"))
            .where(q.decided_by.is_not(None), q.decided_at >= since, q.status.in_(("confirmed", "dismissed", "unsure")))
            .group_by(q.decided_by, q.status)).all()
    by_run: dict[str, dict[tuple[str, str], int]] = {}
    for run_id, kind, status, n in counts:
        by_run.setdefault(run_id, {})[(kind, status)] = int(n)
    nights_out = _nights(runs, by_run)
    overall = _night_figures({key: sum(n[key] for n in nights_out) for key in _NIGHT_COUNTS})
    ages = sorted((now - utc(moment)).total_seconds() / 3600 for moment in pending)
    moderators: dict[str, dict[str, int]] = {}
    for name, status, n in per_moderator:
        moderators.setdefault(name, {"confirmed": 0, "dismissed": 0, "unsure": 0})[status] = int(n)
    return {"now": now.isoformat(), "nights": nights_out, "overall": overall,
            "backlog": {"size": len(ages), "age_p50_hours": _quantile(ages, 0.50),
                        "age_p95_hours": _quantile(ages, 0.95), "age_edges_hours": list(AGE_EDGES_HOURS),
                        "age_histogram": [sum(1 for a in ages if low <= a < high) for low, high in
                                          zip(AGE_EDGES_HOURS, AGE_EDGES_HOURS[1:] + (float("inf"),))]},
            "moderators": dict(sorted(moderators.items(), key=lambda kv: -sum(kv[1].values()))),
            "drift": score_drift(engine, [r["run_id"] for r in runs])}


_NIGHT_COUNTS = ("reviews_scored", "reviews_flagged", "confirmed", "dismissed", "unsure", "audits_confirmed",
                 "audits_dismissed")


def _nights(runs: Any, by_run: dict[str, dict[tuple[str, str], int]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for run in runs:
        night = utc(run["interval_start"]).date().isoformat()
        row = merged.setdefault(night, {"night": night, **{key: 0 for key in _NIGHT_COUNTS}})
        row["model_version"] = run["model_version"]  # the latest run's
        row["reviews_scored"] += int(run["reviews_scored"])
        row["reviews_flagged"] += int(run["reviews_flagged"])
        found = by_run.get(run["run_id"], {})
        for status in ("confirmed", "dismissed", "unsure"):
            row[status] += found.get(("flagged", status), 0)
        row["audits_confirmed"] += found.get(("audit", "confirmed"), 0)
        row["audits_dismissed"] += found.get(("audit", "dismissed"), 0)
    return [row | _night_figures(row) for row in merged.values()]


def _night_figures(row: dict[str, Any]) -> dict[str, Any]:
    scored, flagged = row["reviews_scored"], row["reviews_flagged"]
    decided = row["confirmed"] + row["dismissed"]
    precision = row["confirmed"] / decided if decided else None
    audits = row["audits_confirmed"] + row["audits_dismissed"]
    return {**row, "decided": decided, "precision": precision, "audits_decided": audits,
            "flag_rate": flagged / scored if scored else None,
            "recall": audit_recall(scored, flagged, precision, row["audits_confirmed"], audits)}


def audit_recall(scored: int, flagged: int, precision: float | None, audits_negative: int,
                 audits_decided: int) -> float | None:
    """Recall estimated from audit samples: F·p / (F·p + (S − F)·m).

    F flagged of S scored, p the observed precision of the flags, m the share
    of decided audit samples (random unflagged reviews) that moderators
    confirmed negative. F·p estimates the negatives caught, (S − F)·m those
    missed. None until both a flag and an audit sample have been decided.
    """
    if precision is None or not audits_decided or scored <= 0:
        return None
    caught = flagged * precision
    missed = (scored - flagged) * (audits_negative / audits_decided)
    return caught / (caught + missed) if caught + missed > 0 else None


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile by linear interpolation (numpy's default), None for no values."""
    if not sorted_values:
        return None
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def score_drift(engine: Engine, run_ids: list[str]) -> dict[str, Any]:
    """Score histograms (``SCORE_BINS`` bins over [0, 1]) of the latest run and of the runs before it.

    ``run_ids`` oldest first (the window's runs). ``error`` says why there is
    no histogram (e.g. a database login without access to ``review_scores``).
    """
    out: dict[str, Any] = {"bins": SCORE_BINS, "latest": [0] * SCORE_BINS, "reference": [0] * SCORE_BINS,
                           "latest_run": run_ids[-1] if run_ids else None, "reference_runs": len(run_ids[:-1]),
                           "error": None}
    if not run_ids:
        return out
    r = db.review_scores.c
    try:
        with db.translate_errors(engine), engine.connect() as conn:
            scaled = r.score * SCORE_BINS  # PostgreSQL's CAST rounds, SQLite's truncates: floor on PostgreSQL
            whole = func.floor(scaled) if conn.dialect.name == "postgresql" else scaled
            bucket = case((r.score >= 1.0, SCORE_BINS - 1), else_=cast(whole, Integer))
            for key, ids in (("latest", run_ids[-1:]), ("reference", run_ids[:-1])):
                for part in db.batches(ids):
                    rows = conn.execute(select(bucket.label("bin"), func.count()).where(
                        r.run_id.in_(part), r.score.is_not(None)).group_by(bucket)).all()
                    for index, n in rows:
                        out[key][max(0, min(int(index), SCORE_BINS - 1))] += int(n)
    except DatabaseError as exc:
        out["error"] = str(exc)
    return out
