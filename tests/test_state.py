"""Work chosen by state, not by clock: on real SQLite files and PostgreSQL databases, a real tiny model.

Each scenario ends with every review scored for its current text by the
active model, and queued exactly once where it should be. Reviews are written
with plain SQL, as any writer of the shop's database would (not the importer),
so the text version the database keeps is what is tested. The threshold is
overridden (1e-6: every scored review crosses it; 1 - 1e-6: none does) so the
outcome does not hang on the tiny model's scores.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from moderation import db, pipeline, registry
from moderation.cli import main
from moderation.errors import DatabaseError
from moderation.labels import labelled_snapshot
from moderation.queue import decide, events, flagged
from moderation.reporting import stats
from moderation.timeutil import utc

DAY0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
EVERYTHING = 1e-6  # every scored review crosses it (thresholds lie strictly between 0 and 1)
NOTHING = 1 - 1e-6  # no score of the tiny model reaches it


@pytest.fixture(autouse=True)
def _tiny_model_is_the_default(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(tiny_model_dir))


@pytest.fixture
def engine(any_db_url: str) -> Any:
    engine = db.make_engine(any_db_url)
    db.init_schema(engine)
    yield engine
    engine.dispose()


def day(n: int) -> datetime:
    return DAY0 + timedelta(days=n)


def add_reviews(engine: Engine, ingested: dict[int, datetime]) -> None:
    """Reviews inserted with plain SQL (a writer other than the importer)."""
    with engine.begin() as conn:
        for review_id, at in ingested.items():
            conn.execute(text("INSERT INTO reviews (review_id, product_id, rating, text, ingested_at) "
                              "VALUES (:id, 7, 1, :text, :at)"),
                         {"id": review_id, "text": f"배송이 너무 늦고 포장이 엉망이에요 {review_id}", "at": at})


def edit(engine: Engine, ids: list[int], words: str) -> None:
    with engine.begin() as conn:
        for review_id in ids:
            conn.execute(text("UPDATE reviews SET text = :text WHERE review_id = :id"),
                         {"text": f"{words} {review_id}", "id": review_id})


def night(url: str, n: int, threshold: float = EVERYTHING, **kwargs: Any) -> dict[str, Any]:
    """The nightly run for day ``n``'s interval (the day before ``n``), as Airflow would label it."""
    return pipeline.run_nightly(url, day(n - 1), day(n), run_id=f"scheduled__{day(n).isoformat()}",
                                threshold=threshold, **kwargs)


def active_version(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(select(db.model_versions.c.version).where(db.model_versions.c.is_active.is_(True))
                            ).scalar_one()


def assert_every_review_scored_for_its_text(engine: Engine) -> None:
    r, s = db.reviews.c, db.review_scores.c
    with engine.connect() as conn:
        unscored = conn.execute(select(r.review_id).where(pipeline.needs_score(active_version(engine)))).all()
        total = conn.execute(select(func.count()).select_from(db.reviews)).scalar_one()
        current = conn.execute(select(func.count()).select_from(db.review_scores.join(
            db.reviews, (r.review_id == s.review_id) & (r.text_version == s.text_version)))
            .where(s.model_version == active_version(engine))).scalar_one()
    assert unscored == []
    assert current == total


def queue(engine: Engine) -> dict[int, tuple[str, int]]:
    """review_id -> (status, text version of its score); the primary key makes each review queued once."""
    q = db.moderation_queue.c
    with engine.connect() as conn:
        return {row.review_id: (row.status, row.text_version)
                for row in conn.execute(select(q.review_id, q.status, q.text_version))}


def history(engine: Engine, review_id: int) -> list[tuple[str, str]]:
    return [(e["event"], e["status"]) for e in events(engine, [review_id])]


# --- reviews the clock would miss ------------------------------------------------


def test_a_review_committed_after_its_interval_was_read_is_scored_by_the_next_run(
        engine: Engine, any_db_url: str) -> None:
    add_reviews(engine, {1: day(0) + timedelta(hours=3), 2: day(0) + timedelta(hours=20)})
    assert night(any_db_url, 1)["reviews_read"] == 2
    # An import that started before midnight commits after the run read day 0: stamped inside day 0.
    add_reviews(engine, {3: day(0) + timedelta(hours=23, minutes=59)})
    summary = night(any_db_url, 2)
    assert (summary["reviews_read"], summary["newly_queued"]) == (1, 1)
    assert_every_review_scored_for_its_text(engine)
    assert queue(engine) == {1: ("pending", 1), 2: ("pending", 1), 3: ("pending", 1)}
    assert history(engine, 3) == [("queued", "pending")]


def test_a_review_back_dated_into_an_interval_already_scored_is_scored(engine: Engine, any_db_url: str) -> None:
    add_reviews(engine, {1: day(0) + timedelta(hours=1), 2: day(1) + timedelta(hours=1)})
    night(any_db_url, 1)
    night(any_db_url, 2)
    add_reviews(engine, {3: day(0) + timedelta(hours=5)})  # e.g. `reviews import --spread-days 3`
    assert night(any_db_url, 3)["reviews_read"] == 1
    assert night(any_db_url, 4)["reviews_read"] == 0  # and only once
    assert_every_review_scored_for_its_text(engine)
    assert set(queue(engine)) == {1, 2, 3}


def test_two_missed_nights_with_catchup_off_are_scored_by_the_next_run(engine: Engine, any_db_url: str) -> None:
    add_reviews(engine, {1: day(0) + timedelta(hours=2), 2: day(1) + timedelta(hours=2),
                         3: day(2) + timedelta(hours=2)})
    summary = night(any_db_url, 3)  # the runs of days 1 and 2 never happened
    assert summary["reviews_read"] == 3
    assert_every_review_scored_for_its_text(engine)
    assert queue(engine) == {1: ("pending", 1), 2: ("pending", 1), 3: ("pending", 1)}


# --- edits ------------------------------------------------------------------------


def test_edited_reviews_are_rescored_requeued_or_expired_with_their_history(engine: Engine, any_db_url: str) -> None:
    add_reviews(engine, {i: day(0) + timedelta(hours=i) for i in (1, 2, 3, 4)})
    night(any_db_url, 1)
    decide(engine, [2], "confirmed", by="kim", note="욕설")
    decide(engine, [3], "dismissed", by="lee")
    edit(engine, [1, 2, 3], "고객센터가 답이 없어요 최악")  # pending, confirmed, dismissed
    with engine.connect() as conn:
        versions = dict(conn.execute(select(db.reviews.c.review_id, db.reviews.c.text_version)).tuples().all())
        shown = dict(conn.execute(text("SELECT review_id, score FROM flagged_reviews")).tuples().all())
    assert versions == {1: 2, 2: 2, 3: 2, 4: 1}  # kept by the database for a plain UPDATE
    assert [shown[i] is None for i in (1, 2, 3, 4)] == [True, True, True, False]  # no old score beside new text
    listed = {row["review_id"]: row["score"] for row in flagged(engine, limit=None)}
    assert [listed[i] is None for i in (1, 2, 3, 4)] == [True, True, True, False]  # `moderation flagged` too

    summary = night(any_db_url, 2)
    assert summary["reviews_read"] == 3
    assert summary["queue_changes"] == {"expired": 0, "re-opened": 2, "re-scored": 1, "queued": 0}
    assert_every_review_scored_for_its_text(engine)
    assert queue(engine) == {1: ("pending", 2), 2: ("pending", 2), 3: ("pending", 2), 4: ("pending", 1)}
    assert history(engine, 1) == [("queued", "pending"), ("re-scored", "pending")]
    assert history(engine, 2) == [("queued", "pending"), ("decided", "confirmed"), ("re-opened", "pending")]
    assert events(engine, [2])[-1]["note"] == "confirmed by kim"
    # Retraining does not pair kim's and lee's labels with texts they never judged.
    assert set(labelled_snapshot(engine)["review_id"]) == set()
    assert history(engine, 3) == [("queued", "pending"), ("decided", "dismissed"), ("re-opened", "pending")]
    with engine.connect() as conn:
        shown = dict(conn.execute(text("SELECT review_id, score FROM flagged_reviews")).tuples().all())
        scores = dict(conn.execute(select(db.review_scores.c.review_id, db.review_scores.c.score)).tuples().all())
    assert shown == pytest.approx(scores)  # the view shows the score of the text it shows

    # Edited again into something no score reaches: flags expire instead of lingering.
    decide(engine, [3], "dismissed", by="lee")
    assert list(labelled_snapshot(engine)["review_id"]) == [3]  # judged on its current text
    edit(engine, [1, 3], "정말 좋아요 또 살게요")
    summary = night(any_db_url, 3, threshold=NOTHING)
    assert summary["queue_changes"]["expired"] == 2
    assert_every_review_scored_for_its_text(engine)
    assert queue(engine) == {1: ("expired", 3), 2: ("pending", 2), 3: ("expired", 3), 4: ("pending", 1)}
    assert history(engine, 3)[-2:] == [("decided", "dismissed"), ("expired", "expired")]
    assert night(any_db_url, 4)["reviews_read"] == 0  # nothing left: the same state publishes nothing again


def test_a_model_promotion_rescores_every_review_and_moves_pending_items_to_it(
        engine: Engine, any_db_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    add_reviews(engine, {i: day(0) + timedelta(hours=i) for i in (1, 2, 3)})
    night(any_db_url, 1)
    decide(engine, [3], "confirmed", by="kim")
    second = tmp_path / "tiny-model-2"
    shutil.copytree(tiny_model_dir, second)
    card = json.loads((second / "card.json").read_text(encoding="utf-8"))
    (second / "card.json").write_text(json.dumps(card | {"version": "tiny-model-2"}), encoding="utf-8")
    registry.register_model(engine, second, activate=True)

    summary = night(any_db_url, 2)
    assert summary["reviews_read"] == 3
    assert_every_review_scored_for_its_text(engine)
    q = db.moderation_queue.c
    with engine.connect() as conn:
        rows = {r.review_id: (r.status, r.model_version) for r in conn.execute(select(q.review_id, q.status,
                                                                                       q.model_version))}
    # Pending items now carry the new model's score; a decision on an unchanged text stands.
    assert rows == {1: ("pending", "tiny-model-2"), 2: ("pending", "tiny-model-2"), 3: ("confirmed", "tiny-model")}
    assert history(engine, 1) == [("queued", "pending"), ("re-scored", "pending")]


# --- time zones and reports ---------------------------------------------------------


def test_a_plus_nine_cli_interval_is_the_same_instant_on_both_databases_and_one_run_in_stats(
        engine: Engine, any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    kst_midnight = datetime(2026, 1, 1, 15, 0, tzinfo=timezone.utc)  # 2026-01-02T00:00+09:00
    add_reviews(engine, {1: kst_midnight + timedelta(hours=1), 2: kst_midnight + timedelta(hours=2)})
    assert main(["score", "--db", any_db_url, "--start", "2026-01-02T00:00+09:00",
                 "--end", "2026-01-03T00:00+09:00", "--threshold", "0.000001"]) == 0
    capsys.readouterr()
    with engine.connect() as conn:
        start, end = conn.execute(select(db.scoring_runs.c.interval_start, db.scoring_runs.c.interval_end)).one()
    assert (utc(start), utc(end)) == (kst_midnight, kst_midnight + timedelta(days=1))
    # Airflow runs the same interval later (in UTC): nothing is left to score, and stats shows one run.
    add_reviews(engine, {3: kst_midnight + timedelta(hours=3)})
    summary = pipeline.run_nightly(any_db_url, kst_midnight, kst_midnight + timedelta(days=1),
                                   run_id="scheduled__2026-01-02T15:00:00+00:00", threshold=EVERYTHING)
    assert summary["reviews_read"] == 1
    [run] = stats(engine)["runs"]
    assert run["run_ids"] == ["cli__2026-01-01T15:00:00+00:00__2026-01-02T15:00:00+00:00",
                              "scheduled__2026-01-02T15:00:00+00:00"]
    assert (run["reviews_scored"], run["reviews_flagged"], run["flagged"]) == (3, 3, 3)


# --- bounds, deletions, chunk files ---------------------------------------------------


def test_a_large_backlog_is_bounded_and_logged(engine: Engine, any_db_url: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    add_reviews(engine, {i: day(0) for i in range(1, 6)})
    with caplog.at_level(logging.WARNING, logger="moderation.pipeline"):
        plan = pipeline.plan_run(any_db_url, "r", day(0), day(1), chunk_size=2, max_reviews=3)
    assert plan.reviews == 3 and [(c["low_id"], c["high_id"]) for c in plan.chunks] == [(1, 3), (3, 4)]
    assert [c["rows"] for c in plan.chunks] == [2, 1]  # planned sizes: a scoring task picks NumPy or Keras by them
    assert "5 reviews need a score" in caplog.text and "the rest in later runs" in caplog.text
    assert night(any_db_url, 1, max_reviews=3)["reviews_read"] == 3
    assert night(any_db_url, 2, max_reviews=3)["reviews_read"] == 2  # the rest, the next night
    assert_every_review_scored_for_its_text(engine)


def test_a_review_deleted_between_plan_and_publish_does_not_wedge_it(
        engine: Engine, any_db_url: str, tmp_path: Path) -> None:
    add_reviews(engine, {1: day(0), 2: day(0), 3: day(0)})
    plan = pipeline.plan_run(any_db_url, "r", day(0), day(1), threshold=EVERYTHING)
    results = [pipeline.score_chunk(any_db_url, c, plan.model.path, tmp_path) for c in plan.chunks]
    with engine.begin() as conn:
        conn.execute(db.reviews.delete().where(db.reviews.c.review_id == 2))
    pipeline.publish(any_db_url, plan, results)
    assert_every_review_scored_for_its_text(engine)
    assert set(queue(engine)) == {1, 3}


def test_chunk_files_are_removed_after_a_publish_and_kept_after_a_failed_one(
        engine: Engine, any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_reviews(engine, {1: day(0), 2: day(0)})

    def broken(*_: Any) -> None:
        raise DatabaseError("injected: the queue could not be written")

    monkeypatch.setattr(pipeline, "_move_queue", broken)
    with pytest.raises(DatabaseError, match="injected"):
        night(any_db_url, 1, work_dir=tmp_path / "failed")
    assert [p.name for p in (tmp_path / "failed").iterdir()] == ["chunk-00000.parquet"]  # for the retry
    monkeypatch.undo()
    night(any_db_url, 1, work_dir=tmp_path / "ok")
    assert not (tmp_path / "ok").exists()


# --- the audit trail --------------------------------------------------------------------


def test_events_are_append_only_and_listed_by_the_cli(engine: Engine, any_db_url: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    add_reviews(engine, {1: day(0)})
    night(any_db_url, 1)
    assert main(["decide", "1", "--dismiss", "--by", "kim", "--db", any_db_url]) == 0
    for statement in ("UPDATE moderation_events SET actor = 'someone else'", "DELETE FROM moderation_events"):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    capsys.readouterr()
    assert main(["events", "1", "--format", "json", "--db", any_db_url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["event"], e["previous_status"], e["status"], e["actor"]) for e in listed] == [
        ("queued", None, "pending", f"scheduled__{day(1).isoformat()}"), ("decided", "pending", "dismissed", "kim")]
    assert listed[0]["threshold"] == pytest.approx(EVERYTHING) and listed[0]["model_version"] == "tiny-model"
    assert main(["events", "--db", any_db_url]) == 0
    assert "decided" in capsys.readouterr().out
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM moderation_history WHERE review_id = 1")).scalar() == 2
