"""Batched scoring: clean, encode, sort by length, pad per batch, predict.

The seeds pad every review to 100 characters; the median review has 27, so
three quarters of that work is spent on padding. Here rows are sorted by
length and each batch is padded only to its own longest row. Padding is
masked, so a review's score does not depend on which batch it lands in.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moderation.model import ModelBundle
from moderation.text import clean_texts, skip_reasons
from moderation.vocab import EncodedTexts

DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Scores:
    """Per-row results, in input order. ``score`` is NaN where ``skip_reason`` is set."""

    score: np.ndarray
    skip_reason: pd.Series
    flagged: np.ndarray

    def to_frame(self, index: pd.Index | None = None) -> pd.DataFrame:
        return pd.DataFrame(
            {"score": self.score, "flagged": self.flagged, "skip_reason": self.skip_reason.to_numpy()},
            index=index,
        )


class Scorer:
    """Scores review texts with one loaded model; build once per task, reuse per chunk."""

    def __init__(self, bundle: ModelBundle, batch_size: int = DEFAULT_BATCH_SIZE, threshold: float | None = None):
        self.bundle = bundle
        self.batch_size = batch_size
        self.threshold = bundle.threshold if threshold is None else threshold
        self._predict = _compiled_predict(bundle.model)

    def score_texts(self, texts: Iterable[str | None] | pd.Series) -> Scores:
        raw = texts if isinstance(texts, pd.Series) else pd.Series(list(texts), dtype=object)
        raw = raw.reset_index(drop=True)
        cleaned = clean_texts(raw)
        reasons = skip_reasons(raw, cleaned)
        scorable = reasons.isna().to_numpy()
        scores = np.full(len(raw), np.nan, dtype=np.float64)
        if scorable.any():
            encoded = self.bundle.vocab.encode(cleaned[scorable].tolist(), self.bundle.card.max_len)
            scores[scorable] = self.predict_encoded(encoded)
        flagged = np.where(scorable, scores >= self.threshold, False)
        return Scores(score=scores, skip_reason=reasons, flagged=flagged)

    def predict_encoded(self, encoded: EncodedTexts) -> np.ndarray:
        """Scores of encoded rows in their original order."""
        out = np.empty(len(encoded), dtype=np.float64)
        for rows, batch in length_bucketed_batches(encoded, self.batch_size):
            out[rows] = self._predict(batch)
        return out


def length_bucketed_batches(
    encoded: EncodedTexts, batch_size: int, order: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, right-padded batch), batches of similar length.

    Rows are sorted by length (stable, so the result is deterministic) and
    cut into batches of at most ``batch_size`` rows.
    """
    order = np.argsort(encoded.lengths, kind="stable") if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, encoded.padded(rows)


_COMPILED: weakref.WeakKeyDictionary[Any, Callable[[np.ndarray], np.ndarray]] = weakref.WeakKeyDictionary()


def _compiled_predict(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """One forward pass per model, traced once for any batch shape (TensorFlow), else plain predict."""
    if model not in _COMPILED:
        _COMPILED[model] = _build_predict(model)
    return _COMPILED[model]


def _build_predict(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)
        def forward(ids: Any) -> Any:
            return model(ids, training=False)

        return lambda batch: forward(batch).numpy().reshape(-1).astype(np.float64)
    return lambda batch: np.asarray(model.predict_on_batch(batch)).reshape(-1).astype(np.float64)


def seed_style_predict(bundle: ModelBundle, texts: list[str], max_len: int = 100, batch_size: int = 1024) -> np.ndarray:
    """The seeds' way, kept as the benchmark baseline: pad all to ``max_len``, one predict call."""
    cleaned = clean_texts(texts).fillna("").tolist()
    encoded = bundle.vocab.encode(cleaned, max_len)
    matrix = encoded.padded(width=max_len)
    return bundle.model.predict(matrix, batch_size=batch_size, verbose=0).reshape(-1).astype(np.float64)


def prefix_trace(scorer: Scorer, text: str) -> list[tuple[str, float]]:
    """Score over growing word prefixes, as seed 002 does: where did the review turn?"""
    words = text.split()
    prefixes = [" ".join(words[: i + 1]) for i in range(len(words))]
    if not prefixes:
        return []
    result = scorer.score_texts(prefixes)
    return [(p, float(s)) for p, s in zip(prefixes, result.score) if not math.isnan(s)]
