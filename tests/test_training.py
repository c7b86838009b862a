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


def test_training_with_most_reviews_at_the_length_cap(sample_path: Path, tmp_path: Path) -> None:
    """Most reviews are longer than 20 characters, so most batches are exactly 20 wide: Keras must not
    take the first two batches' width for every batch's."""
    from moderation.training import TrainingConfig, train_from_file

    config = TrainingConfig(epochs=1, batch_size=128, max_len=20, patience=1, verbose=0, max_train_rows=1500)
    bundle = train_from_file(sample_path, tmp_path / "capped", config, version="capped")
    assert bundle.card.max_len == 20 and bundle.card.training["epochs_run"] == 1


def test_first_two_batches_differ_in_width_when_any_do() -> None:
    import numpy as np

    from moderation.training import vary_first_widths

    lengths = np.array([20, 20, 20, 20, 20, 20, 7, 3])
    batches = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5]), np.array([6, 7])]
    vary_first_widths(batches, lengths)
    assert lengths[batches[0]].max() != lengths[batches[1]].max()
    same = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    vary_first_widths(same, lengths)
    assert [b.tolist() for b in same] == [[0, 1], [2, 3], [4, 5]]
