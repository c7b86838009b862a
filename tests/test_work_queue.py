"""The queue as a shared work list, on SQLite and PostgreSQL: order, claims, reasons, unsure, bulk decisions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, insert, select

from moderation import db
from moderation.errors import ClaimError, DecisionError, InputDataError, SettingError
from moderation.queue import (
    BUCKET_ORDER,
    REASONS,
    QueueFilter,
    bucket_for,
    claim,
    claim_minutes_setting,
    decide,
    decide_matching,
    events,
    queue_item,
    queue_page,
    release,
)

NOW = datetime(2024, 5, 3, 9, 0, tzinfo=timezone.utc)
DAY1 = datetime(2024, 5, 1, 1, 0, tzinfo=timezone.utc)
DAY2 = datetime(2024, 5, 2, 1, 0, tzinfo=timezone.utc)

#: review_id -> (product, bucket, kind, flagged_at, score)
QUEUE = {
    1: (100, "flagged", "flagged", DAY1, 0.55),
    2: (100, "likely", "flagged", DAY2, 0.75),
    3: (200, "very_likely", "flagged", DAY2, 0.97),
    4: (200, "likely", "flagged", DAY1, 0.72),
    5: (300, "audit", "audit", DAY1, 0.10),
    6: (300, "maybe", "flagged", DAY1, 0.61),
}


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(any_db_url)
    db.init_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [
            {"review_id": rid, "product_id": product, "rating": 3, "text": f"리뷰 {rid} 별로예요",
             "ingested_at": DAY1 - timedelta(hours=3)} for rid, (product, *_rest) in QUEUE.items()])
        conn.execute(insert(db.moderation_queue), [
            {"review_id": rid, "model_version": "v1", "score": score, "threshold": 0.5, "status": "pending",
             "flagged_at": at, "run_id": "r1", "bucket": bucket, "kind": kind}
            for rid, (_product, bucket, kind, at, score) in QUEUE.items()])
    yield engine
    engine.dispose()


def labels(engine: Engine) -> dict[int, int]:
    lab = db.review_labels.c
    with engine.connect() as conn:
        return dict(conn.execute(select(lab.review_id, lab.label).where(lab.source == "moderator")).tuples().all())


def test_page_is_in_bucket_order_then_oldest_first(engine: Engine) -> None:
    items, total = queue_page(engine, now=NOW)
    assert total == 6
    assert [i["review_id"] for i in items] == [3, 4, 2, 6, 1, 5]
    assert [BUCKET_ORDER[i["bucket"]] for i in items] == sorted(BUCKET_ORDER[i["bucket"]] for i in items)
    first = items[0]
    assert first["kind"] == "flagged" and first["text"] == "리뷰 3 별로예요" and first["product_id"] == 200
    assert first["flagged_at"] == DAY2 and first["claimed_by"] is None and first["score"] == pytest.approx(0.97)
    page, total = queue_page(engine, QueueFilter(kind="flagged", product=200), limit=1, offset=1, now=NOW)
    assert ([i["review_id"] for i in page], total) == ([4], 2)
    assert queue_page(engine, QueueFilter(bucket="audit"), now=NOW)[1] == 1
    assert queue_page(engine, QueueFilter(since=DAY2), now=NOW)[1] == 2
    assert queue_page(engine, QueueFilter(until=DAY2), now=NOW)[1] == 4
    with pytest.raises(InputDataError, match="bucket must be one of"):
        queue_page(engine, QueueFilter(bucket="urgent"))


def test_a_claim_blocks_other_moderators_until_it_lapses(engine: Engine) -> None:
    item = claim(engine, 3, "kim", minutes=10, now=NOW)
    assert item["claimed_by"] == "kim" and item["claim_expires_at"] == NOW + timedelta(minutes=10)
    with pytest.raises(ClaimError, match=r"review 3 is claimed by kim until 2024-05-03 09:10 UTC"):
        claim(engine, 3, "lee", now=NOW + timedelta(minutes=5))
    with pytest.raises(ClaimError, match="claimed by kim"):
        decide(engine, [1, 3], "confirmed", "lee", now=NOW + timedelta(minutes=5))
    assert labels(engine) == {}  # nothing of the batch was recorded
    # kim extends her own claim; lee's page can leave claimed items out
    assert claim(engine, 3, "kim", minutes=20, now=NOW + timedelta(minutes=5))["claim_expires_at"] == \
        NOW + timedelta(minutes=25)
    unclaimed, _ = queue_page(engine, QueueFilter(include_claimed=False), now=NOW + timedelta(minutes=6))
    assert 3 not in [i["review_id"] for i in unclaimed]
    # once the lease has lapsed the item is free: shown unclaimed, and lee may claim and decide it
    later = NOW + timedelta(minutes=26)
    assert queue_item(engine, 3, now=later)["claimed_by"] is None
    assert claim(engine, 3, "lee", now=later)["claimed_by"] == "lee"
    assert decide(engine, [3], "confirmed", "lee", reason="abuse", now=later) == 1
    after = queue_item(engine, 3, now=later)
    assert (after["status"], after["reason"], after["claimed_by"], after["claim_expires_at"]) == (
        "confirmed", "abuse", None, None)


def test_release_frees_only_ones_own_claim(engine: Engine) -> None:
    claim(engine, 2, "kim", now=NOW)
    release(engine, 2, "lee", now=NOW)  # not lee's: nothing happens
    assert queue_item(engine, 2, now=NOW)["claimed_by"] == "kim"
    release(engine, 2, "kim", now=NOW)
    assert claim(engine, 2, "lee", now=NOW)["claimed_by"] == "lee"


def test_claim_refuses_bad_requests(engine: Engine) -> None:
    with pytest.raises(DecisionError, match="not in the moderation queue|unknown review ids: 99"):
        claim(engine, 99, "kim", now=NOW)
    with pytest.raises(ClaimError, match="1 to 240 minutes"):
        claim(engine, 1, "kim", minutes=0, now=NOW)
    with pytest.raises(DecisionError, match="moderator's name"):
        claim(engine, 1, "  ", now=NOW)
    assert claim_minutes_setting({}) == 10
    assert claim_minutes_setting({"MODERATION_CLAIM_MINUTES": "15"}) == 15
    with pytest.raises(SettingError, match="MODERATION_CLAIM_MINUTES"):
        claim_minutes_setting({"MODERATION_CLAIM_MINUTES": "soon"})


def test_reasons_are_validated_and_recorded_in_the_event(engine: Engine) -> None:
    with pytest.raises(DecisionError, match="reason must be one of abuse, spam"):
        decide(engine, [1], "confirmed", "kim", reason="rude", now=NOW)
    decide(engine, [1], "dismissed", "kim", reason="not_negative", note="칭찬", now=NOW)
    decided = [e for e in events(engine, [1]) if e["event"] == "decided"]
    assert [(e["status"], e["actor"], e["reason"], e["note"]) for e in decided] == [
        ("dismissed", "kim", "not_negative", "칭찬")]
    assert set(REASONS) >= {"abuse", "spam", "other"}


def test_unsure_records_no_label_and_removes_an_earlier_one(engine: Engine) -> None:
    decide(engine, [1, 2], "confirmed", "kim", now=NOW)
    assert labels(engine) == {1: 1, 2: 1}
    assert decide(engine, [2, 6], "unsure", "lee", reason="other", now=NOW) == 2
    assert labels(engine) == {1: 1}
    assert queue_item(engine, 2, now=NOW)["status"] == "unsure"
    decide(engine, [2], "dismissed", "lee", now=NOW)  # decided after all: labelled again
    assert labels(engine) == {1: 1, 2: 0}


def test_bulk_decision_on_a_filter_skips_others_claims(engine: Engine) -> None:
    claim(engine, 4, "lee", now=NOW)
    claim(engine, 2, "kim", now=NOW)  # kim's own claim does not stop kim
    decided = decide_matching(engine, QueueFilter(bucket="likely"), "confirmed", "kim", reason="abuse", now=NOW)
    assert decided == 1
    assert queue_item(engine, 2, now=NOW)["status"] == "confirmed"
    assert queue_item(engine, 4, now=NOW)["status"] == "pending"
    assert labels(engine) == {2: 1}
    # limit takes the first in working order; decided items are not matched again
    assert decide_matching(engine, QueueFilter(kind="flagged"), "dismissed", "kim", limit=2, now=NOW) == 2
    assert {i["review_id"] for i in queue_page(engine, QueueFilter(status="dismissed"), now=NOW)[0]} == {3, 6}
    assert decide_matching(engine, QueueFilter(product=999), "dismissed", "kim", now=NOW) == 0
    with pytest.raises(DecisionError, match="pending items only"):
        decide_matching(engine, QueueFilter(status="confirmed"), "dismissed", "kim", now=NOW)


def test_bucket_from_operating_points() -> None:
    points = {"maybe": 0.3, "likely": 0.6, "very_likely": 0.9}
    assert [bucket_for(s, points) for s in (0.95, 0.9, 0.7, 0.31, 0.2)] == [
        "very_likely", "very_likely", "likely", "maybe", "flagged"]
    assert bucket_for(0.99, {}) == "flagged"
