"""TEMPORARY stand-in for the queue/accounts API of the contract, until queue-backend lands. Removed before merge."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select

from moderation import db
from moderation import queue as _q
from moderation.errors import DecisionError
from moderation.timeutil import utc, utc_now, utc_or_none

REASONS = ("abuse", "spam", "off_topic", "false_claim", "not_negative", "other")
DECISIONS = ("confirmed", "dismissed", "unsure")
STATUSES = ("pending", "confirmed", "dismissed", "unsure", "expired")
DEFAULT_CLAIM_MINUTES = 10
BUCKET_ORDER = {"very_likely": 0, "likely": 1, "maybe": 2, "flagged": 3, "audit": 4}
events = _q.events


class ClaimError(DecisionError):
    pass


@dataclass(frozen=True)
class QueueFilter:
    status: str | None = "pending"
    bucket: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    product: int | None = None
    reviewer: str | None = None
    include_claimed: bool = True


def _query(flt: QueueFilter, now: datetime):
    q, r = db.moderation_queue.c, db.reviews.c
    rank = case(*((q.bucket == k, v) for k, v in BUCKET_ORDER.items()), else_=9)
    query = (select(q.review_id, r.product_id, r.text, r.rating,
                    case((q.text_version == r.text_version, q.score), else_=None).label("score"), q.bucket, q.kind,
                    q.model_version, q.threshold, q.flagged_at, q.status, q.claimed_by, q.claim_expires_at,
                    q.decided_by, q.decided_at, q.reason, q.note, r.created_at, q.text_version)
             .join_from(db.moderation_queue, db.reviews, q.review_id == r.review_id))
    conds = []
    if flt.status:
        conds.append(q.status == flt.status)
    if flt.bucket:
        conds.append(q.bucket == flt.bucket)
    if flt.kind:
        conds.append(q.kind == flt.kind)
    if flt.since:
        conds.append(q.flagged_at >= utc(flt.since))
    if flt.until:
        conds.append(q.flagged_at < utc(flt.until))
    if flt.product is not None:
        conds.append(r.product_id == flt.product)
    if flt.reviewer:
        conds.append(q.decided_by == flt.reviewer)
    if not flt.include_claimed:
        conds.append(or_(q.claimed_by.is_(None), q.claim_expires_at <= now))
    if conds:
        query = query.where(and_(*conds))
    return query, rank


def _row(row: Any, now: datetime) -> dict[str, Any]:
    out = dict(row)
    for key in ("flagged_at", "decided_at", "created_at", "claim_expires_at"):
        out[key] = utc_or_none(out[key])
    if out["claim_expires_at"] is None or out["claim_expires_at"] <= now:
        out["claimed_by"], out["claim_expires_at"] = None, None
    return out


def queue_page(engine, flt: QueueFilter = QueueFilter(), *, limit: int = 50, offset: int = 0, now=None):
    now = utc(now) if now else utc_now()
    query, rank = _query(flt, now)
    q = db.moderation_queue.c
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        rows = conn.execute(query.order_by(rank, q.flagged_at, q.review_id).limit(limit).offset(offset)).mappings()
        return [_row(r, now) for r in rows], int(total)


def queue_item(engine, review_id: int, now=None) -> dict:
    now = utc(now) if now else utc_now()
    query, _ = _query(QueueFilter(status=None), now)
    with engine.connect() as conn:
        row = conn.execute(query.where(db.moderation_queue.c.review_id == review_id)).mappings().first()
    if row is None:
        raise DecisionError(f"review {review_id} is not in the moderation queue")
    return _row(row, now)


def claim(engine, review_id: int, by: str, minutes: int | None = None, now=None) -> dict:
    now = utc(now) if now else utc_now()
    item = queue_item(engine, review_id, now)
    if item["claimed_by"] not in (None, by):
        raise ClaimError(f"review {review_id} is claimed by {item['claimed_by']} until "
                         f"{item['claim_expires_at']:%Y-%m-%d %H:%M} UTC")
    q = db.moderation_queue.c
    with engine.begin() as conn:
        conn.execute(db.moderation_queue.update().where(q.review_id == review_id).values(
            claimed_by=by, claim_expires_at=now + timedelta(minutes=minutes or DEFAULT_CLAIM_MINUTES)))
    return queue_item(engine, review_id, now)


def release(engine, review_id: int, by: str, now=None) -> None:
    q = db.moderation_queue.c
    with engine.begin() as conn:
        conn.execute(db.moderation_queue.update().where(q.review_id == review_id, q.claimed_by == by)
                     .values(claimed_by=None, claim_expires_at=None))


def decide(engine, review_ids, decision, by, note=None, now=None, reason=None) -> int:
    now = utc(now) if now else utc_now()
    ids = list(review_ids)
    for rid in ids:
        item = queue_item(engine, rid, now)
        if item["claimed_by"] not in (None, by):
            raise ClaimError(f"review {rid} is claimed by {item['claimed_by']}")
    if decision == "unsure":
        q = db.moderation_queue.c
        with engine.begin() as conn:
            conn.execute(db.moderation_queue.update().where(q.review_id.in_(ids)).values(
                status="unsure", decided_by=by, decided_at=now, note=note, reason=reason, claimed_by=None,
                claim_expires_at=None))
        return len(ids)
    n = _q.decide(engine, ids, decision, by, note=note, now=now)
    q = db.moderation_queue.c
    with engine.begin() as conn:
        conn.execute(db.moderation_queue.update().where(q.review_id.in_(ids)).values(
            reason=reason, claimed_by=None, claim_expires_at=None))
    return n


def decide_matching(engine, flt, decision, by, reason=None, note=None, now=None, limit=None) -> int:
    now = utc(now) if now else utc_now()
    items, _ = queue_page(engine, QueueFilter(**{**flt.__dict__, "status": "pending"}), limit=limit or 10**9,
                          now=now)
    ids = [i["review_id"] for i in items if i["claimed_by"] in (None, by)]
    return decide(engine, ids, decision, by, note=note, now=now, reason=reason) if ids else 0


# accounts
def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def add_account(engine, name: str, password: str) -> None:
    with engine.begin() as conn:
        conn.execute(db.moderator_accounts.insert().values(name=name, password_hash=hash_password(password),
                                                           created_at=utc_now(), disabled=False))


def verify(engine, name: str, password: str) -> bool:
    a = db.moderator_accounts.c
    with engine.connect() as conn:
        row = conn.execute(select(a.password_hash, a.disabled).where(a.name == name)).first()
    if row is None or row[1]:
        return False
    _, salt, digest = row[0].split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(got.hex(), digest)
