"""CLI: train, evaluate, score-file, predict, and clean exits on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moderation.cli import main


def test_score_file_parquet_adds_score_flag_and_reason(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "in.parquet"
    pd.DataFrame({"review_id": [1, 2, 3], "text": ["최악이에요", None, "좋아요 ㅎㅎ"]}).to_parquet(source)
    out = tmp_path / "out.parquet"
    assert main(["score-file", "--model", str(tiny_model_dir), str(source), str(out)]) == 0
    scored = pd.read_parquet(out)
    assert scored.columns.tolist() == ["review_id", "text", "score", "flagged", "skip_reason"]
    assert scored["review_id"].tolist() == [1, 2, 3]
    assert scored["score"].notna().tolist() == [True, False, True]
    assert scored["skip_reason"].tolist()[1] == "null_text"
    assert "scored 2 of 3" in capsys.readouterr().out


def test_score_file_csv_and_tsv(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.tsv"
    source.write_text("text\tproduct\n배송 느려요\t7\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    assert main(["score-file", "--model", str(tiny_model_dir), str(source), str(out)]) == 0
    assert pd.read_csv(out)["product"].tolist() == [7]


def test_predict_with_trace(tiny_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["predict", "--model", str(tiny_model_dir), "--trace", "배송은 빨랐지만 최악", "🙂"]) == 0
    out = capsys.readouterr().out
    assert "배송은 빨랐지만" in out and "skipped (no_text_after_cleaning)" in out


def test_evaluate_prints_metrics(tiny_model_dir: Path, sample_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(sample_path), "--balanced"]) == 0
    out = capsys.readouterr().out
    assert "roc_auc" in out and "balanced_accuracy" in out


@pytest.mark.slow
def test_train_command_writes_a_bundle(sample_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "cli-model"
    assert main(["train", "--data", str(sample_path), "--out", str(out), "--epochs", "1", "--max-train-rows", "800"]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.keras", "vocab.json", "card.json", "training_curve.png"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["score-file", "{tmp}/missing.parquet", "{tmp}/o.parquet"], "input file not found"),
        (["score-file", "{tmp}/notext.csv", "{tmp}/o.parquet"], "no column text"),
        (["score-file", "--model", "{tmp}/nomodel", "{tmp}/ok.csv", "{tmp}/o.parquet"], "model directory not found"),
        (["score-file", "{tmp}/ok.csv", "{tmp}/o.json"], "must end in .parquet or .csv"),
        (["evaluate", "--data", "{tmp}/missing.csv"], "input file not found"),
        (["train", "--data", "{tmp}/notext.csv", "--out", "{tmp}/m"], "no column text"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "notext.csv").write_text("body\n좋아요\n", encoding="utf-8")
    (tmp_path / "ok.csv").write_text("text\n좋아요\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "moderation", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("moderation ")]
    assert len(error_lines) == 1
