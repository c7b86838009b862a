"""The benchmark runs end to end and checks what it measures; its timings are never asserted.

Figures depend on the machine and on whatever else runs on it, so these tests
only check that every section is produced, that the seeds' way and the Scorer
agree, and that each nightly run read every review it was given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from moderation import numpy_lstm
import bench  # benchmarks/bench.py (pytest's pythonpath)

PG_ADMIN_URL = os.environ.get("MODERATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tiny_model_dir: Path, sample_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    pg = ["--no-pg"] if os.environ.get("MODERATION_SKIP_PG") == "1" else ["--pg-url", PG_ADMIN_URL]
    # Scaling at the pipeline's size only: it reuses that run, saving one TensorFlow start (~10 s).
    code = bench.main(["--quick", "--model", str(tiny_model_dir), "--corpus", str(sample_path),
                       "--sizes", "400", "--scaling-sizes", "400", "--out", str(out), *pg])
    assert code == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert {"machine", "settings", "model", "pipeline", "scaling", "training"} <= results.keys()
    assert "error" not in results
    assert results["machine"]["cpu_count"] and results["machine"]["python"]

    model = results["model"]
    assert model["agreement"]["passed"] is True
    assert model["agreement"]["rows_compared"] > 0
    assert {r["batch_size"] for r in model["scorer"]} == {256, 512, 1024, 2048}
    assert model["best_scorer"] in model["scorer"]
    numpy_kind = numpy_lstm.FUSED_KIND if numpy_lstm.compiled_forward(64, 32) else numpy_lstm.STEP_KIND
    assert model["forward"] == {"Scorer": numpy_kind, "Scorer, fused LSTM kernel": "fused LSTM kernel",
                                "Scorer, Keras layers": "Keras layers"}
    assert len(model["agreement"]["scorers_checked"]) == 6  # four batch sizes, the fused kernel, the Keras layers
    assert [r["method"] for r in model["seeds_variants"]] == ["seeds (pad 100)", "seeds (pad 100), TF default threads"]
    assert model["seeds"] in model["seeds_variants"]  # the faster of the two is the baseline
    assert model["threads"]["scorer_workers"] >= 1  # TensorFlow runs already here, so its threading stays as it is

    kinds = {"sqlite"} if pg == ["--no-pg"] else {"sqlite", "postgresql"}
    assert {r["db"] for r in results["pipeline"]} == kinds
    for run in results["pipeline"]:
        assert run["reviews_read"] == run["reviews"]
        assert 0 < run["reviews_scored"] <= run["reviews"]
        assert sum(c["rows"] for c in run["chunks"]) == run["reviews"]
        assert run["peak_rss_mb"] > 0
    assert [r["reviews"] for r in results["scaling"]["rows"]] == results["settings"]["scaling_sizes"]

    variants = results["training"]["variants"]
    assert [v["recipe"] for v in variants] == ["bucketed (project)", "fixed 100 (seeds)"]
    assert all(0.0 <= v["val_accuracy"] <= 1.0 for v in variants)
    assert variants[1]["mean_padded_width"] == bench.SEED_MAX_LEN
    assert all([e["epoch"] for e in v["per_epoch"]] == [1] for v in variants)
    assert len(results["training"]["at_equal_time"]) == 1

    printed = capsys.readouterr().out
    for title in ("1. Model-only throughput", "2. Nightly pipeline", "3. Scaling", "4. Training"):
        assert title in printed


def test_disagreeing_scores_fail_loudly() -> None:
    lengths = np.array([10, 50, 120, 0])
    seeds = np.array([0.1, 0.2, 0.3, 0.4])
    ours = np.array([0.1, 0.2 + 1e-3, 0.9, np.nan])  # row 2 is longer than 100: not compared
    agreement = bench.check_agreement(lengths, seeds, {256: ours})
    assert agreement["rows_compared"] == 2 and agreement["rows_longer_than_100"] == 1
    assert agreement["passed"] is False
    with pytest.raises(bench.BenchError, match="disagree"):
        bench._require_agreement(agreement)
    assert bench.check_agreement(lengths, seeds, {256: seeds.copy()})["passed"] is True


def test_samples_beyond_the_corpus_get_new_unique_ids(sample_path: Path) -> None:
    frame = bench.load_corpus(sample_path)
    same = bench.sample_corpus(frame, 100)
    assert same.equals(bench.sample_corpus(frame, 100))  # fixed: every section sees the same rows
    big = bench.sample_corpus(frame, len(frame) + 500)
    assert big["review_id"].is_unique and len(big) == len(frame) + 500


def test_equal_time_rows_say_when_the_faster_recipe_had_finished() -> None:
    def epochs(*elapsed_auc: tuple[float, float]) -> list[dict[str, float]]:
        return [{"epoch": i + 1, "elapsed_seconds": t, "val_auc": a} for i, (t, a) in enumerate(elapsed_auc)]

    bucketed = epochs((10, 0.80), (20, 0.85), (30, 0.86))
    fixed = epochs((9, 0.70), (25, 0.82), (50, 0.90))
    rows = bench.equal_time_comparison(bucketed, fixed)
    assert [(r["bucketed_epochs"], r["bucketed_val_auc"], r["bucketed_still_training"]) for r in rows] == [
        (0, None, True), (2, 0.85, True), (3, 0.86, False)]


def test_scheduler_benchmark_reads_the_phases_each_task_logs(tmp_path: Path) -> None:
    """The ``task phases`` line as Airflow's structured task log holds it, read back per (task, map index)."""
    import scheduler_night

    record = {"task": "score_chunk", "map_index": 1, "process_started": 100.0, "body_started": 101.5,
              "body_ended": 140.0, "phases": {"imports": 6.5, "model_load": 0.3, "work": 31.7},
              "peak_rss_mb": 1800.0, "rows": 500_000}
    log = (tmp_path / "logs" / "dag_id=review_moderation_nightly" / "run_id=night_1" / "task_id=score_chunk"
           / "map_index=1" / "attempt=1.log")
    log.parent.mkdir(parents=True)
    log.write_text("\n".join([
        json.dumps({"event": "Task started", "level": "info"}),
        json.dumps({"event": scheduler_night.PHASES_MARK + json.dumps(record), "level": "info"}),
    ]) + "\n", encoding="utf-8")
    other_run = tmp_path / "logs" / "dag_id=review_moderation_nightly" / "run_id=night_2" / "task_id=plan"
    other_run.mkdir(parents=True)
    (other_run / "attempt=1.log").write_text(json.dumps({"event": scheduler_night.PHASES_MARK + json.dumps(
        {**record, "task": "plan", "map_index": -1})}) + "\n", encoding="utf-8")

    assert scheduler_night.task_phases(tmp_path, "night_1") == {("score_chunk", 1): record}



@pytest.mark.postgres
def test_scheduler_benchmark_seeds_and_empties_its_database_in_a_child(pg_url: str, tiny_model_dir: Path,
                                                                        sample_path: Path) -> None:
    """A child process on the package under test seeds the reviews and later unscores them all again."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from moderation import db, pipeline

    import scheduler_night  # benchmarks/scheduler_night.py

    def count(conn, table: str) -> int:  # type: ignore[no-untyped-def]
        return int(conn.execute(select(func.count()).select_from(db.metadata.tables[table])).scalar_one())

    seconds = bench.seed_reviews_child(pg_url, sample_path, 300, tiny_model_dir)
    assert seconds > 0
    engine = db.make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert count(conn, "reviews") == 300
        pipeline.run_nightly(pg_url, bench.BENCH_DAY, bench.BENCH_DAY + timedelta(days=1), run_id="night_1")
        with engine.connect() as conn:
            assert count(conn, "review_scores") == 300
        scheduler_night.empty_scoring_tables(pg_url)
        with engine.connect() as conn:
            for table in scheduler_night.SCORING_TABLES:
                assert count(conn, table) == 0
            assert count(conn, "reviews") == 300
    finally:
        engine.dispose()
    with pytest.raises(bench.BenchError, match="not tables of the package's schema: reviewz"):
        bench.empty_scoring_tables(pg_url, ["review_scores", "reviewz"])


@pytest.mark.slow
def test_cli_startup_benchmark_times_whole_processes(tiny_model_dir: Path, sample_path: Path, tmp_path: Path) -> None:
    """score-file, both seeds' scripts and predict run as fresh processes; both ratios are written."""
    import cli_startup  # benchmarks/cli_startup.py

    out = tmp_path / "cli.json"
    assert cli_startup.main(["--texts", "300", "--repeats", "1", "--model", str(tiny_model_dir),
                             "--corpus", str(sample_path), "--out", str(out)]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results["best"]) == {"moderation score-file", "seeds' predict script", cli_startup.AS_WRITTEN,
                                    "moderation predict (one text)"}
    assert results["score_file_speedup_vs_seeds"] > 0 and results["score_file_speedup_vs_seeds_as_written"] > 0
    assert results["settings"]["checkout_commit"] == bench.git_state()["git_commit"]
    assert all(seconds > 0 for times in results["phase_seconds"].values() for seconds in times)
