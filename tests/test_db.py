"""The schema on real SQLite files and real PostgreSQL databases: idempotent, and its checks bite."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from moderation import db, migrations
from moderation.cli import main

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _review(conn: Any, review_id: int = 1) -> None:
    conn.execute(db.reviews.insert().values(review_id=review_id, product_id=7, rating=1, text="별로예요",
                                            created_at=NOW, ingested_at=NOW))


def _queue_row(review_id: int = 1, **overrides: Any) -> dict[str, Any]:
    row = {"review_id": review_id, "model_version": "m1", "score": 0.9, "threshold": 0.5, "status": "pending",
           "flagged_at": NOW, "run_id": "r1"}
    return row | overrides


def _score_row(review_id: int = 1, model_version: str = "m1") -> dict[str, Any]:
    return {"review_id": review_id, "model_version": model_version, "score": 0.3, "skip_reason": None,
            "scored_at": NOW, "run_id": "r1"}


def test_init_twice_keeps_tables_and_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        _review(conn)
    db.init_schema(engine)
    db.init_schema(engine)
    inspector = inspect(engine)
    assert {t.name for t in db.TABLES} <= set(inspector.get_table_names())
    assert "flagged_reviews" in inspector.get_view_names()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.reviews)).scalar_one() == 1


def test_db_init_command_twice(any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "init", "--db", any_db_url]) == 0
    assert main(["db", "init", "--db", any_db_url]) == 0
    out = capsys.readouterr().out
    assert out.count("schema ready") == 2
    assert f"upgraded from an empty database to {migrations.head()}" in out
    assert f"already at {migrations.head()}" in out
    engine = db.make_engine(any_db_url)
    try:
        assert "flagged_reviews" in inspect(engine).get_view_names()
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                roles = conn.execute(text("SELECT rolname FROM pg_roles WHERE rolname IN ('moderator', 'scorer')"))
                assert sorted(roles.scalars()) == ["moderator", "scorer"]
    finally:
        engine.dispose()


def test_flagged_view_joins_queue_and_review(engine: Engine) -> None:
    with engine.begin() as conn:
        _review(conn, 1)
        _review(conn, 2)
        conn.execute(db.moderation_queue.insert(), [_queue_row(1), _queue_row(2, score=0.95)])
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT review_id, product_id, text, status FROM flagged_reviews")).all()
    assert [tuple(r) for r in rows] == [(2, 7, "별로예요", "pending"), (1, 7, "별로예요", "pending")]


@pytest.mark.parametrize(
    ("table", "values"),
    [
        ("moderation_queue", _queue_row(status="approved")),
        ("review_labels", {"review_id": 1, "label": 2, "source": "moderator", "labelled_at": NOW}),
        ("review_labels", {"review_id": 1, "label": 1, "source": "guess", "labelled_at": NOW}),
        ("review_scores", {"review_id": 1, "model_version": "m1", "score": None, "skip_reason": None,
                           "scored_at": NOW, "run_id": "r1"}),
        ("review_scores", {"review_id": 1, "model_version": "m1", "score": 0.3, "skip_reason": "empty",
                           "scored_at": NOW, "run_id": "r1"}),
        ("scoring_runs", {"run_id": "r1", "interval_start": NOW, "interval_end": NOW, "model_version": "m1",
                          "threshold": 0.5, "reviews_read": 0, "reviews_scored": 0, "reviews_skipped": 0,
                          "reviews_flagged": 0, "started_at": NOW, "status": "done"}),
        ("moderation_queue", _queue_row(review_id=404)),  # no such review: the foreign key
        ("review_scores", _score_row(review_id=404)),  # no such review: the key (checked per statement on PostgreSQL)
    ],
    ids=["queue-status", "label-value", "label-source", "score-and-reason-null", "score-and-reason-both",
         "run-status", "queue-fk", "score-fk"],
)
def test_constraints_reject_bad_rows(engine: Engine, table: str, values: dict[str, Any]) -> None:
    with engine.begin() as conn:
        _review(conn)
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(db.metadata.tables[table].insert().values(**values))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.metadata.tables[table])).scalar_one() == 0


def test_constraints_accept_good_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        _review(conn)
        conn.execute(db.moderation_queue.insert().values(**_queue_row(status="confirmed")))
        conn.execute(db.review_labels.insert(), [
            {"review_id": 1, "label": 1, "source": "moderator", "labelled_at": NOW},
            {"review_id": 1, "label": 0, "source": "rating", "labelled_at": NOW},
        ])
        conn.execute(db.review_scores.insert().values(review_id=1, model_version="m1", score=None,
                                                      skip_reason="empty", scored_at=NOW, run_id="r1"))


# ---------------------------------------------------------------- SQLite and PostgreSQL differences, in db.py


def test_id_in_and_the_locks_work_on_both_databases(engine: Engine) -> None:
    with engine.begin() as conn:
        for review_id in (1, 2, 3):
            _review(conn, review_id)
        db.advisory_lock(conn, db.MIGRATION_LOCK)
        db.lock_interval(conn)  # held to the end of this transaction; a second publisher would wait
        chosen = select(db.reviews.c.review_id).where(db.id_in(conn, db.reviews.c.review_id, [1, 3, 99]))
        assert sorted(conn.execute(chosen).scalars()) == [1, 3]
        assert conn.execute(select(func.count()).select_from(db.scoring_runs)).scalar_one() == 0  # no row written


@pytest.mark.postgres
def test_copy_upsert_inserts_updates_and_names_only_known_columns(pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    db.init_schema(engine)
    row = {"review_id": 1, "product_id": 7, "rating": 1, "text": "별로예요", "created_at": NOW, "ingested_at": NOW}
    with engine.begin() as conn:
        db.copy_upsert(conn, db.reviews, "review_id", [row, {**row, "review_id": 2, "text": "좋아요"}])
        db.copy_upsert(conn, db.reviews, "review_id", [{**row, "text": "최악이에요"}])  # same transaction: stage reused
    with engine.connect() as conn:
        texts = dict(conn.execute(select(db.reviews.c.review_id, db.reviews.c.text)).tuples().all())
        assert texts == {1: "최악이에요", 2: "좋아요"}
        with pytest.raises(ValueError, match="unknown columns"):
            db.copy_upsert(conn, db.reviews, "review_id", [{"review_id": 3, "text; DROP TABLE reviews": "x"}])
    engine.dispose()


def test_keys_to_reviews_hold_both_ways_as_foreign_keys_would(engine: Engine) -> None:
    """A scored or queued review cannot be deleted or renumbered; any other can, and edits go through.

    On PostgreSQL statement-level triggers check this (revision 0012); SQLite keeps the foreign keys.
    """
    with engine.begin() as conn:
        for review_id in (1, 2, 3, 4):
            _review(conn, review_id)
        conn.execute(db.review_scores.insert(), [_score_row(1), _score_row(2), _score_row(2, "m2")])
        conn.execute(db.moderation_queue.insert().values(**_queue_row(4)))
    for change in (db.reviews.delete().where(db.reviews.c.review_id == 2),
                   db.reviews.delete().where(db.reviews.c.review_id.in_([1, 3])),
                   db.reviews.delete().where(db.reviews.c.review_id == 4),
                   db.reviews.update().where(db.reviews.c.review_id == 1).values(review_id=10)):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(change)
    with pytest.raises(IntegrityError), engine.begin() as conn:  # an upsert's insert part is checked too
        conn.execute(db.dialect_insert(conn)(db.review_scores).values(**_score_row(99))
                     .on_conflict_do_nothing(index_elements=["review_id", "model_version"]))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(db.moderation_queue.update().where(db.moderation_queue.c.review_id == 4).values(review_id=99))
    with engine.begin() as conn:
        conn.execute(db.reviews.update().where(db.reviews.c.review_id.in_([1, 2, 4])).values(text="좋아요"))
        conn.execute(db.reviews.delete().where(db.reviews.c.review_id == 3))
        conn.execute(db.review_scores.update().where(db.review_scores.c.review_id == 1).values(score=0.4))
        conn.execute(db.moderation_queue.update().where(db.moderation_queue.c.review_id == 4).values(score=0.8))
        conn.execute(db.review_scores.delete().where(db.review_scores.c.review_id == 1))
        conn.execute(db.reviews.delete().where(db.reviews.c.review_id == 1))  # its scores are gone first
    with engine.connect() as conn:
        assert conn.execute(select(db.reviews.c.review_id).order_by(db.reviews.c.review_id)).scalars().all() == [2, 4]
        assert conn.execute(select(func.count()).select_from(db.review_scores)).scalar_one() == 2


@pytest.mark.postgres
def test_a_review_deleted_while_its_scores_are_written_is_refused_not_orphaned(pg_url: str) -> None:
    """The race a per-row key check settles with row locks, settled by the table lock the delete takes first.

    Either order: a delete waits for an open write of scores and then fails; a write of scores started
    after a delete waits for it and then fails.
    """
    import threading

    engine = db.make_engine(pg_url)
    try:
        migrations.upgrade(engine)
        with engine.begin() as conn:
            for review_id in (1, 2, 3):
                _review(conn, review_id)
        outcome: dict[str, BaseException | None] = {}

        def in_thread(name: str, statement: Any) -> threading.Thread:
            def run() -> None:
                try:
                    with engine.begin() as conn:
                        conn.execute(statement)
                    outcome[name] = None
                except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                    outcome[name] = exc
            thread = threading.Thread(target=run)
            thread.start()
            return thread

        def someone_waits_for_a_lock() -> bool:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()")).scalar_one() > 0

        def wait_until_blocked(thread: threading.Thread, name: str) -> None:
            for _ in range(200):
                if someone_waits_for_a_lock() or not thread.is_alive():
                    break
                thread.join(0.05)
            assert thread.is_alive() and name not in outcome, f"{name} should wait for the open transaction"

        def waits_then_fails(name: str, waiting: Any, open_first: Any) -> None:
            """``open_first`` runs uncommitted; ``waiting``, started meanwhile, waits for it, then fails on the key."""
            with engine.begin() as open_transaction:
                open_transaction.execute(open_first)
                waiter = in_thread(name, waiting)
                wait_until_blocked(waiter, name)
            waiter.join(30)
            assert isinstance(outcome[name], IntegrityError), outcome[name]

        # A score written and not yet committed: the review's delete waits, then finds the score.
        waits_then_fails("delete", db.reviews.delete().where(db.reviews.c.review_id == 1),
                         db.review_scores.insert().values(**_score_row(1)))
        # A delete not yet committed: a write of scores or of the queue for that review waits, then finds it gone.
        waits_then_fails("score", db.review_scores.insert().values(**_score_row(2)),
                         db.reviews.delete().where(db.reviews.c.review_id == 2))
        waits_then_fails("queue", db.moderation_queue.insert().values(**_queue_row(3)),
                         db.reviews.delete().where(db.reviews.c.review_id == 3))

        with engine.connect() as conn:
            assert conn.execute(select(db.reviews.c.review_id)).scalars().all() == [1]
            assert conn.execute(select(db.review_scores.c.review_id)).scalars().all() == [1]
            assert conn.execute(select(func.count()).select_from(db.moderation_queue)).scalar_one() == 0
    finally:
        engine.dispose()
