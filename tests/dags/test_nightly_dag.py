"""The nightly DAG end to end: real Airflow (dag.test), real SQLite and PostgreSQL, a real tiny model.

The sample's 6,012 reviews are imported with ``ingested_at`` spread over
three days; each run scores one of those days, so rows outside the interval
must stay unscored.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from moderation import db

pytestmark = pytest.mark.slow

IMPORTED_AT = datetime(2024, 3, 4, tzinfo=timezone.utc)
#: The run for logical date 2024-03-03 scores the reviews ingested on 2024-03-02 (UTC).
LOGICAL_DATE = datetime(2024, 3, 3, tzinfo=timezone.utc)
INTERVAL = (datetime(2024, 3, 2, tzinfo=timezone.utc), datetime(2024, 3, 3, tzinfo=timezone.utc))
CHUNK_SIZE = 2_100  # the 6,012 reviews, none scored yet -> 3 chunks
AUDIT_SAMPLE = 50  # the audit_sample Param left empty: MODERATION_AUDIT_SAMPLE's default


def load_reviews(db_url: str, sample_path: Path) -> None:
    from moderation.importing import import_reviews

    engine = db.make_engine(db_url)
    db.init_schema(engine)
    report = import_reviews(engine, sample_path, spread_days=3, now=IMPORTED_AT)
    engine.dispose()
    assert report.rejected == 0, report.summary()


def rows(db_url: str, table: Any) -> list[dict[str, Any]]:
    """Every row of ``table`` in primary-key order, as dicts: the full table content."""
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        result = [dict(r._mapping) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]
    engine.dispose()
    return result


def interval_review_ids(db_url: str) -> set[int]:
    """What the first run scores: every review lacking a score, whichever day it was ingested.

    The interval labels the run; work is chosen by state (tests/test_state.py).
    """
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        ids = set(conn.execute(select(db.reviews.c.review_id)).scalars())
    engine.dispose()
    return ids


def utc(moment: datetime) -> datetime:
    """SQLite gives naive UTC, PostgreSQL aware in the session's zone: both as aware UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def model_threshold(model_dir: Path) -> float:
    return float(json.loads((model_dir / "card.json").read_text(encoding="utf-8"))["threshold"])


def assert_published(db_url: str, threshold: float) -> None:
    """Scores for exactly the interval's reviews, the queue for exactly those at or over the threshold."""
    expected = interval_review_ids(db_url)
    assert len(expected) == 6_012
    scores = rows(db_url, db.review_scores)
    assert [r["review_id"] for r in scores] == sorted(expected)
    assert {r["model_version"] for r in scores} == {"tiny-model"}
    flagged = {r["review_id"]: r["score"] for r in scores if r["score"] is not None and r["score"] >= threshold}
    queue = rows(db_url, db.moderation_queue)
    assert {r["review_id"]: r["score"] for r in queue if r["kind"] == "flagged"} == flagged
    assert 0 < len(flagged) < len(expected)
    assert {r["status"] for r in queue} == {"pending"}
    assert all(r["threshold"] == pytest.approx(threshold) for r in queue)
    # beside the flags, the default audit sample of unflagged reviews (MODERATION_AUDIT_SAMPLE unset: 50)
    audits = [r for r in queue if r["kind"] == "audit"]
    assert len(audits) == AUDIT_SAMPLE and {r["bucket"] for r in audits} == {"audit"}
    assert all(r["score"] < threshold for r in audits)

    [run] = rows(db_url, db.scoring_runs)
    assert run["run_id"] == f"manual__{LOGICAL_DATE.isoformat()}"
    assert run["status"] == "success"
    assert (utc(run["interval_start"]), utc(run["interval_end"])) == INTERVAL
    assert run["reviews_read"] == len(expected)
    assert run["reviews_scored"] == sum(r["score"] is not None for r in scores)
    assert run["reviews_skipped"] == sum(r["score"] is None for r in scores)
    assert run["reviews_flagged"] == len(flagged)
    assert run["reviews_audited"] == AUDIT_SAMPLE
    assert run["threshold"] == pytest.approx(threshold)


def test_nightly_run_scores_the_interval_and_is_idempotent(
    any_db_url: str, sample_path: Path, tiny_model_dir: Path, nightly_dag: Any, dag_runner: Any,
    reviews_connection: Any,
) -> None:
    load_reviews(any_db_url, sample_path)
    reviews_connection(any_db_url)

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": CHUNK_SIZE})

    assert state == "success", tasks
    assert tasks == {"plan": "success", "list_chunks": "success", "publish": "success",
                     "score_chunk[0]": "success", "score_chunk[1]": "success", "score_chunk[2]": "success"}
    threshold = model_threshold(tiny_model_dir)
    assert_published(any_db_url, threshold)

    # A moderator decides one flagged review before the interval is re-run.
    decided = rows(any_db_url, db.moderation_queue)[0]["review_id"]
    engine = db.make_engine(any_db_url)
    with engine.begin() as conn:
        conn.execute(update(db.moderation_queue).where(db.moderation_queue.c.review_id == decided).values(
            status="confirmed", decided_by="moderator-kim", decided_at=datetime(2024, 3, 3, 9, tzinfo=timezone.utc),
            note="욕설 포함"))
    engine.dispose()
    before = {t.name: rows(any_db_url, t) for t in (db.review_scores, db.moderation_queue, db.scoring_runs)}

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": CHUNK_SIZE})

    assert state == "success", tasks
    assert rows(any_db_url, db.review_scores) == before["review_scores"]
    assert rows(any_db_url, db.moderation_queue) == before["moderation_queue"]
    kept = next(r for r in rows(any_db_url, db.moderation_queue) if r["review_id"] == decided)
    assert (kept["status"], kept["decided_by"], kept["note"]) == ("confirmed", "moderator-kim", "욕설 포함")
    [run] = rows(any_db_url, db.scoring_runs)  # the run's record is replaced, not duplicated
    ignore = {"started_at", "finished_at"}
    assert {k: v for k, v in run.items() if k not in ignore} == \
        {k: v for k, v in before["scoring_runs"][0].items() if k not in ignore}


def test_failure_while_scoring_leaves_the_database_untouched(
    any_db_url: str, sample_path: Path, nightly_dag: Any, dag_runner: Any, reviews_connection: Any,
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path,
) -> None:
    from moderation import pipeline

    load_reviews(any_db_url, sample_path)
    reviews_connection(any_db_url)
    real_score_chunk = pipeline.score_chunk

    def fail_on_second_chunk(db_url: str | None, chunk: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if chunk["index"] == 1:
            raise RuntimeError("injected failure: worker lost while scoring chunk 1")
        return real_score_chunk(db_url, chunk, *args, **kwargs)

    monkeypatch.setattr(pipeline, "score_chunk", fail_on_second_chunk)
    for task in nightly_dag.tasks:
        task.retries = 0  # fail now instead of waiting minutes for the retry delay

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": CHUNK_SIZE})

    assert state == "failed"
    assert tasks["score_chunk[0]"] == "success"
    assert tasks["score_chunk[1]"] == "failed"
    assert tasks["publish"] == "upstream_failed"
    for table in (db.review_scores, db.moderation_queue, db.scoring_runs):
        assert rows(any_db_url, table) == [], table.name

    # The worker is back: re-running the interval publishes everything, once.
    monkeypatch.setattr(pipeline, "score_chunk", real_score_chunk)
    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": CHUNK_SIZE})
    assert state == "success", tasks
    assert_published(any_db_url, model_threshold(tiny_model_dir))


def test_empty_interval_records_a_run_with_zeros(
    sqlite_url: str, sample_path: Path, nightly_dag: Any, dag_runner: Any, reviews_connection: Any,
) -> None:
    engine = db.make_engine(sqlite_url)
    db.init_schema(engine)  # no review needs a score: work is chosen by state, so the night has nothing to do
    engine.dispose()
    reviews_connection(sqlite_url)
    empty_day = LOGICAL_DATE + timedelta(days=30)

    state, tasks = dag_runner(nightly_dag, empty_day, {"threshold": 0.9})

    assert state == "success", tasks
    assert tasks == {"plan": "success", "list_chunks": "success", "score_chunk": "skipped", "publish": "success"}
    assert rows(sqlite_url, db.review_scores) == []
    assert rows(sqlite_url, db.moderation_queue) == []
    [run] = rows(sqlite_url, db.scoring_runs)
    assert (run["reviews_read"], run["reviews_scored"], run["reviews_flagged"], run["status"]) == (0, 0, 0, "success")
    assert run["threshold"] == pytest.approx(0.9)  # the Param overrides the model card's threshold


def test_cli_score_gives_the_same_tables_as_the_dag(
    sqlite_url: str, tmp_path: Path, sample_path: Path, nightly_dag: Any, dag_runner: Any,
    reviews_connection: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    from moderation.cli import main

    cli_url = f"sqlite:///{tmp_path / 'cli.db'}"
    for url in (sqlite_url, cli_url):
        load_reviews(url, sample_path)
    reviews_connection(sqlite_url)

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": CHUNK_SIZE})
    assert state == "success", tasks
    code = main(["score", "--db", cli_url, "--start", INTERVAL[0].isoformat(), "--end", INTERVAL[1].isoformat()])
    assert code == 0
    out = capsys.readouterr().out
    # Airflow's log set-up of the dag.test() above prints warnings to stdout too: the summary is the JSON block.
    summary = json.loads(out[out.index("{\n") if out.startswith("{\n") else out.index("\n{\n") + 1:])

    def essence(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[float]]:
        """Every column exactly, except the scores, which come back separately."""
        scores = [(r["review_id"], r["model_version"], r["score"] is None, r["skip_reason"])
                  for r in rows(url, db.review_scores)]
        queue = [(r["review_id"], r["model_version"], r["threshold"], r["status"])
                 for r in rows(url, db.moderation_queue) if r["kind"] == "flagged"]  # the CLI samples no audits
        values = [r["score"] for r in rows(url, db.review_scores) if r["score"] is not None]
        values += [r["score"] for r in rows(url, db.moderation_queue) if r["kind"] == "flagged"]
        return scores, queue, values

    cli_scores, cli_queue, cli_values = essence(cli_url)
    dag_scores, dag_queue, dag_values = essence(sqlite_url)
    assert (cli_scores, cli_queue) == (dag_scores, dag_queue)  # same reviews scored, skipped and flagged
    # float32 sums in other batch shapes (the CLI's chunks are not the DAG's) differ in the 7th digit,
    # so a score rounded to 6 places can land on either side of a rounding boundary: compare within 1e-5.
    assert cli_values == pytest.approx(dag_values, abs=1e-5)
    [dag_run] = rows(sqlite_url, db.scoring_runs)
    assert summary["reviews_read"] == dag_run["reviews_read"]
    assert summary["reviews_flagged"] == dag_run["reviews_flagged"]


def test_operating_point_param_is_recorded_and_a_wrong_one_fails_plan(
    sqlite_url: str, nightly_dag: Any, dag_runner: Any, reviews_connection: Any, pointed_model_dir: Path,
) -> None:
    from moderation import registry

    engine = db.make_engine(sqlite_url)
    db.init_schema(engine)  # no reviews: each night has nothing to score, so no model loads
    registry.register_model(engine, pointed_model_dir, activate=True)
    engine.dispose()
    reviews_connection(sqlite_url)
    for task in nightly_dag.tasks:
        task.retries = 0
    night = LOGICAL_DATE + timedelta(days=30)

    state, tasks = dag_runner(nightly_dag, night, {"operating_point": "steam:likely"})

    assert state == "success", tasks
    [run] = rows(sqlite_url, db.scoring_runs)
    assert (run["operating_point"], run["threshold"]) == ("steam:likely", pytest.approx(0.72))

    for conf in ({"operating_point": "movie:likely"}, {"operating_point": "likely", "threshold": 0.5}):
        night += timedelta(days=1)
        state, tasks = dag_runner(nightly_dag, night, conf)
        assert state == "failed"
        assert tasks["plan"] == "failed" and tasks["publish"] == "upstream_failed", tasks
    assert len(rows(sqlite_url, db.scoring_runs)) == 1  # the failed nights recorded nothing

    night += timedelta(days=1)
    state, tasks = dag_runner(nightly_dag, night, {"threshold": None, "operating_point": None})  # dag.test keeps conf
    assert state == "success", tasks
    assert [r["operating_point"] for r in rows(sqlite_url, db.scoring_runs)] == ["steam:likely", "default"]


def test_audit_sample_param_is_seeded_by_the_run_and_never_replaces_a_decision(
    sqlite_url: str, sample_path: Path, tiny_model_dir: Path, nightly_dag: Any, dag_runner: Any,
    reviews_connection: Any,
) -> None:
    load_reviews(sqlite_url, sample_path)
    reviews_connection(sqlite_url)
    threshold = model_threshold(tiny_model_dir)

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": 10_000, "audit_sample": 12})

    assert state == "success", tasks
    audits = {r["review_id"]: r for r in rows(sqlite_url, db.moderation_queue) if r["kind"] == "audit"}
    assert len(audits) == 12 and all(r["score"] < threshold and r["bucket"] == "audit" for r in audits.values())
    [run] = rows(sqlite_url, db.scoring_runs)
    assert run["reviews_audited"] == 12
    # a moderator dismisses one audit item, then the run is cleared and run again: the same twelve, decision kept
    from moderation.queue import decide

    engine = db.make_engine(sqlite_url)
    decided = min(audits)
    decide(engine, [decided], "dismissed", "moderator-kim", reason="not_negative")
    with engine.begin() as conn:  # as if the interval had not been scored: the re-run scores and samples again
        conn.execute(db.review_scores.delete())
    engine.dispose()

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"chunk_size": 10_000, "audit_sample": 12})

    assert state == "success", tasks
    again = {r["review_id"]: r for r in rows(sqlite_url, db.moderation_queue) if r["kind"] == "audit"}
    assert set(again) == set(audits)
    assert (again[decided]["status"], again[decided]["decided_by"], again[decided]["reason"]) == (
        "dismissed", "moderator-kim", "not_negative")
    assert rows(sqlite_url, db.scoring_runs)[0]["reviews_audited"] == 12


def test_nightly_run_without_a_chunk_size_keeps_its_files_in_an_object_store(
    any_db_url: str, sample_path: Path, tiny_model_dir: Path, nightly_dag: Any, dag_runner: Any,
    reviews_connection: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The default night: one chunk per scoring slot, chunk files behind ``MODERATION_RUNS_URL``.

    fsspec's in-memory filesystem stands in for a bucket that no worker has
    on its disk; after the publish it holds nothing of the run.
    """
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    store = MemoryFileSystem()
    store.store.clear()
    attach("memory", fs=store)
    monkeypatch.setenv("MODERATION_RUNS_URL", "memory:///moderation-runs")
    monkeypatch.setenv("MODERATION_HOME", str(tmp_path / "home"))
    load_reviews(any_db_url, sample_path)
    reviews_connection(any_db_url)

    state, tasks = dag_runner(nightly_dag, LOGICAL_DATE, {"scoring_slots": 2})

    assert state == "success", tasks
    assert tasks == {"plan": "success", "list_chunks": "success", "publish": "success",
                     "score_chunk[0]": "success", "score_chunk[1]": "success"}
    assert_published(any_db_url, model_threshold(tiny_model_dir))
    assert store.find("/moderation-runs") == []
    assert not (tmp_path / "home" / "runs").exists()  # nothing went to the local disk
