"""Every command refuses nonsense in one line, keeps what it should keep, and shows its progress.

The walk over every subcommand runs the real console script in a subprocess
(as a user would) and asserts exit 2, exactly one ``moderation <cmd>: error:``
line and no traceback. The database checks run on a SQLite file and on
PostgreSQL; model checks use the real tiny model of ``conftest``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import insert, select, update

from moderation import db, pipeline, registry
from moderation.cli import main
from moderation.errors import InputDataError, ModelBundleError, ModerationError
from moderation.model import CARD_FILE, ModelCard, bundle_fingerprint, read_card

NIGHT = datetime(2026, 11, 22, tzinfo=timezone.utc)
VALID_CARD = {"version": "bad-card", "created_at": "2026-11-01T00:00:00+00:00", "cleaning_version": "x",
              "max_len": 150, "vocab_size": 10, "threshold": 0.5}


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moderation", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("moderation ")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs a new user gets wrong: a semicolon CSV, numbers as texts, a card with threshold 1.5, ..."""
    tmp = tmp_path_factory.mktemp("refusals")
    (tmp / "ok.csv").write_text("text\n좋아요\n", encoding="utf-8")
    rows = [f"{i};배송 느려요;{i % 10 + 1}" if i != 15 else f"{i};배송 느려요, 포장도, 최악;1" for i in range(30)]
    (tmp / "semicolon.csv").write_text("review_id;text;rating\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp / "semicolon-clean.csv").write_text("review_id;text\n1;좋아요\n", encoding="utf-8")
    (tmp / "numbers.csv").write_text("review_id,text\n1,1\n2,2\n3,3\n4,4\n", encoding="utf-8")
    pd.DataFrame({"text": [1, 2, 3, 4]}).to_parquet(tmp / "numbers.parquet")
    (tmp / "a-directory.csv").mkdir()
    (tmp / "exists.parquet").write_bytes(b"keep me")
    (tmp / "existing-model").mkdir()
    (tmp / "existing-model" / "model.keras").write_bytes(b"weights")
    card_dir = tmp / "card-1.5"
    card_dir.mkdir()
    (card_dir / CARD_FILE).write_text(json.dumps({**VALID_CARD, "threshold": 1.5}), encoding="utf-8")
    db.init_schema(db.make_engine(f"sqlite:///{tmp / 'empty.db'}"))
    return tmp


# (argv, the message's key words). {t} is the folder of ``files``; missing/ never exists.
BAD = [
    (["predict", "--model", "{t}/card-1.5", "x"], "threshold must be between 0 and 1"),
    (["predict", "--model", "{t}/missing", "x"], "model directory not found"),
    (["train", "--data", "{t}/ok.csv", "--out", "{t}/m", "--epochs", "0"], "argument --epochs: must be at least 1"),
    (["train", "--data", "{t}/ok.csv", "--out", "{t}/m", "--learning-rate", "-1"], "--learning-rate: must be above 0"),
    (["train", "--data", "{t}/ok.csv", "--out", "{t}/m", "--learning-rate", "nan"], "must be a finite number"),
    (["train", "--data", "{t}/ok.csv", "--out", "{t}/m", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["train", "--data", "{t}/ok.csv", "--out", "{t}/existing-model"], "already holds model.keras"),
    (["train", "--data", "{t}/a-directory.csv", "--out", "{t}/m"], "is a directory, not a file"),
    (["train", "--data", "{t}/numbers.csv", "--out", "{t}/m"], "every value of column text is a number"),
    (["train", "--data", "{t}/ok.csv", "--out", "{t}/m", "--init-from", "{t}/missing"], "model directory not found"),
    (["evaluate", "--data", "{t}/a-directory.csv"], "is a directory, not a file"),
    (["score-file", "{t}/ok.csv", "{t}/o.parquet", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["score-file", "{t}/ok.csv", "{t}/o.parquet", "--threshold", "1.5"], "--threshold: must be between 0 and 1"),
    (["score-file", "{t}/ok.csv", "{t}/o.parquet", "--threshold=-1"], "--threshold: must be between 0 and 1"),
    (["score-file", "{t}/ok.csv", "{t}/o.parquet", "--threshold", "nan"], "must be a finite number"),
    (["score-file", "{t}/a-directory.csv", "{t}/o.parquet"], "is a directory, not a file"),
    (["score-file", "{t}/ok.csv", "{t}/exists.parquet"], "exists: give another name, or --force"),
    (["score-file", "{t}/ok.csv", "{t}/ok.csv"], "is the input file"),
    (["score-file", "{t}/semicolon.csv", "{t}/o.parquet"], "Expected 1 fields in line 17, saw 3; its header is "
                                                           "semicolon-separated"),
    (["score-file", "{t}/semicolon-clean.csv", "{t}/o.parquet"], "its header is semicolon-separated"),
    (["score-file", "{t}/numbers.csv", "{t}/o.parquet"], "every value of column text is a number"),
    (["score-file", "{t}/numbers.parquet", "{t}/o.parquet"], "column text holds numbers"),
    (["db", "init", "--db", "notaurl"], "not a database URL"),
    (["db", "init", "--db", "mysql://u@h/db"], "unsupported database mysql"),
    (["reviews", "import", "{t}/a-directory.csv", "--db", "sqlite:///{t}/empty.db"], "is a directory, not a file"),
    (["reviews", "import", "{t}/ok.csv", "--spread-days", "0"], "--spread-days: must be at least 1"),
    (["reviews", "import", "{t}/numbers.parquet", "--db", "sqlite:///{t}/empty.db"], "holds int64 values"),
    (["score", "--start", "2026-11-22", "--end", "2026-11-23", "--chunk-size", "0"], "--chunk-size: must be at least 1"),
    (["score", "--start", "2026-11-22", "--end", "2026-11-23", "--chunk-size=-5"], "--chunk-size: must be at least 1"),
    (["score", "--start", "2026-11-22", "--end", "2026-11-23", "--threshold", "nan"], "must be a finite number"),
    (["score", "--start", "2026-11-22", "--end", "2026-11-23", "--threshold", "1.5"], "must be between 0 and 1"),
    (["score", "--start", "2026-11-23", "--end", "2026-11-22"], "must be after --start"),
    (["score", "--start", "2026-11-22", "--end", "2026-11-23", "--run-id", ""], "--run-id: must be 1-250"),
    (["flagged", "--db", "notaurl"], "not a database URL"),
    (["flagged", "--db", "mysql://u@h/db"], "unsupported database mysql"),
    (["flagged", "--db", ""], "argument --db: is empty"),
    (["flagged", "--db", "sqlite:///{t}/missing/reviews.db"], "database file not found"),
    (["flagged", "--db", "sqlite:///{t}/empty.db", "--since", "2026-11-23", "--until", "2026-11-22"],
     "--until 2026-11-22T00:00:00+00:00 must be after --since"),
    (["flagged", "--db", "sqlite:///{t}/empty.db", "--min-score", "2"], "--min-score: must be between 0 and 1"),
    (["flagged", "--db", "sqlite:///{t}/empty.db", "--format", "csv", "--output", "{t}/f.parquet"],
     "--format csv does not match --output f.parquet"),
    (["flagged", "--db", "sqlite:///{t}/empty.db", "--output", "{t}/a-directory.csv"], "is a directory"),
    (["stats", "--db", "sqlite:///{t}/missing/reviews.db"], "database file not found"),
    (["decide", "1", "--confirm", "--by", "kim", "--db", "sqlite:///{t}/missing/reviews.db"], "database file not found"),
    (["labels", "import", "{t}/a-directory.csv", "--db", "sqlite:///{t}/empty.db"], "is a directory, not a file"),
    (["labels", "from-ratings", "--db", "sqlite:///{t}/missing/reviews.db"], "database file not found"),
    (["models", "list", "--db", "postgresql://u:secret@127.0.0.1:1/x?connect_timeout=1"], "is unavailable"),
    (["models", "register", "{t}/card-1.5", "--db", "sqlite:///{t}/empty.db"], "threshold must be between 0 and 1"),
    (["models", "activate", "v1", "--db", "sqlite:///{t}/missing/reviews.db"], "database file not found"),
    (["serve", "--db", "sqlite:///{t}/missing/reviews.db"], "MODERATION_WEB_SECRET is not set"),
    (["serve", "--port", "70000"], "--port: must be at most 65535"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(BAD)])
def test_every_subcommand_refuses_bad_values_in_one_line(files: Path, argv: list[str], message: str) -> None:
    proc = run_cli(*[a.format(t=files) for a in argv])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert ": error: " in lines[0] and message in lines[0], lines[0]
    assert "secret" not in proc.stderr
    assert not (files / "missing").exists()  # a read-only command creates no folder and no database
    assert (files / "exists.parquet").read_bytes() == b"keep me"


def test_garbage_database_url_in_the_environment(files: Path) -> None:
    proc = run_cli("stats", env={"MODERATION_DB_URL": "garbage"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == ["moderation stats: error: not a database URL: 'garbage' "
                                        "(use sqlite:///PATH or postgresql://USER@HOST/DATABASE)"]


# ---------------------------------------------------------------- model cards


def test_card_thresholds_are_range_checked_and_extra_fields_accepted() -> None:
    points = {"shopping": {"likely": {"threshold": 0.71, "precision": 0.8, "recall": 0.6},
                           "certain": {"threshold": 0.9}}}
    card = ModelCard.from_dict({**VALID_CARD, "operating_points": points, "default_domain": "shopping",
                                "something_new": [1, 2]})
    assert card.threshold == 0.5
    for bad in (1.5, 0.0, 1.0, -1, float("nan"), float("inf"), "0.5", None, True):
        with pytest.raises(ModelBundleError, match="threshold"):
            ModelCard.from_dict({**VALID_CARD, "threshold": bad})
    bad_points = {"shopping": {"likely": {"threshold": 1.2}}}
    with pytest.raises(ModelBundleError, match=r"operating_points.shopping.likely.threshold"):
        ModelCard.from_dict({**VALID_CARD, "operating_points": bad_points})
    with pytest.raises(ModelBundleError, match="has no threshold"):
        ModelCard.from_dict({**VALID_CARD, "operating_points": {"shopping": {"likely": {"precision": 0.8}}}})


def test_cards_are_written_as_strict_json(tmp_path: Path) -> None:
    card = ModelCard(**VALID_CARD)
    card.metrics = {"test": {"roc_auc": float("nan"), "precision": float("inf"), "recall": 0.5}}

    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    written = json.loads(card.to_json(), parse_constant=refuse)
    assert written["metrics"]["test"] == {"roc_auc": None, "precision": None, "recall": 0.5}


def test_bundle_fingerprint_is_the_files_in_name_order(tiny_model_dir: Path) -> None:
    import hashlib

    expected = hashlib.sha256(b"".join((tiny_model_dir / n).read_bytes()
                                       for n in ("card.json", "model.keras", "vocab.json"))).hexdigest()
    assert bundle_fingerprint(tiny_model_dir) == expected and len(expected) == 64


# ---------------------------------------------------------------- training data


def test_the_base_corpus_is_a_setting_and_a_missing_one_is_refused_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is looked up beside the code: the Param, MODERATION_BASE_CORPUS, else MODERATION_HOME."""
    from moderation.retraining import RetrainingParams, base_corpus_path

    home = tmp_path / "home"
    monkeypatch.setenv("MODERATION_HOME", str(home))
    monkeypatch.delenv("MODERATION_BASE_CORPUS", raising=False)
    RetrainingParams.from_mapping({})  # not asked for: not looked for
    with pytest.raises(ModerationError, match=rf"not found at {home / 'ko_reviews.parquet'} \(the default under "
                                              rf"MODERATION_HOME\): set the base_corpus parameter"):
        RetrainingParams.from_mapping({"include_base_corpus": True})
    home.mkdir()
    (home / "ko_reviews.parquet").write_bytes(b"PAR1")  # only found here; read when training
    assert base_corpus_path() == home / "ko_reviews.parquet"
    elsewhere = tmp_path / "corpus.parquet"
    monkeypatch.setenv("MODERATION_BASE_CORPUS", str(elsewhere))
    with pytest.raises(ModerationError, match="not found at .*corpus.parquet \\(MODERATION_BASE_CORPUS\\)"):
        base_corpus_path()
    elsewhere.write_bytes(b"PAR1")
    assert base_corpus_path() == elsewhere
    with pytest.raises(ModerationError, match="\\(the base_corpus parameter\\)"):
        RetrainingParams.from_mapping({"include_base_corpus": True, "base_corpus": str(tmp_path / "nope.parquet")})
    params = RetrainingParams.from_mapping({"include_base_corpus": True, "base_corpus": str(elsewhere)})
    assert base_corpus_path(params.base_corpus) == elsewhere


def _labelled(tmp_path: Path, negatives: int, positives: int) -> Path:
    texts = [f"최악 배송 {i}" for i in range(negatives)] + [f"좋아요 추천 {i}" for i in range(positives)]
    path = tmp_path / "labelled.csv"
    pd.DataFrame({"text": texts, "label": [1] * negatives + [0] * positives}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("negatives, positives, reason", [(0, 300, "0 negative reviews"),
                                                          (10, 10, "each split needs at least 5")])
def test_training_refuses_degenerate_data_with_the_reason(tmp_path: Path, negatives: int, positives: int,
                                                          reason: str) -> None:
    from moderation.training import train_from_file

    with pytest.raises(ModerationError, match=reason):
        train_from_file(_labelled(tmp_path, negatives, positives), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_training_refuses_settings_that_cannot_train(sample_path: Path, tmp_path: Path) -> None:
    from moderation.data import load_labelled, split_by_group
    from moderation.training import TrainingConfig, train_on_split

    split = split_by_group(load_labelled(sample_path))
    for config, reason in [(TrainingConfig(epochs=0), "epochs"), (TrainingConfig(learning_rate=-1), "learning rate"),
                           (TrainingConfig(learning_rate=float("nan")), "learning rate"),
                           (TrainingConfig(batch_size=0), "batch size")]:
        with pytest.raises(ModerationError, match=reason):
            train_on_split(split, tmp_path / "m", config, "v")


@pytest.mark.slow
def test_train_replaces_only_an_unregistered_model_and_prints_json_only(sample_path: Path, tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    out = tmp_path / "models" / "again"
    shutil.copytree(tiny_model_dir, out)
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    args = ["train", "--data", str(sample_path), "--out", str(out), "--epochs", "1", "--max-train-rows", "800",
            "--db", url]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--replace" in error_lines(refused.stderr)[0]
    proc = run_cli(*args, "--replace", "--progress")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)  # stdout is the metrics JSON and nothing else
    assert "validation" in metrics and "test_balanced" in metrics
    assert "epoch 1/1" in proc.stderr and "evaluating:" in proc.stderr and "reviews/s" in proc.stderr
    assert read_card(out).version == "again"
    engine = db.make_engine(url)
    db.init_schema(engine)
    registry.register_model(engine, out)
    engine.dispose()
    registered = run_cli(*args, "--replace")
    assert registered.returncode == 2
    assert "holds registered model again: a registered model cannot be replaced" in registered.stderr


# ---------------------------------------------------------------- score-file


def test_score_file_rejects_invalid_utf8_lines_and_reports_progress(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes("text\n".encode() + b"\xff\xfe\xb0\xe8 " + "배송 최악\n".encode() + "좋아요\n".encode())
    out = tmp_path / "out.parquet"
    proc = run_cli("score-file", "--model", str(tiny_model_dir), str(source), str(out), "--progress")
    assert proc.returncode == 0, proc.stderr
    scored = pd.read_parquet(out)
    assert scored["text"].tolist() == ["좋아요"] and scored["score"].notna().tolist() == [True]
    assert "1 rejected (line 2: invalid UTF-8)" in proc.stdout
    assert "scoring: 1/1 reviews (100%)" in proc.stderr and "reviews/s" in proc.stderr
    quiet = run_cli("score-file", "--model", str(tiny_model_dir), str(source), str(out), "--force")
    assert quiet.returncode == 0 and "scoring:" not in quiet.stderr  # not a terminal, not asked: no progress


# ---------------------------------------------------------------- the database, on SQLite and PostgreSQL


def _register_copy(engine: Any, tiny_model_dir: Path, target: Path) -> Path:
    shutil.copytree(tiny_model_dir, target)
    registry.register_model(engine, target, activate=True)
    return target


def test_a_registered_model_swapped_on_disk_is_refused(engine: Any, any_db_url: str, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    model = _register_copy(engine, tiny_model_dir, tmp_path / "tiny-model")
    assert registry.active_model(engine).version == "tiny-model"
    card = json.loads((model / CARD_FILE).read_text(encoding="utf-8"))
    (model / CARD_FILE).write_text(json.dumps({**card, "threshold": 0.42}), encoding="utf-8")  # valid, but not it
    with pytest.raises(ModelBundleError, match="no longer matches registered model tiny-model"):
        registry.active_model(engine)
    with pytest.raises(ModelBundleError, match="already registered with other files"):
        registry.register_model(engine, model)
    with pytest.raises(ModelBundleError, match="no longer matches"):
        pipeline.plan_run(any_db_url, "r", NIGHT, NIGHT + timedelta(days=1))
    assert main(["models", "list", "--db", any_db_url]) == 0


def test_a_row_without_fingerprint_is_accepted_and_filled_in(engine: Any, tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    model = _register_copy(engine, tiny_model_dir, tmp_path / "tiny-model")
    with engine.begin() as conn:
        conn.execute(update(db.model_versions).values(fingerprint=None))
    assert registry.active_model(engine).version == "tiny-model"
    with engine.connect() as conn:
        assert conn.execute(select(db.model_versions.c.fingerprint)).scalar() == bundle_fingerprint(model)


def test_models_list_says_which_folders_are_gone(engine: Any, any_db_url: str, tiny_model_dir: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _register_copy(engine, tiny_model_dir, tmp_path / "tiny-model")
    shutil.rmtree(model)
    assert main(["models", "list", "--db", any_db_url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["files"] == "missing"
    assert main(["models", "list", "--db", any_db_url]) == 0
    assert "the model directory or one of its files is gone" in capsys.readouterr().out


def _run_row(run_id: str, start: datetime, scored: int = 100) -> dict[str, Any]:
    return {"run_id": run_id, "interval_start": start, "interval_end": start + timedelta(days=1),
            "model_version": "v1", "threshold": 0.5, "reviews_read": scored, "reviews_scored": scored,
            "reviews_skipped": 0, "reviews_flagged": 10, "started_at": start, "finished_at": start,
            "status": "success"}


def test_chunk_size_and_run_id_cannot_replace_history(engine: Any, any_db_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(db.scoring_runs).values(_run_row("night-1", NIGHT)))
    for size in (0, -5, 2.5):
        with pytest.raises(InputDataError, match="chunk size must be"):
            pipeline.plan_run(any_db_url, "night-1", NIGHT, NIGHT + timedelta(days=1), chunk_size=size)  # type: ignore[arg-type]
    later = NIGHT + timedelta(days=1)
    with pytest.raises(InputDataError, match="run id 'night-1' already records the interval"):
        pipeline.plan_run(any_db_url, "night-1", later, later + timedelta(days=1))
    with pytest.raises(ModelBundleError, match="threshold override must be between 0 and 1"):
        registry.active_model(engine, threshold=1.5)
    with engine.connect() as conn:
        row = conn.execute(select(db.scoring_runs.c.reviews_scored, db.scoring_runs.c.interval_start)).one()
    assert row[0] == 100  # the night's record is untouched


def test_an_empty_night_warns(engine: Any, any_db_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    _register_copy(engine, tiny_model_dir, tmp_path / "tiny-model")
    summary = pipeline.run_nightly(any_db_url, NIGHT, NIGHT + timedelta(days=1), work_dir=tmp_path / "run")
    assert summary["reviews_read"] == 0
    assert summary["warning"].startswith("no reviews were ingested in [2026-11-22T00:00:00+00:00, ")


def test_a_night_already_scored_is_not_called_empty(engine: Any, any_db_url: str, tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    """Work is chosen by state: a second run of a night (Airflow's after the CLI's, a retry, a backfill after
    a catch-up run) may find nothing left to score; that is not a night without reviews."""
    _register_copy(engine, tiny_model_dir, tmp_path / "tiny-model")
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [{"review_id": i, "product_id": 1, "rating": 1, "text": f"최악이에요 {i}",
                                           "ingested_at": NIGHT + timedelta(hours=3)} for i in range(1, 6)])
    end = NIGHT + timedelta(days=1)
    first = pipeline.run_nightly(any_db_url, NIGHT, end, work_dir=tmp_path / "run1")
    assert first["reviews_read"] == 5
    again = pipeline.run_nightly(any_db_url, NIGHT, end, run_id="scheduled__night", work_dir=tmp_path / "run2")
    assert again["reviews_read"] == 0
    assert again["warning"] is None
    later = pipeline.run_nightly(any_db_url, end, end + timedelta(days=1), work_dir=tmp_path / "run3")
    assert later["warning"].startswith("no reviews were ingested in [2026-11-23T00:00:00+00:00, ")


def _queue(engine: Any, count: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [{"review_id": i, "product_id": 1, "rating": 1, "text": f"최악 {i}",
                                           "ingested_at": NIGHT} for i in range(1, count + 1)])
        conn.execute(insert(db.scoring_runs).values(_run_row("r1", NIGHT - timedelta(days=1))))
        conn.execute(insert(db.moderation_queue), [
            {"review_id": i, "model_version": "v1", "score": 0.9, "threshold": 0.5, "status": "pending",
             "flagged_at": NIGHT, "run_id": "r1"} for i in range(1, count + 1)])


def test_exports_write_everything_and_follow_the_extension(engine: Any, any_db_url: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _queue(engine, 60)
    out = tmp_path / "f.csv"
    assert main(["flagged", "--db", any_db_url, "--format", "csv", "--output", str(out)]) == 0
    assert len(pd.read_csv(out)) == 60 and "wrote 60 flagged reviews" in capsys.readouterr().out
    parquet = tmp_path / "f.parquet"
    assert main(["flagged", "--db", any_db_url, "--output", str(parquet)]) == 0
    assert len(pd.read_parquet(parquet)) == 60 and "(parquet)" in capsys.readouterr().out
    assert main(["flagged", "--db", any_db_url, "--output", str(out)]) == 2  # exists: kept
    assert "--force" in capsys.readouterr().err
    assert main(["flagged", "--db", any_db_url, "--output", str(out), "--limit", "10", "--force"]) == 0
    assert len(pd.read_csv(out)) == 10
    assert "wrote 10 flagged reviews" in (said := capsys.readouterr().out) and "--limit 10 cut the list" in said
    assert main(["flagged", "--db", any_db_url]) == 0  # the screen: one page, and a note that says so
    captured = capsys.readouterr()
    assert "showing the first 50 flagged reviews; more match" in captured.err
    assert main(["flagged", "--db", any_db_url, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 60


def test_decide_says_who_it_overturns_and_prints_once(engine: Any, any_db_url: str,
                                                      capsys: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    _queue(engine, 3)
    assert main(["decide", "1", "2", "--confirm", "--by", "kim", "--db", any_db_url]) == 0
    assert capsys.readouterr().out.count("confirmed 2 reviews by kim") == 1
    caplog.clear()
    assert main(["decide", "1", "--dismiss", "--by", "lee", "--db", any_db_url]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("review 1 was confirmed by kim at ")
    assert warnings[0].endswith("UTC; lee now overturns it as dismissed")
    assert not [r for r in caplog.records if "dismissed 1 review" in r.getMessage()]  # the summary once, on stdout
    assert capsys.readouterr().out.count("dismissed 1 review by lee") == 1
    caplog.clear()
    assert main(["decide", "2", "--confirm", "--by", "lee", "--db", any_db_url]) == 0  # agrees: nothing to say
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_reviews_import_refuses_a_column_of_numbers_and_keeps_the_texts(engine: Any, any_db_url: str,
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _queue(engine, 4)
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("review_id,product_id,text\n1,1,1\n2,1,2\n3,1,3\n4,1,4\n", encoding="utf-8")
    assert main(["reviews", "import", str(numbers), "--db", any_db_url]) == 2
    assert "every text is a number" in capsys.readouterr().err
    with engine.connect() as conn:
        texts = conn.execute(select(db.reviews.c.text).order_by(db.reviews.c.review_id)).scalars().all()
    assert texts == ["최악 1", "최악 2", "최악 3", "최악 4"]


def test_a_file_not_in_utf8_is_refused_and_a_few_bad_lines_are_rejected_by_number(
        engine: Any, any_db_url: str, tiny_model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Korean export saved as CP949 would be read as mojibake: scored and flagged with confidence by
    score-file, and upserted over the real texts by reviews import. Refused; a line that is not UTF-8 in
    an otherwise good file is rejected by number, by score-file as by reviews import."""
    _queue(engine, 4)
    cp949 = tmp_path / "cp949.csv"
    cp949.write_bytes("review_id,product_id,text\n1,1,배송이 너무 느려요\n2,1,최악입니다 환불해주세요\n3,1,\n"
                      .encode("cp949"))
    assert main(["score-file", str(cp949), str(tmp_path / "out.csv"), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "cp949.csv is not UTF-8: every one of its 2 texts" in err and "iconv -f cp949" in err
    assert not (tmp_path / "out.csv").exists()
    assert main(["reviews", "import", str(cp949), "--db", any_db_url]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
    with engine.connect() as conn:
        texts = conn.execute(select(db.reviews.c.text).order_by(db.reviews.c.review_id)).scalars().all()
    assert texts == ["최악 1", "최악 2", "최악 3", "최악 4"]

    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes("review_id,product_id,text\n1,1,최악 1\n2,1,".encode() + "나빠요".encode("cp949")
                      + "\n3,1,좋아요\n".encode())
    assert main(["score-file", str(mixed), str(tmp_path / "out.csv"), "--model", str(tiny_model_dir)]) == 0
    assert "scored 2 of 2 reviews" in (out := capsys.readouterr().out) and "1 rejected (line 3: invalid UTF-8)" in out
    assert main(["reviews", "import", str(mixed), "--db", any_db_url]) == 0
    assert "1 rejected" in (out := capsys.readouterr().out) and "line 3: invalid UTF-8" in out
