"""Classification metrics for the negative class, in plain NumPy.

Labels and scores follow the package convention: label 1 = negative,
score = probability of negative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) identity; ties averaged."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision and recall of the negative class."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    tn = int((~predicted & ~labels).sum())
    recall = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "accuracy": (tp + tn) / max(len(labels), 1),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision_negative": tp / (tp + fp) if tp + fp else float("nan"),
        "recall_negative": recall,
        "n": int(len(labels)),
        "n_negative": int(labels.sum()),
    }


def _ranked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores in descending order, with cumulative true and false positives and the run-end mask."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels)
    fp = np.cumsum(~sorted_labels)
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True] if len(scores) else np.zeros(0, bool)
    return sorted_scores, tp, fp, last_of_run


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on these rows."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    sorted_scores, tp, fp, last_of_run = _ranked(labels, scores)
    j = np.where(last_of_run, tp / n_pos - fp / n_neg, -np.inf)  # only cut between distinct scores
    return float(sorted_scores[int(np.argmax(j))])


def summary(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """All reported metrics at one threshold, plus ROC-AUC."""
    result = at_threshold(labels, scores, threshold)
    result["roc_auc"] = roc_auc(labels, scores)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}


#: Named operating points: the precision on validation rows each one must reach.
#: Like ORES' per-wiki "maybe / likely / very likely bad" levels.
OPERATING_PRECISIONS: dict[str, float] = {"maybe": 0.6, "likely": 0.8, "very_likely": 0.9}


def operating_points(labels: np.ndarray, scores: np.ndarray,
                     targets: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """For each named precision target, the lowest threshold that reaches it, and the recall there.

    The lowest such threshold gives the most recall at that precision. A target
    no threshold reaches is left out. Precision depends on the share of
    negatives in these rows, so the false-positive rate (which does not) is
    reported beside it.
    """
    targets = OPERATING_PRECISIONS if targets is None else targets
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return {}
    sorted_scores, tp, fp, last_of_run = _ranked(labels, scores)
    precision = tp / (tp + fp)
    points: dict[str, dict[str, float]] = {}
    for name, target in targets.items():
        reaching = np.flatnonzero(last_of_run & (precision >= target) & (sorted_scores > 0) & (sorted_scores < 1))
        if not len(reaching):
            continue
        cut = int(reaching[-1])  # the lowest threshold (most rows flagged) that still reaches the target
        points[name] = {
            "threshold": round(float(sorted_scores[cut]), 6),
            "target_precision": target,
            "precision": round(float(precision[cut]), 5),
            "recall": round(float(tp[cut] / n_pos), 5),
            "false_positive_rate": round(float(fp[cut] / n_neg), 5),
        }
    return points


def capped_fpr_threshold(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold that flags at most ``max_fpr`` of the positive rows: the most recall within that budget.

    A shop's reviews are mostly positive, so the share of good reviews flagged
    decides how much of the queue is noise. This spends that budget on recall
    rather than maximising balanced accuracy, whose maximum on a few hundred
    validation rows moves with a handful of them.
    """
    labels = np.asarray(labels).astype(bool)
    n_neg = max(int((~labels).sum()), 1)
    sorted_scores, tp, fp, last_of_run = _ranked(labels, scores)
    allowed = np.flatnonzero(last_of_run & (fp / n_neg <= max_fpr))
    if not len(allowed):
        return float(sorted_scores[0]) if len(sorted_scores) else 0.5
    return float(sorted_scores[int(allowed[-1])])


#: Queue priority levels: the most good (positive) reviews each may flag, as a share of them.
#: A false-positive rate does not depend on a shop's mix of good and bad reviews, so unlike
#: the precision points above these rank flags the same way in every shop. Only a level whose
#: threshold lies above a run's threshold separates that run's flags.
QUEUE_BUCKET_FPR: dict[str, float] = {"very_likely": 0.01, "likely": 0.03, "maybe": 0.05}


def fpr_points(labels: np.ndarray, scores: np.ndarray,
               budgets: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """For each named false-flag budget, the lowest threshold within it (:func:`capped_fpr_threshold`).

    Each point records its budget, the false-positive rate and recall it
    reached on these rows. A budget whose threshold is not strictly between 0
    and 1 (too few rows to place it) is left out.
    """
    budgets = QUEUE_BUCKET_FPR if budgets is None else budgets
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return {}
    scores = np.asarray(scores, dtype=np.float64)
    points: dict[str, dict[str, float]] = {}
    for name, budget in budgets.items():
        threshold = round(capped_fpr_threshold(labels, scores, budget), 6)
        if not 0.0 < threshold < 1.0:
            continue
        flagged = scores >= threshold
        points[name] = {
            "threshold": threshold,
            "max_false_positive_rate": budget,
            "false_positive_rate": round(float(flagged[~labels].mean()), 5),
            "recall": round(float(flagged[labels].mean()), 5),
        }
    return points


def bucket_shares(labels: np.ndarray, scores: np.ndarray, threshold: float, points: dict[str, float],
                  negative_share: float | None = None) -> list[dict[str, float | str]]:
    """How the flags at ``threshold`` fall into priority buckets, with each bucket's precision.

    ``points`` maps a bucket name to its threshold; a flag goes to the highest
    bucket it reaches, else ``flagged``. With ``negative_share`` the rows are
    reweighted to that share of negatives (label 1) before counting, as a
    shop's natural mix would give; without it the rows count as they are.
    Buckets are listed highest threshold first, then ``flagged``.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_negative, n_positive = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    if negative_share is None:
        weight_neg = weight_pos = 1.0
    else:
        weight_neg, weight_pos = negative_share / n_negative, (1 - negative_share) / n_positive
    ordered = sorted(points.items(), key=lambda item: -item[1])
    bucket = np.full(len(scores), "flagged", dtype=object)
    for name, cut in reversed(ordered):  # highest threshold last, so it wins
        bucket[scores >= cut] = name
    flagged = scores >= threshold
    total = float(labels[flagged].sum() * weight_neg + (~labels[flagged]).sum() * weight_pos)
    rows: list[dict[str, float | str]] = []
    for name in [name for name, _ in ordered] + ["flagged"]:
        inside = flagged & (bucket == name)
        hits = float(labels[inside].sum() * weight_neg)
        misses = float((~labels[inside]).sum() * weight_pos)
        rows.append({"bucket": name, "flags": int(inside.sum()),
                     "share": round((hits + misses) / total, 4) if total else float("nan"),
                     "precision": round(hits / (hits + misses), 4) if hits + misses else float("nan")})
    return rows
