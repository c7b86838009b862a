"""The seed network's forward pass in NumPy: scoring without importing TensorFlow.

A scoring process that imports TensorFlow and Keras spends 2-3 s on the
import before it reads a review (6-7 s where bytecode is not compiled): a
one-text ``moderation predict`` is almost all import, and so is a small
night's scoring task.
The seed network is small (an embedding of 16, LSTMs of 64 and 32 units, one
output), so NumPy computes it at a good fraction of TensorFlow's fused
kernel's speed, reading the weights straight from the ``.keras`` archive (a
zip holding the architecture as JSON and the weights as HDF5).

It stands in for Keras only where it computes the same function: the exact
architecture of :func:`moderation.model.build_model`, checked from the
archive's ``config.json`` (:func:`unsupported_reason`); anything else is
scored by Keras. Tests hold it to the Keras layers' scores (within 1e-5) on
the shipped model and on freshly trained ones.

How it is fast:

* the first LSTM's input projection ``embedding @ W + b`` is one table of
  ``vocabulary x 4 units``, computed once per model: a step gathers rows of
  it instead of multiplying;
* the gate columns are reordered to ``i, f, o, c`` and those of ``i``, ``f``
  and ``o`` pre-scaled by 0.5, so one ``tanh`` over all four gates serves
  both activations (``sigmoid(x) = (1 + tanh(x / 2)) / 2``);
* rows are sorted by length, longest first, so the rows still running at
  step ``t`` are a prefix: no work on padding, no masks;
* both LSTMs advance together, a step at a time, and the second one's input
  and state sit side by side in one buffer, so one matrix product serves
  both and nothing of size ``width x rows`` is ever written;
* the elementwise rest of a step (gather, gates, cell, hidden state) is one
  pass of compiled C (``moderation/_lstm_cell.c``, :func:`compiled_cell`)
  instead of a dozen NumPy passes; NumPy's float32 ``tanh`` is vectorised
  only on CPUs with AVX-512 and otherwise takes over half of a step. Where
  the C step was not built, NumPy does the same work itself;
* where the CPU has AVX2 and FMA, the whole pass is one call of C
  (:func:`compiled_forward`): a block of six rows runs through all of its
  steps with its state and gates in the L1 cache and the weights in L2,
  instead of every step streaming gate buffers of all rows through memory
  and paying a BLAS call (1.1-1.3x NumPy's products with the C step when
  scoring, 2x in one thread on large batches);
* NumPy's matrix products and the C code release the GIL, so two batches
  run side by side on two cores when BLAS itself is kept to one thread
  (:func:`single_threaded_blas`).

On a 2-core AVX2 CPU (no AVX-512), 218,361 texts in one process: the fused
kernel 11.2-12.2 s, NumPy with the C step 8.6-9.1 s, NumPy alone about twice
that. On a 2-core AVX-512 CPU NumPy alone took 3.6 s against the fused
kernel's 2.7 s. Where the C step is built, every CPU job is NumPy's; without
it, only jobs of up to :data:`moderation.scoring.NUMPY_MAX_ROWS` reviews.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moderation.errors import ModelBundleError

log = logging.getLogger(__name__)

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

    The one place these conditions live: :func:`moderation.fused_lstm.unsupported_reason`
    applies them to a live model through its serialized form. Float32
    everywhere is one of them (a mixed-precision model computes something else).
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


def _sigmoid_gates_first(units: int) -> np.ndarray:
    """Column order i, f, o, c from Keras' i, f, c, o: the three sigmoid gates side by side."""
    return np.concatenate([np.arange(0, 2 * units), np.arange(3 * units, 4 * units), np.arange(2 * units, 3 * units)])


def _half_sigmoid_gates(units: int) -> np.ndarray:
    """Column scale (in the order i, f, o, c): 0.5 for the sigmoid gates, 1 for the candidate."""
    scale = np.full(4 * units, 0.5, dtype=np.float32)
    scale[3 * units :] = 1.0
    return scale


class NumpySeedForward:
    """Right-padded int ids ``[rows, width]`` -> probabilities ``[rows]`` (float64), thread-safe.

    Row ``r``'s score is the network's output at its last non-zero id, as
    the masked Keras layers give it. Every buffer is local to a call, so
    threads may share one instance.

    ``compiled`` None uses the compiled cell step where it is built
    (:func:`compiled_cell`), False never does, True insists on it.
    """

    def __init__(self, weights: SeedWeights, compiled: bool | None = None, fused: bool | None = None):
        problem = weights.shape_problem()
        if problem:
            raise ValueError(f"not a seed network: {problem}")
        self.cell = None if compiled is False else compiled_cell()
        if compiled and self.cell is None:
            raise RuntimeError(f"the compiled LSTM step is not available: {compiled_cell_problem()}")
        self.units1 = units1 = weights.lstm1_recurrent.shape[0]
        self.units2 = units2 = weights.lstm2_recurrent.shape[0]
        order1, order2 = _sigmoid_gates_first(units1), _sigmoid_gates_first(units2)
        scale1, scale2 = _half_sigmoid_gates(units1), _half_sigmoid_gates(units2)
        # Layer 1's input projection for every id: a gather per step replaces a matrix product.
        table = weights.embedding @ weights.lstm1_kernel + weights.lstm1_bias
        self.table1 = np.ascontiguousarray(table[:, order1] * scale1, dtype=np.float32)
        self.recurrent1 = np.ascontiguousarray(weights.lstm1_recurrent[:, order1] * scale1, dtype=np.float32)
        # Layer 2 multiplies [h1 | h2] by [kernel; recurrent kernel]: its input and its state in one product.
        stacked = np.concatenate([weights.lstm2_kernel, weights.lstm2_recurrent])
        self.kernel2 = np.ascontiguousarray(stacked[:, order2] * scale2, dtype=np.float32)
        self.bias2 = np.ascontiguousarray(weights.lstm2_bias[order2] * scale2, dtype=np.float32)
        self.dense_kernel = weights.dense_kernel.astype(np.float32)
        self.dense_bias = weights.dense_bias.astype(np.float32)
        self.fused = None
        if self.cell is not None and fused is not False:
            self.fused = compiled_forward(units1, units2)
        if fused and self.fused is None:
            raise RuntimeError("the compiled forward pass is not available: it needs AVX2 and FMA and LSTM widths "
                               "that are multiples of 8 up to 256")
        self.kind = FUSED_KIND if self.fused is not None else STEP_KIND if self.cell is not None else NUMPY_KIND

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be a [rows, width] matrix, got shape {ids.shape}")
        rows, width = ids.shape
        if rows == 0:
            return np.empty(0, dtype=np.float64)
        lengths = np.count_nonzero(ids, axis=1)
        order = np.argsort(-lengths, kind="stable")  # longest first: running rows are a prefix
        if self.fused is not None:
            last = self._run_fused(ids[order], lengths[order])
        else:
            steps = np.ascontiguousarray(ids[order].T)  # time-major [width, rows], each step's ids contiguous
            running = np.searchsorted(-lengths[order], -np.arange(width), side="left")  # rows with length > t
            last = self._run(steps, running[running > 0], rows)
        logits = (last @ self.dense_kernel).reshape(-1) + self.dense_bias[0]
        scores = np.empty(rows, dtype=np.float64)
        scores[order] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return scores

    def _run_fused(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Both LSTMs in one call of compiled C (``lstm_forward``): rows sorted by length, each block of rows
        through all its steps with its state in the L1 cache; returns layer 2's state at each row's last step."""
        ids = self._checked_ids(ids)
        rows, width = ids.shape
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        last = np.empty((rows, self.units2), dtype=np.float32)
        status = self.fused(rows, width, ids.ctypes.data, lengths.ctypes.data, self.table1.ctypes.data,
                            self.recurrent1.ctypes.data, self.kernel2.ctypes.data, self.bias2.ctypes.data,
                            self.units1, self.units2, last.ctypes.data)
        if status != 0:
            raise RuntimeError("the compiled forward pass refused these weights")
        return last

    def _checked_ids(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` as contiguous int32, every one a row of the input projection (C reads them unchecked)."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.size and (int(ids.max()) >= len(self.table1) or int(ids.min()) < 0):
            raise ValueError(f"ids must lie in 0..{len(self.table1) - 1}, the model's vocabulary")
        return ids

    def _run(self, steps: np.ndarray, running: np.ndarray, rows: int) -> np.ndarray:
        """Both LSTMs, step by step together; returns layer 2's state at each row's last step.

        Advancing the layers together keeps every buffer at ``rows`` x a few
        hundred floats, in the core's cache, instead of a ``[width, rows, 64]``
        sequence written by layer 1 and read back by layer 2. Each step is two
        matrix products (BLAS) and two cell updates, in C where the compiled
        step is loaded (:func:`compiled_cell`), else in NumPy.
        """
        units1, units2 = self.units1, self.units2
        states = np.zeros((rows, units1 + units2), dtype=np.float32)  # [h1 | h2], layer 2's whole input
        hidden1, hidden2 = states[:, :units1], states[:, units1:]
        cell1 = np.zeros((rows, units1), dtype=np.float32)
        cell2 = np.zeros((rows, units2), dtype=np.float32)
        gates1 = np.empty((rows, 4 * units1), dtype=np.float32)
        gates2 = np.empty((rows, 4 * units2), dtype=np.float32)
        if self.cell is not None:
            self._run_compiled(steps, running, states, cell1, cell2, gates1, gates2)
            return hidden2
        recurrent1 = np.empty((rows, 4 * units1), dtype=np.float32)
        scratch1 = np.empty((rows, units1), dtype=np.float32)
        scratch2 = np.empty((rows, units2), dtype=np.float32)
        for t, n in enumerate(running.tolist()):
            gates = gates1[:n]
            np.take(self.table1, steps[t, :n], axis=0, out=gates)
            np.matmul(hidden1[:n], self.recurrent1, out=recurrent1[:n])
            gates += recurrent1[:n]
            self._cell_step(gates, cell1[:n], hidden1[:n], scratch1[:n], units1)
            gates = gates2[:n]
            np.matmul(states[:n], self.kernel2, out=gates)
            gates += self.bias2
            self._cell_step(gates, cell2[:n], hidden2[:n], scratch2[:n], units2)
        return hidden2

    def _run_compiled(self, steps: np.ndarray, running: np.ndarray, states: np.ndarray, cell1: np.ndarray,
                      cell2: np.ndarray, gates1: np.ndarray, gates2: np.ndarray) -> None:
        """The step loop with the cell updates in C: the gather of layer 1's input projection happens there too."""
        units1, units2 = self.units1, self.units2
        ids = self._checked_ids(steps)
        step = self.cell
        stride = states.shape[1]
        hidden1, hidden2 = states.ctypes.data, states.ctypes.data + units1 * states.itemsize
        table1, bias2 = self.table1.ctypes.data, self.bias2.ctypes.data
        recurrent1, kernel2 = self.recurrent1, self.kernel2
        for t, n in enumerate(running.tolist()):
            np.matmul(states[:n, :units1], recurrent1, out=gates1[:n])
            step(n, units1, gates1.ctypes.data, table1, ids[t].ctypes.data, cell1.ctypes.data, hidden1, stride)
            np.matmul(states[:n], kernel2, out=gates2[:n])
            step(n, units2, gates2.ctypes.data, bias2, None, cell2.ctypes.data, hidden2, stride)

    @staticmethod
    def _cell_step(gates: np.ndarray, cell: np.ndarray, hidden: np.ndarray, scratch: np.ndarray, units: int) -> None:
        """One LSTM step in place: ``gates`` holds pre-activations i, f, o (halved), c."""
        np.tanh(gates, out=gates)
        sigmoids = gates[:, : 3 * units]  # sigmoid(x) = (1 + tanh(x / 2)) / 2
        sigmoids *= 0.5
        sigmoids += 0.5
        cell *= gates[:, units : 2 * units]  # forget
        np.multiply(gates[:, :units], gates[:, 3 * units :], out=scratch)  # input x candidate
        cell += scratch
        np.tanh(cell, out=hidden)
        hidden *= gates[:, 2 * units : 3 * units]  # output


#: ``NumpySeedForward.kind``: both LSTMs in compiled C; NumPy's matrix products with the C cell step; NumPy alone.
FUSED_KIND = "LSTM forward pass in C"
STEP_KIND = "NumPy LSTM, cell step in C"
NUMPY_KIND = "NumPy LSTM"

_CELL_LIBRARY: list[Any] = []  # the loaded library's two functions (step, forward pass), once per process
_CELL_PROBLEM: list[str] = []


def _cell_library() -> tuple[Callable[..., None], Callable[..., int]] | None:
    """``moderation/_lstm_cell.c``'s functions through ctypes, or None where it is not built; loaded once."""
    if _CELL_LIBRARY or _CELL_PROBLEM:
        return _CELL_LIBRARY[0] if _CELL_LIBRARY else None
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("moderation._lstm_cell")
    if spec is None or not spec.origin:
        _CELL_PROBLEM.append("moderation/_lstm_cell.c was not compiled at install (no C compiler?)")
        log.info("NumPy scoring without the compiled cell step: %s", _CELL_PROBLEM[0])
        return None
    try:
        library = ctypes.CDLL(spec.origin)
        step, forward = library.lstm_cell_step, library.lstm_forward
    except (OSError, AttributeError) as exc:
        _CELL_PROBLEM.append(f"cannot load {spec.origin}: {exc}")
        log.warning("NumPy scoring without the compiled cell step: %s", _CELL_PROBLEM[0])
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    step.argtypes = [size, size, pointer, pointer, pointer, pointer, pointer, size]
    step.restype = None
    forward.argtypes = [size, size, pointer, pointer, pointer, pointer, pointer, pointer, size, size, pointer]
    forward.restype = ctypes.c_int
    _CELL_LIBRARY.append((step, forward))
    return _CELL_LIBRARY[0]


def compiled_cell() -> Callable[..., None] | None:
    """The C cell step (``moderation/_lstm_cell.c``) as a ctypes function, or None where it is not built.

    ctypes releases the GIL during the call, so scoring threads run their
    steps side by side.
    """
    library = _cell_library()
    return library[0] if library else None


def compiled_forward(units1: int, units2: int) -> Callable[..., int] | None:
    """The whole forward pass in C (``lstm_forward``) where this CPU has AVX2 and FMA and the widths suit it.

    Asked with no rows, the function says whether it would run: it returns
    -1 on another CPU or for LSTM widths it does not handle, and NumPy's
    products with the C step do the work there.
    """
    library = _cell_library()
    if library is None:
        return None
    forward = library[1]
    if forward(0, 0, None, None, None, None, None, None, units1, units2, None) != 0:
        log.info("no compiled forward pass here (it needs AVX2 and FMA, and LSTM widths that are multiples of 8 "
                 "up to 256): NumPy's matrix products with the C step instead")
        return None
    return forward


def compiled_cell_problem() -> str | None:
    """Why :func:`compiled_cell` found no step; None where it is loaded."""
    compiled_cell()
    return _CELL_PROBLEM[0] if _CELL_PROBLEM else None


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
