"""The retraining DAG end to end with dag.test(): each promotion policy, a worse
candidate refused, too few labels ending early, and the nightly run picking up
the promoted model. Real training (one epoch on a few thousand reviews)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from moderation import db

IMPORTED_AT = datetime(2024, 3, 3, tzinfo=timezone.utc)
LABELLED_AT = datetime(2030, 1, 1, tzinfo=timezone.utc)  # after the active model was registered


def prepare(db_url: str, sample_path: Path, tiny_model_dir: Path) -> None:
    """Reviews, the tiny model as the active version, and moderator labels from the ratings."""
    from moderation.importing import import_reviews
    from moderation.pipeline import register_model

    engine = db.make_engine(db_url)
    db.init_schema(engine)
    import_reviews(engine, sample_path, spread_days=3, now=IMPORTED_AT)
    register_model(engine, tiny_model_dir, activate=True)
    with engine.begin() as conn:
        ratings = conn.execute(select(db.reviews.c.review_id, db.reviews.c.rating)).all()
        labels = [
            {"review_id": rid, "label": 1 if rating <= 4 else 0, "source": "moderator",
             "labelled_at": LABELLED_AT, "labelled_by": "test-moderator"}
            for rid, rating in ratings if rating is not None and (rating <= 4 or rating >= 9)
        ]
        conn.execute(db.review_labels.insert(), labels)
    engine.dispose()


def model_rows(db_url: str) -> dict[str, dict[str, Any]]:
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        rows = {r.version: dict(r._mapping) for r in conn.execute(select(db.model_versions))}
    engine.dispose()
    return rows


def retraining_dag(dag_bag: Any) -> Any:
    assert not dag_bag.import_errors, dag_bag.import_errors
    return dag_bag.dags["review_model_retraining"]


# Every run names every varied param: dag.test() keeps an earlier run's conf in the DAG's params.
QUICK = {"epochs": 1, "batch_size": 128, "min_new_labels": 100, "learning_rate": 0.002, "promotion_policy": "if_better"}


@pytest.fixture
def retraining_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> Path:
    models = tmp_path / "models"
    monkeypatch.setenv("MODERATION_MODELS_DIR", str(models))
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(tiny_model_dir))
    return models


@pytest.mark.slow
def test_policies_worse_candidate_and_early_end(
    sqlite_url: str, sample_path: Path, tiny_model_dir: Path, retraining_env: Path,
    dag_bag: Any, dag_runner: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepare(sqlite_url, sample_path, tiny_model_dir)
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_DB", sqlite_url)
    dag = retraining_dag(dag_bag)
    day = datetime(2024, 4, 1, tzinfo=timezone.utc)

    # Too few new labels: the run succeeds, training is skipped, nothing registered.
    state, tasks = dag_runner(dag, day, {**QUICK, "min_new_labels": 1_000_000})
    assert state == "success"
    assert tasks["enough_new_labels"] == "success" and tasks["train_candidate"] == "skipped"
    assert set(model_rows(sqlite_url)) == {"tiny-model"}

    # never: registered, not promoted.
    state, tasks = dag_runner(dag, day + timedelta(days=1), {**QUICK, "promotion_policy": "never"})
    assert state == "success", tasks
    versions = model_rows(sqlite_url)
    assert len(versions) == 2 and versions["tiny-model"]["is_active"]

    # if_better with a deliberately worse candidate (barely trained): refused.
    state, _ = dag_runner(dag, day + timedelta(days=2),
                          {**QUICK, "learning_rate": 0.00001, "promotion_policy": "if_better"})
    assert state == "success"
    versions = model_rows(sqlite_url)
    assert len(versions) == 3 and versions["tiny-model"]["is_active"]

    # always: the candidate becomes the only active version.
    state, _ = dag_runner(dag, day + timedelta(days=3), {**QUICK, "promotion_policy": "always"})
    assert state == "success"
    versions = model_rows(sqlite_url)
    active = [v for v, row in versions.items() if row["is_active"]]
    assert len(versions) == 4 and len(active) == 1 and active != ["tiny-model"]
    bundle_dir = Path(versions[active[0]]["path"])
    assert bundle_dir.parent == retraining_env
    assert {"model.keras", "vocab.json", "card.json", "training_curve.png"} <= {p.name for p in bundle_dir.iterdir()}
    assert json.loads(versions[active[0]]["metrics"])["test_balanced"]["n"] > 0


def test_promotion_decision_reasons() -> None:
    from moderation.retraining import RetrainingParams, promotion_decision

    candidate = {"final_loss": 0.4}
    better = {"candidate": {"roc_auc": 0.80}, "active": {"roc_auc": 0.75}}
    worse = {"candidate": {"roc_auc": 0.70}, "active": {"roc_auc": 0.75}}
    assert promotion_decision(better, candidate, RetrainingParams())["promote"]
    refused = promotion_decision(worse, candidate, RetrainingParams())
    assert not refused["promote"] and "does not beat" in refused["reason"]
    small_gain = promotion_decision(better, candidate, RetrainingParams(min_improvement=0.1))
    assert not small_gain["promote"]
    below_floor = promotion_decision({"candidate": {"roc_auc": 0.55}, "active": None}, candidate,
                                     RetrainingParams(promotion_policy="always"))
    assert not below_floor["promote"] and "floor" in below_floor["reason"]
    nan_loss = promotion_decision(better, {"final_loss": float("nan")}, RetrainingParams(promotion_policy="always"))
    assert not nan_loss["promote"] and "not finite" in nan_loss["reason"]


@pytest.mark.slow
@pytest.mark.postgres
def test_promoted_model_is_used_by_the_next_nightly_run(
    pg_url: str, sample_path: Path, tiny_model_dir: Path, retraining_env: Path,
    dag_bag: Any, dag_runner: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepare(pg_url, sample_path, tiny_model_dir)
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_DB", pg_url)
    state, _ = dag_runner(retraining_dag(dag_bag), datetime(2024, 5, 1, tzinfo=timezone.utc),
                          {**QUICK, "promotion_policy": "always"})
    assert state == "success"
    active = [v for v, row in model_rows(pg_url).items() if row["is_active"]]
    assert len(active) == 1 and active[0] != "tiny-model"

    nightly = dag_bag.dags["review_moderation_nightly"]
    state, _ = dag_runner(nightly, datetime(2024, 3, 3, tzinfo=timezone.utc))
    assert state == "success"
    engine = db.make_engine(pg_url)
    with engine.connect() as conn:
        used = set(conn.execute(select(db.scoring_runs.c.model_version)).scalars())
        scored_by = set(conn.execute(select(db.review_scores.c.model_version)).scalars())
    engine.dispose()
    assert used == {active[0]} and scored_by == {active[0]}
