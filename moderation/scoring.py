"""Batched scoring: clean, encode, sort by length, pad per batch, predict.

The seeds pad every review to 100 characters; the median review has 27, so
three quarters of that work is spent on padding. Here rows are sorted by
length and each batch is padded only to its own longest row. Padding is
masked, so a review's score does not depend on which batch it lands in.

An LSTM step is a chain of small operations that two threads cannot share
well, so TensorFlow is told to run each operation on one thread while
several batches are scored side by side, one per core
(:func:`configure_inference_threads`; 1.9x the default on 2 cores). Where
the model is the seed network, its LSTMs run on TensorFlow's fused kernel
(:mod:`moderation.fused_lstm`), which computes the same scores faster.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moderation.errors import SettingError
from moderation.model import ModelBundle, load_bundle
from moderation.progress import Progress
from moderation.text import clean_texts, skip_reasons
from moderation.vocab import EncodedTexts

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1024
#: Characters (rows x padded width) per batch at most: bounds a batch's memory, which
#: the fused kernel's per-step gate outputs make about 2.7 KB per character.
DEFAULT_MAX_BATCH_CHARS = 65_536
WORKERS_ENV = "MODERATION_SCORING_WORKERS"


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


def default_workers() -> int:
    """Batches scored side by side: ``MODERATION_SCORING_WORKERS``, else the CPUs this process may use."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        try:
            workers = int(configured)
        except ValueError:
            raise SettingError(f"{WORKERS_ENV} must be a whole number, got {configured!r}") from None
        if workers < 1:
            raise SettingError(f"{WORKERS_ENV} must be at least 1, got {workers}")
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_inference_threads(workers: int | None = None) -> bool:
    """One thread per TensorFlow operation, ``workers`` operations at once.

    TensorFlow accepts this only before it first runs anything, so call it
    before loading a model (:func:`load_scorer` does). Returns False, and
    changes nothing, where that moment has passed or the backend is not
    TensorFlow: scoring still works, at the default threading.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    workers = workers or default_workers()
    threading = tf.config.threading
    wanted = (1, max(2, workers))
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == wanted:
        return True
    try:
        threading.set_intra_op_parallelism_threads(wanted[0])
        threading.set_inter_op_parallelism_threads(wanted[1])
    except RuntimeError:
        log.info("TensorFlow already started: scoring with its current threading")
        return False
    return True


def load_scorer(model_dir: str | os.PathLike[str], threshold: float | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None) -> Scorer:
    """A Scorer for a model directory, with TensorFlow's threading set for inference first."""
    workers = workers or default_workers()
    configure_inference_threads(workers)
    return Scorer(load_bundle(model_dir), batch_size=batch_size, threshold=threshold, workers=workers)


class Scorer:
    """Scores review texts with one loaded model; build once per task, reuse per chunk."""

    def __init__(self, bundle: ModelBundle, batch_size: int = DEFAULT_BATCH_SIZE, threshold: float | None = None,
                 workers: int | None = None, fused: bool | None = None,
                 max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS):
        from moderation.fused_lstm import fused_allowed

        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if max_batch_chars < 1:
            raise ValueError(f"max_batch_chars must be at least 1, got {max_batch_chars}")
        self.bundle = bundle
        self.batch_size = batch_size
        self.max_batch_chars = max_batch_chars
        self.threshold = bundle.threshold if threshold is None else threshold
        forward = _compiled_forward(bundle.model, fused_allowed() if fused is None else fused)
        self._predict = forward.predict
        self.forward_kind = forward.kind
        self.workers = (workers or default_workers()) if forward.thread_safe else 1

    def score_texts(self, texts: Iterable[str | None] | pd.Series, progress: Progress | None = None) -> Scores:
        """Scores in input order; ``progress`` advances by each finished batch's rows (skipped rows at once)."""
        raw = texts if isinstance(texts, pd.Series) else pd.Series(list(texts), dtype=object)
        raw = raw.reset_index(drop=True)
        cleaned = clean_texts(raw)
        reasons = skip_reasons(raw, cleaned)
        scorable = reasons.isna().to_numpy()
        scores = np.full(len(raw), np.nan, dtype=np.float64)
        if progress is not None and (~scorable).any():
            progress.advance(int((~scorable).sum()))
        if scorable.any():
            encoded = self.bundle.vocab.encode(cleaned[scorable].tolist(), self.bundle.card.max_len)
            scores[scorable] = self.predict_encoded(encoded, progress)
        flagged = np.where(scorable, scores >= self.threshold, False)
        return Scores(score=scores, skip_reason=reasons, flagged=flagged)

    def predict_encoded(self, encoded: EncodedTexts, progress: Progress | None = None) -> np.ndarray:
        """Scores of encoded rows in their original order; batches run ``workers`` at a time."""
        out = np.empty(len(encoded), dtype=np.float64)
        batches = length_sorted_batches(encoded.lengths, self.batch_size, self.max_batch_chars)

        def score(rows: np.ndarray) -> int:
            out[rows] = self._predict(encoded.padded(rows))
            return len(rows)

        if self.workers == 1 or len(batches) == 1:
            for rows in batches:
                done = score(rows)
                if progress is not None:
                    progress.advance(done)
        else:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="scorer") as pool:
                for done in pool.map(score, batches):  # map re-raises a worker's error here
                    if progress is not None:
                        progress.advance(done)
        return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int, max_chars: int) -> list[np.ndarray]:
    """Row indices sorted by length, cut into batches of at most ``batch_size`` rows and ``max_chars`` characters.

    A batch is padded to its longest (last) row, so its cost is rows x that
    length: short rows go ``batch_size`` at a time, long ones fewer at a time,
    and no batch needs more memory than ``max_chars`` characters allow (a
    single row longer than that still gets a batch of its own).
    """
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = np.maximum(lengths[order], 1)
    batches, start = [], 0
    while start < len(order):
        window = sorted_lengths[start : start + batch_size]
        rows = np.arange(1, len(window) + 1)
        fits = int(np.count_nonzero(rows * window <= max_chars))  # rows * width grows with rows: a prefix fits
        end = start + max(fits, 1)
        batches.append(order[start:end])
        start = end
    return batches


Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Forward:
    """How a Scorer runs the network: the function, whether threads may share it, and what it is."""

    predict: Predict
    thread_safe: bool
    kind: str


_COMPILED: weakref.WeakKeyDictionary[Any, dict[bool, Forward]] = weakref.WeakKeyDictionary()


def _compiled_forward(model: Any, fused: bool) -> Forward:
    """One forward pass per model (and per choice of kernel), traced once for any batch shape."""
    per_model = _COMPILED.setdefault(model, {})
    if fused not in per_model:
        per_model[fused] = _build_forward(model, fused)
    return per_model[fused]


def _build_forward(model: Any, fused: bool) -> Forward:
    """The fused LSTM kernel where it computes the same function, else the Keras layers.

    On TensorFlow the pass is a traced function that threads may share;
    elsewhere plain ``predict_on_batch``, called from one thread.
    """
    import keras

    from moderation import fused_lstm

    def as_scores(tensor: Any) -> np.ndarray:
        return np.asarray(tensor).reshape(-1).astype(np.float64)

    if keras.backend.backend() != "tensorflow":
        return Forward(lambda batch: as_scores(model.predict_on_batch(batch)), False, "Keras predict_on_batch")
    if fused:
        reason = fused_lstm.unsupported_reason(model)
        if reason is None:
            forward = fused_lstm.build_fused_forward(model)
            return Forward(lambda batch: as_scores(forward(batch)), True, "fused LSTM kernel")
        log.info("scoring with the Keras layers: %s", reason)
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)
    def layers_forward(ids: Any) -> Any:
        return model(ids, training=False)

    return Forward(lambda batch: as_scores(layers_forward(batch)), True, "Keras layers")


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
