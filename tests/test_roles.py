"""The roles the migrations grant, tried by logging in as a moderator and as the scorer.

Roles are cluster-wide: ``moderator`` and ``scorer`` may exist already (other
tests, other databases, even concurrently) and are left in place; the LOGIN
users each test makes are unique and dropped afterwards.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from moderation import db, pipeline
from moderation.sql_files import apply_sql, sql_dir

pytestmark = pytest.mark.postgres

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
INSUFFICIENT_PRIVILEGE = "42501"


@pytest.fixture
def owner(pg_url: str) -> Iterator[Engine]:
    """The database with the schema, the roles and a little data, as its owner."""
    engine = db.make_engine(pg_url)
    db.init_schema(engine)  # `moderation db init`: the migrations, roles and grants included
    with engine.begin() as conn:
        conn.execute(db.reviews.insert(), [
            {"review_id": i, "product_id": 10, "rating": r, "text": t, "created_at": NOW, "ingested_at": NOW}
            for i, r, t in [(1, 1, "최악이에요 환불해주세요"), (2, 10, "최고예요"), (3, 2, "배송이 너무 늦어요")]
        ])
        conn.execute(db.review_scores.insert(), [
            {"review_id": i, "model_version": "m1", "score": s, "skip_reason": None, "scored_at": NOW, "run_id": "r1"}
            for i, s in [(1, 0.97), (2, 0.02), (3, 0.81)]
        ])
        conn.execute(db.moderation_queue.insert(), [
            {"review_id": i, "model_version": "m1", "score": s, "threshold": 0.5, "status": "pending",
             "flagged_at": NOW, "run_id": "r1"} for i, s in [(1, 0.97), (3, 0.81)]
        ])
    yield engine
    engine.dispose()


@pytest.fixture
def login_as(owner: Engine) -> Iterator[Callable[[str], Engine]]:
    """``login_as("moderator")``: an engine of a fresh LOGIN user granted that role."""
    users: list[tuple[str, Engine]] = []

    def make(group: str) -> Engine:
        name = f"test_{group}_{uuid.uuid4().hex[:10]}"
        password = uuid.uuid4().hex
        with owner.begin() as conn:
            server_ddl(conn, "CREATE ROLE %I LOGIN PASSWORD %L", name, password)
            server_ddl(conn, "GRANT %I TO %I", group, name)
        engine = create_engine(owner.url.set(username=name, password=password))
        users.append((name, engine))
        return engine

    yield make
    for name, engine in users:
        engine.dispose()
        with owner.begin() as conn:
            server_ddl(conn, "DROP ROLE IF EXISTS %I", name)


def server_ddl(conn: Connection, template: str, *values: str) -> None:
    """DDL takes no bind parameters: the server quotes names and literals itself (format's %I, %L)."""
    placeholders = ", ".join(f"CAST(:v{i} AS text)" for i in range(len(values)))
    params = {"template": template} | {f"v{i}": v for i, v in enumerate(values)}
    conn.execute(text(conn.execute(text(f"SELECT format(:template, {placeholders})"), params).scalar_one()))


def allowed(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> Any:
    with engine.begin() as conn:
        result = conn.execute(text(sql), params or {})
        return result.all() if result.returns_rows else result.rowcount


def refused(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> None:
    with pytest.raises(ProgrammingError) as caught:
        with engine.begin() as conn:
            conn.execute(text(sql), params or {})
    assert caught.value.orig is not None and caught.value.orig.sqlstate == INSUFFICIENT_PRIVILEGE, caught.value


def test_moderator_reads_the_queue_and_records_decisions(owner: Engine, login_as: Callable[[str], Engine]) -> None:
    moderator = login_as("moderator")
    rows = allowed(moderator, "SELECT review_id, text, status FROM flagged_reviews")
    assert [(r.review_id, r.status) for r in rows] == [(1, "pending"), (3, "pending")]
    assert allowed(moderator, "SELECT count(*) FROM reviews")[0][0] == 3
    assert allowed(
        moderator,
        "UPDATE moderation_queue SET status = 'confirmed', decided_by = :who, decided_at = :at, note = :note "
        "WHERE review_id = :id",
        {"who": "kim", "at": NOW, "note": "욕설 포함", "id": 1},
    ) == 1
    upsert_label = ("INSERT INTO review_labels (review_id, label, source, labelled_at, labelled_by) "
                    "VALUES (:id, :label, 'moderator', :at, 'kim') "
                    "ON CONFLICT (review_id, source) DO UPDATE "
                    "SET label = EXCLUDED.label, labelled_at = EXCLUDED.labelled_at, "
                    "labelled_by = EXCLUDED.labelled_by")
    allowed(moderator, upsert_label, {"id": 1, "label": 1, "at": NOW})
    allowed(moderator, upsert_label, {"id": 1, "label": 0, "at": NOW})  # a corrected decision
    with owner.connect() as conn:
        assert conn.execute(text("SELECT status, note FROM moderation_queue WHERE review_id = 1")).one() == (
            "confirmed", "욕설 포함")
        assert conn.execute(text("SELECT label FROM review_labels WHERE review_id = 1")).scalar_one() == 0


def test_moderator_cannot_change_reviews_scores_or_delete(owner: Engine, login_as: Callable[[str], Engine]) -> None:
    moderator = login_as("moderator")
    refused(moderator, "UPDATE reviews SET text = 'rewritten' WHERE review_id = 1")
    refused(moderator, "INSERT INTO reviews (review_id, product_id, ingested_at) VALUES (9, 1, now())")
    refused(moderator, "UPDATE review_scores SET score = 0.1 WHERE review_id = 1")
    refused(moderator, "UPDATE moderation_queue SET score = 0.1 WHERE review_id = 1")
    refused(moderator, "UPDATE moderation_queue SET model_version = 'other' WHERE review_id = 1")
    for table in ("moderation_queue", "review_labels", "reviews", "review_scores", "scoring_runs"):
        refused(moderator, f"DELETE FROM {table}")
    refused(moderator, "INSERT INTO moderation_queue (review_id, model_version, score, threshold, status, "
                       "flagged_at, run_id) VALUES (2, 'm1', 0.9, 0.5, 'pending', now(), 'x')")
    with owner.connect() as conn:
        assert conn.execute(text("SELECT text FROM reviews WHERE review_id = 1")).scalar_one() == "최악이에요 환불해주세요"
        assert conn.execute(text("SELECT count(*) FROM moderation_queue")).scalar_one() == 2


def test_moderator_reads_scores_for_the_drift_plot_but_never_writes_them(
        owner: Engine, login_as: Callable[[str], Engine]) -> None:
    from moderation.reporting import score_drift

    moderator = login_as("moderator")
    assert allowed(moderator, "SELECT count(*) FROM review_scores WHERE run_id = 'r1'")[0][0] == 3
    drift = score_drift(moderator, ["r1"])
    assert drift["error"] is None and sum(drift["latest"]) == 3 and drift["latest"][19] == 1  # 0.97 in the top bin
    refused(moderator, "UPDATE review_scores SET score = 0.1 WHERE review_id = 1")
    refused(moderator, "INSERT INTO review_scores (review_id, model_version, score, scored_at, run_id) "
                       "VALUES (2, 'm2', 0.5, now(), 'r2')")
    refused(moderator, "DELETE FROM review_scores")
    with owner.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM review_scores")).scalar_one() == 3
        assert conn.execute(text("SELECT score FROM review_scores WHERE review_id = 1")).scalar_one() == 0.97


def test_scorer_writes_scores_and_flags_but_never_decides(owner: Engine, login_as: Callable[[str], Engine]) -> None:
    scorer = login_as("scorer")
    assert len(allowed(scorer, "SELECT review_id, text FROM reviews")) == 3
    allowed(scorer, "INSERT INTO review_scores (review_id, model_version, score, scored_at, run_id) "
                    "VALUES (2, 'm2', 0.7, now(), 'r2')")
    assert allowed(scorer, "UPDATE review_scores SET score = 0.75 WHERE review_id = 2 AND model_version = 'm2'") == 1
    allowed(scorer, "INSERT INTO moderation_queue (review_id, model_version, score, threshold, status, flagged_at, "
                    "run_id) VALUES (2, 'm2', 0.75, 0.5, 'pending', now(), 'r2')")
    allowed(scorer, "SELECT * FROM review_labels")
    refused(scorer, "UPDATE moderation_queue SET status = 'dismissed' WHERE review_id = 2")
    refused(scorer, "UPDATE moderation_queue SET note = 'x', decided_by = 'bot' WHERE review_id = 2")
    refused(scorer, "DELETE FROM moderation_queue WHERE review_id = 2")
    refused(scorer, "DELETE FROM review_scores")
    refused(scorer, "UPDATE reviews SET text = 'x' WHERE review_id = 2")
    refused(scorer, "INSERT INTO review_labels (review_id, label, source, labelled_at) "
                    "VALUES (2, 0, 'moderator', now())")
    refused(scorer, "SELECT * FROM flagged_reviews")


def test_scorer_can_publish_a_nightly_run(owner: Engine, login_as: Callable[[str], Engine], tmp_path: Path) -> None:
    """The real publish step, as the scorer: scores upserted, new flags queued, decided flags untouched."""
    scorer = login_as("scorer")
    url = scorer.url.render_as_string(hide_password=False)
    with owner.begin() as conn:
        conn.execute(text("UPDATE moderation_queue SET status = 'dismissed', decided_by = 'kim' WHERE review_id = 1"))
    chunk = tmp_path / "chunk-00000.parquet"
    pq.write_table(pa.table({"review_id": pa.array([1, 2, 3], pa.int64()),
                             "score": pa.array([0.99, 0.91, None], pa.float64()),
                             "skip_reason": pa.array([None, None, "empty"], pa.string())}), chunk)
    plan = {"run_id": "scheduled__2024-05-01", "interval_start": NOW.isoformat(),
            "interval_end": (NOW + timedelta(days=1)).isoformat(),
            "model": {"version": "m1", "path": str(tmp_path), "threshold": 0.5},
            "chunks": [{"index": 0}], "reviews": 3}
    for _ in range(2):  # a retried publish replaces its run row: the scorer may delete scoring_runs rows
        summary = pipeline.publish(url, plan, [{"index": 0, "path": str(chunk)}])
    assert summary["reviews_flagged"] == 2
    with owner.connect() as conn:
        queue = dict(conn.execute(text("SELECT review_id, status FROM moderation_queue")).tuples().all())
        runs = conn.execute(text("SELECT skip_reasons FROM scoring_runs")).scalars().all()
    assert queue == {1: "dismissed", 2: "pending", 3: "pending"}
    assert [json.loads(r) for r in runs] == [{"empty": 1}]


def test_roles_file_tolerates_a_concurrent_creation_in_another_database(owner: Engine, tmp_path: Path) -> None:
    """Two databases applying sql/schema.sql at once, the roles new to the cluster: both succeed.

    Uses the file with its two role names made unique (not in CHECK lines, where
    'moderator' is a label source), so the roles really are new and can be
    dropped afterwards without touching ``moderator``/``scorer``.
    """
    suffix = uuid.uuid4().hex[:10]
    names = {"moderator": f"test_race_moderator_{suffix}", "scorer": f"test_race_scorer_{suffix}"}
    lines = (sql_dir() / "schema.sql").read_text(encoding="utf-8").splitlines(keepends=True)
    for role, name in names.items():
        lines = [line if "CHECK" in line else re.sub(rf"\b{role}\b", name, line) for line in lines]
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "schema.sql").write_text("".join(lines), encoding="utf-8")

    admin = create_engine(owner.url, isolation_level="AUTOCOMMIT")
    databases = [f"moderation_race_{suffix}_{i}" for i in range(2)]
    engines: list[Engine] = []
    try:
        with admin.connect() as conn:
            for name in databases:
                server_ddl(conn, "CREATE DATABASE %I", name)
        engines = [db.make_engine(owner.url.set(database=name).render_as_string(hide_password=False))
                   for name in databases]
        for engine in engines:
            with engine.connect():
                pass  # connect before the race, so both applies start together
        barrier = threading.Barrier(len(engines))

        def apply(engine: Engine) -> list[Path]:
            barrier.wait(timeout=30)
            return apply_sql(engine, folder)

        with ThreadPoolExecutor(len(engines)) as pool:
            results = list(pool.map(apply, engines))
        assert all(len(files) == 1 for files in results)
        for engine in engines:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT has_table_privilege(:role, 'flagged_reviews', 'SELECT')"),
                                    {"role": names["moderator"]}).scalar_one() is True
    finally:
        for engine in engines:
            engine.dispose()
        with admin.connect() as conn:
            for name in databases:
                server_ddl(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)", name)
            for name in names.values():
                server_ddl(conn, "DROP ROLE IF EXISTS %I", name)
        admin.dispose()


def test_moderator_works_the_queue_and_reads_accounts_but_never_writes_them(
        owner: Engine, login_as: Callable[[str], Engine]) -> None:
    """What the web app does, as the deployed ``moderator`` role: claim, decide with reasons, unsure, log in."""
    from moderation.accounts import add_account, verify
    from moderation.errors import ClaimError
    from moderation.queue import QueueFilter, claim, decide, decide_matching, queue_page, release

    add_account(owner, "kim", "correct horse")  # the owner (the CLI) manages accounts
    moderator = login_as("moderator")
    assert verify(moderator, "kim", "correct horse") and not verify(moderator, "kim", "wrong horse")
    refused(moderator, "INSERT INTO moderator_accounts (name, password_hash, created_at) VALUES ('x', 'y', now())")
    refused(moderator, "UPDATE moderator_accounts SET disabled = true")
    refused(moderator, "UPDATE moderator_accounts SET password_hash = 'mine' WHERE name = 'kim'")
    refused(moderator, "DELETE FROM moderator_accounts")

    items, total = queue_page(moderator, QueueFilter(), now=NOW)
    assert total == 2 and [i["review_id"] for i in items] == [1, 3]
    claim(moderator, 1, "kim", now=NOW)
    with pytest.raises(ClaimError):
        claim(moderator, 1, "lee", now=NOW)
    release(moderator, 1, "kim", now=NOW)
    assert decide(moderator, [1], "confirmed", "kim", reason="abuse", now=NOW) == 1
    assert decide(moderator, [1], "unsure", "lee", reason="other", now=NOW) == 1  # the trigger removes kim's label
    assert decide_matching(moderator, QueueFilter(), "dismissed", "lee", reason="not_negative", now=NOW) == 1
    with owner.connect() as conn:
        assert dict(conn.execute(text("SELECT review_id, status FROM moderation_queue")).tuples().all()) == {
            1: "unsure", 3: "dismissed"}
        assert conn.execute(text("SELECT review_id, label FROM review_labels")).tuples().all() == [(3, 0)]
        assert conn.execute(text("SELECT reason FROM moderation_events WHERE review_id = 3")).scalar_one() == \
            "not_negative"
    refused(moderator, "DELETE FROM review_labels")
    refused(moderator, "UPDATE moderation_queue SET kind = 'audit', bucket = 'likely' WHERE review_id = 1")


def test_scorer_queues_without_a_reason_and_never_reads_accounts(
        owner: Engine, login_as: Callable[[str], Engine]) -> None:
    scorer = login_as("scorer")
    allowed(scorer, "INSERT INTO moderation_queue (review_id, model_version, score, threshold, status, flagged_at, "
                    "run_id, kind, bucket) VALUES (2, 'm1', 0.1, 0.5, 'pending', now(), 'r2', 'audit', 'audit')")
    refused(scorer, "UPDATE moderation_queue SET reason = 'spam' WHERE review_id = 2")
    refused(scorer, "SELECT * FROM moderator_accounts")
