"""NumPy's forward pass computes what the Keras layers compute, stands in for nothing else, and spares TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from moderation import config, numpy_lstm
from moderation.errors import ModelBundleError, SettingError
from moderation.model import MODEL_FILE, ModelBundle, load_bundle
from moderation.numpy_lstm import (
    ENGINE_ENV,
    FUSED_KIND,
    NUMPY_KIND,
    STEP_KIND,
    NumpySeedForward,
    read_seed_weights,
    weights_of_keras_model,
)
from moderation.scoring import (
    DEVICE_ENV,
    NUMPY_MAX_ROWS,
    accelerator_present,
    load_scorer,
    numpy_plan,
    plan_scoring,
)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path) -> ModelBundle:
    return load_bundle(tiny_model_dir)


def _right_padded(rng: np.random.Generator, rows: int, width: int, vocab_size: int) -> np.ndarray:
    lengths = rng.integers(1, width + 1, size=rows)
    lengths[0] = width
    ids = rng.integers(1, vocab_size, size=(rows, width)).astype(np.int32)
    ids[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return ids


def test_weights_read_without_keras_are_the_keras_models_own(bundle: ModelBundle) -> None:
    from_archive, reason = read_seed_weights(bundle.path / MODEL_FILE)
    assert reason is None and from_archive is not None
    from_keras = weights_of_keras_model(bundle.model)
    for name in numpy_lstm.WEIGHT_PATHS:
        np.testing.assert_array_equal(getattr(from_archive, name), getattr(from_keras, name), err_msg=name)


def _cpu_has_avx2_and_fma() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return {"avx2", "fma"} <= set(flags.split())


#: The three ways NumpySeedForward computes the network: (compiled, fused) and the kind it reports.
PASSES = {"forward pass in C": (True, True, FUSED_KIND), "cell step in C": (True, False, STEP_KIND),
          "all NumPy": (False, False, NUMPY_KIND)}


def _forward(bundle: ModelBundle, variant: str) -> NumpySeedForward:
    compiled, fused, kind = PASSES[variant]
    if fused and not _cpu_has_avx2_and_fma():
        pytest.skip("the compiled forward pass needs a CPU with AVX2 and FMA")
    forward = NumpySeedForward(read_seed_weights(bundle.path / MODEL_FILE)[0], compiled=compiled, fused=fused)
    assert forward.kind == kind
    return forward


def test_this_install_built_the_compiled_cell_step() -> None:
    """`make install` (and the image's install) compile moderation/_lstm_cell.c; a silent build failure would only show as a slow night."""
    assert numpy_lstm.compiled_cell() is not None, numpy_lstm.compiled_cell_problem()
    assert numpy_lstm.compiled_cell_problem() is None
    if _cpu_has_avx2_and_fma():  # the forward pass in C runs wherever the CPU allows it
        assert numpy_lstm.compiled_forward(64, 32) is not None
    assert numpy_lstm.compiled_forward(60, 32) is None  # widths it does not handle: the step instead


@pytest.mark.parametrize("variant", PASSES)
def test_numpy_pass_equals_the_keras_layers(bundle: ModelBundle, variant: str) -> None:
    forward = _forward(bundle, variant)
    rng = np.random.default_rng(11)
    for rows, width in [(1, 1), (1, 40), (5, 1), (7, 9), (33, 17), (256, 120)]:
        ids = _right_padded(rng, rows, width, bundle.vocab.size)
        ours = forward(ids)
        assert ours.dtype == np.float64 and ours.shape == (rows,)
        keras_scores = np.asarray(bundle.model(ids, training=False)).reshape(-1)
        np.testing.assert_allclose(ours, keras_scores, atol=1e-5, rtol=0)
    assert forward(np.zeros((0, 7), dtype=np.int32)).shape == (0,)
    with pytest.raises(ValueError, match="rows, width"):
        forward(np.zeros(3, dtype=np.int32))


def test_forward_pass_in_c_equals_the_step_on_uneven_blocks_and_empty_rows(bundle: ModelBundle) -> None:
    """Blocks of rows that end at different steps, a short last block and rows of no ids, as the step computes them."""
    fused, step = _forward(bundle, "forward pass in C"), _forward(bundle, "cell step in C")
    rng = np.random.default_rng(5)
    for rows, width in [(1, 3), (2, 50), (6, 6), (13, 31), (1001, 64)]:
        ids = _right_padded(rng, rows, width, bundle.vocab.size)
        ids[rng.random(rows) < 0.1] = 0  # rows with nothing to read
        rng.shuffle(ids)
        np.testing.assert_allclose(fused(ids), step(ids), atol=2e-6, rtol=0)


@pytest.mark.parametrize("variant", ["forward pass in C", "cell step in C"])
def test_ids_outside_the_vocabulary_are_refused_not_read_out_of_bounds(bundle: ModelBundle, variant: str) -> None:
    forward = _forward(bundle, variant)
    for bad in (bundle.vocab.size, -1):
        ids = np.array([[1, 2, bad]], dtype=np.int32)
        with pytest.raises((ValueError, IndexError)):
            forward(ids)


@pytest.mark.parametrize("variant", PASSES)
def test_threads_sharing_one_pass_get_their_own_answers(bundle: ModelBundle, variant: str) -> None:
    forward = _forward(bundle, variant)
    batches = [_right_padded(np.random.default_rng(seed), 64, 30, bundle.vocab.size) for seed in range(8)]
    expected = [forward(ids) for ids in batches]
    got: dict[int, np.ndarray] = {}

    def run(index: int) -> None:
        got[index] = forward(batches[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, scores in enumerate(expected):
        np.testing.assert_array_equal(got[index], scores)


def test_shipped_model_scores_real_reviews_as_keras_does(sample_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped model on 6,012 real reviews: every score within 1e-5, every flag the same."""
    texts = pd.read_parquet(sample_path)["text"]
    on_numpy = load_scorer(config.default_model_dir())
    assert on_numpy.forward_kind == (FUSED_KIND if _cpu_has_avx2_and_fma() else STEP_KIND)
    assert on_numpy.plan.engine == "numpy"
    monkeypatch.setenv(ENGINE_ENV, "keras")
    on_keras = load_scorer(config.default_model_dir())
    assert on_keras.forward_kind == "fused LSTM kernel"
    ours, theirs = on_numpy.score_texts(texts), on_keras.score_texts(texts)
    assert np.array_equal(np.isnan(ours.score), np.isnan(theirs.score))
    np.testing.assert_allclose(ours.score, theirs.score, atol=1e-5, rtol=0, equal_nan=True)
    near = np.abs(theirs.score - on_keras.threshold) < 1e-5
    assert np.array_equal(ours.flagged[~near], theirs.flagged[~near])
    pd.testing.assert_series_equal(ours.skip_reason, theirs.skip_reason)
    for compiled in (True, False):  # the same batches through NumPy's products, with the C step and without
        on_numpy._predict = NumpySeedForward(on_numpy.bundle.seed_weights, compiled=compiled, fused=False)
        np.testing.assert_allclose(on_numpy.score_texts(texts).score, ours.score, atol=1e-5, rtol=0, equal_nan=True)


def test_a_bundle_loaded_without_keras_imports_it_only_when_asked(tiny_model_dir: Path) -> None:
    light = load_bundle(tiny_model_dir, with_keras=False)
    assert light.seed_weights is not None and light.keras_model is None
    assert light.model.get_layer("embedding").input_dim == light.vocab.size  # loaded now, on first use
    assert light.keras_model is light.model


def _save_variant(kind: str, bundle: ModelBundle, directory: Path) -> Path:
    """A copy of ``bundle``'s directory whose model.keras is another network; the card's hash updated."""
    import keras

    layers = {
        "gru": [keras.layers.LSTM(8, return_sequences=True), keras.layers.GRU(8)],
        "relu": [keras.layers.LSTM(8, return_sequences=True), keras.layers.LSTM(8, activation="relu")],
        "backwards": [keras.layers.LSTM(8, return_sequences=True), keras.layers.LSTM(8, go_backwards=True)],
    }[kind]
    model = keras.Sequential([keras.Input(shape=(None,), dtype="int32"),
                              keras.layers.Embedding(bundle.vocab.size, 4, mask_zero=True, name="embedding"), *layers,
                              keras.layers.Dense(1, activation="sigmoid")])
    shutil.copytree(bundle.path, directory)
    model.save(directory / MODEL_FILE)
    card = json.loads((directory / "card.json").read_text(encoding="utf-8"))
    card["files"].pop(MODEL_FILE, None)
    (directory / "card.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    return directory


@pytest.mark.parametrize("kind, reason", [("gru", "layers are"), ("relu", "activation"), ("backwards", "go_backwards")])
def test_other_networks_are_left_to_keras(kind: str, reason: str, bundle: ModelBundle, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    other = _save_variant(kind, bundle, tmp_path / kind)
    light = load_bundle(other, with_keras=False)
    assert light.seed_weights is None and reason in (light.seed_weights_unusable or "")

    scorer = load_scorer(other)
    assert scorer.plan.engine == "keras" and scorer.forward_kind == "Keras layers"
    texts = ["좋아요", "별로예요 정말", "배송 빠름"]
    expected = np.asarray(scorer.bundle.model(bundle.vocab.encode(texts, 50).padded(), training=False)).reshape(-1)
    np.testing.assert_allclose(scorer.score_texts(texts).score, expected, atol=1e-6, rtol=0)

    monkeypatch.setenv(ENGINE_ENV, "numpy")
    with pytest.raises(SettingError, match=f"{ENGINE_ENV}=numpy cannot score model .*{reason}"):
        load_scorer(other)


def test_a_mixed_precision_architecture_is_not_the_seed_network() -> None:
    layer = {"class_name": "LSTM", "config": {"name": "l", "dtype": {"config": {"name": "mixed_float16"}}}}
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Embedding", "config": {"name": "e", "mask_zero": True}}, layer, layer,
        {"class_name": "Dense", "config": {"name": "d"}}]}}
    assert "mixed_float16" in numpy_lstm.unsupported_reason(config)
    assert "not a Sequential" in numpy_lstm.unsupported_reason({"class_name": "Functional"})


def test_a_broken_archive_is_named_without_keras_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / MODEL_FILE).write_bytes(b"not a keras archive")
    card = json.loads((broken / "card.json").read_text(encoding="utf-8"))
    card["files"].pop(MODEL_FILE)
    (broken / "card.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ModelBundleError, match=f"cannot load model file {broken / MODEL_FILE}"):
        load_bundle(broken, with_keras=False)


def test_the_plan_needs_no_keras_unless_the_environment_or_an_accelerator_asks(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moderation.scoring.ACCELERATOR_DEVICE_PATTERNS", (str(tmp_path / "nvidia[0-9]*"),))
    plan = numpy_plan({}, cpus=2)
    assert plan is not None and plan.engine == "numpy" and plan.device == "cpu" and plan.workers == 2
    # Keras' CPU plan's batches, one worker per core; slices of 32 batches, the next prepared in the background.
    keras_cpu = plan_scoring("tensorflow", (), {}, cpus=2)
    assert (plan.batch_rows, plan.batch_chars) == (keras_cpu.batch_rows, keras_cpu.batch_chars)
    assert (plan.slice_rows, plan.prefetch, plan.fixed_shapes) == (32 * plan.batch_rows, True, False)
    assert numpy_plan({ENGINE_ENV: "keras"}, cpus=2) is None
    assert numpy_plan({DEVICE_ENV: "gpu"}, cpus=2) is None
    with pytest.raises(SettingError, match="numpy runs on the CPU"):
        numpy_plan({ENGINE_ENV: "numpy", DEVICE_ENV: "gpu"}, cpus=2)
    with pytest.raises(SettingError, match=ENGINE_ENV):
        numpy_plan({ENGINE_ENV: "onnx"}, cpus=2)

    # With the compiled cell step NumPy takes any job. Without it, a large job pays TensorFlow's import back
    # with the faster fused kernel; a forced engine is kept.
    assert numpy_plan({}, cpus=2, rows=10 * NUMPY_MAX_ROWS) is not None
    with monkeypatch.context() as without_step:
        without_step.setattr(numpy_lstm, "_CELL_LIBRARY", [])
        without_step.setattr(numpy_lstm, "_CELL_PROBLEM", ["moderation/_lstm_cell.c was not compiled"])
        assert numpy_plan({}, cpus=2, rows=NUMPY_MAX_ROWS) is not None
        assert numpy_plan({}, cpus=2, rows=NUMPY_MAX_ROWS + 1) is None
        assert numpy_plan({ENGINE_ENV: "numpy"}, cpus=2, rows=10 * NUMPY_MAX_ROWS) is not None

    (tmp_path / "nvidia0").touch()  # an accelerator's device file: only Keras' backend can tell if it is usable
    assert accelerator_present((str(tmp_path / "nvidia[0-9]*"),))
    assert numpy_plan({}, cpus=2) is None
    assert numpy_plan({DEVICE_ENV: "cpu"}, cpus=2) is not None
    assert numpy_plan({ENGINE_ENV: "numpy"}, cpus=2) is not None


IMPORTS_AFTER_SCORING = r"""
import json, sys
from moderation.scoring import load_scorer
scorer = load_scorer(sys.argv[1])
scores = scorer.score_texts(["좋아요", "최악이에요", None]).score
print(json.dumps({"kind": scorer.forward_kind, "scored": int((scores == scores).sum()),
                  "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine, kind, imported", [("", FUSED_KIND if _cpu_has_avx2_and_fma() else STEP_KIND, False),
                                                         ("keras", "fused LSTM kernel", True)])
def test_a_fresh_scoring_process_imports_tensorflow_only_on_keras_plan(tiny_model_dir: Path, engine: str, kind: str,
                                                                        imported: bool) -> None:
    env = {**os.environ, ENGINE_ENV: engine, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(DEVICE_ENV, None)
    done = subprocess.run([sys.executable, "-c", IMPORTS_AFTER_SCORING, str(tiny_model_dir)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not imported and accelerator_present():
        pytest.skip("this machine has an accelerator: Keras is asked which device to use")
    assert report == {"kind": kind, "scored": 2, "tensorflow": imported, "keras": imported}


def test_without_the_compiled_step_a_job_larger_than_numpy_max_rows_is_scored_on_keras(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    with_step = load_scorer(tiny_model_dir, rows=NUMPY_MAX_ROWS + 1)
    monkeypatch.setattr(numpy_lstm, "_CELL_LIBRARY", [])  # an install without a C compiler
    monkeypatch.setattr(numpy_lstm, "_CELL_PROBLEM", ["moderation/_lstm_cell.c was not compiled"])
    large = load_scorer(tiny_model_dir, rows=NUMPY_MAX_ROWS + 1)
    small = load_scorer(tiny_model_dir, rows=NUMPY_MAX_ROWS)
    assert large.plan.engine == "keras" and large.forward_kind in {"fused LSTM kernel", "Keras layers"}
    if not accelerator_present():
        assert with_step.plan.engine == "numpy" and with_step.forward_kind in {FUSED_KIND, STEP_KIND}
        assert small.plan.engine == "numpy" and small.forward_kind == NUMPY_KIND
    texts = ["좋아요", "별로예요 정말", "배송 빠름", ""]
    for scorer in (small, with_step):
        np.testing.assert_allclose(large.score_texts(texts).score, scorer.score_texts(texts).score, atol=1e-5,
                                   rtol=0, equal_nan=True)
