"""Faults in the nightly DAG, run for real with dag.test(): real SQLite and PostgreSQL, the tiny model.

Patches only inject the fault (a scoring task that dies, an unreachable
database, a damaged model); everything else is the production path.

Retries: ``dag.test()`` runs the same loop as a scheduler would in miniature.
A task that fails with retries left goes to ``up_for_retry``; the loop polls
once a second and runs it again, in-process and in the same DAG run, once
its retry delay has passed. The DAG's own delay (2 minutes, exponential) is
cut to 1 second here; ``retries=2`` is kept as configured, so these tests run
the real retry path rather than a second DAG run.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from test_nightly_dag import (
    CHUNK_SIZE,
    INTERVAL,
    LOGICAL_DATE,
    assert_published,
    interval_review_ids,
    load_reviews,
    model_threshold,
    rows,
)

from moderation import db

RESULT_TABLES = (db.review_scores, db.moderation_queue, db.scoring_runs, db.model_versions)


def fast_retries(dag: Any) -> None:
    """Keep the DAG's retries (asserted to be 2) but wait 1-2 seconds instead of 2 minutes."""
    for task in dag.tasks:
        assert task.retries == 2, task.task_id
        task.retry_delay = timedelta(seconds=1)
        task.max_retry_delay = timedelta(seconds=2)


def run_with_tries(dag: Any, conf: dict[str, Any]) -> tuple[str, dict[str, tuple[str, int]]]:
    """dag.test() for LOGICAL_DATE; the run state and each task's (state, try number)."""
    dag_run = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, run_conf=conf)
    tasks = {}
    for ti in dag_run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[key] = (str(getattr(ti.state, "value", ti.state)), ti.try_number)
    return str(getattr(dag_run.state, "value", dag_run.state)), tasks


def test_dag_runs_one_night_at_a_time_and_retries_its_tasks(nightly_dag: Any) -> None:
    """Two nights never publish at once through Airflow, and a failed task is retried by default."""
    assert nightly_dag.max_active_runs == 1
    assert {t.task_id: t.retries for t in nightly_dag.tasks} == {
        "plan": 2, "list_chunks": 2, "score_chunk": 2, "publish": 2}
    assert nightly_dag.get_task("publish").trigger_rule == "none_failed"


# --- 1. a scoring task killed in the middle, then retried ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before-reading", "while-writing", "after-writing"])
def test_scoring_task_killed_midway_is_retried_and_the_run_completes(
    any_db_url: str, moment: str, sample_path: Path, tiny_model_dir: Path, nightly_dag: Any,
    airflow_db: Path, reviews_connection: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second scoring call dies once; Airflow's retry scores that chunk again and the run publishes.

    * before-reading: the worker dies as the task starts;
    * while-writing: it dies half-way through writing the chunk's Parquet file
      (a ``.partial`` file with half the rows is left behind);
    * after-writing: the chunk file is complete but the task dies before
      reporting it (its XCom never written).
    """
    import pyarrow.parquet as pq

    from moderation import pipeline

    load_reviews(any_db_url, sample_path)
    reviews_connection(any_db_url)
    fast_retries(nightly_dag)
    real_score_chunk, real_write = pipeline.score_chunk, pq.write_table
    calls: list[int] = []
    left_behind: list[str] = []

    def dies_once(db_url: str | None, chunk: dict[str, Any], model_path: str, out_dir: Path,
                  *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(chunk["index"])
        if len(calls) != 2:
            return real_score_chunk(db_url, chunk, model_path, out_dir, *args, **kwargs)
        message = f"injected: worker killed {moment} chunk {chunk['index']}"
        if moment == "while-writing":
            def half_then_die(table: Any, where: Any, **kw: Any) -> None:
                real_write(table.slice(0, table.num_rows // 2), where, **kw)
                raise RuntimeError(message)

            monkeypatch.setattr(pq, "write_table", half_then_die)
            try:
                real_score_chunk(db_url, chunk, model_path, out_dir, *args, **kwargs)
            finally:
                monkeypatch.setattr(pq, "write_table", real_write)
                left_behind.extend(p.name for p in Path(out_dir).iterdir())
        elif moment == "after-writing":
            real_score_chunk(db_url, chunk, model_path, out_dir, *args, **kwargs)
            left_behind.extend(p.name for p in Path(out_dir).iterdir())
        raise RuntimeError(message)

    monkeypatch.setattr(pipeline, "score_chunk", dies_once)

    state, tasks = run_with_tries(nightly_dag, {"chunk_size": CHUNK_SIZE})

    assert state == "success", tasks
    killed = calls[1]
    assert tasks == {"plan": ("success", 1), "list_chunks": ("success", 1), "publish": ("success", 1),
                     **{f"score_chunk[{i}]": ("success", 2 if i == killed else 1) for i in range(3)}}
    assert sorted(calls) == sorted([0, 1, 2, killed])  # three chunks, one scored twice
    if moment == "while-writing":
        assert f"chunk-{killed:05d}.parquet.partial" in left_behind
    if moment == "after-writing":
        assert f"chunk-{killed:05d}.parquet" in left_behind
    out_dir = pipeline.run_dir(f"manual__{LOGICAL_DATE.isoformat()}")
    assert not out_dir.exists()  # published: the three chunk files (and the folder) are removed

    # Exactly one score per review of the interval, the queue complete and without duplicates, one run.
    threshold = model_threshold(tiny_model_dir)
    assert_published(any_db_url, threshold)
    expected = interval_review_ids(any_db_url)
    engine = db.make_engine(any_db_url)
    with engine.connect() as conn:
        for table in (db.review_scores, db.moderation_queue):
            per_review = conn.execute(select(table.c.review_id, func.count()).group_by(table.c.review_id)).all()
            assert {n for _, n in per_review} == {1}, table.name
        assert conn.execute(select(func.count()).select_from(db.review_scores)).scalar_one() == len(expected)
        missing = conn.execute(
            select(func.count()).select_from(db.review_scores)
            .outerjoin(db.moderation_queue, db.moderation_queue.c.review_id == db.review_scores.c.review_id)
            .where(db.review_scores.c.score >= threshold, db.moderation_queue.c.review_id.is_(None))
        ).scalar_one()
        assert missing == 0
    engine.dispose()
    [run] = rows(any_db_url, db.scoring_runs)
    assert run["reviews_read"] == len(expected)


# --- 2. the reviews database is unreachable when the run starts -------------------


@pytest.mark.slow
@pytest.mark.parametrize("conn_uri, shown", [
    pytest.param("postgresql://postgres:s3cret@127.0.0.1:1/reviews",
                 "postgresql+psycopg://postgres:***@127.0.0.1:1/reviews", id="postgresql-closed-port"),
    pytest.param("sqlite:////proc/no-such-dir/reviews.db", "sqlite:////proc/no-such-dir/reviews.db",
                 id="sqlite-dir-cannot-be-created"),
])
def test_unreachable_database_fails_the_run_in_plan(
    conn_uri: str, shown: str, nightly_dag: Any, airflow_db: Path, reviews_connection: Any,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    reviews_connection(conn_uri)
    fast_retries(nightly_dag)

    state, tasks = run_with_tries(nightly_dag, {"chunk_size": CHUNK_SIZE})

    assert state == "failed"
    assert tasks == {"plan": ("failed", 3), "list_chunks": ("upstream_failed", 0),
                     "score_chunk": ("upstream_failed", 0), "publish": ("upstream_failed", 0)}
    logged = caplog.text + "".join(capfd.readouterr())
    assert f"database {shown} is unavailable" in logged
    assert "s3cret" not in logged


# --- 3. a damaged model --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["card-vocab-size-wrong", "model-file-truncated"])
def test_broken_model_fails_the_run_in_plan_before_any_write(
    any_db_url: str, fault: str, sample_path: Path, tiny_model_dir: Path, tmp_path: Path, nightly_dag: Any,
    airflow_db: Path, reviews_connection: Any, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    load_reviews(any_db_url, sample_path)
    reviews_connection(any_db_url)
    model = tmp_path / "damaged-model"
    shutil.copytree(tiny_model_dir, model)
    if fault == "card-vocab-size-wrong":  # the card's hashes still match its files
        card = json.loads((model / "card.json").read_text(encoding="utf-8"))
        card["vocab_size"] += 7
        (model / "card.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
        named = model / "vocab.json"
    else:
        data = (model / "model.keras").read_bytes()
        (model / "model.keras").write_bytes(data[: len(data) // 2])
        named = model / "model.keras"
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(model))
    fast_retries(nightly_dag)

    state, tasks = run_with_tries(nightly_dag, {"chunk_size": CHUNK_SIZE})

    assert state == "failed"
    assert tasks == {"plan": ("failed", 3), "list_chunks": ("upstream_failed", 0),
                     "score_chunk": ("upstream_failed", 0), "publish": ("upstream_failed", 0)}
    assert str(named) in caplog.text + "".join(capfd.readouterr())
    for table in RESULT_TABLES:  # not even registered as a model version
        assert rows(any_db_url, table) == [], table.name
