"""The retraining DAG end to end with dag.test(): the default path adapting the
active model to a shop (warm start, rating labels, thresholds chosen on the
shop's rows), each promotion policy, a worse candidate refused, too few labels
ending early, and the nightly run picking up the promoted model. Real training
(one epoch on a few hundred or thousand reviews)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from moderation import db, metrics, registry

IMPORTED_AT = datetime(2024, 3, 3, tzinfo=timezone.utc)
LABELLED_AT = datetime(2030, 1, 1, tzinfo=timezone.utc)  # after the active model was registered


def prepare(db_url: str, sample_path: Path, tiny_model_dir: Path) -> None:
    """Reviews, the tiny model as the active version, and moderator labels from the ratings."""
    from moderation.importing import import_reviews
    from moderation.registry import register_model

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
# These runs train a new network on the movie sample (10-point ratings): no warm start, no 5-point rating labels.
QUICK = {"epochs": 1, "batch_size": 128, "min_new_labels": 100, "learning_rate": 0.002, "promotion_policy": "if_better",
         "warm_start": False, "include_rating_labels": False}
SHOP_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "other_domains_sample.parquet"


def prepare_shop(db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """A shop: 800 real shopping and Steam reviews with 5-point stars, the tiny movie model active,
    and moderator decisions on 150 of them (the rest are labelled by their stars only)."""
    import shop_reviews  # scripts/shop_reviews.py (pytest's pythonpath)
    from moderation.importing import import_reviews
    from moderation.registry import register_model

    rows = shop_reviews.load(SHOP_SAMPLE)
    path = tmp_path / "shop.parquet"
    rows.to_parquet(path, index=False)
    engine = db.make_engine(db_url)
    db.init_schema(engine)
    import_reviews(engine, path, spread_days=3, now=IMPORTED_AT)
    register_model(engine, tiny_model_dir, activate=True)
    decided = rows.sample(n=150, random_state=5)
    with engine.begin() as conn:
        conn.execute(db.review_labels.insert(), [
            {"review_id": int(r.review_id), "label": int(r.label), "source": "moderator",
             "labelled_at": LABELLED_AT, "labelled_by": "test-moderator"} for r in decided.itertuples()])
    engine.dispose()


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


@pytest.mark.slow
def test_default_path_fine_tunes_the_active_model_and_chooses_shop_thresholds(
    sqlite_url: str, tmp_path: Path, tiny_model_dir: Path, retraining_env: Path,
    dag_bag: Any, dag_runner: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moderation.model import bundle_fingerprint, read_card
    from moderation.retraining import RetrainingParams

    prepare_shop(sqlite_url, tmp_path, tiny_model_dir)
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_DB", sqlite_url)
    dag = retraining_dag(dag_bag)
    defaults = RetrainingParams()
    assert defaults.warm_start and defaults.include_rating_labels and defaults.rating_scale is None
    assert {k: dag.params[k] for k in ("warm_start", "include_rating_labels", "rating_scale", "learning_rate")} == {
        "warm_start": True, "include_rating_labels": True, "rating_scale": None, "learning_rate": defaults.learning_rate}

    state, tasks = dag_runner(dag, datetime(2024, 6, 1, tzinfo=timezone.utc), {"epochs": 1})  # else the defaults
    assert state == "success", tasks
    versions = model_rows(sqlite_url)
    candidate = [v for v in versions if v != "tiny-model"]
    assert len(candidate) == 1
    row = versions[candidate[0]]
    card = read_card(Path(row["path"]))
    assert card.training["init_from"] == {"version": "tiny-model", "fingerprint": bundle_fingerprint(tiny_model_dir),
                                          "path": str(tiny_model_dir)}
    assert card.vocab_size == read_card(tiny_model_dir).vocab_size
    assert card.training["learning_rate"] == defaults.learning_rate
    assert card.training_data["include_rating_labels"] and card.training_data["rating_scale"] == 5
    assert card.training_data["rows_train"] > 300  # rating labels joined the 150 decisions
    assert card.training_data["unseen_characters"]["rows_with_unseen"] > 0
    # thresholds chosen on the shop's validation products, written before registration
    assert card.default_domain == "shop" and "shop" in card.operating_points
    # and the queue's priority buckets, by false-flag budget, which publish will use for its flags
    assert set(card.queue_buckets["shop"]) <= set(metrics.QUEUE_BUCKET_FPR) and card.queue_buckets["shop"]
    assert registry.bucket_thresholds(card) == {name: point["threshold"]
                                                for name, point in card.queue_buckets["shop"].items()}
    shop = card.metrics["per_domain"]["shop"]
    assert shop["validation_rows"] > 0 and shop["test_rows"] > 0
    assert card.metrics["calibration"]["max_false_positive_rate"] == defaults.max_false_positive_rate
    assert row["threshold"] == card.threshold
    assert row["fingerprint"] == bundle_fingerprint(Path(row["path"]))


def test_held_out_figures_name_false_flags(tiny_model_dir: Path) -> None:
    import pandas as pd

    from moderation.model import load_bundle
    from moderation.retraining import comparison, heldout_figures

    rows = pd.read_parquet(SHOP_SAMPLE)
    figures = heldout_figures(load_bundle(tiny_model_dir), rows)
    assert figures["n"] == len(rows) and 0 <= figures["positives_flagged"] <= 1
    assert figures["threshold"] == load_bundle(tiny_model_dir).threshold
    side_by_side = comparison({"candidate": figures, "active": None})
    assert side_by_side["candidate"]["balanced_accuracy"] == figures["balanced_accuracy"]
    assert side_by_side["active"]["roc_auc"] is None


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


def test_promotion_judges_on_audit_labels_when_there_are_enough() -> None:
    from moderation.retraining import RetrainingParams, promotion_decision

    candidate = {"final_loss": 0.4}
    held_out_better = {"candidate": {"roc_auc": 0.80}, "active": {"roc_auc": 0.75}}
    audit_worse = {"candidate": {"roc_auc": 0.70}, "active": {"roc_auc": 0.78}}
    enough = {**held_out_better, "audit": audit_worse, "audit_rows": 40, "audit_negative": 9}
    refused = promotion_decision(enough, candidate, RetrainingParams())
    assert not refused["promote"] and refused["basis"] == "audit" and "on 40 audit labels" in refused["reason"]
    for thin in ({**enough, "audit_rows": 29}, {**enough, "audit_negative": 0}, {**enough, "audit_negative": 40}):
        decision = promotion_decision(thin, candidate, RetrainingParams())
        assert decision["promote"] and decision["basis"] == "holdout", thin
    assert promotion_decision({**enough, "audit_rows": 29}, candidate,
                              RetrainingParams(min_audit_labels=20))["basis"] == "audit"
    assert promotion_decision(held_out_better, candidate, RetrainingParams())["basis"] == "holdout"


def test_audit_labels_are_kept_out_of_training_and_evaluated_apart(
        sqlite_url: str, sample_path: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    from moderation.queue import decide
    from moderation.retraining import RetrainingParams, evaluate_models, snapshot_labels

    prepare(sqlite_url, sample_path, tiny_model_dir)
    engine = db.make_engine(sqlite_url)
    with engine.begin() as conn:
        ids = conn.execute(select(db.reviews.c.review_id).where(db.reviews.c.text.is_not(None),
                                                                 func.trim(db.reviews.c.text) != "")
                           .order_by(db.reviews.c.review_id).limit(40)).scalars().all()
        conn.execute(db.review_labels.delete().where(db.review_labels.c.review_id.in_(ids)))
        conn.execute(db.moderation_queue.insert(), [
            {"review_id": rid, "model_version": "tiny-model", "score": 0.1, "threshold": 0.5, "status": "pending",
             "flagged_at": IMPORTED_AT, "run_id": "night", "kind": "audit", "bucket": "audit"} for rid in ids])
    decide(engine, ids[:10], "confirmed", "kim", now=LABELLED_AT)
    decide(engine, ids[10:35], "dismissed", "kim", now=LABELLED_AT)
    decide(engine, ids[35:], "unsure", "kim", now=LABELLED_AT)  # no label: not an audit label
    engine.dispose()
    params = RetrainingParams(include_rating_labels=False)

    snapshot = snapshot_labels(sqlite_url, tmp_path, params)

    assert (snapshot["audit_rows"], snapshot["audit_negative"]) == (35, 10)
    trained_on = set(pd.read_parquet(snapshot["path"])["review_id"])
    assert not trained_on & set(ids)
    assert sorted(pd.read_parquet(snapshot["audit_path"])["review_id"]) == sorted(ids[:35])
    evaluation = evaluate_models(snapshot, {"path": str(tiny_model_dir)}, str(tiny_model_dir), params)
    audit = evaluation["audit"]["candidate"]
    assert evaluation["audit_rows"] == 35 and audit["n"] + audit["skipped"] == 35
    assert evaluation["audit"]["candidate"]["roc_auc"] == evaluation["audit"]["active"]["roc_auc"]
    held_out = evaluation["candidate"]  # the held-out figures stay beside them
    assert held_out["n"] + held_out["skipped"] == evaluation["holdout_rows"]
