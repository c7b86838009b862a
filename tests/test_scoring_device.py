"""The scorer's device plan: CPU stays as measured, a GPU gets large batches, fixed shapes and prefetching.

The plan is a pure function of (Keras backend, visible GPUs, environment),
so every branch is checked here on a CPU-only machine. The GPU path itself
runs on CPU as well (same code, same batches); only the comparison of real
GPU scores with CPU scores needs a GPU and is skipped without one.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from moderation.model import build_model, load_bundle
from moderation.numpy_lstm import ENGINE_ENV
from moderation.scoring import (
    BATCH_CHARS_ENV,
    BATCH_ROWS_ENV,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_CHARS,
    DEVICE_ENV,
    GPU_BATCH_CHARS,
    GPU_BATCH_ROWS,
    GPU_MIN_SHAPE_ROWS,
    WORKERS_ENV,
    Scorer,
    ScoringPlan,
    current_plan,
    load_scorer,
    plan_scoring,
    reduced_precision_layers,
    visible_gpus,
)

ONE_GPU = ("/physical_device:GPU:0",)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path) -> Any:
    return load_bundle(tiny_model_dir)


def cpu_plan(**changes: Any) -> ScoringPlan:
    import keras

    return dataclasses.replace(plan_scoring(keras.backend.backend(), (), {}, cpus=2), **changes)


# ----------------------------------------------------------------------------- the plan, a pure function


def test_without_a_gpu_the_plan_is_todays_cpu_scoring() -> None:
    plan = plan_scoring("tensorflow", (), {}, cpus=2)
    assert plan == ScoringPlan(device="cpu", backend="tensorflow", gpus=(), workers=2,
                               batch_rows=DEFAULT_BATCH_SIZE, batch_chars=DEFAULT_MAX_BATCH_CHARS, fused=True,
                               single_thread_ops=True, prefetch=False, slice_rows=None, width_step=1,
                               fixed_shapes=False)
    assert (DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_CHARS) == (1024, 65_536)
    assert plan_scoring("tensorflow", (), {WORKERS_ENV: "3", "MODERATION_FUSED_LSTM": "0"}, cpus=2).workers == 3
    assert plan_scoring("tensorflow", (), {"MODERATION_FUSED_LSTM": "0"}, cpus=2).fused is False


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_visible_gpu_gets_the_gpu_plan_on_every_backend(backend: str) -> None:
    plan = plan_scoring(backend, ONE_GPU, {WORKERS_ENV: "4"}, cpus=16)
    assert plan.device == "gpu" and plan.gpus == ONE_GPU and plan.backend == backend
    assert plan.workers == 1  # one stream of work per device, whatever the CPU setting says
    assert (plan.batch_rows, plan.batch_chars) == (GPU_BATCH_ROWS, GPU_BATCH_CHARS)
    assert plan.fused is False  # the Keras layers: cuDNN's LSTM, not the CPU kernel
    assert plan.single_thread_ops is False
    assert plan.prefetch and plan.fixed_shapes and plan.slice_rows and plan.slice_rows > plan.batch_rows
    assert plan.width_step > 1


def test_cpu_only_backends_other_than_tensorflow_keep_their_threading() -> None:
    plan = plan_scoring("jax", (), {}, cpus=4)
    assert plan.device == "cpu" and plan.single_thread_ops is False and plan.workers == 4


def test_batch_rows_and_characters_come_from_the_environment_on_both_devices() -> None:
    env = {BATCH_ROWS_ENV: "4096", BATCH_CHARS_ENV: "300000"}
    for gpus in ((), ONE_GPU):
        plan = plan_scoring("tensorflow", gpus, env, cpus=2)
        assert (plan.batch_rows, plan.batch_chars) == (4096, 300_000)
    assert plan_scoring("jax", ONE_GPU, {BATCH_ROWS_ENV: " "}, cpus=2).batch_rows == GPU_BATCH_ROWS


def test_the_device_can_be_forced_and_a_missing_gpu_is_an_error() -> None:
    assert plan_scoring("torch", ONE_GPU, {DEVICE_ENV: "cpu"}, cpus=2).device == "cpu"
    assert plan_scoring("torch", ONE_GPU, {DEVICE_ENV: "GPU"}, cpus=2).device == "gpu"
    assert plan_scoring("torch", (), {DEVICE_ENV: "auto"}, cpus=2).device == "cpu"
    with pytest.raises(ValueError, match=f"{DEVICE_ENV}=gpu but Keras' jax backend sees no GPU"):
        plan_scoring("jax", (), {DEVICE_ENV: "gpu"}, cpus=2)
    with pytest.raises(ValueError, match=DEVICE_ENV):
        plan_scoring("jax", (), {DEVICE_ENV: "tpu"}, cpus=2)


@pytest.mark.parametrize("name", [BATCH_ROWS_ENV, BATCH_CHARS_ENV, WORKERS_ENV])
@pytest.mark.parametrize("bad", ["lots", "0", "-5"])
def test_bad_numbers_in_the_environment_are_refused_by_name(name: str, bad: str) -> None:
    with pytest.raises(ValueError, match=name):
        plan_scoring("tensorflow", (), {name: bad}, cpus=2)


def test_this_machine_is_asked_through_its_keras_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    backend = keras.backend.backend()
    gpus = visible_gpus(backend)
    assert isinstance(gpus, tuple)
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert current_plan().device == ("gpu" if gpus else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert current_plan().device == "cpu"
    assert visible_gpus("numpy") == ()


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_report_their_gpus(backend: str) -> None:
    """Where JAX or PyTorch is installed, their own device query answers (an empty tuple on CPU)."""
    pytest.importorskip(backend)
    gpus = visible_gpus(backend)
    assert isinstance(gpus, tuple) and all(isinstance(name, str) for name in gpus)


# ----------------------------------------------------------------------------- the GPU path, run on CPU


def test_fixed_shape_batches_cover_every_row_once_with_few_shapes(bundle: Any) -> None:
    rng = np.random.default_rng(3)
    texts = ["가" * int(n) for n in rng.integers(1, 151, size=3000)]
    encoded = bundle.vocab.encode(texts, bundle.card.max_len)
    scorer = Scorer(bundle, plan=cpu_plan(batch_rows=512, batch_chars=16_384, width_step=16, fixed_shapes=True))
    batches = scorer.fixed_shape_batches(encoded)
    rows = np.concatenate([r for r, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(texts)))
    shapes = set()
    for batch_rows, matrix in batches:
        height, width = matrix.shape
        shapes.add(matrix.shape)
        assert width % 16 == 0 and width >= encoded.lengths[batch_rows].max()
        full = min(512, 16_384 // width)
        assert len(batch_rows) <= height <= max(full, 1)
        assert height == full or (height >= GPU_MIN_SHAPE_ROWS and height & (height - 1) == 0)
        assert np.all(matrix[:, 0] != 0), "a row that is all padding"
        assert np.all((matrix[len(batch_rows):, 1:] == 0)) and np.all(matrix[len(batch_rows):, 0] == 1)
    assert len(shapes) <= 10 * 3  # widths 16..160, a few row counts each: a compilation each on JAX


def test_prefetched_slices_give_the_scores_of_the_plain_path(bundle: Any, sample_path: Path) -> None:
    """The overlapped pipeline scores exactly what the same batches score one after another."""
    texts = pd.read_parquet(sample_path)["text"].head(1500)
    texts.iloc[[10, 700]] = [None, "🙂🙂"]  # unscorable rows in two different slices
    gpu_shaped = dict(fused=False, workers=1, batch_rows=64, batch_chars=4096, slice_rows=256,
                      width_step=16, fixed_shapes=True)
    overlapped = Scorer(bundle, plan=cpu_plan(prefetch=True, **gpu_shaped)).score_texts(texts)
    plain = Scorer(bundle, plan=cpu_plan(prefetch=False, **gpu_shaped)).score_texts(texts)
    np.testing.assert_array_equal(overlapped.score, plain.score)
    np.testing.assert_array_equal(overlapped.flagged, plain.flagged)
    assert overlapped.skip_reason.tolist() == plain.skip_reason.tolist()
    assert overlapped.skip_reason.iloc[10] == "null_text" and np.isnan(overlapped.score[700])
    # ...and what today's CPU plan scores, to float32 noise (other batches, the Keras layers).
    todays = Scorer(bundle, plan=cpu_plan()).score_texts(texts)
    np.testing.assert_allclose(overlapped.score, todays.score, atol=1e-5, rtol=0, equal_nan=True)
    assert todays.skip_reason.tolist() == overlapped.skip_reason.tolist()


def test_the_gpu_plan_scores_on_the_keras_layers_with_one_worker(bundle: Any) -> None:
    import keras

    backend = keras.backend.backend()
    plan = plan_scoring(backend, ONE_GPU, {BATCH_ROWS_ENV: "32", BATCH_CHARS_ENV: "2048"}, cpus=2)
    scorer = Scorer(bundle, plan=plan)  # the GPU plan; on this machine the backend runs it on the CPU
    expected = "Keras layers" if backend == "tensorflow" else "Keras predict_on_batch"
    assert scorer.forward_kind == expected and scorer.workers == 1
    assert (scorer.batch_size, scorer.max_batch_chars) == (32, 2048)
    texts = ["정말 최고의 상품입니다", "별로", "", "배송이 늦고 포장이 엉망이라 다시는 안 삽니다 ㅠㅠ"] * 50
    ours = scorer.score_texts(texts).score
    reference = Scorer(bundle, plan=cpu_plan()).score_texts(texts).score
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0, equal_nan=True)


def test_a_failing_slice_preparation_fails_the_call(bundle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = Scorer(bundle, plan=cpu_plan(prefetch=True, slice_rows=2, fixed_shapes=True, width_step=16))
    real_prepare = scorer._prepare
    calls = []

    def broken(raw: pd.Series) -> Any:  # injected fault: the background thread's second slice fails
        calls.append(len(raw))
        if len(calls) == 2:
            raise RuntimeError("injected preparation failure")
        return real_prepare(raw)

    monkeypatch.setattr(scorer, "_prepare", broken)
    with pytest.raises(RuntimeError, match="injected preparation failure"):
        scorer.score_texts(["좋아요", "별로", "최고", "환불", "그냥 그래요"])


def test_a_reduced_precision_model_is_refused(bundle: Any) -> None:
    import keras

    assert reduced_precision_layers(bundle.model) == []
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build_model(bundle.vocab.size)
    finally:
        keras.config.set_dtype_policy(previous)
    with pytest.raises(ValueError, match="float32"):
        Scorer(dataclasses.replace(bundle, keras_model=mixed), plan=cpu_plan())
    with pytest.raises(ValueError, match="float32"):  # NumPy's plan hands it to Keras, which refuses it too
        Scorer(dataclasses.replace(bundle, keras_model=mixed))


# ----------------------------------------------------------------------------- a real GPU


def _gpu_plan_or_skip() -> ScoringPlan:
    plan = current_plan({**os.environ, ENGINE_ENV: "keras"})
    if plan.device != "gpu":
        pytest.skip(f"no GPU visible to Keras' {plan.backend} backend")
    return plan


CPU_SCORES = r"""
import sys
import numpy as np
import pandas as pd
from moderation.scoring import load_scorer
scorer = load_scorer(sys.argv[1])
assert scorer.plan.device == "cpu", scorer.plan
np.save(sys.argv[3], scorer.score_texts(pd.read_parquet(sys.argv[2])["text"]).score)
"""


@pytest.mark.slow
def test_gpu_scores_equal_cpu_scores(tiny_model_dir: Path, sample_path: Path, tmp_path: Path) -> None:
    """Full float32 on the device: every score within 1e-4 of the CPU's, so no flag flips."""
    import keras

    _gpu_plan_or_skip()
    scorer = load_scorer(tiny_model_dir)
    assert scorer.plan.device == "gpu" and scorer.forward_kind in {"Keras layers", "Keras predict_on_batch"}
    assert keras.config.dtype_policy().name == "float32"
    assert reduced_precision_layers(scorer.bundle.model) == []
    on_gpu = scorer.score_texts(pd.read_parquet(sample_path)["text"]).score
    out = tmp_path / "cpu.npy"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", CPU_SCORES, str(tiny_model_dir), str(sample_path), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    on_cpu = np.load(out)
    assert np.array_equal(np.isnan(on_gpu), np.isnan(on_cpu))
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4, rtol=0, equal_nan=True)
