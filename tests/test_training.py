"""A real (tiny) training run: loss falls, the bundle is complete, NaN is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderation.data import load_labelled, split_by_group
from moderation.model import load_bundle
from moderation.training import TrainingConfig, class_weights, train_on_split


@pytest.mark.slow
def test_tiny_training_run_lowers_the_loss(sample_path: Path, tmp_path: Path) -> None:
    split = split_by_group(load_labelled(sample_path), validation=0.15, test=0.15)
    config = TrainingConfig(epochs=3, batch_size=64, patience=3, verbose=0, learning_rate=3e-3)
    bundle = train_on_split(split, tmp_path / "m", config, "tiny-3")
    losses = bundle.card.training["history"]["loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    reloaded = load_bundle(tmp_path / "m")
    assert reloaded.card.metrics["test_balanced"]["roc_auc"] > 0.6
    assert bundle.card.training["samples_per_second"] > 0


def test_class_weights_balance_the_loss() -> None:
    import numpy as np

    labels = np.array([1] + [0] * 3, dtype=float)
    weights = class_weights(labels)
    assert weights[1] * 1 == pytest.approx(weights[0] * 3)


@pytest.mark.slow
def test_train_command_accepts_string_item_ids(sample_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import pandas as pd

    from moderation.cli import main

    raw = pd.read_parquet(sample_path)
    raw["item_id"] = "x" + raw["item_id"].astype(str)  # once: ValueError: invalid literal for int()
    data = tmp_path / "reviews.parquet"
    raw.to_parquet(data)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "strings"), "--epochs", "1",
                 "--max-train-rows", "400", "--batch-size", "128",
                 "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert code == 0, capsys.readouterr().err
    assert "test_balanced" in json.loads(capsys.readouterr().out)
