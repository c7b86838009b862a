"""Retraining on moderators' decisions: snapshot, train, compare, register, promote.

Each step is a plain function the ``review_model_retraining`` DAG calls;
files carry the data between steps, small dicts carry paths and figures.

The candidate and the active model are compared on the SAME held-out part
of the labelled snapshot (split by product, so no product's reviews sit on
both sides), by ROC-AUC, which does not depend on either model's threshold.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from moderation import config, db
from moderation.errors import ModerationError

log = logging.getLogger(__name__)

POLICIES = ("if_better", "always", "never")


@dataclass
class RetrainingParams:
    """The knobs an operator sets in the trigger form."""

    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 2e-3
    max_len: int = 150
    min_new_labels: int = 100
    include_rating_labels: bool = False
    include_base_corpus: bool = False
    promotion_policy: str = "if_better"
    min_improvement: float = 0.0
    metric_floor: float = 0.6
    holdout_fraction: float = 0.2
    seed: int = 13

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RetrainingParams:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None}
        params = cls(**known)
        if params.promotion_policy not in POLICIES:
            raise ModerationError(f"promotion_policy must be one of {', '.join(POLICIES)}, not {params.promotion_policy!r}")
        return params


def base_corpus_path() -> Path:
    """The shared corpus (``MODERATION_BASE_CORPUS`` overrides)."""
    explicit = os.environ.get("MODERATION_BASE_CORPUS")
    return Path(explicit) if explicit else config.PROJECT_ROOT.parent / "shared" / "data" / "ko_reviews.parquet"


def snapshot_labels(db_url: str | None, out_dir: Path, params: RetrainingParams) -> dict[str, Any]:
    """Write the labelled data to Parquet; ``ready`` is False when too few labels are new.

    New labels are moderator and imported labels recorded after the active
    model was registered: retraining on the same data again is pointless.
    """
    from moderation.data import fingerprint
    from moderation.moderators import labelled_snapshot, rating_labels

    engine = db.make_engine(db_url)
    with db.translate_errors(engine):
        if params.include_rating_labels:
            refreshed = rating_labels(engine)  # weak labels follow the current ratings
            log.info("rating labels refreshed: %d written or changed", refreshed)
        frame = labelled_snapshot(engine, include_rating=params.include_rating_labels)
        with engine.connect() as conn:
            since = conn.execute(
                select(db.model_versions.c.registered_at).where(db.model_versions.c.is_active.is_(True))
            ).scalar()
            new_query = select(func.count()).select_from(db.review_labels).where(
                db.review_labels.c.source.in_(["moderator", "import"])
            )
            if since is not None:
                new_query = new_query.where(db.review_labels.c.labelled_at > since)
            new_labels = int(conn.execute(new_query).scalar_one())
    engine.dispose()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "labels.parquet"
    frame = frame.rename(columns={"product_id": "group"})
    frame.to_parquet(path, index=False)
    counts = frame["label"].value_counts().to_dict() if len(frame) else {}
    result = {
        "path": str(path),
        "rows": int(len(frame)),
        "negative": int(counts.get(1, 0)),
        "positive": int(counts.get(0, 0)),
        "new_labels": new_labels,
        "fingerprint": fingerprint(frame.assign(text=frame["text"].astype("string"))) if len(frame) else None,
        "ready": new_labels >= params.min_new_labels,
    }
    if not result["ready"]:
        result["reason"] = (f"only {new_labels} new moderator/imported labels since the active model "
                            f"(min_new_labels={params.min_new_labels}); nothing to retrain")
    log.info("label snapshot: %s", json.dumps(result, ensure_ascii=False))
    return result


def _snapshot_split(snapshot_path: str, params: RetrainingParams) -> Any:
    import pandas as pd

    from moderation.data import split_by_group

    frame = pd.read_parquet(snapshot_path)
    frame = frame[["text", "label", "group"]].astype({"label": "int8", "group": "int64"})
    # Products hold-out: validation inside training comes from the training part.
    return split_by_group(frame, validation=0.0, test=params.holdout_fraction, seed=params.seed)


def train_candidate(snapshot: dict[str, Any], params: RetrainingParams, models_dir: Path | None = None,
                    version: str | None = None) -> dict[str, Any]:
    """Train a candidate on the snapshot's training part (plus the base corpus when asked)."""
    import pandas as pd

    from moderation.data import Split, load_labelled, split_by_group
    from moderation.training import TrainingConfig, train_on_split, version_name

    parts = _snapshot_split(snapshot["path"], params)
    labelled = parts.train
    if params.include_base_corpus:
        corpus = load_labelled(base_corpus_path())
        corpus_split = split_by_group(corpus, validation=0.0, test=0.1, seed=params.seed)
        labelled = pd.concat([labelled, corpus_split.train], ignore_index=True)
    inner = split_by_group(labelled, validation=0.15, test=0.0, seed=params.seed + 1)
    if inner.train["label"].nunique() < 2 or inner.validation["label"].nunique() < 2:
        raise ModerationError("the labelled snapshot needs both negative and positive reviews on each side "
                              "of the split to train; collect more decisions or include rating labels")
    version = version or version_name()
    out_dir = (models_dir or config.models_dir()) / version
    cfg = TrainingConfig(epochs=params.epochs, batch_size=params.batch_size, learning_rate=params.learning_rate,
                         max_len=params.max_len, patience=2, seed=params.seed, verbose=2)
    bundle = train_on_split(Split(inner.train, inner.validation, parts.test), out_dir, cfg, version,
                            source={"snapshot": snapshot["path"], "snapshot_fingerprint": snapshot.get("fingerprint"),
                                    "include_base_corpus": params.include_base_corpus})
    losses = bundle.card.training["history"]["loss"]
    return {"version": version, "path": str(out_dir), "threshold": bundle.threshold,
            "final_loss": float(losses[-1]), "epochs_run": len(losses)}


def evaluate_models(snapshot: dict[str, Any], candidate: dict[str, Any], active_path: str | None,
                    params: RetrainingParams) -> dict[str, Any]:
    """Metrics of the candidate and the active model on the same held-out labels."""
    from moderation.model import load_bundle
    from moderation.scoring import Scorer
    from moderation.training import evaluate_frame

    holdout = _snapshot_split(snapshot["path"], params).test
    result: dict[str, Any] = {"holdout_rows": int(len(holdout)),
                              "holdout_negative": int(holdout["label"].sum()) if len(holdout) else 0}
    for name, path in (("candidate", candidate["path"]), ("active", active_path)):
        if path is None or len(holdout) == 0:
            result[name] = None
            continue
        result[name] = evaluate_frame(Scorer(load_bundle(path)), holdout)
    log.info("evaluation on %d held-out labels: %s", len(holdout), json.dumps(result, ensure_ascii=False))
    return result


def promotion_decision(evaluation: dict[str, Any], candidate: dict[str, Any], params: RetrainingParams) -> dict[str, Any]:
    """Whether to promote, and why, under the operator's policy and the sanity checks."""
    cand = evaluation.get("candidate") or {}
    active = evaluation.get("active") or {}
    cand_auc = cand.get("roc_auc")
    active_auc = active.get("roc_auc")
    if not math.isfinite(candidate.get("final_loss", float("nan"))):
        return {"promote": False, "reason": "sanity check failed: training loss is not finite"}
    if params.promotion_policy == "never":
        return {"promote": False, "reason": "policy 'never': candidate registered, not promoted"}
    if cand_auc is not None and math.isfinite(cand_auc) and cand_auc < params.metric_floor:
        return {"promote": False, "reason": f"sanity check failed: candidate ROC-AUC {cand_auc:.4f} "
                                            f"is below the floor {params.metric_floor}"}
    if params.promotion_policy == "always":
        return {"promote": True, "reason": "policy 'always'"}
    if cand_auc is None or not math.isfinite(cand_auc):
        return {"promote": False, "reason": "held-out labels too few or one-sided to compare the models"}
    if active_auc is None or not math.isfinite(active_auc):
        return {"promote": True, "reason": f"no comparable active model; candidate ROC-AUC {cand_auc:.4f}"}
    gain = cand_auc - active_auc
    if gain > params.min_improvement:
        return {"promote": True, "reason": f"candidate ROC-AUC {cand_auc:.4f} beats active {active_auc:.4f} "
                                           f"by {gain:+.4f} (> {params.min_improvement})"}
    return {"promote": False, "reason": f"candidate ROC-AUC {cand_auc:.4f} does not beat active {active_auc:.4f} "
                                        f"by more than {params.min_improvement} ({gain:+.4f})"}


def register_and_promote(db_url: str | None, candidate: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate; make it the active version only when the decision says so."""
    from moderation.pipeline import register_model

    engine = db.make_engine(db_url)
    register_model(engine, Path(candidate["path"]), activate=bool(decision["promote"]))
    with db.translate_errors(engine), engine.connect() as conn:
        active = conn.execute(
            select(db.model_versions.c.version).where(db.model_versions.c.is_active.is_(True))
        ).scalar()
    engine.dispose()
    outcome = {"candidate": candidate["version"], "promoted": bool(decision["promote"]),
               "reason": decision["reason"], "active_version": active,
               "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    log.info("retraining outcome: %s", json.dumps(outcome, ensure_ascii=False))
    return outcome


def params_dict(params: RetrainingParams) -> dict[str, Any]:
    return asdict(params)
