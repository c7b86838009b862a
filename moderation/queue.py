"""The moderation queue: what the nightly job flagged, the moderators' decisions and the queue's history.

What the nightly job flags lands in ``moderation_queue``; moderators confirm
(the review IS negative) or dismiss (it is not) each one. Every decision also
becomes a label in ``review_labels`` with source ``moderator``
(:mod:`moderation.labels`), and a ``decided`` event in ``moderation_events``.

Times are stored in UTC (:mod:`moderation.timeutil`). Every statement is
SQLAlchemy Core with bound parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, literal, select

from moderation import db
from moderation.errors import DecisionError, InputDataError, name_ids
from moderation.labels import upsert_labels
from moderation.timeutil import utc, utc_now, utc_or_none

log = logging.getLogger(__name__)

STATUSES = ("pending", "confirmed", "dismissed", "expired")
DECISIONS = ("confirmed", "dismissed")
#: A decision's label: confirmed means negative (1), dismissed positive (0).
DECISION_LABEL = {"confirmed": 1, "dismissed": 0}


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
        db.require_tables(conn, db.moderation_queue, db.reviews)
        rows = conn.execute(query).mappings().all()
    return [_flag_row(row) for row in rows]


def _flag_row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("flagged_at", "decided_at", "created_at"):
        out[key] = utc_or_none(out[key])
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
    when = utc(now) if now is not None else utc_now()
    q = db.moderation_queue.c
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderation_queue, db.review_labels)
        _check_queued(conn, ids)
        for review_id, status, earlier_by, earlier_at in overturned_decisions(conn, ids, decision, by):
            log.warning("review %d was %s by %s at %s UTC; %s now overturns it as %s", review_id, status, earlier_by,
                        utc_or_none(earlier_at).strftime("%Y-%m-%d %H:%M"), by, decision)
        for part in db.batches(ids):
            _decided_events(conn, part, decision, by, when, note)  # before the update: the previous status
            conn.execute(db.moderation_queue.update().where(q.review_id.in_(part))
                         .values(status=decision, decided_by=by, decided_at=when, note=note))
        versions: dict[int, int] = {}
        for part in db.batches(ids):  # the text the moderator judged: its label must not follow a later edit
            versions.update(conn.execute(select(db.reviews.c.review_id, db.reviews.c.text_version)
                                         .where(db.reviews.c.review_id.in_(part))).tuples().all())
        labels = [{"review_id": rid, "label": DECISION_LABEL[decision], "source": "moderator",
                   "labelled_at": when, "labelled_by": by, "text_version": versions[rid]} for rid in ids]
        for part in db.batches(labels):
            upsert_labels(conn, list(part), only_changed=False)
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
        db.require_tables(conn, db.moderation_events)
        rows = [dict(row) for row in conn.execute(query).mappings()]
    rows.sort(key=lambda row: row["event_id"])
    for row in rows:
        row["at"] = utc(row["at"]).isoformat()
    return rows


def overturned_decisions(conn: Connection, ids: list[int], decision: str, by: str) -> list[tuple[Any, ...]]:
    """(review, status, moderator, time) of the ids another moderator decided the other way."""
    q = db.moderation_queue.c
    found: list[tuple[Any, ...]] = []
    for part in db.batches(ids):
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
    for part in db.batches(ids):
        queued.update(conn.execute(select(db.moderation_queue.c.review_id)
                                   .where(db.moderation_queue.c.review_id.in_(part))).scalars())
    missing = [rid for rid in ids if rid not in queued]
    if not missing:
        return
    known: set[int] = set()
    for part in db.batches(missing):
        known.update(conn.execute(select(db.reviews.c.review_id).where(db.reviews.c.review_id.in_(part))).scalars())
    problems = []
    unknown = [rid for rid in missing if rid not in known]
    if unknown:
        problems.append(f"unknown review ids: {name_ids(unknown)}")
    unflagged = [rid for rid in missing if rid in known]
    if unflagged:
        problems.append(f"not in the moderation queue: {name_ids(unflagged)}")
    raise DecisionError("; ".join(problems) + " (nothing recorded)")

