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


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on these rows."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels)
    fp = np.cumsum(~sorted_labels)
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    # Only cut between distinct scores.
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    j = np.where(last_of_run, tp / n_pos - fp / n_neg, -np.inf)
    best = int(np.argmax(j))
    return float(sorted_scores[best])


def summary(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """All reported metrics at one threshold, plus ROC-AUC."""
    result = at_threshold(labels, scores, threshold)
    result["roc_auc"] = roc_auc(labels, scores)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}
