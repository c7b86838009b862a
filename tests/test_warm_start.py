"""Warm start: fine-tuning an existing model on new reviews keeps its vocabulary and network,
records where it started, and reports the characters the vocabulary has never seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moderation.model import bundle_fingerprint, read_card

SHOP_SAMPLE = Path(__file__).resolve().parent / "data" / "other_domains_sample.parquet"
#: A Hangul syllable no movie review of the sample uses often enough to be in the tiny model's vocabulary.
RARE = "뷁"


@pytest.fixture(scope="module")
def shop_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = pd.read_parquet(SHOP_SAMPLE)[["review_id", "label", "text"]]
    every_tenth = frame.index[::10]
    frame.loc[every_tenth, "text"] = frame.loc[every_tenth, "text"] + f" {RARE}"  # 80 rows, most of them training
    path = tmp_path_factory.mktemp("shop") / "shop.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def fine_tuned(tiny_model_dir: Path, shop_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moderation.training import TrainingConfig, train_from_file

    out = tmp_path_factory.mktemp("warm") / "shop-tuned"
    config = TrainingConfig(epochs=1, batch_size=64, learning_rate=5e-4, max_len=120, patience=1, verbose=0,
                            validation_fraction=0.2, test_fraction=0.2, init_from=str(tiny_model_dir))
    train_from_file(shop_file, out, config, version="shop-tuned")
    return out


def test_fine_tuned_model_keeps_the_vocabulary_and_records_its_start(tiny_model_dir: Path, fine_tuned: Path) -> None:
    base, tuned = read_card(tiny_model_dir), read_card(fine_tuned)
    assert tuned.vocab_size == base.vocab_size
    assert (fine_tuned / "vocab.json").read_bytes() == (tiny_model_dir / "vocab.json").read_bytes()
    assert tuned.training["init_from"] == {"version": "tiny-model", "fingerprint": bundle_fingerprint(tiny_model_dir),
                                           "path": str(tiny_model_dir)}
    assert tuned.training["epochs_run"] == 1 and tuned.training["learning_rate"] == 5e-4
    assert 0 < tuned.threshold < 1


def test_fine_tuning_changes_the_weights(tiny_model_dir: Path, fine_tuned: Path) -> None:
    from moderation.model import load_bundle

    before = load_bundle(tiny_model_dir).model.get_layer("negative_probability").get_weights()[0]
    after = load_bundle(fine_tuned).model.get_layer("negative_probability").get_weights()[0]
    assert before.shape == after.shape and abs(before - after).max() > 0


def test_unseen_characters_are_counted_on_the_card(fine_tuned: Path) -> None:
    unseen = read_card(fine_tuned).training_data["unseen_characters"]
    assert unseen["rows_with_unseen"] >= 30 and unseen["distinct"] >= 1
    assert len(unseen["top"]) == 20  # real shop text: more than 20 characters movie reviews never used
    counts = dict((char, n) for char, n in unseen["top"])
    assert counts.get(RARE, 0) >= 30  # 80 marked rows, about 60 % of them in training


def test_unseen_characters_counts_rows_and_occurrences() -> None:
    from moderation.training import unseen_characters
    from moderation.vocab import CharVocab

    vocab = CharVocab(list("좋아요"))
    found = unseen_characters(["좋아요", "별로예요", "별별"], vocab)
    assert found["rows_with_unseen"] == 2 and found["distinct"] == 3
    assert found["top"][0] == ["별", 3]


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moderation", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ})


@pytest.mark.parametrize("broken", ["missing", "no-card", "bad-json"])
def test_cli_refuses_a_missing_or_broken_init_model_in_one_line(tmp_path: Path, shop_file: Path, broken: str) -> None:
    init = tmp_path / "init"
    if broken != "missing":
        init.mkdir()
        (init / "model.keras").write_bytes(b"weights")
    if broken == "bad-json":
        (init / "card.json").write_text("{not json", encoding="utf-8")
    proc = run_cli("train", "--data", str(shop_file), "--out", str(tmp_path / "m"), "--init-from", str(init))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("moderation ")]
    assert len(lines) == 1 and lines[0].startswith("moderation train: error: "), proc.stderr
    assert str(init) in lines[0]
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_cli_fine_tunes_and_reports_unseen_characters(tiny_model_dir: Path, shop_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    proc = run_cli("train", "--data", str(shop_file), "--out", str(out), "--init-from", str(tiny_model_dir),
                   "--epochs", "1", "--learning-rate", "0.0005", "--max-len", "120")
    assert proc.returncode == 0, proc.stderr
    assert "warm start from" in proc.stderr and "the vocabulary lacks" in proc.stderr and RARE in proc.stderr
    assert "test_balanced" in json.loads(proc.stdout)
    assert read_card(out).training["init_from"]["version"] == "tiny-model"
