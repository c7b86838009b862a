"""Chunk planning for a scheduler, and run files behind a URL: a local folder or an object store.

Real SQLite files and PostgreSQL databases, the real tiny model; the object
store is fsspec's in-memory filesystem attached to Airflow's
``ObjectStoragePath``, standing in for a bucket no worker has on its disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from moderation import airflow_support, db, pipeline

DAY0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
EVERYTHING = 1e-6


@pytest.fixture(autouse=True)
def _tiny_model_is_the_default(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(tiny_model_dir))


@pytest.fixture
def memory_store() -> Iterator[Any]:
    """``memory://`` for ``ObjectStoragePath``, emptied before and after."""
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    store = MemoryFileSystem()
    store.store.clear()
    attach("memory", fs=store)
    yield store
    store.store.clear()


def add_reviews(engine: Engine, ids: range) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO reviews (review_id, product_id, rating, text, ingested_at) "
                          "VALUES (:id, 7, 1, :text, :at)"),
                     [{"id": i, "text": f"배송이 너무 늦어요 {i}", "at": DAY0} for i in ids])


@pytest.mark.parametrize(("reviews", "slots", "rows"), [
    (100_000, 2, 50_000),      # one chunk per slot
    (1_000_000, 2, 500_000),   # still one per slot: 500,000 is the most a chunk holds
    (1_000_001, 2, 250_001),   # over it: the next multiple of the slots, 4 chunks
    (3, 2, 2),
    (1, 4, 1),
    (0, 2, pipeline.MAX_AUTO_CHUNK_ROWS),
    (90_000, 1, 90_000),
])
def test_auto_chunk_size_cuts_a_night_into_as_many_chunks_as_slots(reviews: int, slots: int, rows: int) -> None:
    assert pipeline.auto_chunk_size(reviews, slots) == rows


def test_plan_without_a_chunk_size_sizes_chunks_from_the_backlog(engine: Engine, any_db_url: str) -> None:
    add_reviews(engine, range(1, 8))
    plan = pipeline.plan_run(any_db_url, "r", DAY0, DAY0 + timedelta(days=1), chunk_size=None, scoring_slots=3)
    assert [(c["low_id"], c["high_id"]) for c in plan.chunks] == [(1, 4), (4, 7), (7, None)]
    assert [c["rows"] for c in plan.chunks] == [3, 3, 1]
    with pytest.raises(Exception, match="scoring slots must be a whole number"):
        pipeline.plan_run(any_db_url, "r", DAY0, DAY0 + timedelta(days=1), chunk_size=None, scoring_slots=0)


def test_runs_url_defaults_to_a_folder_under_moderation_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODERATION_RUNS_URL", raising=False)
    monkeypatch.setenv("MODERATION_HOME", str(tmp_path))
    folder = airflow_support.run_folder("manual__2024-03-03T00:00:00+00:00")
    assert folder == tmp_path / "runs" / "manual__2024-03-03T00_00_00_00_00"
    monkeypatch.setenv("MODERATION_RUNS_URL", f"file://{tmp_path / 'shared'}")  # a second folder: another mount
    assert airflow_support.run_folder("r") == tmp_path / "shared" / "r"


def test_a_night_through_an_object_store_leaves_nothing_behind(
        engine: Engine, any_db_url: str, memory_store: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, airflow_home: Path) -> None:
    """Score into ``memory://``, publish from the chunk URLs, and the store is empty again."""
    monkeypatch.setenv("MODERATION_RUNS_URL", "memory:///moderation-runs")
    monkeypatch.setenv("MODERATION_HOME", str(tmp_path / "home"))
    add_reviews(engine, range(1, 6))
    plan = pipeline.plan_run(any_db_url, "night 1", DAY0, DAY0 + timedelta(days=1), chunk_size=None,
                             scoring_slots=2, threshold=EVERYTHING)
    folder = airflow_support.run_folder(plan.run_id)
    results = [pipeline.score_chunk(any_db_url, c, plan.model.path, folder) for c in plan.chunks]
    assert [r["path"] for r in results] == ["memory://moderation-runs/night_1/chunk-00000.parquet",
                                            "memory://moderation-runs/night_1/chunk-00001.parquet"]
    assert len(memory_store.find("/moderation-runs")) == 2
    summary = pipeline.publish(any_db_url, plan, results, remove_chunks=True, locate=airflow_support.runs_path)
    assert summary["reviews_read"] == 5
    assert memory_store.find("/moderation-runs") == []
    assert not (tmp_path / "home").exists()  # nothing on the local disk
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.review_scores)).scalar_one() == 5


def test_a_failed_publish_keeps_the_object_store_files_for_its_retry(
        engine: Engine, any_db_url: str, memory_store: Any, monkeypatch: pytest.MonkeyPatch,
        airflow_home: Path) -> None:
    from moderation.errors import DatabaseError

    monkeypatch.setenv("MODERATION_RUNS_URL", "memory:///moderation-runs")
    add_reviews(engine, range(1, 4))
    plan = pipeline.plan_run(any_db_url, "night 2", DAY0, DAY0 + timedelta(days=1), threshold=EVERYTHING)
    folder = airflow_support.run_folder(plan.run_id)
    results = [pipeline.score_chunk(any_db_url, c, plan.model.path, folder) for c in plan.chunks]

    def broken(*_: Any) -> None:
        raise DatabaseError("injected: the queue could not be written")

    monkeypatch.setattr(pipeline, "_move_queue", broken)
    with pytest.raises(DatabaseError, match="injected"):
        pipeline.publish(any_db_url, plan, results, remove_chunks=True, locate=airflow_support.runs_path)
    assert len(memory_store.find("/moderation-runs")) == 1
    monkeypatch.undo()
    monkeypatch.setenv("MODERATION_RUNS_URL", "memory:///moderation-runs")
    pipeline.publish(any_db_url, plan, results, remove_chunks=True, locate=airflow_support.runs_path)
    assert memory_store.find("/moderation-runs") == []
