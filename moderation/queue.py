"""The moderation queue: what the nightly job flagged, the moderators' decisions and the queue's history.

What the nightly job flags lands in ``moderation_queue`` (kind ``flagged``,
with a priority ``bucket`` from the model card's queue buckets), beside a
small random sample of unflagged reviews (kind ``audit``, bucket ``audit``)
that keeps precision and recall estimates honest. Moderators work it in
:data:`BUCKET_ORDER`, oldest first: they claim an item (a lease that simply
lapses after :data:`DEFAULT_CLAIM_MINUTES`, so a closed browser never blocks
it), then confirm (the review IS negative), dismiss (it is not) or mark it
unsure, with a reason code. Confirm and dismiss become a label in
``review_labels`` with source ``moderator`` (:mod:`moderation.labels`);
unsure never does, and a database trigger removes an earlier moderator label
when a row becomes unsure. Every decision is a ``decided`` event in
``moderation_events``, written in the decision's transaction.

Times are stored in UTC (:mod:`moderation.timeutil`). Every statement is
SQLAlchemy Core with bound parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, literal, select

from moderation import config, db
from moderation.errors import ClaimError, DecisionError, InputDataError, name_ids
from moderation.labels import upsert_labels
from moderation.queue_names import (  # noqa: F401  (part of this module's interface)
    BUCKET_ORDER,
    BUCKET_POINTS,
    BUCKETS,
    DECISION_LABEL,
    DECISIONS,
    KINDS,
    REASONS,
    STATUSES,
)
from moderation.timeutil import utc, utc_now, utc_or_none

log = logging.getLogger(__name__)

DEFAULT_CLAIM_MINUTES = 10
CLAIM_MINUTES_ENV = "MODERATION_CLAIM_MINUTES"
#: Longest claim one may take: a lease, not a reservation for the day.
MAX_CLAIM_MINUTES = 240
#: Longest moderator name (``decided_by``, ``claimed_by``).
MAX_NAME = 128


@dataclass(frozen=True)
class QueueFilter:
    """Which queue items a page or a bulk decision covers; ``None`` means any."""

    status: str | None = "pending"
    bucket: str | None = None
    kind: str | None = None
    since: datetime | None = None  # flagged_at >= since
    until: datetime | None = None  # flagged_at < until
    product: int | None = None
    reviewer: str | None = None  # decided_by
    include_claimed: bool = True  # False: leave out items under a live claim

    def check(self) -> None:
        """Raise :class:`InputDataError` for a value no item can have."""
        for name, value, allowed in (("status", self.status, STATUSES), ("bucket", self.bucket, BUCKETS),
                                     ("kind", self.kind, KINDS)):
            if value is not None and value not in allowed:
                raise InputDataError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.since is not None and self.until is not None and utc(self.until) <= utc(self.since):
            raise InputDataError(f"until {utc(self.until).isoformat()} must be after since "
                                 f"{utc(self.since).isoformat()}")


def claim_minutes_setting(env: Mapping[str, str] | None = None) -> int:
    """``MODERATION_CLAIM_MINUTES``, else :data:`DEFAULT_CLAIM_MINUTES`."""
    return config.int_setting(CLAIM_MINUTES_ENV, DEFAULT_CLAIM_MINUTES, 1, MAX_CLAIM_MINUTES,
                              what="a whole number of minutes", env=env)


def bucket_for(score: float, points: Mapping[str, float]) -> str:
    """The bucket of a flag's score: the highest bucket threshold it reaches, else 'flagged'."""
    for name in BUCKET_POINTS:
        if name in points and score >= points[name]:
            return name
    return "flagged"


def bucket_expression(score: Any, points: Mapping[str, float]) -> Any:
    """:func:`bucket_for` as SQL over a score column, for set-based writes."""
    whens = [(score >= points[name], name) for name in BUCKET_POINTS if name in points]
    return case(*whens, else_=literal("flagged")) if whens else literal("flagged")


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


def _queue_columns() -> list[Any]:
    q, r = db.moderation_queue.c, db.reviews.c
    return [q.review_id, r.product_id, r.text, r.rating,
            case((q.text_version == r.text_version, q.score), else_=None).label("score"),
            q.bucket, q.kind, q.model_version, q.threshold, q.flagged_at, q.status, q.claimed_by,
            q.claim_expires_at, q.decided_by, q.decided_at, q.reason, q.note, r.created_at,
            r.text_version, q.text_version.label("scored_text_version"), q.run_id]


def _bucket_rank() -> Any:
    q = db.moderation_queue.c
    return case(*((q.bucket == name, rank) for name, rank in BUCKET_ORDER.items()), else_=len(BUCKET_ORDER))


def _live_claim(when: datetime) -> Any:
    q = db.moderation_queue.c
    return and_(q.claimed_by.is_not(None), q.claim_expires_at > when)


def _claimed_by_other(by: str, when: datetime) -> Any:
    return and_(_live_claim(when), db.moderation_queue.c.claimed_by != by)


def _filtered(query: Any, flt: QueueFilter, when: datetime) -> Any:
    q, r = db.moderation_queue.c, db.reviews.c
    conditions = []
    if flt.status is not None:
        conditions.append(q.status == flt.status)
    if flt.bucket is not None:
        conditions.append(q.bucket == flt.bucket)
    if flt.kind is not None:
        conditions.append(q.kind == flt.kind)
    if flt.since is not None:
        conditions.append(q.flagged_at >= utc(flt.since))
    if flt.until is not None:
        conditions.append(q.flagged_at < utc(flt.until))
    if flt.product is not None:
        conditions.append(r.product_id == flt.product)
    if flt.reviewer is not None:
        conditions.append(q.decided_by == flt.reviewer)
    if not flt.include_claimed:
        conditions.append(~_live_claim(when))
    return query.where(*conditions) if conditions else query


def _item(row: Any, when: datetime) -> dict[str, Any]:
    """A queue row as the API gives it: times in UTC, a lapsed claim shown as no claim."""
    out = dict(row)
    for key in ("flagged_at", "decided_at", "created_at", "claim_expires_at"):
        out[key] = utc_or_none(out[key])
    if out["claim_expires_at"] is None or out["claim_expires_at"] <= when:
        out["claimed_by"] = out["claim_expires_at"] = None
    return out


def queue_page(engine: Engine, flt: QueueFilter = QueueFilter(), *, limit: int = 50, offset: int = 0,
               now: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of the queue in working order, and how many items match in all.

    Working order: :data:`BUCKET_ORDER`, then oldest flag first, then review
    id. ``score`` is the score of the text shown (None while an edited text
    waits for its re-score); ``claimed_by``/``claim_expires_at`` are None once
    the lease has lapsed.
    """
    flt.check()
    if limit < 1 or offset < 0:
        raise InputDataError(f"limit must be at least 1 and offset at least 0, not {limit} and {offset}")
    when = utc(now) if now is not None else utc_now()
    q, r = db.moderation_queue.c, db.reviews.c
    joined = db.moderation_queue.join(db.reviews, q.review_id == r.review_id)
    page = _filtered(select(*_queue_columns()).select_from(joined), flt, when)
    page = page.order_by(_bucket_rank(), q.flagged_at, q.review_id).limit(limit).offset(offset)
    counted = _filtered(select(func.count()).select_from(joined), flt, when)
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.moderation_queue, db.reviews)
        rows = conn.execute(page).mappings().all()
        total = int(conn.execute(counted).scalar_one())
    return [_item(row, when) for row in rows], total


def queue_item(engine: Engine, review_id: int, now: datetime | None = None) -> dict[str, Any]:
    """One queue item, keys as in :func:`queue_page`; :class:`DecisionError` if the review is not queued."""
    when = utc(now) if now is not None else utc_now()
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.moderation_queue, db.reviews)
        return _read_item(conn, _decision_ids([review_id])[0], when)


def _read_item(conn: Connection, review_id: int, when: datetime) -> dict[str, Any]:
    q, r = db.moderation_queue.c, db.reviews.c
    row = conn.execute(select(*_queue_columns()).join_from(db.moderation_queue, db.reviews,
                                                           q.review_id == r.review_id)
                       .where(q.review_id == review_id)).mappings().first()
    if row is None:
        _check_queued(conn, [review_id])
        raise DecisionError(f"review {review_id} is not in the moderation queue")  # its review row is gone
    return _item(row, when)


def claim(engine: Engine, review_id: int, by: str, minutes: int | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """Claim a queue item for ``minutes`` (or extend one's own claim); returns the item.

    A claim is a lease: once ``claim_expires_at`` has passed the item is free
    again, with nothing to clean up. :class:`ClaimError` names the holder and
    the expiry when another moderator's lease is live. Any queued item may be
    claimed, decided ones too (to look again or overturn).
    """
    by = _moderator(by, "a claim")
    minutes = claim_minutes_setting() if minutes is None else _check_minutes(minutes)
    when = utc(now) if now is not None else utc_now()
    review_id = _decision_ids([review_id])[0]
    q = db.moderation_queue.c
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderation_queue, db.reviews)
        taken = conn.execute(db.moderation_queue.update()
                             .where(q.review_id == review_id, ~_claimed_by_other(by, when))
                             .values(claimed_by=by, claim_expires_at=when + timedelta(minutes=minutes))
                             .execution_options(preserve_rowcount=True)).rowcount
        item = _read_item(conn, review_id, when)  # raises for a review not queued
        if not taken:
            raise ClaimError(_claim_message(review_id, item["claimed_by"], item["claim_expires_at"]))
    log.debug("review %d claimed by %s for %d minutes", review_id, by, minutes)
    return item


def release(engine: Engine, review_id: int, by: str, now: datetime | None = None) -> None:
    """Give up ``by``'s claim on an item; nothing happens when ``by`` holds none (lapsed, or someone else's)."""
    by = _moderator(by, "a release")
    review_id = _decision_ids([review_id])[0]
    q = db.moderation_queue.c
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderation_queue)
        conn.execute(db.moderation_queue.update().where(q.review_id == review_id, q.claimed_by == by)
                     .values(claimed_by=None, claim_expires_at=None))


def decide(engine: Engine, review_ids: Iterable[int], decision: str, by: str, note: str | None = None,
           now: datetime | None = None, reason: str | None = None) -> int:
    """Record one decision on queued reviews, and the matching moderator labels, atomically.

    All ids must be in the queue and none under another moderator's live
    claim, or nothing is written (a typo must not half-apply a batch).
    Deciding again overwrites: the queue keeps the latest decision,
    moderator, time, reason and note. ``unsure`` records no label and
    removes an earlier moderator label (trigger). The decider's own claims
    on these items are released.
    """
    ids = _decision_ids(review_ids)
    decision, by, reason = _check_decision(decision, by, reason)
    when = utc(now) if now is not None else utc_now()
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderation_queue, db.review_labels)
        _check_queued(conn, ids)
        _check_claims(conn, ids, by, when)
        _record(conn, ids, decision, by, note, reason, when)
    log.debug("%s %d reviews by %s", decision, len(ids), by)  # the CLI prints the summary
    return len(ids)


def decide_matching(engine: Engine, flt: QueueFilter, decision: str, by: str, reason: str | None = None,
                    note: str | None = None, now: datetime | None = None, limit: int | None = None) -> int:
    """Decide every pending item the filter matches, in working order, in one transaction; returns the count.

    Items under another moderator's live claim are skipped, not refused: a
    bulk decision must not take over someone's open item. ``limit`` caps
    how many are decided (the first in working order).
    """
    flt.check()
    if flt.status not in (None, "pending"):
        raise DecisionError(f"a bulk decision covers pending items only, not status {flt.status!r}")
    if limit is not None and limit < 1:
        raise DecisionError(f"limit must be at least 1, not {limit}")
    decision, by, reason = _check_decision(decision, by, reason)
    when = utc(now) if now is not None else utc_now()
    q, r = db.moderation_queue.c, db.reviews.c
    query = _filtered(select(q.review_id).join_from(db.moderation_queue, db.reviews, q.review_id == r.review_id),
                      replace(flt, status="pending"), when)
    query = query.where(~_claimed_by_other(by, when)).order_by(_bucket_rank(), q.flagged_at, q.review_id)
    if limit is not None:
        query = query.limit(limit)
    with db.translate_errors(engine), engine.begin() as conn:
        db.require_tables(conn, db.moderation_queue, db.reviews, db.review_labels)
        ids = sorted(conn.execute(query).scalars().all())
        if ids:
            _record(conn, ids, decision, by, note, reason, when)
    log.debug("%s %d matching reviews by %s", decision, len(ids), by)
    return len(ids)


def _check_decision(decision: str, by: str, reason: str | None) -> tuple[str, str, str | None]:
    if decision not in DECISIONS:
        raise DecisionError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if reason is not None and reason not in REASONS:
        raise DecisionError(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
    return decision, _moderator(by, "a decision"), reason


def _moderator(by: str | None, what: str) -> str:
    by = (by or "").strip()
    if not by or len(by) > MAX_NAME:
        raise DecisionError(f"{what} needs the moderator's name (1-{MAX_NAME} characters)")
    return by


def _check_minutes(minutes: int) -> int:
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_CLAIM_MINUTES:
        raise ClaimError(f"a claim lasts 1 to {MAX_CLAIM_MINUTES} minutes, not {minutes!r}")
    return minutes


def _claim_message(review_id: int, holder: str | None, until: datetime | None) -> str:
    expiry = until.strftime("%Y-%m-%d %H:%M UTC") if until is not None else "now"
    return f"review {review_id} is claimed by {holder} until {expiry}"


def _check_claims(conn: Connection, ids: list[int], by: str, when: datetime) -> None:
    """Refuse ids another moderator holds a live claim on, naming the first holder."""
    q = db.moderation_queue.c
    held: list[tuple[Any, ...]] = []
    for part in db.batches(ids):
        held += conn.execute(select(q.review_id, q.claimed_by, q.claim_expires_at)
                             .where(q.review_id.in_(part), _claimed_by_other(by, when))
                             .order_by(q.review_id)).all()
    if held:
        review_id, holder, until = held[0]
        more = f" (and {len(held) - 1} more claimed by others: {name_ids([h[0] for h in held[1:]])})" \
            if len(held) > 1 else ""
        raise ClaimError(_claim_message(review_id, holder, utc_or_none(until)) + more + "; nothing recorded")


def _record(conn: Connection, ids: list[int], decision: str, by: str, note: str | None, reason: str | None,
            when: datetime) -> None:
    """The decision's events, queue rows and labels, inside the caller's transaction."""
    q = db.moderation_queue.c
    for review_id, status, earlier_by, earlier_at in overturned_decisions(conn, ids, decision, by):
        log.warning("review %d was %s by %s at %s UTC; %s now overturns it as %s", review_id, status, earlier_by,
                    utc_or_none(earlier_at).strftime("%Y-%m-%d %H:%M"), by, decision)
    for part in db.batches(ids):
        _decided_events(conn, part, decision, by, when, note, reason)  # before the update: the previous status
        # The claim condition again: a claim taken since the check must not be overridden.
        updated = conn.execute(db.moderation_queue.update()
                               .where(q.review_id.in_(part), ~_claimed_by_other(by, when))
                               .values(status=decision, decided_by=by, decided_at=when, note=note, reason=reason,
                                       claimed_by=None, claim_expires_at=None)
                               .execution_options(preserve_rowcount=True)).rowcount
        if updated != len(part):
            raise ClaimError("another moderator claimed some of these reviews meanwhile; nothing recorded")
    if decision not in DECISION_LABEL:
        return  # unsure: no label; the trigger removed any earlier moderator label
    versions: dict[int, int] = {}
    for part in db.batches(ids):  # the text the moderator judged: its label must not follow a later edit
        versions.update(conn.execute(select(db.reviews.c.review_id, db.reviews.c.text_version)
                                     .where(db.reviews.c.review_id.in_(part))).tuples().all())
    labels = [{"review_id": rid, "label": DECISION_LABEL[decision], "source": "moderator",
               "labelled_at": when, "labelled_by": by, "text_version": versions[rid]} for rid in ids]
    for part in db.batches(labels):
        upsert_labels(conn, list(part), only_changed=False)


def _decided_events(conn: Connection, ids: Sequence[int], decision: str, by: str, when: datetime,
                    note: str | None, reason: str | None) -> None:
    """One ``decided`` event per queue row, in the decision's transaction (the audit trail)."""
    q, e = db.moderation_queue.c, db.moderation_events.c
    rows = select(q.review_id, literal("decided", e.event.type), literal(decision, e.status.type), q.status,
                  literal(by, e.actor.type), literal(when, e.at.type), q.score, q.model_version, q.threshold,
                  q.text_version, q.run_id, literal(note, e.note.type), literal(reason, e.reason.type)
                  ).where(q.review_id.in_(ids))
    conn.execute(db.moderation_events.insert().from_select(
        [e.review_id, e.event, e.status, e.previous_status, e.actor, e.at, e.score, e.model_version, e.threshold,
         e.text_version, e.run_id, e.note, e.reason], rows))


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

