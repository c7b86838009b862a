"""Choosing a model's thresholds per domain, and measuring it per domain.

A score means the same to every shop, but the threshold that makes a useful
queue does not: the shares of good reviews flagged differ between movie,
game-store and shopping text. So a card keeps, per domain, named operating
points chosen on validation rows (see :func:`moderation.metrics.operating_points`)
and one default threshold chosen on the default domain's validation rows
(the most recall within a budget of good reviews flagged);
test rows, never used for a choice, give the figures.

Needs a scorer, not training: importing this module loads no TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moderation import metrics
from moderation.errors import ModerationError
from moderation.model import CARD_FILE, ModelBundle, ModelCard

log = logging.getLogger(__name__)

#: Default cap on the share of positive validation rows the default threshold may flag.
DEFAULT_MAX_FALSE_POSITIVE_RATE = 0.08


def scored_labels(bundle: ModelBundle, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The rows' labels and the model's scores, leaving out rows it could not score (NaN)."""
    from moderation.scoring import Scorer

    scores = Scorer(bundle).score_texts(frame["text"]).score
    valid = ~np.isnan(scores)
    return frame["label"].to_numpy()[valid].astype(np.int8), scores[valid]


def calibrate(bundle: ModelBundle, validation: Mapping[str, pd.DataFrame], test: Mapping[str, pd.DataFrame],
              default_domain: str, max_false_positive_rate: float = DEFAULT_MAX_FALSE_POSITIVE_RATE) -> ModelCard:
    """Set the card's operating points, queue buckets, default threshold and per-domain test figures.

    ``validation`` and ``test`` map a domain name to labelled rows (``text``,
    ``label``, 1 = negative). The default threshold is the lowest that flags
    at most ``max_false_positive_rate`` of ``default_domain``'s positive
    validation rows: the most recall that false-flag budget allows. Test figures are
    given at that threshold and, for comparison, at the domain's own best one.
    The card is changed in place and returned; :func:`write_card` saves it.
    """
    if default_domain not in validation:
        raise ModerationError(f"no validation rows for the default domain {default_domain!r} "
                              f"(domains: {', '.join(sorted(validation)) or 'none'})")
    if not 0 < max_false_positive_rate < 1:
        raise ModerationError(f"max false-positive rate must be between 0 and 1, not {max_false_positive_rate}")
    card = bundle.card
    scored_validation = {d: scored_labels(bundle, f) for d, f in validation.items()}
    for domain, (labels, _) in scored_validation.items():
        if labels.sum() == 0 or labels.sum() == len(labels):
            raise ModerationError(f"the {domain} validation rows need both negative and positive reviews")
    labels, scores = scored_validation[default_domain]
    threshold = round(metrics.capped_fpr_threshold(labels, scores, max_false_positive_rate), 6)
    if not 0.0 < threshold < 1.0:
        raise ModerationError(f"no usable default threshold on the {default_domain} validation rows ({threshold})")
    card.threshold = threshold
    card.default_domain = default_domain
    card.operating_points = {d: metrics.operating_points(l, s) for d, (l, s) in scored_validation.items()}
    card.queue_buckets = {d: metrics.fpr_points(l, s) for d, (l, s) in scored_validation.items()}
    per_domain: dict[str, Any] = {}
    for domain, (labels, scores) in scored_validation.items():
        own = round(metrics.best_threshold(labels, scores), 6)
        entry: dict[str, Any] = {
            "validation_rows": int(len(labels)),
            "validation_at_default": metrics.summary(labels, scores, threshold),
            "own_best_threshold": own,
        }
        if domain in test and len(test[domain]):
            test_labels, test_scores = scored_labels(bundle, test[domain])
            entry["test_rows"] = int(len(test_labels))
            entry["test_at_default"] = metrics.summary(test_labels, test_scores, threshold)
            entry["test_at_own_threshold"] = metrics.summary(test_labels, test_scores, own)
            flagged = test_scores >= threshold
            entry["test_at_default"]["positives_flagged"] = round(
                float(flagged[test_labels == 0].mean()) if (test_labels == 0).any() else float("nan"), 5)
        per_domain[domain] = entry
    card.metrics = {**card.metrics, "per_domain": per_domain,
                    "calibration": {"default_domain": default_domain,
                                    "max_false_positive_rate": max_false_positive_rate,
                                    "rule": "lowest threshold flagging at most max_false_positive_rate of "
                                            "the default domain's positive validation rows"}}
    log.info("calibrated %s: default threshold %.4f on %s; operating points for %s", card.version, threshold,
             default_domain, ", ".join(sorted(card.operating_points)))
    return card


def queue_buckets(bundle: ModelBundle, validation: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """Per domain, the queue's priority levels chosen on these validation rows (:func:`metrics.fpr_points`).

    :func:`calibrate` sets them with everything else; this gives them alone, to
    add to a card calibrated before they existed without touching its other choices.
    """
    return {domain: metrics.fpr_points(*scored_labels(bundle, frame)) for domain, frame in validation.items()}


def write_card(directory: Path | str, card: ModelCard) -> Path:
    """Rewrite only card.json: the model and vocabulary files, and their recorded hashes, stay as they are."""
    path = Path(directory) / CARD_FILE
    path.write_text(card.to_json() + "\n", encoding="utf-8")
    return path
