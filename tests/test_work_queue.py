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


# ---------------------------------------------------------------- the nightly publish: buckets and audits

BUCKETS = {"maybe": 0.6, "likely": 0.8, "very_likely": 0.95}


def _publish(url: str, tmp_path, run_id: str, scores: dict[int, float], audit: int,  # type: ignore[no-untyped-def]
             buckets: dict[str, float] | None = BUCKETS) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moderation import pipeline

    chunk = tmp_path / f"{run_id}-chunk.parquet"
    pq.write_table(pa.table({"review_id": pa.array(list(scores), pa.int64()),
                             "score": pa.array(list(scores.values()), pa.float64()),
                             "skip_reason": pa.array([None] * len(scores), pa.string())}), chunk)
    model = {"version": "m1", "path": str(tmp_path), "threshold": 0.5}
    if buckets is not None:
        model["buckets"] = buckets
    plan = {"run_id": run_id, "interval_start": DAY1.isoformat(), "interval_end": (DAY1 + timedelta(days=1)).isoformat(),
            "model": model, "chunks": [{"index": 0}], "reviews": len(scores)}
    return pipeline.publish(url, plan, [{"index": 0, "path": str(chunk)}], audit_sample=audit)


@pytest.fixture
def reviews_engine(any_db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(any_db_url)
    db.init_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [
            {"review_id": rid, "product_id": 1, "rating": 5, "text": f"리뷰 {rid}", "ingested_at": DAY1}
            for rid in range(1, 201)])
    yield engine
    engine.dispose()


def _queue(engine: Engine) -> dict[int, tuple[str, str, str]]:
    q = db.moderation_queue.c
    with engine.connect() as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(select(q.review_id, q.kind, q.bucket, q.status))}


def test_publish_buckets_flags_and_queues_a_repeatable_audit_sample(reviews_engine: Engine, any_db_url: str,
                                                                     tmp_path) -> None:  # type: ignore[no-untyped-def]
    scores = {1: 0.97, 2: 0.85, 3: 0.65, 4: 0.55} | {rid: 0.1 + rid / 1000 for rid in range(5, 201)}
    summary = _publish(any_db_url, tmp_path, "night-1", scores, audit=7)
    assert summary["reviews_flagged"] == 4 and summary["reviews_audited"] == 7
    queue = _queue(reviews_engine)
    assert {rid: queue[rid] for rid in (1, 2, 3, 4)} == {
        1: ("flagged", "very_likely", "pending"), 2: ("flagged", "likely", "pending"),
        3: ("flagged", "maybe", "pending"), 4: ("flagged", "flagged", "pending")}
    audits = sorted(rid for rid, (kind, bucket, _status) in queue.items() if kind == "audit" and bucket == "audit")
    assert len(audits) == 7 and all(rid >= 5 for rid in audits)
    assert audits != list(range(5, 12))  # a spread sample, not the first ids
    with reviews_engine.connect() as conn:
        run = conn.execute(select(db.scoring_runs.c.reviews_audited)).scalar_one()
    assert run == 7
    # a moderator decides an audit item; the run is published again: same sample, decision kept, no new events
    decide(reviews_engine, [audits[0]], "confirmed", "kim", reason="abuse")
    before = events(reviews_engine)
    assert _publish(any_db_url, tmp_path, "night-1", scores, audit=7)["reviews_audited"] == 7
    again = _queue(reviews_engine)
    assert sorted(rid for rid, row in again.items() if row[0] == "audit") == audits
    assert again[audits[0]] == ("audit", "audit", "confirmed")
    assert events(reviews_engine) == before
    # another night samples afresh, never touching what is queued already
    other = _publish(any_db_url, tmp_path, "night-2", scores, audit=7)
    assert other["reviews_audited"] == 7
    latest = _queue(reviews_engine)
    assert len([rid for rid, row in latest.items() if row[0] == "audit"]) == 14
    assert {rid: latest[rid] for rid in queue} == {rid: again[rid] for rid in queue}


def test_a_plan_without_buckets_flags_into_the_flagged_bucket(reviews_engine: Engine, any_db_url: str,
                                                               tmp_path) -> None:  # type: ignore[no-untyped-def]
    _publish(any_db_url, tmp_path, "old-plan", {1: 0.99, 2: 0.2}, audit=0, buckets=None)
    assert _queue(reviews_engine) == {1: ("flagged", "flagged", "pending")}


def test_the_active_models_buckets_come_from_its_default_domain(engine: Engine, pointed_model_dir,  # type: ignore[no-untyped-def]
                                                                card_points) -> None:
    from moderation import registry

    registry.register_model(engine, pointed_model_dir, activate=True)
    chosen = registry.active_model(engine)
    assert chosen.buckets == {name: card_points["shopping"][name]["threshold"]
                              for name in ("very_likely", "likely", "maybe")}
