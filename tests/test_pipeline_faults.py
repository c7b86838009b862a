"""Fault injection on the nightly pipeline, outside Airflow: real SQLite files, real PostgreSQL
databases, a real tiny model; a patch only where it injects the fault itself.

Families (docs/faults.md has the counts):

* the reviews database is unreachable when a run starts, or fails in the middle of ``publish``;
* the model bundle is missing a part, corrupt, or its card disagrees with its vocabulary;
* two publishes of one interval at once (threads and processes; one run id and two);
* a larger night (30,000 reviews) keeps a flat memory profile.

The DAG-level faults (a scoring task killed midway and retried, ...) are in
``tests/dags/test_faults.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from moderation import db, pipeline, registry
from moderation.errors import DatabaseError, ModelBundleError

IMPORTED_AT = datetime(2024, 3, 4, tzinfo=timezone.utc)
#: The sample is spread over the three days before IMPORTED_AT; the runs here score the middle one.
INTERVAL = (datetime(2024, 3, 2, tzinfo=timezone.utc), datetime(2024, 3, 3, tzinfo=timezone.utc))
RUN_ID = "scheduled__2024-03-03T00:00:00+00:00"
CHUNK_SIZE = 2_100  # the 6,012 reviews, none scored yet -> 3 chunks
RESULT_TABLES = (db.review_scores, db.moderation_queue, db.scoring_runs)


# --- helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _tiny_model_is_the_default(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    """A fresh database has no active model: plan registers ``MODERATION_MODEL_DIR``, the tiny model."""
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(tiny_model_dir))


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> Any:
    """The tiny model, loaded once for the module (score_chunk accepts a ready scorer)."""
    from moderation.model import load_bundle
    from moderation.scoring import Scorer

    return Scorer(load_bundle(tiny_model_dir))


def load_reviews(db_url: str, sample_path: Path) -> None:
    from moderation.importing import import_reviews

    engine = db.make_engine(db_url)
    db.init_schema(engine)
    report = import_reviews(engine, sample_path, spread_days=3, now=IMPORTED_AT)
    engine.dispose()
    assert report.rejected == 0, report.summary()


def rows(db_url: str, table: Any) -> list[dict[str, Any]]:
    """Every row of ``table`` in primary-key order, as dicts."""
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        result = [dict(r._mapping) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]
    engine.dispose()
    return result


def snapshot(db_url: str) -> dict[str, list[dict[str, Any]]]:
    return {t.name: rows(db_url, t) for t in (*RESULT_TABLES, db.model_versions)}


def interval_review_ids(db_url: str) -> set[int]:
    """What the first run scores: every review lacking a score, whichever day it was ingested.

    The interval labels the run; work is chosen by state (tests/test_state.py).
    """
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        ids = set(conn.execute(select(db.reviews.c.review_id)).scalars())
    engine.dispose()
    return ids


def plan_and_score(db_url: str, out_dir: Path, scorer: Any, run_id: str = RUN_ID,
                   threshold: float | None = None) -> tuple[pipeline.RunPlan, list[dict[str, Any]]]:
    """Stages 1 and 2 for real: the plan and one Parquet file per chunk."""
    plan = pipeline.plan_run(db_url, run_id, *INTERVAL, chunk_size=CHUNK_SIZE, threshold=threshold)
    results = [pipeline.score_chunk(db_url, chunk, plan.model.path, out_dir, scorer=scorer) for chunk in plan.chunks]
    assert len(results) == 3
    return plan, results


def chunk_scores(results: list[dict[str, Any]]) -> dict[int, float | None]:
    import pyarrow.parquet as pq

    scores: dict[int, float | None] = {}
    for result in results:
        table = pq.read_table(result["path"]).to_pydict()
        for rid, score in zip(table["review_id"], table["score"]):
            scores[rid] = None if score is None or score != score else score
    return scores


def assert_consistent(db_url: str, results: list[dict[str, Any]], threshold: float,
                      run_ids: set[str]) -> None:
    """One score row per interval review, the queue exactly the reviews at or over the threshold, once each."""
    expected = interval_review_ids(db_url)
    scores = rows(db_url, db.review_scores)
    assert sorted(r["review_id"] for r in scores) == sorted(expected)
    assert len(scores) == len({r["review_id"] for r in scores})  # one row per review, not one per publish
    computed = chunk_scores(results)
    assert {r["review_id"] for r in scores if r["score"] is None} == {k for k, v in computed.items() if v is None}
    assert {r["review_id"]: r["score"] for r in scores if r["score"] is not None} == pytest.approx(
        {k: v for k, v in computed.items() if v is not None})
    flagged = {rid for rid, score in computed.items() if score is not None and score >= threshold}
    queue = rows(db_url, db.moderation_queue)
    assert len(queue) == len({r["review_id"] for r in queue})
    assert {r["review_id"] for r in queue} == flagged
    assert 0 < len(flagged) < len(expected)
    runs = rows(db_url, db.scoring_runs)
    assert {r["run_id"] for r in runs} == run_ids
    for run in runs:
        assert run["status"] == "success"
        assert run["reviews_read"] == len(expected)
        assert run["reviews_scored"] == sum(r["score"] is not None for r in scores)
        assert run["reviews_flagged"] == len(flagged)
        assert run["threshold"] == pytest.approx(threshold)
    engine = db.make_engine(db_url)
    with engine.connect() as conn:  # and the same from SQL, as a moderator's report would count
        for table in (db.review_scores, db.moderation_queue):
            dup = conn.execute(select(table.c.review_id).group_by(table.c.review_id)
                               .having(func.count() > 1)).all()
            assert dup == [], table.name
    engine.dispose()


def test_publish_stores_scores_bit_for_bit_and_names_rows_without_one(
    any_db_url: str, sample_path: Path, tmp_path: Path, scorer: Any,
) -> None:
    """The bulk path (CSV into COPY on PostgreSQL) must not round scores or lose a reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    load_reviews(any_db_url, sample_path)
    plan, results = plan_and_score(any_db_url, tmp_path / "run", scorer)
    first = pq.read_table(results[0]["path"]).to_pydict()
    first["score"][:3] = [float("nan"), None, 1 / 3]  # NaN without a reason, null with one, a long fraction
    first["skip_reason"][:3] = [None, "empty", None]
    pq.write_table(pa.table(first, schema=pq.read_schema(results[0]["path"])), results[0]["path"])

    summary = pipeline.publish(any_db_url, plan, results)
    stored = {r["review_id"]: (r["score"], r["skip_reason"]) for r in rows(any_db_url, db.review_scores)}
    ids = first["review_id"]
    assert stored[ids[0]] == (None, pipeline.UNSCORED)
    assert stored[ids[1]] == (None, "empty")
    assert stored[ids[2]] == (1 / 3, None)
    for result in results:
        table = pq.read_table(result["path"]).to_pydict()
        for rid, score in zip(table["review_id"], table["score"]):
            if score is not None and score == score:
                assert stored[rid][0] == score, rid  # exact, not approximately
    assert summary["skipped_by_reason"][pipeline.UNSCORED] == 1


def test_publish_refuses_a_chunk_given_twice(any_db_url: str, sample_path: Path, tmp_path: Path,
                                             scorer: Any) -> None:
    load_reviews(any_db_url, sample_path)
    plan, results = plan_and_score(any_db_url, tmp_path / "run", scorer)
    with pytest.raises(DatabaseError, match="do not match the plan"):
        pipeline.publish(any_db_url, plan, [*results, results[0]])
    assert rows(any_db_url, db.review_scores) == []


# --- 2. the database is unavailable ---------------------------------------------


@pytest.mark.parametrize("url, shown", [
    pytest.param("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/reviews",
                 "postgresql+psycopg://postgres:***@127.0.0.1:1/reviews", id="postgresql-closed-port"),
    pytest.param("postgresql://scorer:s3cret@127.0.0.1:1/reviews?sslmode=disable",
                 "postgresql+psycopg://scorer:***@127.0.0.1:1/reviews?sslmode=disable", id="postgresql-plain-url"),
    pytest.param("sqlite:////proc/no-such-dir/reviews.db", "sqlite:////proc/no-such-dir/reviews.db",
                 id="sqlite-dir-cannot-be-created"),
    pytest.param("sqlite:////proc/reviews.db", "sqlite:////proc/reviews.db", id="sqlite-dir-not-writable"),
])
def test_plan_fails_clearly_when_the_database_is_unreachable(url: str, shown: str) -> None:
    with pytest.raises(DatabaseError) as caught:
        pipeline.plan_run(url, RUN_ID, *INTERVAL, chunk_size=CHUNK_SIZE)
    message = str(caught.value)
    assert message.startswith(f"database {shown} is unavailable: "), message
    assert "s3cret" not in message
    assert "\n" not in message  # one line for the task log / the CLI

    # The other two stages report the same way (a retry of either against a dead server).
    chunk = {"index": 0, "low_id": 1, "high_id": None, "run_id": RUN_ID,
             "interval_start": INTERVAL[0].isoformat(), "interval_end": INTERVAL[1].isoformat()}
    with pytest.raises(DatabaseError, match="is unavailable"):
        pipeline.score_chunk(url, chunk, "unused", Path("unused"), scorer=object())
    plan = pipeline.RunPlan(RUN_ID, INTERVAL[0].isoformat(), INTERVAL[1].isoformat(),
                            registry.ModelChoice("m", "unused", 0.5))
    with pytest.raises(DatabaseError, match="is unavailable") as caught:
        pipeline.publish(url, plan, [])
    assert "s3cret" not in str(caught.value)


def _operational_error(message: str) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("INSERT INTO moderation_queue ...", {}, Exception(message))


@pytest.mark.parametrize("fault", ["connection-lost-after-score-upserts", "chunk-file-missing"])
def test_publish_failing_midway_commits_nothing_and_a_later_publish_succeeds(
    any_db_url: str, fault: str, sample_path: Path, tmp_path: Path, scorer: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_reviews(any_db_url, sample_path)
    plan, results = plan_and_score(any_db_url, tmp_path / "run", scorer)
    monkeypatch.setattr(pipeline, "PUBLISH_BATCH", 250)  # several staging writes per chunk
    staged: list[int] = []
    upserted: list[int] = []
    real_stage, real_upsert, real_flags = pipeline._stage_scores, pipeline._upsert_scores, pipeline._move_queue

    def counting_stage(conn: Any, chunk_rows: Any, threshold: float) -> dict[str, Any]:
        counts = real_stage(conn, chunk_rows, threshold)
        staged.append(chunk_rows.num_rows)
        return counts

    def counting_upsert(conn: Any, run_plan: pipeline.RunPlan, now: Any) -> int:
        written = real_upsert(conn, run_plan, now)
        upserted.append(written)
        return written

    monkeypatch.setattr(pipeline, "_stage_scores", counting_stage)
    monkeypatch.setattr(pipeline, "_upsert_scores", counting_upsert)

    def failing_publish(run_plan: pipeline.RunPlan) -> str:
        """Publish with the fault in place; returns the error message."""
        staged.clear()
        upserted.clear()
        moved = Path(results[-1]["path"]).with_suffix(".moved")
        if fault == "connection-lost-after-score-upserts":

            def flags_then_fail(conn: Any, run_plan: pipeline.RunPlan, now: Any) -> int:
                real_flags(conn, run_plan, now)  # the queue is written too, then the connection drops
                raise _operational_error("server closed the connection unexpectedly")

            monkeypatch.setattr(pipeline, "_move_queue", flags_then_fail)
        else:
            Path(results[-1]["path"]).rename(moved)
        try:
            with pytest.raises(DatabaseError) as caught:
                pipeline.publish(any_db_url, run_plan, results)
        finally:
            monkeypatch.setattr(pipeline, "_move_queue", real_flags)
            if moved.exists():
                moved.rename(results[-1]["path"])
        assert sum(staged) >= 1_000, staged  # well into the transaction when it failed
        if fault == "connection-lost-after-score-upserts":
            assert len(upserted) == 1, upserted  # the scores' upsert ran before the connection dropped
        return str(caught.value)

    # On empty tables: the failed publish leaves them empty.
    empty = snapshot(any_db_url)
    message = failing_publish(plan)
    if fault == "connection-lost-after-score-upserts":
        assert upserted[0] >= 1_000, upserted  # that many score rows were in the transaction
    if fault == "chunk-file-missing":
        assert message == f"run {RUN_ID}: chunk file is missing: {results[-1]['path']}"
    else:
        url = db.make_engine(any_db_url).url.render_as_string(hide_password=True)
        assert message == f"database {url} is unavailable: server closed the connection unexpectedly"
    assert snapshot(any_db_url) == empty

    # The database is back: the same publish succeeds.
    summary = pipeline.publish(any_db_url, plan, results)
    assert_consistent(any_db_url, results, plan.model.threshold, {RUN_ID})
    assert summary["newly_queued"] == summary["reviews_flagged"] > 0

    # Over a published interval: a re-publish with a lower threshold (it would queue hundreds more
    # and rewrite the run's record) fails midway and changes nothing, not even the run's record.
    before = snapshot(any_db_url)
    lower = replace(plan, model=replace(plan.model, threshold=plan.model.threshold / 2))
    failing_publish(lower)
    assert snapshot(any_db_url) == before

    summary = pipeline.publish(any_db_url, lower, results)
    assert summary["newly_queued"] > 0
    queue = rows(any_db_url, db.moderation_queue)
    computed = chunk_scores(results)
    assert {r["review_id"] for r in queue} == {
        rid for rid, s in computed.items() if s is not None and s >= lower.model.threshold}
    [run] = rows(any_db_url, db.scoring_runs)
    assert run["threshold"] == pytest.approx(lower.model.threshold)
    assert run["reviews_flagged"] == len(queue)


def test_publish_when_the_server_kills_the_connection_midway(
    pg_url: str, sample_path: Path, tmp_path: Path, scorer: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real disconnect: another session calls pg_terminate_backend on the publisher mid-transaction."""
    load_reviews(pg_url, sample_path)
    plan, results = plan_and_score(pg_url, tmp_path / "run", scorer)
    monkeypatch.setattr(pipeline, "PUBLISH_BATCH", 250)
    real_flags = pipeline._move_queue
    killed: list[int] = []
    admin = db.make_engine(pg_url)

    def terminate_then_insert(conn: Any, run_plan: pipeline.RunPlan, now: Any) -> int:
        if len(killed) == 0 and conn.execute(select(func.count()).select_from(db.review_scores)).scalar_one() > 1_000:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            killed.append(pid)
        return real_flags(conn, run_plan, now)

    monkeypatch.setattr(pipeline, "_move_queue", terminate_then_insert)
    empty = snapshot(pg_url)
    with pytest.raises(DatabaseError) as caught:
        pipeline.publish(pg_url, plan, results)
    assert killed, "the fault was not injected"
    url = admin.url.render_as_string(hide_password=True)
    assert str(caught.value).startswith(f"database {url} is unavailable: "), caught.value
    admin.dispose()
    assert snapshot(pg_url) == empty

    monkeypatch.setattr(pipeline, "_move_queue", real_flags)
    pipeline.publish(pg_url, plan, results)
    assert_consistent(pg_url, results, plan.model.threshold, {RUN_ID})


# --- 3. a broken model ----------------------------------------------------------


def _break(model: Path, fault: str) -> Path:
    """Break a copy of the model one way; returns the file the error must name."""
    card = json.loads((model / "card.json").read_text(encoding="utf-8"))
    if fault == "model-file-missing":
        (model / "model.keras").unlink()
        return model / "model.keras"
    if fault == "model-file-truncated":
        data = (model / "model.keras").read_bytes()
        (model / "model.keras").write_bytes(data[: len(data) // 2])
        return model / "model.keras"
    if fault == "vocab-missing":
        (model / "vocab.json").unlink()
        return model / "vocab.json"
    if fault == "vocab-edited":
        vocab = json.loads((model / "vocab.json").read_text(encoding="utf-8"))
        vocab["chars"] = vocab["chars"][:-1]
        (model / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return model / "vocab.json"
    if fault == "card-vocab-size-wrong":  # hashes still match: only the size disagrees
        card["vocab_size"] += 7
        (model / "card.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
        return model / "vocab.json"
    if fault == "card-missing":
        (model / "card.json").unlink()
        return model / "card.json"
    if fault == "card-not-json":
        (model / "card.json").write_text('{"version": "tiny-model", ', encoding="utf-8")
        return model / "card.json"
    if fault == "directory-missing":
        shutil.rmtree(model)
        return model
    raise AssertionError(fault)


MODEL_FAULTS = ["model-file-missing", "model-file-truncated", "vocab-missing", "vocab-edited",
                "card-vocab-size-wrong", "card-missing", "card-not-json", "directory-missing"]


@pytest.mark.parametrize("fault", MODEL_FAULTS)
def test_broken_model_fails_in_plan_before_any_write(
    any_db_url: str, fault: str, sample_path: Path, tmp_path: Path, tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_reviews(any_db_url, sample_path)
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, model)
    named = _break(model, fault)
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(model))

    with pytest.raises(ModelBundleError) as caught:
        pipeline.plan_run(any_db_url, RUN_ID, *INTERVAL, chunk_size=CHUNK_SIZE)
    assert str(named) in str(caught.value)
    # Not even registered: a broken model must never become the active one.
    for table in (*RESULT_TABLES, db.model_versions):
        assert rows(any_db_url, table) == [], table.name
    with pytest.raises(ModelBundleError):  # the CLI's whole job stops at the same point
        pipeline.run_nightly(any_db_url, *INTERVAL, run_id=RUN_ID, chunk_size=CHUNK_SIZE, work_dir=tmp_path / "w")
    for table in (*RESULT_TABLES, db.model_versions):
        assert rows(any_db_url, table) == [], table.name


@pytest.mark.parametrize("fault", ["model-file-truncated", "card-vocab-size-wrong", "directory-missing"])
def test_active_model_broken_after_registration_fails_in_plan(
    any_db_url: str, fault: str, sample_path: Path, tmp_path: Path, tiny_model_dir: Path,
) -> None:
    """Last night's good model is damaged on disk: tonight's plan stops, naming the file."""
    load_reviews(any_db_url, sample_path)
    model = tmp_path / "registered-model"
    shutil.copytree(tiny_model_dir, model)
    engine = db.make_engine(any_db_url)
    registry.register_model(engine, model, activate=True)
    engine.dispose()
    registered = rows(any_db_url, db.model_versions)
    named = _break(model, fault)

    with pytest.raises(ModelBundleError) as caught:
        pipeline.plan_run(any_db_url, RUN_ID, *INTERVAL, chunk_size=CHUNK_SIZE)
    assert str(named) in str(caught.value)
    for table in RESULT_TABLES:
        assert rows(any_db_url, table) == [], table.name
    assert rows(any_db_url, db.model_versions) == registered


# --- 4. two publishes of one interval at once ----------------------------------


@pytest.mark.parametrize("two_run_ids", [False, True], ids=["same-run", "two-run-ids"])
def test_two_publishes_of_one_interval_at_once_in_threads(
    any_db_url: str, two_run_ids: bool, sample_path: Path, tmp_path: Path, scorer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both publishers reach the lock together; the first holds it a moment. They must not interleave."""
    load_reviews(any_db_url, sample_path)
    plan, results = plan_and_score(any_db_url, tmp_path / "run", scorer)
    other = replace(plan, run_id="manual__2024-03-03T00:00:00+00:00") if two_run_ids else plan
    events: list[tuple[str, str]] = []
    at_the_lock = threading.Barrier(2, timeout=60)
    real_lock, real_recent = db.lock_interval, pipeline._recent_flag_rates

    def lock(conn: Any) -> None:
        at_the_lock.wait()  # both transactions are open and both ask for the lock now
        real_lock(conn)
        events.append(("locked", threading.current_thread().name))
        if len(events) == 1:
            time.sleep(0.5)  # hold it while the other publisher waits on it

    def last_statement(conn: Any, exclude_run: str) -> list[float]:
        events.append(("done", threading.current_thread().name))
        return real_recent(conn, exclude_run)

    monkeypatch.setattr(db, "lock_interval", lock)
    monkeypatch.setattr(pipeline, "_recent_flag_rates", last_statement)
    with ThreadPoolExecutor(2, thread_name_prefix="publisher") as pool:
        futures = [pool.submit(pipeline.publish, any_db_url, p, results) for p in (plan, other)]
        summaries = [f.result(timeout=180) for f in futures]  # neither fails, neither deadlocks

    first, second = events[0][1], events[2][1]
    assert events == [("locked", first), ("done", first), ("locked", second), ("done", second)]
    assert first != second
    assert_consistent(any_db_url, results, plan.model.threshold, {plan.run_id, other.run_id})
    flagged = len(rows(any_db_url, db.moderation_queue))
    assert sorted(s["newly_queued"] for s in summaries) == [0, flagged]
    assert [s["reviews_flagged"] for s in summaries] == [flagged, flagged]
    assert [s["reviews_read"] for s in summaries] == [len(interval_review_ids(any_db_url))] * 2


PUBLISHER = """
import json, sys, time
from pathlib import Path

import pyarrow.parquet  # noqa: F401  (imported before the start signal, as publish would)
from moderation import db, pipeline

db_url, payload_file, go_file = sys.argv[1:4]
payload = json.loads(Path(payload_file).read_text())
real_lock, real_recent = db.lock_interval, pipeline._recent_flag_rates
times = {}

def lock(conn):
    real_lock(conn)
    times["locked"] = time.time()
    time.sleep(0.5)  # hold the lock: the other process must wait for it

def last_statement(conn, exclude_run):
    times["done"] = time.time()
    return real_recent(conn, exclude_run)

db.lock_interval, pipeline._recent_flag_rates = lock, last_statement
print("ready", flush=True)
while not Path(go_file).exists():
    time.sleep(0.005)
summary = pipeline.publish(db_url, payload["plan"], payload["results"])
print(json.dumps({"summary": summary, "times": times}), flush=True)
"""


@pytest.mark.parametrize("two_run_ids", [False, True], ids=["same-run", "two-run-ids"])
def test_two_publishes_of_one_interval_at_once_in_processes(
    any_db_url: str, two_run_ids: bool, sample_path: Path, tmp_path: Path, scorer: Any,
) -> None:
    load_reviews(any_db_url, sample_path)
    plan, results = plan_and_score(any_db_url, tmp_path / "run", scorer)
    other = replace(plan, run_id="manual__2024-03-03T00:00:00+00:00") if two_run_ids else plan
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER, encoding="utf-8")
    go = tmp_path / "go"
    procs = []
    try:
        for i, run_plan in enumerate((plan, other)):
            payload = tmp_path / f"payload-{i}.json"
            payload.write_text(json.dumps({"plan": run_plan.to_xcom(), "results": results}), encoding="utf-8")
            procs.append(subprocess.Popen([sys.executable, str(script), any_db_url, str(payload), str(go)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=60)
        go.touch()
        outputs = [proc.communicate(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    # The transactions did not overlap: one took the lock after the other's last statement.
    a, b = sorted((r["times"] for r in reports), key=lambda t: t["locked"])
    assert a["done"] <= b["locked"]
    assert_consistent(any_db_url, results, plan.model.threshold, {plan.run_id, other.run_id})
    flagged = len(rows(any_db_url, db.moderation_queue))
    assert sorted(r["summary"]["newly_queued"] for r in reports) == [0, flagged]


# --- 5. a larger night: memory stays flat ---------------------------------------


MEMORY_CHILD = """
import json, sys
from datetime import datetime
from pathlib import Path

def status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])

db_url, model_dir, work_dir, start, end = sys.argv[1:6]
from moderation import pipeline
from moderation.model import load_bundle
from moderation.scoring import Scorer

Scorer(load_bundle(model_dir)).score_texts(["배송이 너무 느려요", "좋아요 최고"])  # TensorFlow warmed up
base = status_kb("VmHWM")
summary = pipeline.run_nightly(db_url, datetime.fromisoformat(start), datetime.fromisoformat(end),
                               run_id="memory__" + start, chunk_size=5000, work_dir=Path(work_dir))
print(json.dumps({"base_kb": base, "peak_kb": status_kb("VmHWM"), "reviews_read": summary["reviews_read"],
                  "reviews_scored": summary["reviews_scored"]}))
"""

MEMORY_NIGHTS = {5_000: datetime(2024, 6, 1, tzinfo=timezone.utc), 30_000: datetime(2024, 6, 2, tzinfo=timezone.utc)}
LONG_REVIEW = 600  # characters: see the test's docstring


@pytest.mark.slow
def test_larger_night_keeps_memory_flat(
    any_db_url: str, sample_path: Path, tmp_path: Path, tiny_model_dir: Path,
) -> None:
    """30,000 reviews in chunks of 5,000 peak near a 5,000-review night, not at six times its data.

    Each night runs in a fresh subprocess that warms TensorFlow up, then reports its peak RSS
    (VmHWM) before and after ``run_nightly``; no timings are checked. The texts are real sample
    reviews joined to 600 characters: with the sample's own lengths (median 27) a whole night's
    data is a few MB next to TensorFlow's ~190 MiB working set, and even 30,000 reviews in ONE
    chunk peak like six chunks, so the check could not tell streaming from loading everything.
    At 600 characters one 30,000-review chunk peaks ~290 MiB above a 5,000-review night, six
    streamed chunks ~60 MiB (docs/faults.md has the figures).
    """
    import pandas as pd

    sample = [t for t in pd.read_parquet(sample_path, columns=["text"])["text"].tolist() if t and t.strip()]
    texts, k = [], 0
    for _ in range(len(sample)):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < LONG_REVIEW:
            parts.append(sample[k % len(sample)])
            k += 1
        texts.append(" ".join(parts)[:LONG_REVIEW])
    engine = db.make_engine(any_db_url)
    db.init_schema(engine)
    script = tmp_path / "night.py"
    script.write_text(MEMORY_CHILD, encoding="utf-8")
    peaks = {}
    next_id = 1
    for count, night in MEMORY_NIGHTS.items():  # each night's reviews arrive, then that night runs
        with engine.begin() as conn:
            for start in range(0, count, 5_000):
                conn.execute(insert(db.reviews), [
                    {"review_id": next_id + i, "product_id": 1 + i % 500, "rating": 1 + i % 10,
                     "text": texts[i % len(texts)], "created_at": night,
                     "ingested_at": night + timedelta(seconds=i * 86_000 / count)}
                    for i in range(start, min(count, start + 5_000))])
        next_id += count
        done = subprocess.run(
            [sys.executable, str(script), any_db_url, str(tiny_model_dir), str(tmp_path / f"run-{count}"),
             night.isoformat(), (night + timedelta(days=1)).isoformat()],
            capture_output=True, text=True, timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["reviews_read"] == count
        peaks[count] = report
    engine.dispose()
    print("memory (kB):", json.dumps(peaks))

    small, large = peaks[5_000], peaks[30_000]
    one_chunk = small["peak_kb"] - small["base_kb"]  # one chunk scored and published (mostly TensorFlow)
    extra = large["peak_kb"] - small["peak_kb"]  # what five more chunks add
    assert extra <= max(one_chunk // 2, 128 * 1024), peaks
    counts = rows(any_db_url, db.scoring_runs)
    assert sorted(r["reviews_read"] for r in counts) == [5_000, 30_000]
