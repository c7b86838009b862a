"""
### Model retraining: adapting the active model to the shop

Triggered by hand (Airflow UI "Trigger DAG" form, or
`airflow dags trigger review_model_retraining --conf '{"epochs": 3}'`).
By default it fine-tunes the active model (warm start, learning rate 5e-4)
on the shop's labels: moderator decisions, imported labels and the star
ratings (5-point: 1-2 negative, 4-5 positive, 3 left out), then chooses the
candidate's thresholds again on the shop's validation products.

| task | does | XCom |
|---|---|---|
| `snapshot_labels` | writes the labelled reviews (moderator decisions, imported labels, rating labels unless turned off) to Parquet with a fingerprint | path, counts, fingerprint |
| `enough_new_labels` | ends the run early, as skipped and not failed, when too few labels are new since the active model | yes/no |
| `train_candidate` | fine-tunes the active model (or trains a new one when `warm_start` is off) on the snapshot's training products, then sets its default threshold and operating points on the validation products (domain `shop`) into `models/<version>/` | version, path, threshold, init_from |
| `evaluate` | scores the same held-out products with the candidate and the active model: ROC-AUC, balanced accuracy and positives flagged at each one's threshold; the same on the moderators' audit labels (kept out of training) | both models' metrics, held-out and audit |
| `register_and_promote` | registers the candidate in `model_versions`; makes it active only if the policy allows and sanity checks pass (judged on the audit labels when there are at least `min_audit_labels` of both classes, else on the held-out rows); updates the model Asset | the outcome, its reason, its basis and both models' figures |

The next nightly run uses whichever version is active. A refused or replaced
version stays registered: `moderation models activate VERSION` brings it back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

ACTIVE_MODEL_ASSET = Asset("moderation://models/active", group="model")


def _params() -> Any:
    from moderation.retraining import RetrainingParams

    return RetrainingParams.from_mapping(dict(get_current_context()["params"]))


def _work_dir(run_id: str) -> Any:
    from moderation import pipeline

    return pipeline.run_dir(run_id) / "retraining"


@task
def snapshot_labels() -> dict[str, Any]:
    """Labelled data to Parquet; only its path and counts travel through XCom."""
    from moderation import airflow_support, retraining

    context = get_current_context()
    return retraining.snapshot_labels(airflow_support.reviews_db_url(), _work_dir(context["run_id"]), _params())


@task.short_circuit
def enough_new_labels(snapshot: dict[str, Any]) -> bool:
    """Skip the rest with a clear message when there is nothing new to learn from."""
    import logging

    if not snapshot["ready"]:
        logging.getLogger(__name__).warning("retraining skipped: %s", snapshot["reason"])
    return bool(snapshot["ready"])


@task
def train_candidate(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the active model (or train a new one) and calibrate it on the shop's validation rows."""
    from moderation import airflow_support, retraining

    params = _params()
    init_from = retraining.warm_start_model(airflow_support.reviews_db_url(), params)
    return retraining.train_candidate(snapshot, params, init_from=init_from)


@task
def evaluate(snapshot: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Candidate and active model on the same held-out labels."""
    from moderation import airflow_support, db, registry, retraining

    active = registry.active_model(db.make_engine(airflow_support.reviews_db_url()))
    evaluation = retraining.evaluate_models(snapshot, candidate, active.path, _params())
    evaluation["active_version"] = active.version
    return evaluation


@task(outlets=[ACTIVE_MODEL_ASSET])
def register_and_promote(candidate: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate and promote it when the policy allows; record why."""
    from moderation import airflow_support, retraining

    decision = retraining.promotion_decision(evaluation, candidate, _params())
    outcome = retraining.register_and_promote(airflow_support.reviews_db_url(), candidate, decision, evaluation)
    get_current_context()["outlet_events"][ACTIVE_MODEL_ASSET].extra = {
        "active_version": outcome["active_version"], "candidate": outcome["candidate"],
        "promoted": outcome["promoted"], "reason": outcome["reason"],
    }
    return outcome


@dag(
    dag_id="review_model_retraining",
    doc_md=__doc__,
    description="Retrain the review model on moderators' decisions; promote it only if it is better",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["moderation", "model", "retraining"],
    default_args={"owner": "moderation", "retries": 2},
    params={
        "epochs": Param(3, type="integer", minimum=1, maximum=50, title="Epochs",
                        description="Training epochs (early stopping may end sooner)"),
        "batch_size": Param(256, type="integer", minimum=16, maximum=4096, title="Batch size"),
        "learning_rate": Param(0.0005, type="number", exclusiveMinimum=0, maximum=0.1, title="Learning rate",
                               description="0.0005 fine-tunes the active model; about 0.002 suits a new one"),
        "max_len": Param(150, type="integer", minimum=20, maximum=1000, title="Max length",
                         description="Characters per review the model reads (the end of longer reviews is kept)"),
        "min_new_labels": Param(100, type="integer", minimum=0, title="Minimum new labels",
                                description="Moderator/imported labels needed since the active model; fewer ends the run early"),
        "warm_start": Param(True, type="boolean", title="Fine-tune the active model",
                            description="Keep the active model's vocabulary and network and train it further; "
                                        "off: a new network and vocabulary from the snapshot alone"),
        "include_rating_labels": Param(True, type="boolean", title="Include rating labels",
                                       description="Use the shop's star ratings as weak labels (see rating scale)"),
        "rating_scale": Param(None, type=["null", "integer"], enum=[None, 5, 10], title="Rating scale",
                              description="5: 1-2 negative, 4-5 positive, 3 left out; 10: 1-4 negative, "
                                          "9-10 positive; empty: read from the ratings (5 when none is above 5)"),
        "max_train_rows": Param(None, type=["null", "integer"], minimum=100, title="Max training rows",
                                description="Sample the training products' rows down to this many (empty: all)"),
        "include_base_corpus": Param(False, type="boolean", title="Include the base corpus",
                                     description="Also train on the shared 640k-review corpus (slow: about 80 s per epoch on 2 cores)"),
        "base_corpus": Param(None, type=["null", "string"], title="Base corpus file",
                             description="Parquet file of the base corpus (empty: MODERATION_BASE_CORPUS, else "
                                         "ko_reviews.parquet under MODERATION_HOME)"),
        "promotion_policy": Param("if_better", type="string", enum=["if_better", "always", "never"],
                                  title="Promotion policy",
                                  description="if_better: promote when held-out ROC-AUC improves by more than the minimum"),
        "min_improvement": Param(0.0, type="number", minimum=0, maximum=1, title="Minimum improvement",
                                 description="ROC-AUC gain over the active model required by if_better"),
        "max_false_positive_rate": Param(0.08, type="number", exclusiveMinimum=0, exclusiveMaximum=1,
                                         title="Max false-flag rate",
                                         description="The default threshold flags at most this share of the "
                                                     "shop's positive validation reviews"),
        "metric_floor": Param(0.6, type="number", minimum=0, maximum=1, title="Metric floor",
                              description="Never promote a candidate whose held-out ROC-AUC is below this"),
        "min_audit_labels": Param(30, type="integer", minimum=1, maximum=100_000, title="Minimum audit labels",
                                  description="With at least this many moderator labels on audit items (both "
                                              "classes), promotion compares ROC-AUC on them instead of the "
                                              "held-out rows"),
    },
)
def review_model_retraining() -> None:
    snapshot = snapshot_labels()
    candidate = train_candidate(snapshot)
    enough_new_labels(snapshot) >> candidate
    register_and_promote(candidate, evaluate(snapshot, candidate))


review_model_retraining()
