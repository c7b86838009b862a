"""The fused LSTM pass computes what the Keras layers compute, and stands in for nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from moderation import fused_lstm
from moderation.model import ModelBundle, build_model, load_bundle
from moderation.numpy_lstm import ENGINE_ENV
from moderation.scoring import Scorer


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path) -> Any:
    return load_bundle(tiny_model_dir)


def _right_padded(rng: np.random.Generator, rows: int, width: int, vocab_size: int) -> np.ndarray:
    lengths = rng.integers(1, width + 1, size=rows)
    lengths[0] = width  # one row fills the batch, as in the Scorer's batches
    ids = rng.integers(1, vocab_size, size=(rows, width)).astype(np.int32)
    ids[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return ids


def test_fused_pass_equals_the_keras_layers(bundle: Any) -> None:
    forward = fused_lstm.build_fused_forward(bundle.model)
    rng = np.random.default_rng(7)
    for rows, width in [(1, 1), (1, 40), (5, 1), (33, 17), (256, 120)]:
        ids = _right_padded(rng, rows, width, bundle.vocab.size)
        fused = np.asarray(forward(ids)).reshape(-1)
        layers = np.asarray(bundle.model(ids, training=False)).reshape(-1)
        np.testing.assert_allclose(fused, layers, atol=1e-6, rtol=0)


def test_scorer_uses_the_fused_pass_unless_told_not_to(bundle: Any, sample_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    texts = pd.read_parquet(sample_path)["text"].head(1500)
    monkeypatch.setenv(ENGINE_ENV, "keras")
    fused = Scorer(bundle, batch_size=100)
    assert fused.forward_kind == "fused LSTM kernel"
    monkeypatch.setenv(fused_lstm.FUSED_ENV, "0")
    layers = Scorer(bundle, batch_size=100)
    assert layers.forward_kind == "Keras layers"
    a, b = fused.score_texts(texts), layers.score_texts(texts)
    np.testing.assert_allclose(a.score, b.score, atol=1e-6, rtol=0, equal_nan=True)
    assert np.array_equal(np.isnan(a.score), np.isnan(b.score))


def test_fused_pass_follows_the_model_weights(bundle: Any) -> None:
    model = build_model(bundle.vocab.size)
    forward = fused_lstm.build_fused_forward(model)
    ids = _right_padded(np.random.default_rng(3), 8, 12, bundle.vocab.size)
    model.set_weights(bundle.model.get_weights())
    np.testing.assert_allclose(np.asarray(forward(ids)), np.asarray(model(ids, training=False)), atol=1e-6, rtol=0)


def _variant(kind: str, vocab_size: int) -> Any:
    import keras

    recurrent = {"gru": keras.layers.GRU(8), "relu": keras.layers.LSTM(8, activation="relu"),
                 "backwards": keras.layers.LSTM(8, go_backwards=True)}[kind]
    model = keras.Sequential([
        keras.Input(shape=(None,), dtype="int32"),
        keras.layers.Embedding(vocab_size, 4, mask_zero=True),
        keras.layers.LSTM(8, return_sequences=True),
        recurrent,
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    return model


@pytest.mark.parametrize("kind, reason", [("gru", "layers are"), ("relu", "activation"), ("backwards", "go_backwards")])
def test_other_networks_are_scored_by_their_own_layers(kind: str, reason: str, bundle: Any) -> None:
    model = _variant(kind, bundle.vocab.size)
    assert reason in (fused_lstm.unsupported_reason(model) or "")
    with pytest.raises(ValueError, match="cannot score this model"):
        fused_lstm.build_fused_forward(model)

    other = ModelBundle(path=bundle.path, keras_model=model, vocab=bundle.vocab, card=bundle.card)
    scorer = Scorer(other, batch_size=2)
    assert scorer.forward_kind == "Keras layers"
    texts = ["좋아요", "별로예요 정말", "배송 빠름"]
    expected = np.asarray(model(bundle.vocab.encode(texts, 50).padded(), training=False)).reshape(-1)
    np.testing.assert_allclose(scorer.score_texts(texts).score, expected, atol=1e-6, rtol=0)
