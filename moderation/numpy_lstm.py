"""The seed network's forward pass in NumPy: scoring without importing TensorFlow.

A scoring process that imports TensorFlow and Keras spends 6-7 s on the
import before it reads a review: more than ``moderation score-file`` needs to
score 200,000 of them, and a fixed cost of every scoring task of the night.
The seed network is small (an embedding of 16, LSTMs of 64 and 32 units, one
output), so on a CPU NumPy computes it as fast as TensorFlow's fused kernel,
reading the weights straight from the ``.keras`` archive (a zip holding the
architecture as JSON and the weights as HDF5).

It stands in for Keras only where it computes the same function: the exact
architecture of :func:`moderation.model.build_model`, checked from the
archive's ``config.json`` (:func:`unsupported_reason`); anything else is
scored by Keras. Tests hold it to the Keras layers' scores (within 1e-5) on
the shipped model and on freshly trained ones.

How it is fast:

* the first LSTM's input projection ``embedding @ W + b`` is one table of
  ``vocabulary x 4 units``, computed once per model: a step gathers rows of
  it instead of multiplying;
* the gate columns of ``i``, ``f`` and ``o`` are pre-scaled by 0.5, so one
  ``tanh`` over all four gates serves both activations
  (``sigmoid(x) = (1 + tanh(x / 2)) / 2``);
* rows are sorted by length, longest first, so the rows still running at
  step ``t`` are a prefix: no work on padding, no masks;
* the second LSTM's input projection is one large matrix product over all
  steps; only the recurrent product runs step by step;
* each step writes into preallocated buffers (``out=``); NumPy releases the
  GIL inside them, so two batches run side by side on two cores when BLAS
  itself is kept to one thread (:func:`single_threaded_blas`).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moderation.errors import ModelBundleError

#: Where Keras 3 keeps each variable of the seed network in ``model.weights.h5`` (layer paths are
#: the layer classes' names in order, not the layers' own names).
WEIGHT_PATHS = {
    "embedding": "layers/embedding/vars/0",
    "lstm1_kernel": "layers/lstm/cell/vars/0",
    "lstm1_recurrent": "layers/lstm/cell/vars/1",
    "lstm1_bias": "layers/lstm/cell/vars/2",
    "lstm2_kernel": "layers/lstm_1/cell/vars/0",
    "lstm2_recurrent": "layers/lstm_1/cell/vars/1",
    "lstm2_bias": "layers/lstm_1/cell/vars/2",
    "dense_kernel": "layers/dense/vars/0",
    "dense_bias": "layers/dense/vars/1",
}


@dataclass(frozen=True)
class SeedWeights:
    """The seed network's variables, as Keras stores them (gate order i, f, c, o)."""

    embedding: np.ndarray
    lstm1_kernel: np.ndarray
    lstm1_recurrent: np.ndarray
    lstm1_bias: np.ndarray
    lstm2_kernel: np.ndarray
    lstm2_recurrent: np.ndarray
    lstm2_bias: np.ndarray
    dense_kernel: np.ndarray
    dense_bias: np.ndarray

    def shape_problem(self) -> str | None:
        """Why these arrays are not one consistent seed network; None when they are."""
        vocab, dim = self.embedding.shape if self.embedding.ndim == 2 else (0, 0)
        units1 = self.lstm1_recurrent.shape[0] if self.lstm1_recurrent.ndim == 2 else 0
        units2 = self.lstm2_recurrent.shape[0] if self.lstm2_recurrent.ndim == 2 else 0
        expected = {
            "embedding": (vocab, dim), "lstm1_kernel": (dim, 4 * units1), "lstm1_recurrent": (units1, 4 * units1),
            "lstm1_bias": (4 * units1,), "lstm2_kernel": (units1, 4 * units2),
            "lstm2_recurrent": (units2, 4 * units2), "lstm2_bias": (4 * units2,), "dense_kernel": (units2, 1),
            "dense_bias": (1,),
        }
        if not (vocab and dim and units1 and units2):
            return "the embedding or an LSTM's recurrent kernel is not a matrix"
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if actual != shape:
                return f"{name} has shape {actual}, expected {shape}"
        return None


def unsupported_reason(config: Mapping[str, Any]) -> str | None:
    """Why a saved model (its ``config.json``) is not the seed network this pass computes; None when it is.

    The same conditions as :func:`moderation.fused_lstm.unsupported_reason`,
    read from the saved architecture instead of live layers, plus float32
    everywhere (a mixed-precision model computes something else).
    """
    if config.get("class_name") != "Sequential":
        return f"the model is a {config.get('class_name')}, not a Sequential"
    layers = [layer for layer in config.get("config", {}).get("layers", []) if layer.get("class_name") != "InputLayer"]
    kinds = [layer.get("class_name") for layer in layers]
    if kinds != ["Embedding", "LSTM", "LSTM", "Dense"]:
        return f"layers are {kinds}, not Embedding, LSTM, LSTM, Dense"
    for layer in layers:
        policy = layer.get("config", {}).get("dtype", "float32")
        if isinstance(policy, dict):
            policy = policy.get("config", {}).get("name")
        if policy != "float32":
            return f"layer {layer['config'].get('name')} computes in {policy}, not float32"
    embedding, first, second, dense = (layer["config"] for layer in layers)
    if not embedding.get("mask_zero"):
        return "the embedding does not mask id 0"
    for lstm, sequences in ((first, True), (second, False)):
        expected = {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
                    "return_sequences": sequences, "return_state": False, "go_backwards": False,
                    "stateful": False, "unroll": False}
        different = {k: lstm.get(k) for k, v in expected.items() if lstm.get(k) != v}
        if different:
            return f"LSTM {lstm.get('name')} differs from the seed network: {different}"
    if dense.get("units") != 1 or dense.get("activation") != "sigmoid" or not dense.get("use_bias"):
        return "the output layer is not Dense(1, sigmoid) with a bias"
    return None


def read_seed_weights(model_file: Path | str) -> tuple[SeedWeights | None, str | None]:
    """The seed network's weights from a ``.keras`` archive, or None and why they cannot be used here.

    An archive that cannot be read at all is a :class:`ModelBundleError`, as
    it would be for Keras; a readable archive of another architecture is
    (None, reason): Keras scores it instead.
    """
    import h5py

    model_file = Path(model_file)
    try:
        with zipfile.ZipFile(model_file) as archive:
            config = json.loads(archive.read("config.json"))
            with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as weights:
                reason = unsupported_reason(config)
                if reason is not None:
                    return None, reason
                missing = [path for path in WEIGHT_PATHS.values() if path not in weights]
                if missing:
                    return None, f"the weights file lacks {', '.join(missing)}"
                arrays = {name: np.asarray(weights[path], dtype=np.float32) for name, path in WEIGHT_PATHS.items()}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelBundleError(f"cannot load model file {model_file}: {exc}") from None
    seed = SeedWeights(**arrays)
    problem = seed.shape_problem()
    return (None, problem) if problem else (seed, None)


def weights_of_keras_model(model: Any) -> SeedWeights:
    """The same weights taken from a loaded Keras seed network (tests compare the two passes on it)."""
    embedding, first, second, dense = model.layers
    arrays = [embedding.embeddings, first.cell.kernel, first.cell.recurrent_kernel, first.cell.bias,
              second.cell.kernel, second.cell.recurrent_kernel, second.cell.bias, dense.kernel, dense.bias]
    return SeedWeights(*(np.asarray(variable.numpy(), dtype=np.float32) for variable in arrays))


def _half_sigmoid_gates(units: int) -> np.ndarray:
    """Column scale 0.5 for the sigmoid gates (i, f, o) and 1 for the candidate (c), Keras' order i, f, c, o."""
    scale = np.full(4 * units, 0.5, dtype=np.float32)
    scale[2 * units : 3 * units] = 1.0
    return scale


class NumpySeedForward:
    """Right-padded int ids ``[rows, width]`` -> probabilities ``[rows]`` (float64), thread-safe.

    Row ``r``'s score is the network's output at its last non-zero id, as
    the masked Keras layers give it. Every buffer is local to a call, so
    threads may share one instance.
    """

    def __init__(self, weights: SeedWeights):
        problem = weights.shape_problem()
        if problem:
            raise ValueError(f"not a seed network: {problem}")
        self.units1 = weights.lstm1_recurrent.shape[0]
        self.units2 = weights.lstm2_recurrent.shape[0]
        scale1, scale2 = _half_sigmoid_gates(self.units1), _half_sigmoid_gates(self.units2)
        # Input projection of layer 1 for every id: a gather per step replaces a matrix product.
        self.table1 = ((weights.embedding @ weights.lstm1_kernel + weights.lstm1_bias) * scale1).astype(np.float32)
        self.recurrent1 = np.ascontiguousarray(weights.lstm1_recurrent * scale1, dtype=np.float32)
        self.kernel2 = np.ascontiguousarray(weights.lstm2_kernel * scale2, dtype=np.float32)
        self.bias2 = (weights.lstm2_bias * scale2).astype(np.float32)
        self.recurrent2 = np.ascontiguousarray(weights.lstm2_recurrent * scale2, dtype=np.float32)
        self.dense_kernel = weights.dense_kernel.astype(np.float32)
        self.dense_bias = weights.dense_bias.astype(np.float32)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be a [rows, width] matrix, got shape {ids.shape}")
        rows, width = ids.shape
        if rows == 0:
            return np.empty(0, dtype=np.float64)
        lengths = np.count_nonzero(ids, axis=1)
        order = np.argsort(-lengths, kind="stable")  # longest first: running rows are a prefix
        steps = np.ascontiguousarray(ids[order].T)  # time-major [width, rows], each step's ids contiguous
        running = np.searchsorted(-lengths[order], -np.arange(width), side="left")  # rows with length > t
        width = int(np.count_nonzero(running))
        sequence = self._first_layer(steps, running[:width], rows)
        last = self._second_layer(sequence, running[:width], rows)
        logits = (last @ self.dense_kernel).reshape(-1) + self.dense_bias[0]
        scores = np.empty(rows, dtype=np.float64)
        scores[order] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return scores

    def _first_layer(self, steps: np.ndarray, running: np.ndarray, rows: int) -> np.ndarray:
        """Layer 1's output at every step, ``[width, rows, units1]`` (rows past their end left as zeros)."""
        units = self.units1
        sequence = np.zeros((len(running), rows, units), dtype=np.float32)
        hidden = np.zeros((rows, units), dtype=np.float32)
        cell = np.zeros((rows, units), dtype=np.float32)
        gates = np.empty((rows, 4 * units), dtype=np.float32)
        scratch = np.empty((rows, units), dtype=np.float32)
        for t, n in enumerate(running):
            np.take(self.table1, steps[t, :n], axis=0, out=gates[:n])
            gates[:n] += hidden[:n] @ self.recurrent1
            self._cell_step(gates[:n], cell[:n], hidden[:n], scratch[:n], units)
            sequence[t, :n] = hidden[:n]
        return sequence

    def _second_layer(self, sequence: np.ndarray, running: np.ndarray, rows: int) -> np.ndarray:
        """Layer 2's state at each row's last step, ``[rows, units2]``."""
        units = self.units2
        width = len(running)
        projected = (sequence.reshape(width * rows, -1) @ self.kernel2).reshape(width, rows, 4 * units)
        projected += self.bias2
        hidden = np.zeros((rows, units), dtype=np.float32)
        cell = np.zeros((rows, units), dtype=np.float32)
        scratch = np.empty((rows, units), dtype=np.float32)
        for t, n in enumerate(running):
            gates = projected[t, :n]
            gates += hidden[:n] @ self.recurrent2
            self._cell_step(gates, cell[:n], hidden[:n], scratch[:n], units)
        return hidden

    @staticmethod
    def _cell_step(gates: np.ndarray, cell: np.ndarray, hidden: np.ndarray, scratch: np.ndarray, units: int) -> None:
        """One LSTM step in place: ``gates`` holds pre-activations with i, f, o already halved."""
        np.tanh(gates, out=gates)
        sigmoid_part = gates[:, : 2 * units]  # i, f
        sigmoid_part *= 0.5
        sigmoid_part += 0.5
        out_gate = gates[:, 3 * units :]
        out_gate *= 0.5
        out_gate += 0.5
        input_gate, forget_gate = gates[:, :units], gates[:, units : 2 * units]
        candidate = gates[:, 2 * units : 3 * units]
        cell *= forget_gate
        np.multiply(input_gate, candidate, out=scratch)
        cell += scratch
        np.tanh(cell, out=hidden)
        hidden *= out_gate


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS on one thread inside the block: the scorer's own threads share the cores instead.

    The matrices of one step are small (rows x 64 by 64 x 256); a threaded
    BLAS spends more on waking its threads than it saves, and two scoring
    threads each starting a threaded BLAS call oversubscribe the cores
    (measured 2.5x slower on 2 cores).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


ENGINE_ENV = "MODERATION_SCORING_ENGINE"
ENGINES = ("auto", "numpy", "keras")


def engine_choice(env: Mapping[str, str] | None = None) -> str:
    """``MODERATION_SCORING_ENGINE``: ``auto`` (default), ``numpy`` or ``keras``."""
    from moderation.errors import SettingError

    env = os.environ if env is None else env
    choice = (env.get(ENGINE_ENV, "") or "auto").strip().lower()
    if choice not in ENGINES:
        raise SettingError(f"{ENGINE_ENV} must be one of {', '.join(ENGINES)}, got {env.get(ENGINE_ENV)!r}")
    return choice
