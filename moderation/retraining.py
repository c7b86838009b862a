"""Retraining on the shop's own labels: snapshot, train, calibrate, compare, register, promote.

Each step is a plain function the ``review_model_retraining`` DAG calls;
files carry the data between steps, small dicts carry paths and figures.

By default retraining ADAPTS the active model to the shop: the labels are the
moderators' decisions plus the shop's star ratings as weak labels (5-point:
1-2 negative, 4-5 positive, 3 left out), the candidate is the active model
fine-tuned on them (warm start: its vocabulary and network kept, a low
learning rate, a few epochs), and its thresholds are chosen again on the
shop's validation rows (:func:`moderation.calibration.calibrate`, domain
``shop``) before it is registered.

The snapshot is split by product into training, validation (early stopping,
thresholds) and held-out rows. The candidate and the active model are compared
on the SAME held-out rows by ROC-AUC, which does not depend on either model's
threshold; each model's balanced accuracy and share of positive reviews
flagged at its own default threshold are reported beside it.

Moderators' labels on audit items (random unflagged reviews, see
:func:`moderation.labels.audit_labels`) are kept out of training and
evaluated on separately: unlike the held-out rows, which are mostly flags and
weak rating labels, they are an unbiased sample of the reviews the model sees.
When there are at least ``min_audit_labels`` of them with both classes, the
promotion compares the models' ROC-AUC on the audit labels; otherwise on the
held-out rows. Both sets of figures are always reported.
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
    #: Fine-tuning rate: a quarter of a fresh training's, so the base model's knowledge is refined, not erased.
    learning_rate: float = 5e-4
    max_len: int = 150
    min_new_labels: int = 100
    #: Fine-tune the active model (True) or train a new network with a new vocabulary (False).
    warm_start: bool = True
    include_rating_labels: bool = True
    #: The stored ratings' scale: 5 (shop stars: 1-2 negative, 4-5 positive) or 10 (1-4, 9-10);
    #: None reads it from the data: 5 when every stored rating is 5 or below, else 10.
    rating_scale: int | None = None
    include_base_corpus: bool = False
    #: The base corpus's Parquet file; None: ``MODERATION_BASE_CORPUS``, else :func:`default_base_corpus`.
    base_corpus: str | None = None
    max_train_rows: int | None = None
    promotion_policy: str = "if_better"
    min_improvement: float = 0.0
    metric_floor: float = 0.6
    validation_fraction: float = 0.15
    holdout_fraction: float = 0.2
    #: Cap on the share of the shop's positive validation reviews the default threshold may flag.
    max_false_positive_rate: float = 0.08
    #: Audit labels (both classes) needed before promotion is judged on them instead of the held-out rows.
    min_audit_labels: int = 30
    seed: int = 13

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RetrainingParams:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None}
        params = cls(**known)
        if params.promotion_policy not in POLICIES:
            raise ModerationError(f"promotion_policy must be one of {', '.join(POLICIES)}, not {params.promotion_policy!r}")
        if params.rating_scale not in (None, 5, 10):
            raise ModerationError(f"rating_scale must be 5, 10 or empty (read from the ratings), "
                                  f"not {params.rating_scale!r}")
        if not (0 < params.validation_fraction < 1 and 0 < params.holdout_fraction < 1
                and params.validation_fraction + params.holdout_fraction < 1):
            raise ModerationError(f"validation_fraction ({params.validation_fraction}) and holdout_fraction "
                                  f"({params.holdout_fraction}) must be above 0 and leave rows to train on")
        if params.include_base_corpus:
            base_corpus_path(params.base_corpus)  # refused now, not after the snapshot
        return params


BASE_CORPUS_FILE = "ko_reviews.parquet"


def default_base_corpus() -> Path:
    """Where the base corpus is looked for when nothing names it: under the data folder (``MODERATION_HOME``)."""
    return config.data_dir() / BASE_CORPUS_FILE


def base_corpus_path(explicit: str | Path | None = None) -> Path:
    """The base corpus for ``include_base_corpus``: ``explicit`` (the Param), else ``MODERATION_BASE_CORPUS``,
    else :func:`default_base_corpus`; a missing file is refused, saying where it was looked for and how to set it.

    The package ships no corpus (640k reviews), so nothing is looked up next to the code.
    """
    if explicit:
        path, source = Path(explicit), "the base_corpus parameter"
    elif os.environ.get("MODERATION_BASE_CORPUS"):
        path, source = Path(os.environ["MODERATION_BASE_CORPUS"]), "MODERATION_BASE_CORPUS"
    else:
        path, source = default_base_corpus(), "the default under MODERATION_HOME"
    if not path.is_file():
        raise ModerationError(f"include_base_corpus needs the base corpus, not found at {path} ({source}): "
                              f"set the base_corpus parameter or MODERATION_BASE_CORPUS to its Parquet file, "
                              f"or put it at {default_base_corpus()}")
    return path


def snapshot_labels(db_url: str | None, out_dir: Path, params: RetrainingParams) -> dict[str, Any]:
    """Write the labelled data to Parquet; ``ready`` is False when too few labels are new.

    New labels are moderator and imported labels recorded after the active
    model was registered: retraining on the same data again is pointless.
    """
    from moderation.data import fingerprint
    from moderation.labels import audit_labels, labelled_snapshot, rating_labels, stored_rating_scale

    engine = db.make_engine(db_url)
    scale: int | None = None
    with db.translate_errors(engine):
        if params.include_rating_labels:
            scale = params.rating_scale or stored_rating_scale(engine)
            refreshed = rating_labels(engine, scale=scale)  # weak labels follow the current ratings
            log.info("rating labels (%d-point scale%s) refreshed: %d written or changed", scale,
                     "" if params.rating_scale else ", read from the stored ratings", refreshed)
        frame = labelled_snapshot(engine, include_rating=params.include_rating_labels)
        audits = audit_labels(engine)
        frame = frame[~frame["review_id"].isin(audits["review_id"])]  # never trained on: evaluated on
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
    audit_path = out_dir / "audit_labels.parquet"
    audits.rename(columns={"product_id": "group"}).to_parquet(audit_path, index=False)
    counts = frame["label"].value_counts().to_dict() if len(frame) else {}
    result = {
        "path": str(path),
        "rows": int(len(frame)),
        "negative": int(counts.get(1, 0)),
        "positive": int(counts.get(0, 0)),
        "audit_path": str(audit_path),
        "audit_rows": int(len(audits)),
        "audit_negative": int(audits["label"].sum()) if len(audits) else 0,
        "new_labels": new_labels,
        "rating_scale": scale,
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
    # By product: training, validation (early stopping and thresholds) and the held-out comparison rows.
    return split_by_group(frame, validation=params.validation_fraction, test=params.holdout_fraction,
                          seed=params.seed)


#: The domain name the shop's own rows have on a retrained model's card.
SHOP_DOMAIN = "shop"


def warm_start_model(db_url: str | None, params: RetrainingParams) -> dict[str, str] | None:
    """The active model to fine-tune (version and path), or None when ``warm_start`` is off."""
    if not params.warm_start:
        return None
    from moderation.registry import active_model

    engine = db.make_engine(db_url)
    try:
        active = active_model(engine)  # refuses a registered model whose files changed
    finally:
        engine.dispose()
    return {"version": active.version, "path": active.path}


def train_candidate(snapshot: dict[str, Any], params: RetrainingParams, models_dir: Path | None = None,
                    version: str | None = None, init_from: dict[str, str] | None = None) -> dict[str, Any]:
    """Train a candidate on the snapshot's training products, then choose its thresholds on the shop's.

    With ``init_from`` (see :func:`warm_start_model`) the candidate is that
    model fine-tuned; the base corpus joins the training rows when asked.
    The card is calibrated on the validation products (domain ``shop``) and
    rewritten before anyone registers the directory, so its fingerprint is final.
    """
    import pandas as pd

    from moderation.calibration import calibrate, write_card
    from moderation.data import Split, balance_classes, load_labelled, split_by_group
    from moderation.scoring import Scorer
    from moderation.training import TrainingConfig, evaluate_frame, train_on_split, version_name

    parts = _snapshot_split(snapshot["path"], params)
    for side, frame in (("training", parts.train), ("validation", parts.validation)):
        if frame["label"].nunique() < 2:
            raise ModerationError(f"the labelled snapshot needs both negative and positive reviews in its {side} "
                                  f"products ({len(frame)} rows) to train; collect more decisions or include "
                                  f"rating labels")
    labelled = parts.train
    if params.include_base_corpus:
        corpus = load_labelled(base_corpus_path(params.base_corpus))
        corpus_split = split_by_group(corpus, validation=0.0, test=0.1, seed=params.seed)
        labelled = pd.concat([labelled, corpus_split.train], ignore_index=True)
    version = version or version_name()
    out_dir = (models_dir or config.models_dir()) / version
    cfg = TrainingConfig(epochs=params.epochs, batch_size=params.batch_size, learning_rate=params.learning_rate,
                         max_len=params.max_len, patience=2, seed=params.seed, verbose=2,
                         max_train_rows=params.max_train_rows, init_from=init_from["path"] if init_from else None)
    bundle = train_on_split(Split(labelled, parts.validation, parts.test), out_dir, cfg, version,
                            source={"snapshot": snapshot["path"], "snapshot_fingerprint": snapshot.get("fingerprint"),
                                    "include_base_corpus": params.include_base_corpus,
                                    "include_rating_labels": params.include_rating_labels,
                                    "rating_scale": snapshot.get("rating_scale", params.rating_scale)})
    card = calibrate(bundle, {SHOP_DOMAIN: parts.validation}, {SHOP_DOMAIN: parts.test}, default_domain=SHOP_DOMAIN,
                     max_false_positive_rate=params.max_false_positive_rate)
    if len(parts.test):  # the card's test figures at the threshold it now carries
        card.metrics["test_balanced"] = evaluate_frame(Scorer(bundle), balance_classes(parts.test, params.seed))
        card.metrics["test"] = evaluate_frame(Scorer(bundle), parts.test)
    write_card(out_dir, card)
    losses = card.training["history"]["loss"]
    return {"version": version, "path": str(out_dir), "threshold": card.threshold,
            "final_loss": float(losses[-1]), "epochs_run": len(losses),
            "init_from": init_from["version"] if init_from else None,
            "operating_points": {name: point["threshold"]
                                 for name, point in card.operating_points.get(SHOP_DOMAIN, {}).items()}}


def evaluate_models(snapshot: dict[str, Any], candidate: dict[str, Any], active_path: str | None,
                    params: RetrainingParams) -> dict[str, Any]:
    """Metrics of the candidate and the active model on the same held-out labels, and on the audit labels.

    ``candidate``/``active``: held-out figures; ``audit``: the same figures of
    both on the moderators' audit labels (None without any audit label).
    """
    import pandas as pd

    from moderation.model import load_bundle

    holdout = _snapshot_split(snapshot["path"], params).test
    audit_path = snapshot.get("audit_path")  # absent in a snapshot of an earlier release
    audits = pd.read_parquet(audit_path) if audit_path and Path(audit_path).is_file() else pd.DataFrame()
    result: dict[str, Any] = {"holdout_rows": int(len(holdout)),
                              "holdout_negative": int(holdout["label"].sum()) if len(holdout) else 0,
                              "audit_rows": int(len(audits)),
                              "audit_negative": int(audits["label"].sum()) if len(audits) else 0}
    bundles = {name: load_bundle(path) for name, path in (("candidate", candidate["path"]), ("active", active_path))
               if path is not None}
    for name in ("candidate", "active"):
        result[name] = heldout_figures(bundles[name], holdout) if name in bundles and len(holdout) else None
    result["audit"] = {name: heldout_figures(bundles[name], audits) if name in bundles else None
                       for name in ("candidate", "active")} if len(audits) else None
    log.info("evaluation on %d held-out and %d audit labels: %s", len(holdout), len(audits),
             json.dumps(result, ensure_ascii=False))
    return result


def heldout_figures(bundle: Any, frame: Any) -> dict[str, Any]:
    """A model on labelled rows at its own default threshold: ROC-AUC, balanced accuracy, false flags.

    ``positives_flagged`` is the share of positive (label 0) reviews the model
    would put in the queue: the moderators' wasted work and the shop's
    wrongly hidden reviews.
    """
    import numpy as np

    from moderation import metrics
    from moderation.scoring import Scorer

    scores = Scorer(bundle).score_texts(frame["text"]).score
    valid = ~np.isnan(scores)
    labels = frame["label"].to_numpy()[valid].astype(np.int8)
    scores = scores[valid]
    result: dict[str, Any] = metrics.summary(labels, scores, bundle.threshold)
    positives = labels == 0
    result["positives_flagged"] = round(float((scores[positives] >= bundle.threshold).mean()), 5) \
        if positives.any() else None
    result["threshold"] = bundle.threshold
    result["version"] = bundle.version
    result["skipped"] = int((~valid).sum())
    return result


def comparison(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Both models' held-out figures side by side, for the outcome and the log."""
    keys = ("roc_auc", "balanced_accuracy", "positives_flagged", "threshold")
    return {name: {k: (evaluation.get(name) or {}).get(k) for k in keys} for name in ("candidate", "active")}


def audit_comparison(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """Both models' figures on the audit labels side by side; None without audit labels."""
    audit = evaluation.get("audit")
    if not audit:
        return None
    return {**comparison(audit), "rows": evaluation.get("audit_rows"), "negative": evaluation.get("audit_negative")}


def audit_basis(evaluation: dict[str, Any], params: RetrainingParams) -> bool:
    """Whether the audit labels are enough to judge on: ``min_audit_labels`` or more, both classes present."""
    rows, negative = int(evaluation.get("audit_rows") or 0), int(evaluation.get("audit_negative") or 0)
    return bool(evaluation.get("audit")) and rows >= params.min_audit_labels and 0 < negative < rows


def promotion_decision(evaluation: dict[str, Any], candidate: dict[str, Any], params: RetrainingParams) -> dict[str, Any]:
    """Whether to promote, and why, under the operator's policy and the sanity checks.

    The ROC-AUC compared is on the audit labels when :func:`audit_basis`
    allows, else on the held-out rows; the reason names which.
    """
    decision = _promotion_decision(evaluation, candidate, params)
    decision["basis"] = "audit" if audit_basis(evaluation, params) else "holdout"
    return decision


def _promotion_decision(evaluation: dict[str, Any], candidate: dict[str, Any],
                        params: RetrainingParams) -> dict[str, Any]:
    basis = evaluation["audit"] if audit_basis(evaluation, params) else evaluation
    where = (f"on {evaluation['audit_rows']} audit labels" if basis is not evaluation else "held-out")
    cand = basis.get("candidate") or {}
    active = basis.get("active") or {}
    cand_auc = cand.get("roc_auc")
    active_auc = active.get("roc_auc")
    if not math.isfinite(candidate.get("final_loss", float("nan"))):
        return {"promote": False, "reason": "sanity check failed: training loss is not finite"}
    if params.promotion_policy == "never":
        return {"promote": False, "reason": "policy 'never': candidate registered, not promoted"}
    if cand_auc is not None and math.isfinite(cand_auc) and cand_auc < params.metric_floor:
        return {"promote": False, "reason": f"sanity check failed: candidate ROC-AUC {cand_auc:.4f} {where} "
                                            f"is below the floor {params.metric_floor}"}
    if params.promotion_policy == "always":
        return {"promote": True, "reason": "policy 'always'"}
    if cand_auc is None or not math.isfinite(cand_auc):
        return {"promote": False, "reason": "held-out labels too few or one-sided to compare the models"}
    if active_auc is None or not math.isfinite(active_auc):
        return {"promote": True, "reason": f"no comparable active model; candidate ROC-AUC {cand_auc:.4f} {where}"}
    gain = cand_auc - active_auc
    if gain > params.min_improvement:
        return {"promote": True, "reason": f"candidate ROC-AUC {cand_auc:.4f} beats active {active_auc:.4f} "
                                           f"{where} by {gain:+.4f} (> {params.min_improvement})"}
    return {"promote": False, "reason": f"candidate ROC-AUC {cand_auc:.4f} does not beat active {active_auc:.4f} "
                                        f"{where} by more than {params.min_improvement} ({gain:+.4f})"}


def register_and_promote(db_url: str | None, candidate: dict[str, Any], decision: dict[str, Any],
                         evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the candidate; make it the active version only when the decision says so."""
    from moderation.registry import register_model

    engine = db.make_engine(db_url)
    register_model(engine, Path(candidate["path"]), activate=bool(decision["promote"]))
    with db.translate_errors(engine), engine.connect() as conn:
        active = conn.execute(
            select(db.model_versions.c.version).where(db.model_versions.c.is_active.is_(True))
        ).scalar()
    engine.dispose()
    outcome = {"candidate": candidate["version"], "promoted": bool(decision["promote"]),
               "reason": decision["reason"], "active_version": active,
               "init_from": candidate.get("init_from"),
               "basis": decision.get("basis", "holdout"),
               **({"heldout": comparison(evaluation), "audit": audit_comparison(evaluation)}
                  if evaluation is not None else {}),
               "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    log.info("retraining outcome: %s", json.dumps(outcome, ensure_ascii=False))
    return outcome


def params_dict(params: RetrainingParams) -> dict[str, Any]:
    return asdict(params)
