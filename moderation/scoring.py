"""Batched scoring: clean, encode, sort by length, pad per batch, predict.

The seeds pad every review to 100 characters; the median review has 27, so
three quarters of that work is spent on padding. Here rows are sorted by
length and each batch is padded only to its own longest row. Padding is
masked, so a review's score does not depend on which batch it lands in, and a
text repeated within one call (shops get "좋아요" thousands of times a night)
is scored once.

An LSTM step is a chain of small operations that two threads cannot share
well, so TensorFlow is told to run each operation on one thread while
several batches are scored side by side, one per core
(:func:`configure_inference_threads`; 1.9x the default on 2 cores). Where
the model is the seed network, its LSTMs run on TensorFlow's fused kernel
(:mod:`moderation.fused_lstm`), which computes the same scores faster.

On a CPU, reviews are scored without TensorFlow at all
(:mod:`moderation.numpy_lstm`): NumPy's BLAS multiplies, a compiled cell
step (``moderation/_lstm_cell.c``) does the rest of each step, the scores
are the same, and the process skips TensorFlow's import (2-3 s, 6-7 s where
bytecode is not compiled). Where the cell step was not compiled, NumPy
computes it too, slower than the fused kernel, and takes only jobs of up to
:data:`NUMPY_MAX_ROWS` reviews. Keras scores on the CPU when asked to
(``MODERATION_SCORING_ENGINE=keras``), when the model is not the seed
network, or when the machine has an accelerator and Keras finds no GPU on it.

That is the CPU plan. Where Keras sees a GPU, a different plan fits
(:func:`plan_scoring`, a pure function of the backend, the visible GPUs and
the environment): the Keras layers (cuDNN's LSTM on TensorFlow), one
worker, large batches whose shapes come from a small fixed set (so JAX and
PyTorch do not compile a kernel per batch), full float32 precision, and a
background thread that cleans and encodes the next slice of reviews while
the device scores the current one.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from moderation.errors import SettingError
from moderation.model import ModelBundle, load_bundle
from moderation.numpy_lstm import ENGINE_ENV
from moderation.progress import Progress
from moderation.text import clean_texts, skip_reasons
from moderation.vocab import OOV_ID, EncodedTexts

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1024
#: Characters (rows x padded width) per batch at most: bounds a batch's memory, which
#: the fused kernel's per-step gate outputs make about 2.7 KB per character.
DEFAULT_MAX_BATCH_CHARS = 65_536
WORKERS_ENV = "MODERATION_SCORING_WORKERS"
#: ``auto`` (default: the GPU plan where Keras sees a GPU), ``cpu`` or ``gpu`` (an error without one).
DEVICE_ENV = "MODERATION_SCORING_DEVICE"
BATCH_ROWS_ENV = "MODERATION_SCORING_BATCH_ROWS"
BATCH_CHARS_ENV = "MODERATION_SCORING_BATCH_CHARS"
#: GPU batch defaults, NOT measured on a GPU yet: 8,192 rows of up to 128 characters
#: is about 40 MB of LSTM activations in float32, far below any data-centre GPU's
#: memory, and large enough that one batch is thousands of rows per kernel launch.
GPU_BATCH_ROWS = 8192
GPU_BATCH_CHARS = 1_048_576
#: GPU batch widths are rounded up to a multiple of this, and rows up to a count that
#: depends only on the width: a few dozen shapes in all, each compiled once.
GPU_WIDTH_STEP = 16
#: Smallest row count of a GPU batch shape (rows are rounded up to a power of two).
GPU_MIN_SHAPE_ROWS = 256
#: Reviews cleaned and encoded per slice on the GPU plan, in batches.
GPU_SLICE_BATCHES = 4
#: The same on the NumPy CPU plan: 32 batches of 1,024 rows, enough rows per slice to sort by length.
CPU_SLICE_BATCHES = 32


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


def _positive_env(env: Mapping[str, str], name: str) -> int | None:
    """A whole number of at least 1 from ``env[name]``; None when unset or empty."""
    configured = env.get(name, "").strip()
    if not configured:
        return None
    try:
        value = int(configured)
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {configured!r}") from None
    if value < 1:
        raise SettingError(f"{name} must be at least 1, got {value}")
    return value


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Batches scored side by side: ``MODERATION_SCORING_WORKERS``, else the CPUs this process may use."""
    return _positive_env(os.environ, WORKERS_ENV) or usable_cpus()


@dataclass(frozen=True)
class ScoringPlan:
    """How one process scores: on which device, in which batches, with how many threads.

    ``slice_rows`` None means all rows are cleaned and encoded at once, before
    the first batch runs (the CPU plan); otherwise slices of that many rows,
    the next one prepared by a background thread when ``prefetch`` is set.
    """

    device: str
    backend: str
    gpus: tuple[str, ...]
    workers: int
    batch_rows: int
    batch_chars: int
    fused: bool
    single_thread_ops: bool
    prefetch: bool
    slice_rows: int | None
    width_step: int
    fixed_shapes: bool
    #: ``keras`` (the Keras model on ``backend``) or ``numpy`` (:mod:`moderation.numpy_lstm`, no TensorFlow).
    engine: str = "keras"

    def describe(self) -> str:
        where = f"GPU {', '.join(self.gpus)}" if self.device == "gpu" else "CPU"
        on = "NumPy (no TensorFlow)" if self.engine == "numpy" else f"Keras' {self.backend} backend"
        return (f"{where} on {on}: batches of {self.batch_rows:,} rows / "
                f"{self.batch_chars:,} characters, {self.workers} worker(s)"
                + (", next slice prepared in the background" if self.prefetch else ""))


def device_choice(env: Mapping[str, str]) -> str:
    """``MODERATION_SCORING_DEVICE``: ``auto`` (default), ``cpu`` or ``gpu``."""
    choice = (env.get(DEVICE_ENV, "") or "auto").strip().lower()
    if choice not in {"auto", "cpu", "gpu"}:
        raise SettingError(f"{DEVICE_ENV} must be auto, cpu or gpu, got {env.get(DEVICE_ENV)!r}")
    return choice


def plan_scoring(backend: str, gpus: Sequence[str], env: Mapping[str, str], cpus: int = 1) -> ScoringPlan:
    """The scoring plan for a Keras backend, the GPUs it sees and the environment; no side effects.

    A visible GPU gets the GPU plan unless ``MODERATION_SCORING_DEVICE=cpu``;
    ``=gpu`` without a visible GPU is an error rather than a silent CPU run.
    The CPU plan is the one measured in docs/performance.md, unchanged.
    """
    choice = device_choice(env)
    if choice == "gpu" and not gpus:
        raise SettingError(f"{DEVICE_ENV}=gpu but Keras' {backend} backend sees no GPU")
    on_gpu = bool(gpus) and choice != "cpu"
    rows = _positive_env(env, BATCH_ROWS_ENV) or (GPU_BATCH_ROWS if on_gpu else DEFAULT_BATCH_SIZE)
    chars = _positive_env(env, BATCH_CHARS_ENV) or (GPU_BATCH_CHARS if on_gpu else DEFAULT_MAX_BATCH_CHARS)
    if on_gpu:
        # One stream of work keeps the device busy; a second Python thread would only contend for it.
        return ScoringPlan(device="gpu", backend=backend, gpus=tuple(gpus), workers=1, batch_rows=rows,
                           batch_chars=chars, fused=False, single_thread_ops=False, prefetch=True,
                           slice_rows=rows * GPU_SLICE_BATCHES, width_step=GPU_WIDTH_STEP, fixed_shapes=True)
    from moderation.fused_lstm import fused_allowed

    return ScoringPlan(device="cpu", backend=backend, gpus=(), workers=_positive_env(env, WORKERS_ENV) or cpus,
                       batch_rows=rows, batch_chars=chars, fused=fused_allowed(env), single_thread_ops=backend == "tensorflow",
                       prefetch=False, slice_rows=None, width_step=1, fixed_shapes=False)


#: Most reviews one process scores on NumPy when the engine is ``auto`` and the compiled cell step
#: (:func:`moderation.numpy_lstm.compiled_cell`) is not built. NumPy alone skips TensorFlow's import
#: (2-3 s with compiled bytecode, 6-7 s without) but computes a character about 1.35x slower than the
#: fused kernel on an AVX-512 CPU (218,361 texts, 2 threads: 3.6 s against 2.7 s) and far slower
#: without AVX-512, where its tanh is not vectorised; so past a few hundred thousand reviews the import
#: pays for itself. With the compiled step NumPy is the faster of the two at any size (218,361 texts on
#: a 2-core AVX2 CPU: 8.6-9.1 s against the fused kernel's 11.2-12.2 s, imports aside) and takes every job.
NUMPY_MAX_ROWS = 300_000


def numpy_plan(env: Mapping[str, str], cpus: int = 1, rows: int | None = None) -> ScoringPlan | None:
    """The CPU plan on NumPy where the environment allows it without asking Keras; None where Keras must decide.

    ``MODERATION_SCORING_ENGINE=keras`` or ``MODERATION_SCORING_DEVICE=gpu``
    leave the choice to Keras, and so does ``auto`` on a machine with an
    accelerator's device files (:func:`accelerator_present`): only Keras'
    backend can say whether it can use that accelerator. Where the compiled
    cell step is not built, ``auto`` also leaves jobs of more than
    :data:`NUMPY_MAX_ROWS` ``rows`` to Keras (an unknown size counts as small). ``engine=numpy`` with ``device=gpu`` is a
    contradiction and an error.
    """
    from moderation.numpy_lstm import compiled_cell, engine_choice

    engine, device = engine_choice(env), device_choice(env)
    if engine == "numpy" and device == "gpu":
        raise SettingError(f"{ENGINE_ENV}=numpy runs on the CPU, but {DEVICE_ENV}=gpu asks for a GPU")
    if engine == "keras" or device == "gpu" or (device == "auto" and engine == "auto" and accelerator_present()):
        return None
    if engine == "auto" and rows is not None and rows > NUMPY_MAX_ROWS and compiled_cell() is None:
        return None
    batch_rows = _positive_env(env, BATCH_ROWS_ENV) or DEFAULT_BATCH_SIZE
    # Slices, the next one cleaned and encoded by a background thread while this one is scored: cleaning
    # otherwise runs alone on one core before the first batch (0.65 s of 5.9 s on 218,361 reviews, 2 cores).
    return ScoringPlan(device="cpu", backend="numpy", gpus=(), workers=_positive_env(env, WORKERS_ENV) or cpus,
                       batch_rows=batch_rows,
                       batch_chars=_positive_env(env, BATCH_CHARS_ENV) or DEFAULT_MAX_BATCH_CHARS,
                       fused=False, single_thread_ops=False, prefetch=True,
                       slice_rows=batch_rows * CPU_SLICE_BATCHES, width_step=1, fixed_shapes=False, engine="numpy")


#: Device files of accelerators a Keras backend can use: NVIDIA (CUDA), AMD (ROCm), TPUs and other accelerators.
ACCELERATOR_DEVICE_PATTERNS = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel*", "/dev/vfio/[0-9]*")


def accelerator_present(patterns: Sequence[str] | None = None) -> bool:
    """Whether this machine has an accelerator's device files (``ACCELERATOR_DEVICE_PATTERNS``): cheap, no framework imported."""
    import glob

    return any(glob.glob(pattern) for pattern in (ACCELERATOR_DEVICE_PATTERNS if patterns is None else patterns))


def visible_gpus(backend: str) -> tuple[str, ...]:
    """The GPUs Keras' backend would run on, asked in that backend's own terms.

    On TensorFlow this lists devices without starting the runtime, so the
    thread settings of the CPU plan can still be applied afterwards.
    """
    if backend == "tensorflow":
        import tensorflow as tf

        return tuple(device.name for device in tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        if jax.default_backend() == "cpu":
            return ()
        return tuple(str(device) for device in jax.devices() if device.platform != "cpu")
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return ()
        return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    return ()


def current_plan(env: Mapping[str, str] | None = None, rows: int | None = None) -> ScoringPlan:
    """The plan for this process scoring about ``rows`` reviews, and what it runs on imported.

    NumPy where it may (:func:`numpy_plan`), else Keras and its backend.
    Imports Keras (TensorFlow, seconds) only where the plan is Keras'; a
    scoring task calls this first so that its log tells import time and
    model load time apart.
    """
    env = os.environ if env is None else env
    plan = numpy_plan(env, usable_cpus(), rows)
    if plan is not None:
        return plan
    import keras

    backend = keras.backend.backend()
    return plan_scoring(backend, visible_gpus(backend), env, usable_cpus())


def use_full_precision(backend: str) -> None:
    """No TF32 or other reduced-precision matmuls: GPU scores must equal CPU scores within 1e-4.

    TensorFlow and JAX use TF32 for float32 matrix products on recent NVIDIA
    GPUs by default (about 1e-3 relative error); a review near the threshold
    would be flagged on one device and not on the other.
    """
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def reduced_precision_layers(model: Any) -> list[str]:
    """Layers that compute in less than float32 (a mixed-precision policy); empty when none do."""
    return [f"{layer.name} ({layer.dtype_policy.compute_dtype})" for layer in getattr(model, "layers", [])
            if getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") != "float32"]


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


def keras_fallback_plan(version: str, reason: str | None) -> ScoringPlan:
    """Keras' plan for a model NumPy cannot score; an error where ``MODERATION_SCORING_ENGINE=numpy`` insisted."""
    from moderation.numpy_lstm import engine_choice

    if engine_choice() == "numpy":
        raise SettingError(f"{ENGINE_ENV}=numpy cannot score model {version}: {reason}")
    log.info("scoring with Keras: NumPy cannot score model %s (%s)", version, reason)
    return current_plan({**os.environ, ENGINE_ENV: "keras"})


def load_scorer(model_dir: str | os.PathLike[str], threshold: float | None = None,
                batch_size: int | None = None, workers: int | None = None,
                plan: ScoringPlan | None = None, rows: int | None = None) -> Scorer:
    """A Scorer for a model directory on this process's plan, its threading set before the model loads.

    ``rows``, the reviews this process will score if known, chooses between
    NumPy and Keras on the CPU where the compiled cell step is not built
    (:data:`NUMPY_MAX_ROWS`).

    On the NumPy plan a model that is not the seed network is scored by
    Keras instead (logged), unless ``MODERATION_SCORING_ENGINE=numpy`` asked
    for NumPy: then it is an error that says why. The bundle read for NumPy
    serves Keras too: its Keras model loads on first use, after the
    threading is set.
    """
    plan = plan or current_plan(rows=rows)
    bundle = None
    if plan.engine == "numpy":
        bundle = load_bundle(model_dir, with_keras=False)
        if bundle.seed_weights is None:
            plan = keras_fallback_plan(bundle.version, bundle.seed_weights_unusable)
    if plan.single_thread_ops:
        configure_inference_threads(workers or plan.workers)
    if plan.device == "gpu":
        use_full_precision(plan.backend)
    log.info("scoring plan: %s", plan.describe())
    bundle = bundle or load_bundle(model_dir)
    return Scorer(bundle, batch_size=batch_size, threshold=threshold, workers=workers, plan=plan)


class Scorer:
    """Scores review texts with one loaded model; build once per task, reuse per chunk."""

    def __init__(self, bundle: ModelBundle, batch_size: int | None = None, threshold: float | None = None,
                 workers: int | None = None, fused: bool | None = None,
                 max_batch_chars: int | None = None, plan: ScoringPlan | None = None):
        """Arguments left as None come from ``plan`` (by default :func:`current_plan`)."""
        plan = plan or current_plan()
        batch_size = plan.batch_rows if batch_size is None else batch_size
        max_batch_chars = plan.batch_chars if max_batch_chars is None else max_batch_chars
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if max_batch_chars < 1:
            raise ValueError(f"max_batch_chars must be at least 1, got {max_batch_chars}")
        numpy_weights = None
        if plan.engine == "numpy":
            numpy_weights, reason = _numpy_weights(bundle)
            if numpy_weights is None:
                plan = keras_fallback_plan(bundle.version, reason)
                if plan.single_thread_ops:
                    configure_inference_threads(workers or plan.workers)
        reduced = [] if numpy_weights is not None else reduced_precision_layers(bundle.model)
        if reduced:
            raise ValueError(f"scoring needs float32 layers, but {', '.join(reduced)} compute in less: "
                             "flags near the threshold would depend on the device")
        self.bundle = bundle
        self.plan = plan
        self.batch_size = batch_size
        self.max_batch_chars = max_batch_chars
        self.threshold = bundle.threshold if threshold is None else threshold
        if numpy_weights is not None:
            from moderation.numpy_lstm import NumpySeedForward

            numpy_forward = NumpySeedForward(numpy_weights)
            forward = Forward(numpy_forward, True, numpy_forward.kind)
        else:
            forward = _compiled_forward(bundle.model, plan.fused if fused is None else fused)
        self._predict = forward.predict
        self.forward_kind = forward.kind
        log.info("forward pass: %s", forward.kind)
        self.workers = (workers or plan.workers) if forward.thread_safe else 1

    def score_texts(self, texts: Iterable[str | None] | pd.Series, progress: Progress | None = None) -> Scores:
        """Scores in input order; ``progress`` advances by each finished batch's rows (skipped rows at once)."""
        if self.plan.engine == "numpy":
            from moderation.numpy_lstm import single_threaded_blas

            with single_threaded_blas():
                return self._score_texts(texts, progress)
        return self._score_texts(texts, progress)

    def _score_texts(self, texts: Iterable[str | None] | pd.Series, progress: Progress | None) -> Scores:
        raw = texts if isinstance(texts, pd.Series) else pd.Series(list(texts), dtype=object)
        raw = raw.reset_index(drop=True)
        scores = np.full(len(raw), np.nan, dtype=np.float64)
        slices = self._slices(len(raw))
        reasons = []
        for start, prepared in self._prepared(raw, slices):
            reasons.append(prepared.reasons)
            settled = len(prepared.reasons) - prepared.distinct_texts  # skipped, or a repeat of a text scored here
            if progress is not None and settled:
                progress.advance(settled)
            if prepared.encoded is None:
                continue
            if prepared.batches is not None:
                distinct = np.empty(len(prepared.encoded), dtype=np.float64)
                for rows, matrix in prepared.batches:
                    distinct[rows] = self._predict(matrix)[: len(rows)]
                    if progress is not None:
                        progress.advance(len(rows))
            else:
                distinct = self.predict_encoded(prepared.encoded, progress)
            scores[start + prepared.positions] = distinct[prepared.text_of_row]
        skip_reason = reasons[0] if len(reasons) == 1 else pd.concat(reasons, ignore_index=True)
        scorable = skip_reason.isna().to_numpy()
        flagged = np.where(scorable, scores >= self.threshold, False)
        return Scores(score=scores, skip_reason=skip_reason, flagged=flagged)

    def _slices(self, n: int) -> list[tuple[int, int]]:
        """Row ranges cleaned and encoded together: all rows at once unless the plan slices them."""
        step = self.plan.slice_rows or max(n, 1)
        return [(start, min(start + step, n)) for start in range(0, max(n, 1), step)]

    def _prepared(self, raw: pd.Series, slices: list[tuple[int, int]]) -> Iterator[tuple[int, _Prepared]]:
        """Each slice cleaned, encoded (and on the GPU plan batched and padded), in order.

        With ``prefetch`` a background thread prepares slice k+1 while the
        caller scores slice k: cleaning is Arrow and NumPy work that releases
        the GIL, and the device's work is launched from the calling thread.
        """
        if not self.plan.prefetch or len(slices) == 1:
            for start, stop in slices:
                yield start, self._prepare(raw.iloc[start:stop].reset_index(drop=True))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-prepare") as helper:
            pending = helper.submit(self._prepare, raw.iloc[slices[0][0]:slices[0][1]].reset_index(drop=True))
            for index, (start, _) in enumerate(slices):
                prepared = pending.result()
                if index + 1 < len(slices):
                    low, high = slices[index + 1]
                    pending = helper.submit(self._prepare, raw.iloc[low:high].reset_index(drop=True))
                yield start, prepared

    def _prepare(self, raw: pd.Series) -> _Prepared:
        """Clean, find skip reasons, and encode each distinct cleaned text once.

        Shops get the same short review ("좋아요", "배송 빨라요") thousands of
        times a night; a text's score depends only on its cleaned characters,
        so repeats are scored once and the score is copied to every row.
        """
        cleaned = clean_texts(raw)
        reasons = skip_reasons(raw, cleaned)
        scorable = reasons.isna().to_numpy()
        positions = np.flatnonzero(scorable)
        if not len(positions):
            return _Prepared(reasons, positions, None, None, np.empty(0, dtype=np.intp))
        text_of_row, distinct = pd.factorize(cleaned[scorable], sort=False)
        encoded = self.bundle.vocab.encode(list(distinct), self.bundle.card.max_len)
        batches = self.fixed_shape_batches(encoded) if self.plan.fixed_shapes else None
        return _Prepared(reasons, positions, encoded, batches, text_of_row)

    def fixed_shape_batches(self, encoded: EncodedTexts) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, right-padded matrix) per batch, shapes drawn from a small fixed set.

        Widths are rounded up to ``width_step``, rows up to a power of two (at
        least ``GPU_MIN_SHAPE_ROWS``, at most the width's full batch of
        ``min(batch_size, max_batch_chars // w)``). The added rows hold one
        character (never all padding: cuDNN's masked LSTM needs at least one
        step per row) and their scores are dropped. On a GPU a batch costs
        about its width in sequential steps whatever its rows, so extra rows
        are cheap and a new shape (a compilation on JAX) is not.
        """
        step = self.plan.width_step
        rounded = -(-np.maximum(encoded.lengths, 1) // step) * step
        batches = []
        for rows in length_sorted_batches(rounded, self.batch_size, self.max_batch_chars):
            width = int(rounded[rows[-1]])
            matrix = encoded.padded(rows, width=width)
            full = max(1, min(self.batch_size, self.max_batch_chars // width))
            shape_rows = min(full, max(GPU_MIN_SHAPE_ROWS, 1 << (len(rows) - 1).bit_length()))
            if shape_rows > len(rows):
                filler = np.zeros((shape_rows - len(rows), width), dtype=matrix.dtype)
                filler[:, 0] = OOV_ID
                matrix = np.concatenate([matrix, filler])
            batches.append((rows, matrix))
        return batches

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


@dataclass(frozen=True)
class _Prepared:
    """One slice ready for the device: skip reasons, where its scorable rows are, their distinct texts' ids.

    ``encoded`` (and ``batches``, on the GPU plan) hold each distinct cleaned
    text once; ``text_of_row[i]`` is the distinct text of scorable row
    ``positions[i]``.
    """

    reasons: pd.Series
    positions: np.ndarray
    encoded: EncodedTexts | None
    batches: list[tuple[np.ndarray, np.ndarray]] | None
    text_of_row: np.ndarray

    @property
    def distinct_texts(self) -> int:
        return 0 if self.encoded is None else len(self.encoded)


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


def _numpy_weights(bundle: ModelBundle) -> tuple[Any, str | None]:
    """The seed weights NumPy scores with (the bundle's own, else its loaded Keras model's), or None and why not."""
    from moderation import numpy_lstm

    if bundle.seed_weights is not None:
        return bundle.seed_weights, None
    if bundle.keras_model is None:
        return None, bundle.seed_weights_unusable or "no weights loaded"
    import keras

    reason = numpy_lstm.unsupported_reason(keras.saving.serialize_keras_object(bundle.keras_model))
    if reason is not None:
        return None, reason
    return numpy_lstm.weights_of_keras_model(bundle.keras_model), None


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


def seed_style_predict(bundle: ModelBundle, texts: list[str], max_len: int = 100,
                       batch_size: int | None = 1024) -> np.ndarray:
    """The seeds' way, kept as the benchmark baseline: pad all to ``max_len``, one predict call.

    ``batch_size`` None is ``model.predict``'s own default, as the seeds call it.
    """
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
