"""Schema migrations on real SQLite files and PostgreSQL databases.

The previous release built its schema with ``create_all`` and no version
table; :data:`moderation.migrations.baseline` is that schema, frozen. These
tests build such a database the way that release did, fill it, upgrade it and
check that nothing was lost and that the result is the schema the code uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text

from moderation import db, migrations, pipeline
from moderation.cli import main
from moderation.errors import DatabaseError
from moderation.migrations import baseline

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def bare(any_db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(any_db_url)
    yield engine
    engine.dispose()


def create_like_previous_release(engine: Engine) -> None:
    """What the previous release's ``init_schema`` did: create_all, then the view (roles came from sql/)."""
    baseline.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text(baseline.FLAGGED_VIEW_SQL))


def fill_previous_release(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Reviews, scores, queue rows (pending and decided), labels, runs and two active models."""
    t = baseline
    with engine.begin() as conn:
        conn.execute(t.reviews.insert(), [
            {"review_id": i, "product_id": 100 + i % 3, "rating": 1 + i % 10, "text": f"리뷰 {i} 별로예요",
             "created_at": NOW - timedelta(days=2), "ingested_at": NOW - timedelta(hours=i)} for i in range(1, 11)
        ])
        conn.execute(t.model_versions.insert(), [
            {"version": "m-old", "path": "/models/m-old", "threshold": 0.5, "metrics": "{}",
             "created_at": NOW, "registered_at": NOW - timedelta(days=9), "is_active": True},
            {"version": "m-new", "path": "/models/m-new", "threshold": 0.6, "metrics": "{}",
             "created_at": NOW, "registered_at": NOW - timedelta(days=1), "is_active": True},
        ])
        conn.execute(t.scoring_runs.insert().values(
            run_id="r1", interval_start=NOW - timedelta(days=1), interval_end=NOW, model_version="m-new",
            threshold=0.6, reviews_read=10, reviews_scored=9, reviews_skipped=1, reviews_flagged=3,
            skip_reasons='{"empty": 1}', started_at=NOW, finished_at=NOW, status="success"))
        conn.execute(t.review_scores.insert(), [
            {"review_id": i, "model_version": "m-new", "score": None if i == 10 else i / 10,
             "skip_reason": "empty" if i == 10 else None, "scored_at": NOW, "run_id": "r1"} for i in range(1, 11)
        ])
        conn.execute(t.moderation_queue.insert(), [
            {"review_id": 7, "model_version": "m-new", "score": 0.7, "threshold": 0.6, "status": "pending",
             "flagged_at": NOW, "run_id": "r1", "decided_by": None, "decided_at": None, "note": None},
            {"review_id": 8, "model_version": "m-new", "score": 0.8, "threshold": 0.6, "status": "confirmed",
             "flagged_at": NOW, "run_id": "r1", "decided_by": "kim", "decided_at": NOW, "note": "욕설"},
            {"review_id": 9, "model_version": "m-new", "score": 0.9, "threshold": 0.6, "status": "dismissed",
             "flagged_at": NOW, "run_id": "r1", "decided_by": "lee", "decided_at": NOW, "note": None},
        ])
        conn.execute(t.review_labels.insert(), [
            {"review_id": 8, "label": 1, "source": "moderator", "labelled_at": NOW, "labelled_by": "kim"},
            {"review_id": 9, "label": 0, "source": "moderator", "labelled_at": NOW, "labelled_by": "lee"},
            {"review_id": 1, "label": 1, "source": "rating", "labelled_at": NOW, "labelled_by": "rating/10"},
        ])
    return snapshot(engine)


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the baseline columns of every package table, in key order."""
    found = {}
    with engine.connect() as conn:
        for table in baseline.TABLES:
            columns = [db.metadata.tables[table.name].c[c.name] for c in table.columns]
            key = [db.metadata.tables[table.name].c[c.name] for c in table.primary_key]
            rows = conn.execute(select(*columns).order_by(*key)).all()
            found[table.name] = [tuple(_plain(v) for v in row) for row in rows]
    return found


def _plain(value: Any) -> Any:
    """Datetimes compared as UTC instants (SQLite hands them back naive)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


def test_upgrade_of_a_previous_release_database_keeps_every_row(bare: Engine) -> None:
    create_like_previous_release(bare)
    before = fill_previous_release(bare)
    with bare.connect() as conn:
        assert migrations.is_legacy(conn) and migrations.current(conn) is None
    with pytest.raises(DatabaseError, match=r"created by an earlier release.*run `moderation db upgrade --db "):
        migrations.require_head(bare)

    assert migrations.upgrade(bare) == ("0001", migrations.head())

    migrations.require_head(bare)
    after = snapshot(bare)
    # The one change to old rows: two active models were left by the old code; the newest stays active.
    models_before = [r[:-1] + (r[-1] if r[0] == "m-new" else False,) for r in before["model_versions"]]
    assert after.pop("model_versions") == models_before
    before.pop("model_versions")
    assert after == before
    with bare.connect() as conn:
        view = conn.execute(text("SELECT review_id, status, decided_by FROM flagged_reviews ORDER BY review_id"))
        assert [tuple(r) for r in view] == [(7, "pending", None), (8, "confirmed", "kim"), (9, "dismissed", "lee")]
        history = conn.execute(text("SELECT review_id, event, status, actor FROM moderation_history "
                                    "ORDER BY review_id, event_id"))
        assert [tuple(r) for r in history] == [
            (7, "queued", "pending", "r1"), (8, "queued", "pending", "r1"), (8, "decided", "confirmed", "kim"),
            (9, "queued", "pending", "r1"), (9, "decided", "dismissed", "lee")]
    assert_schema_is_the_metadata(bare)


def test_upgrade_from_empty_builds_the_metadata_and_is_idempotent(bare: Engine) -> None:
    assert migrations.upgrade(bare) == (None, migrations.head())
    assert migrations.upgrade(bare) == (migrations.head(), migrations.head())
    assert_schema_is_the_metadata(bare)


def assert_schema_is_the_metadata(engine: Engine) -> None:
    """The live schema equals ``db.metadata``: columns, keys, indexes, checks, and the view."""
    inspector = inspect(engine)
    assert sorted(inspector.get_table_names()) == sorted([*db.metadata.tables, "alembic_version"])
    assert sorted(inspector.get_view_names()) == db.VIEWS
    for table in db.TABLES:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert sorted(columns) == sorted(c.name for c in table.columns), table.name
        for column in table.columns:
            found = columns[column.name]
            assert found["nullable"] == column.nullable, f"{table.name}.{column.name} nullability"
            assert found["type"].python_type is column.type.python_type, f"{table.name}.{column.name} type"
            assert getattr(found["type"], "length", None) == getattr(column.type, "length", None)
        assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [c.name for c in table.primary_key]
        assert sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                      for ix in inspector.get_indexes(table.name)) == sorted(
            (ix.name, tuple(c.name for c in ix.columns), bool(ix.unique)) for ix in table.indexes), table.name
        assert sorted((tuple(fk["constrained_columns"]), fk["referred_table"])
                      for fk in inspector.get_foreign_keys(table.name)) == sorted(
            ((fk.parent.name,), fk.column.table.name)
            for fk in db.declared_foreign_keys(table, engine.dialect.name)), table.name
        assert sorted(ck["name"] for ck in inspector.get_check_constraints(table.name)) == sorted(
            c.name for c in table.constraints if c.__class__.__name__ == "CheckConstraint"), table.name
    if engine.dialect.name == "postgresql":  # the keys checked per statement have their triggers instead
        with engine.connect() as conn:
            found = set(conn.execute(text("SELECT c.relname, t.tgname FROM pg_trigger t "
                                          "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal")).all())
        for triggers in db.STATEMENT_CHECKED_KEYS.values():
            assert {(table, name) for table, names in triggers.items() for name in names} <= found


def test_database_enforces_one_active_model(bare: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    migrations.upgrade(bare)
    row = {"path": "/m", "threshold": 0.5, "created_at": NOW, "registered_at": NOW}
    with bare.begin() as conn:
        conn.execute(db.model_versions.insert(), [{"version": "a", "is_active": True, **row},
                                                  {"version": "b", "is_active": False, **row}])
    with pytest.raises(IntegrityError), bare.begin() as conn:
        conn.execute(db.model_versions.update().where(db.model_versions.c.version == "b").values(is_active=True))
    with bare.begin() as conn:
        db.activate_only(conn, "b")
    with bare.connect() as conn:
        active = conn.execute(select(db.model_versions.c.version).where(db.model_versions.c.is_active.is_(True)))
        assert active.scalars().all() == ["b"]


def test_nightly_plan_refuses_a_database_not_at_head(bare: Engine, any_db_url: str) -> None:
    create_like_previous_release(bare)
    with pytest.raises(DatabaseError, match=r"needs revision .*: run `moderation db upgrade --db "):
        pipeline.plan_run(any_db_url, "r", NOW - timedelta(days=1), NOW)
    migrations.upgrade(bare, "0003")
    with pytest.raises(DatabaseError, match=r"is at schema revision 0003, the code needs revision"):
        pipeline.plan_run(any_db_url, "r", NOW - timedelta(days=1), NOW)


def test_db_commands_upgrade_status_and_sql(any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    engine = db.make_engine(any_db_url)
    create_like_previous_release(engine)
    engine.dispose()
    assert main(["db", "status", "--db", any_db_url]) == 0
    assert "first release, unversioned" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", any_db_url]) == 0
    assert f"upgraded from 0001 to {migrations.head()}" in capsys.readouterr().out
    assert main(["db", "status", "--db", any_db_url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "sql", "--from", "0001"]) == 0
    out = capsys.readouterr().out
    assert "ALTER TABLE model_versions ADD COLUMN fingerprint VARCHAR(64);" in out
    assert "CREATE TABLE reviews" not in out
    assert main(["db", "sql", "--from", "nope"]) == 2
    assert capsys.readouterr().err.startswith("moderation db: error: schema migration: ")


def test_upgrade_from_0010_keeps_queue_rows_as_flags_and_allows_unsure(bare: Engine) -> None:
    migrations.upgrade(bare, "0010")
    with bare.begin() as conn:
        conn.execute(text("INSERT INTO reviews (review_id, product_id, text, ingested_at) "
                          "VALUES (1, 10, '별로예요', :at), (2, 10, '최악', :at)"), {"at": NOW})
        conn.execute(text("INSERT INTO moderation_queue (review_id, model_version, score, threshold, status, "
                          "flagged_at, run_id, decided_by, decided_at, note) VALUES "
                          "(1, 'm1', 0.9, 0.5, 'confirmed', :at, 'r1', 'kim', :at, '욕설'), "
                          "(2, 'm1', 0.7, 0.5, 'pending', :at, 'r1', NULL, NULL, NULL)"), {"at": NOW})
        conn.execute(text("INSERT INTO review_labels (review_id, label, source, labelled_at, labelled_by, "
                          "text_version) VALUES (1, 1, 'moderator', :at, 'kim', 1)"), {"at": NOW})
        conn.execute(text("INSERT INTO scoring_runs (run_id, interval_start, interval_end, model_version, threshold, "
                          "reviews_read, reviews_scored, reviews_skipped, reviews_flagged, started_at, status) "
                          "VALUES ('r1', :at, :at, 'm1', 0.5, 2, 2, 0, 2, :at, 'success')"), {"at": NOW})

    assert migrations.upgrade(bare) == ("0010", migrations.head())

    q = db.moderation_queue.c
    with bare.connect() as conn:
        rows = conn.execute(select(q.review_id, q.status, q.decided_by, q.note, q.kind, q.bucket, q.claimed_by,
                                   q.claim_expires_at, q.reason).order_by(q.review_id)).all()
        assert [tuple(r) for r in rows] == [(1, "confirmed", "kim", "욕설", "flagged", "flagged", None, None, None),
                                            (2, "pending", None, None, "flagged", "flagged", None, None, None)]
        assert conn.execute(select(db.scoring_runs.c.reviews_audited)).scalar_one() == 0
        assert conn.execute(select(db.review_labels.c.review_id)).scalars().all() == [1]
        view = conn.execute(text("SELECT review_id, kind, bucket, reason FROM flagged_reviews ORDER BY review_id"))
        assert [tuple(r) for r in view] == [(1, "flagged", "flagged", None), (2, "flagged", "flagged", None)]
    with bare.begin() as conn:  # the new status is allowed, and takes the moderator label with it
        conn.execute(db.moderation_queue.update().where(q.review_id == 1).values(status="unsure", reason="other"))
    with bare.connect() as conn:
        assert conn.execute(select(db.review_labels.c.review_id)).scalars().all() == []
    assert_schema_is_the_metadata(bare)


def test_upgrade_from_0011_keeps_scores_and_queue_and_their_keys_to_reviews(bare: Engine) -> None:
    """0012 swaps PostgreSQL's per-row key checks of scores and queue for statement triggers: rows kept, keys held."""
    from sqlalchemy.exc import IntegrityError

    migrations.upgrade(bare, "0011")
    with bare.begin() as conn:
        conn.execute(text("INSERT INTO reviews (review_id, product_id, text, ingested_at) "
                          "VALUES (1, 10, '별로예요', :at), (2, 10, '최악', :at), (3, 10, '좋아요', :at)"), {"at": NOW})
        conn.execute(text("INSERT INTO review_scores (review_id, model_version, score, skip_reason, scored_at, "
                          "run_id, text_version) VALUES (1, 'm1', 0.9, NULL, :at, 'r1', 1), "
                          "(2, 'm1', NULL, 'empty', :at, 'r1', 1)"), {"at": NOW})
        conn.execute(text("INSERT INTO moderation_queue (review_id, model_version, score, threshold, status, "
                          "flagged_at, run_id, decided_by, decided_at, note) VALUES "
                          "(1, 'm1', 0.9, 0.5, 'confirmed', :at, 'r1', 'kim', :at, '욕설')"), {"at": NOW})
    before = snapshot(bare)

    assert migrations.upgrade(bare) == ("0011", migrations.head())

    assert snapshot(bare) == before
    for statement in ("DELETE FROM reviews WHERE review_id = 2",
                      "INSERT INTO review_scores (review_id, model_version, score, scored_at, run_id) "
                      "VALUES (404, 'm1', 0.5, '2026-11-20', 'r1')",
                      "UPDATE moderation_queue SET review_id = 404"):
        with pytest.raises(IntegrityError), bare.begin() as conn:
            conn.execute(text(statement))
    with bare.begin() as conn:  # a review without scores may go
        conn.execute(text("DELETE FROM reviews WHERE review_id = 3"))
    assert_schema_is_the_metadata(bare)
