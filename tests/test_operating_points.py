"""Named operating points: chosen on hand-made scores, looked up on a card, selected by every command.

The CLI and pipeline checks use ``pointed_model_dir`` (conftest): the real
tiny model whose card carries points for shopping (the default domain) and
steam. A run records which point it used in ``scoring_runs.operating_point``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, select

from moderation import db, metrics, pipeline, registry
from moderation.cli import main
from moderation.errors import OperatingPointError
from moderation.model import ModelCard, choose_threshold, read_card

NIGHT = datetime(2026, 11, 22, tzinfo=timezone.utc)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moderation", *argv], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("moderation ")]


# ---------------------------------------------------------------- choosing points


#: Eight rows by descending score; precision when flagging at each score: 1, 1, 1, .75, .8, .67, .57, .5.
LABELS = np.array([1, 1, 1, 0, 1, 0, 0, 0])
SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])


def precision_at(threshold: float) -> float:
    flagged = SCORES >= threshold
    return float(LABELS[flagged].sum() / flagged.sum())


def test_each_point_is_the_lowest_threshold_that_reaches_its_precision() -> None:
    points = metrics.operating_points(LABELS, SCORES)
    assert {name: p["threshold"] for name, p in points.items()} == {"maybe": 0.5, "likely": 0.6, "very_likely": 0.8}
    for name, point in points.items():
        target = metrics.OPERATING_PRECISIONS[name]
        assert point["target_precision"] == target
        assert point["precision"] == pytest.approx(precision_at(point["threshold"]), abs=1e-5)
        assert point["precision"] >= target
        lower = SCORES[SCORES < point["threshold"]].max()  # one more row flagged: below the target
        assert precision_at(lower) < target
    likely = points["likely"]
    assert (likely["recall"], likely["false_positive_rate"]) == (1.0, 0.25)  # 4 of 4 negatives, 1 of 4 positives
    assert points["very_likely"]["recall"] == 0.75 and points["very_likely"]["false_positive_rate"] == 0.0


def test_a_precision_no_threshold_reaches_is_left_out() -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6])  # the top score is a good review
    points = metrics.operating_points(labels, scores, targets={"half": 0.5, "sure": 0.9})
    assert list(points) == ["half"]
    assert points["half"]["threshold"] == 0.6 and points["half"]["recall"] == 1.0
    assert metrics.operating_points(np.array([1, 1]), np.array([0.4, 0.6])) == {}  # one class: no points


def test_queue_buckets_are_the_lowest_thresholds_within_each_false_flag_budget() -> None:
    # 100 good reviews scored 0.00..0.99 and 20 bad ones at 0.901..0.996: the top good ones are false flags
    good = np.arange(100) / 100
    bad = 0.901 + np.arange(20) * 0.005
    labels = np.r_[np.zeros(100, int), np.ones(20, int)]
    scores = np.r_[good, bad]
    points = metrics.fpr_points(labels, scores)
    assert list(points) == ["very_likely", "likely", "maybe"]
    # 1 % of 100 good reviews allows the one at 0.99, so the bucket reaches down to the bad review just above 0.98
    assert {name: p["threshold"] for name, p in points.items()} == {"very_likely": 0.981, "likely": 0.961,
                                                                     "maybe": 0.941}
    for name, point in points.items():
        budget = metrics.QUEUE_BUCKET_FPR[name]
        assert point["max_false_positive_rate"] == budget and point["false_positive_rate"] <= budget
        assert point["recall"] == pytest.approx(float((bad >= point["threshold"]).mean()), abs=1e-5)
    # the same rows with ten times the bad reviews: a different precision, the same buckets
    many_bad = metrics.fpr_points(np.r_[labels, np.ones(180, int)], np.r_[scores, np.tile(bad, 9)])
    assert {n: p["threshold"] for n, p in many_bad.items()} == {n: p["threshold"] for n, p in points.items()}
    assert metrics.fpr_points(np.array([1, 1]), np.array([0.4, 0.6])) == {}  # one class: no buckets


def test_bucket_shares_count_flags_per_bucket_as_the_rows_are_and_at_a_natural_mix() -> None:
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.95, 0.9, 0.85, 0.7, 0.65, 0.5, 0.3, 0.2])
    rows = metrics.bucket_shares(labels, scores, 0.6, {"likely": 0.8, "very_likely": 0.9})
    assert [(r["bucket"], r["flags"], r["share"], r["precision"]) for r in rows] == [
        ("very_likely", 2, 0.4, 1.0), ("likely", 1, 0.2, 0.0), ("flagged", 2, 0.4, 0.5)]
    mixed = metrics.bucket_shares(labels, scores, 0.6, {"likely": 0.8, "very_likely": 0.9}, negative_share=0.2)
    # each bad row weighs 0.2/4, each good one 0.8/4: flagged = 3 bad (0.15) + 2 good (0.4)
    assert [(r["bucket"], r["share"], r["precision"]) for r in mixed] == [
        ("very_likely", round(0.1 / 0.55, 4), 1.0), ("likely", round(0.2 / 0.55, 4), 0.0),
        ("flagged", round(0.25 / 0.55, 4), 0.2)]


def test_registry_buckets_prefer_the_cards_queue_buckets(card_points: dict[str, Any]) -> None:
    card = ModelCard(version="v", created_at="2026-11-01T00:00:00+00:00", cleaning_version="x", max_len=150,
                     vocab_size=10, threshold=0.45, operating_points=card_points, default_domain="shopping")
    from_points = {name: card_points["shopping"][name]["threshold"] for name in ("very_likely", "likely", "maybe")}
    assert registry.bucket_thresholds(card) == from_points  # a card made before queue buckets
    card.queue_buckets = {"shopping": {"very_likely": {"threshold": 0.97}, "likely": {"threshold": 0.9},
                                       "maybe": {"threshold": 0.8}},
                          "steam": {"very_likely": {"threshold": 0.99}}}
    assert registry.bucket_thresholds(card) == {"very_likely": 0.97, "likely": 0.9, "maybe": 0.8}
    assert card.operating_threshold("likely") == card_points["shopping"]["likely"]["threshold"]  # points unchanged


def test_a_card_with_a_bad_queue_bucket_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from moderation.errors import ModelBundleError

    out = tmp_path / "bad-buckets"
    shutil.copytree(tiny_model_dir, out)
    payload = json.loads((out / "card.json").read_text(encoding="utf-8"))
    payload["queue_buckets"] = {"shopping": {"likely": {"threshold": 1.5}}}
    with pytest.raises(ModelBundleError, match=r"queue_buckets\.shopping\.likely\.threshold"):
        ModelCard.from_dict(payload)


# ---------------------------------------------------------------- names on a card


@pytest.fixture
def card(card_points: dict[str, Any]) -> ModelCard:
    return ModelCard(version="v-points", created_at="2026-11-01T00:00:00+00:00", cleaning_version="x", max_len=150,
                     vocab_size=10, threshold=0.45, operating_points=card_points, default_domain="shopping")


@pytest.mark.parametrize("name, threshold", [("default", 0.45), ("likely", 0.61), (" maybe ", 0.31),
                                             ("very_likely", 0.93), ("shopping:likely", 0.61),
                                             ("steam:likely", 0.72)])
def test_card_operating_threshold_by_name(card: ModelCard, name: str, threshold: float) -> None:
    assert card.operating_threshold(name) == threshold


@pytest.mark.parametrize("name", ["steam:maybe", "movie:likely", "certain", "Likely"])
def test_an_unknown_point_names_the_ones_the_card_has(card: ModelCard, name: str) -> None:
    with pytest.raises(OperatingPointError) as raised:
        card.operating_threshold(name)
    assert str(raised.value) == (f"model v-points has no operating point {name!r} "
                                 f"(it has: default, maybe, likely, very_likely, steam:likely)")


def test_choose_threshold_says_which_point_a_run_used(card: ModelCard) -> None:
    assert choose_threshold(card) == (0.45, "default")
    assert choose_threshold(card, operating_point="steam:likely") == (0.72, "steam:likely")
    assert choose_threshold(card, threshold=0.5) == (0.5, None)  # a raw number is no named point
    with pytest.raises(OperatingPointError, match="were both given: give one"):
        choose_threshold(card, threshold=0.5, operating_point="likely")
    with pytest.raises(OperatingPointError, match="1-64 characters"):
        choose_threshold(card, operating_point="x" * 65)
    shipped_like = ModelCard(**{**card.__dict__, "operating_points": {}, "default_domain": None})
    assert choose_threshold(shipped_like, operating_point="default") == (0.45, "default")
    with pytest.raises(OperatingPointError, match=r"has no operating point 'likely' \(it has: default\)"):
        choose_threshold(shipped_like, operating_point="likely")


# ---------------------------------------------------------------- score-file and predict


def test_score_file_flags_at_the_named_point(pointed_model_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.parquet"
    texts = ["최악이에요 환불해주세요", "좋아요 ㅎㅎ", "배송이 너무 느려요", "그냥 그래요", "포장이 엉망", "재구매 의사 있어요"]
    pd.DataFrame({"text": texts}).to_parquet(source)
    for name, threshold in [("likely", 0.61), ("steam:likely", 0.72)]:
        out = tmp_path / f"{name.replace(':', '-')}.parquet"
        assert main(["score-file", "--model", str(pointed_model_dir), str(source), str(out),
                     "--operating-point", name]) == 0
        scored = pd.read_parquet(out)
        assert scored["flagged"].tolist() == (scored["score"] >= threshold).tolist()
        assert f"(threshold {threshold:.4f}, operating point {name})" in capsys.readouterr().out


def test_predict_calls_negative_at_the_named_point(pointed_model_dir: Path, card_points: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = "배송이 너무 느리고 포장도 엉망이에요"
    assert main(["predict", "--model", str(pointed_model_dir), text]) == 0
    score = float(capsys.readouterr().out.split()[0])
    for name in ("maybe", "likely", "very_likely", "steam:likely"):
        assert main(["predict", "--model", str(pointed_model_dir), "--operating-point", name, text]) == 0
        captured = capsys.readouterr()
        threshold = card_points["shopping" if ":" not in name else "steam"][name.rpartition(":")[2]]["threshold"]
        assert captured.out.split()[1] == ("NEGATIVE" if score >= threshold else "ok")
        assert f"threshold {threshold:.4f}, operating point {name}" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["predict", "--operating-point", "certain", "x"],
     "has no operating point 'certain' (it has: default, maybe, likely, very_likely, steam:likely)"),
    (["score-file", "{t}/in.csv", "{t}/out.parquet", "--operating-point", "movie:likely"],
     "has no operating point 'movie:likely'"),
    (["score-file", "{t}/in.csv", "{t}/out.parquet", "--operating-point", "likely", "--threshold", "0.5"],
     "argument --threshold: not allowed with argument --operating-point"),
    (["predict", "--operating-point", " ", "x"], "argument --operating-point: must be a point name"),
])
def test_an_unknown_point_is_one_line_and_exit_2(pointed_model_dir: Path, tmp_path: Path, argv: list[str],
                                                 message: str) -> None:
    (tmp_path / "in.csv").write_text("text\n좋아요\n", encoding="utf-8")
    proc = run_cli(argv[0], "--model", str(pointed_model_dir), *[a.format(t=tmp_path) for a in argv[1:]])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert ": error: " in line and message in line, line
    assert not (tmp_path / "out.parquet").exists()


# ---------------------------------------------------------------- the nightly job records its point


def _reviews(engine: Any, count: int, day: datetime) -> None:
    texts = ["최악이에요 환불해주세요", "좋아요 추천합니다", "배송이 너무 느려요", "포장이 엉망이네요"]
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [
            {"review_id": int(day.timestamp()) // 86_400 * 1000 + i, "product_id": 1, "rating": 1,
             "text": texts[i % len(texts)], "ingested_at": day + timedelta(hours=1)} for i in range(count)])


def _runs(engine: Any) -> dict[str, tuple[Any, float]]:
    r = db.scoring_runs.c
    with engine.connect() as conn:
        return {row[0]: (row[1], row[2]) for row in conn.execute(select(r.run_id, r.operating_point, r.threshold))}


def test_score_records_the_operating_point_of_each_run(engine: Any, any_db_url: str, pointed_model_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    registry.register_model(engine, pointed_model_dir, activate=True)
    days = [NIGHT + timedelta(days=i) for i in range(3)]
    _reviews(engine, 12, NIGHT)  # the first run scores them all: work is chosen by state
    argv = [["--operating-point", "likely"], ["--threshold", "0.5"], []]
    for i, (day, extra) in enumerate(zip(days, argv)):
        code = main(["score", "--db", any_db_url, "--start", day.isoformat(),
                     "--end", (day + timedelta(days=1)).isoformat(), "--run-id", f"night-{i}", *extra])
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["operating_point"] == ["likely", None, "default"][i]
    card_threshold = read_card(pointed_model_dir).threshold
    assert _runs(engine) == {"night-0": ("likely", pytest.approx(0.61)), "night-1": (None, pytest.approx(0.5)),
                             "night-2": ("default", pytest.approx(card_threshold))}
    q, r = db.moderation_queue.c, db.review_scores.c
    with engine.connect() as conn:
        queued = dict(conn.execute(select(q.review_id, q.threshold)).all())
        scores = dict(conn.execute(select(r.review_id, r.score).where(r.run_id == "night-0")).all())
    assert len(scores) == 12
    assert set(queued) == {i for i, score in scores.items() if score >= 0.61}  # flagged at the point's threshold
    assert all(t == pytest.approx(0.61) for t in queued.values())


def test_an_unknown_point_fails_the_run_before_any_work(engine: Any, any_db_url: str, pointed_model_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    registry.register_model(engine, pointed_model_dir, activate=True)
    _reviews(engine, 4, NIGHT)
    end = (NIGHT + timedelta(days=1)).isoformat()
    assert main(["score", "--db", any_db_url, "--start", NIGHT.isoformat(), "--end", end,
                 "--operating-point", "movie:likely"]) == 2
    assert "has no operating point 'movie:likely'" in capsys.readouterr().err
    with pytest.raises(OperatingPointError, match="were both given"):
        pipeline.plan_run(any_db_url, "r", NIGHT, NIGHT + timedelta(days=1), threshold=0.5, operating_point="likely")
    plan = pipeline.plan_run(any_db_url, "r", NIGHT, NIGHT + timedelta(days=1), operating_point="steam:likely")
    assert plan.to_xcom()["model"]["operating_point"] == "steam:likely"
    assert plan.model.threshold == pytest.approx(0.72)
    with engine.connect() as conn:
        assert conn.execute(select(db.scoring_runs.c.run_id)).all() == []
        assert conn.execute(select(db.review_scores.c.review_id)).all() == []


def test_a_plan_from_an_earlier_release_publishes_without_a_point(engine: Any, any_db_url: str,
                                                                  pointed_model_dir: Path) -> None:
    registry.register_model(engine, pointed_model_dir, activate=True)
    plan = pipeline.plan_run(any_db_url, "old", NIGHT, NIGHT + timedelta(days=1)).to_xcom()
    del plan["model"]["operating_point"]  # an XCom written before operating points
    summary = pipeline.publish(any_db_url, plan, [])
    assert summary["operating_point"] is None
    assert _runs(engine)["old"][0] is None


# ---------------------------------------------------------------- the registry shows them


def test_models_list_shows_each_domains_points(engine: Any, any_db_url: str, pointed_model_dir: Path,
                                               card_points: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "register", str(pointed_model_dir), "--db", any_db_url]) == 0
    assert "operating points default, maybe, likely, very_likely, steam:likely" in capsys.readouterr().out
    assert main(["models", "list", "--db", any_db_url]) == 0
    table = capsys.readouterr().out
    assert "operating points of tiny-model-points" in table
    assert any(line.split()[:3] == ["likely", "shopping", "(default)"] for line in table.splitlines())
    assert any(line.split()[:2] == ["steam:likely", "steam"] for line in table.splitlines())
    assert main(["models", "list", "--db", any_db_url, "--format", "json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["default_domain"] == "shopping" and listed["operating_points"] == card_points
