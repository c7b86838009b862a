"""CLI: flagged (every format, Korean table alignment), decide, stats, labels, models; clean exits."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import insert, select

from moderation import db
from moderation.cli import main

NIGHT = datetime(2024, 5, 2, 1, 0, tzinfo=timezone.utc)
LONG_TEXT = "배송은 빨랐는데 포장이 엉망이라 상자가 다 찢어져서 왔어요. 다시는 안 삽니다!! 정말 최악의 쇼핑이었습니다"
TEXTS = {
    1: "최악이에요",
    2: LONG_TEXT,
    3: "good 가성비\n두 줄 리뷰\t탭",
    4: "ok",
    5: "🙂 이모지와 한글 mixed",
    6: "flag 안 된 리뷰",
}


def seed(url: str) -> str:
    """Reviews 1-6, one run, reviews 1-5 queued (scores 0.95 .. 0.55); review 6 not flagged."""
    engine = db.make_engine(url)
    db.init_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [{"review_id": rid, "product_id": 10 * (rid % 2), "rating": rid,
                                           "text": text, "ingested_at": NIGHT - timedelta(hours=3)}
                                          for rid, text in TEXTS.items()])
        conn.execute(insert(db.scoring_runs).values(
            run_id="r1", interval_start=NIGHT - timedelta(days=1), interval_end=NIGHT, model_version="v1",
            threshold=0.5, reviews_read=50, reviews_scored=50, reviews_skipped=0, reviews_flagged=5,
            started_at=NIGHT, finished_at=NIGHT, status="success"))
        conn.execute(insert(db.moderation_queue), [
            {"review_id": rid, "model_version": "v1", "score": 1.05 - rid / 10, "threshold": 0.5,
             "status": "pending", "flagged_at": NIGHT, "run_id": "r1"} for rid in range(1, 6)])
    engine.dispose()
    return url


@pytest.fixture
def url(sqlite_url: str) -> str:
    return seed(sqlite_url)


def width(text: str) -> int:
    """Display columns, computed independently of the code under test."""
    return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in {"Mn", "Me", "Cf"}
               else 2 if unicodedata.east_asian_width(c) in {"W", "F"} else 1 for c in text)


def split_at_column(line: str, column: int) -> tuple[str, str]:
    """The line cut at a display column; no cut (the whole line, "") when a wide character straddles it."""
    used = 0
    for i, char in enumerate(line):
        if used == column:
            return line[:i], line[i:]
        used += width(char)
    return line, ""


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("moderation ")]


def test_flagged_table_aligns_korean_text(url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["flagged", "--db", url]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == 2 + 5  # header, rule, five reviews
    rule = lines[1]
    text_at = width(rule[:rule.rindex(" ") + 1])  # the display column where the last column, text, starts
    for line in lines:
        head, tail = split_at_column(line, text_at)
        assert width(head) == text_at and head.endswith("  ") and tail and not tail.startswith(" "), line
    # The rule spans the widest line: the text column's width is counted in display columns too.
    assert max(width(line) for line in lines) == width(rule), [width(line) for line in lines]
    assert lines[0].split()[:2] == ["review_id", "score"]
    assert lines[2].split()[0] == "1"  # highest score first
    long_line = next(line for line in lines if line.split()[0] == "2")
    assert "…" in long_line and LONG_TEXT not in long_line
    two_lines = next(line for line in lines if line.split()[0] == "3")
    assert "good 가성비 두 줄 리뷰 탭" in two_lines


def test_flagged_filters_reach_the_query(url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["flagged", "--db", url, "--min-score", "0.8", "--product", "10", "--format", "json"]) == 0
    assert [r["review_id"] for r in json.loads(capsys.readouterr().out)] == [1]
    assert main(["flagged", "--db", url, "--since", "2024-05-03", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["flagged", "--db", url, "--until", "2024-05-03", "--limit", "2", "--format", "json"]) == 0
    assert [r["review_id"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
    assert main(["flagged", "--db", url, "--status", "confirmed"]) == 0
    assert "no flagged reviews match" in capsys.readouterr().out


def test_flagged_csv_and_json(url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["flagged", "--db", url, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["review_id"]) for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["text"] == TEXTS[3] and rows[0]["flagged_at"].startswith("2024-05-02T01:00:00")
    assert main(["flagged", "--db", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["text"] == LONG_TEXT and rows[0]["status"] == "pending" and rows[0]["decided_at"] is None


def test_flagged_parquet_needs_output(url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["flagged", "--db", url, "--format", "parquet"]) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1
    out = tmp_path / "out" / "flags.parquet"
    assert main(["flagged", "--db", url, "--format", "parquet", "--output", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert frame["review_id"].tolist() == [1, 2, 3, 4, 5]
    assert str(frame["flagged_at"].dtype).startswith("datetime64") and frame["text"].iloc[1] == LONG_TEXT
    assert "wrote 5 flagged reviews" in capsys.readouterr().out


def test_flagged_csv_to_a_file(url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "flags.csv"
    assert main(["flagged", "--db", url, "--format", "csv", "--output", str(out)]) == 0
    assert pd.read_csv(out)["review_id"].tolist() == [1, 2, 3, 4, 5]
    capsys.readouterr()
    assert main(["flagged", "--db", url, "--format", "csv", "--output", str(out / "under-a-file.csv")]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "cannot write" in err


def test_decide_then_stats_on_both_databases(any_db_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    url = seed(any_db_url)
    assert main(["decide", "1", "2", "--confirm", "--by", "kim", "--note", "욕설", "--db", url]) == 0
    assert "confirmed 2 reviews by kim" in capsys.readouterr().out
    assert main(["decide", "3", "--dismiss", "--by", "lee", "--db", url]) == 0
    assert "dismissed 1 review by lee: 3" in capsys.readouterr().out
    assert main(["flagged", "--db", url, "--status", "confirmed", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["review_id"], r["decided_by"], r["note"]) for r in rows] == [(1, "kim", "욕설"), (2, "kim", "욕설")]
    assert main(["stats", "--db", url, "--format", "json"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert (overall["flagged"], overall["decided"], overall["confirmed"], overall["pending"]) == (5, 3, 2, 2)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["flag_rate"] == pytest.approx(0.1)
    assert main(["stats", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "observed precision 66.7%" in out and "10.0%" in out
    engine = db.make_engine(url)
    with engine.connect() as conn:
        labels = dict(conn.execute(select(db.review_labels.c.review_id, db.review_labels.c.label)).tuples().all())
    engine.dispose()
    assert labels == {1: 1, 2: 1, 3: 0}


@pytest.mark.parametrize("ids, message", [(["999"], "unknown review ids: 999"),
                                          (["1", "6"], "not in the moderation queue: 6")])
def test_decide_bad_ids_exit_2_with_one_line(url: str, ids: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["decide", *ids, "--confirm", "--by", "kim", "--db", url]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [line for line in err.splitlines() if line.startswith("moderation decide: error:")]
    assert len(error_lines(err)) == 1 and message in err and "Traceback" not in err
    assert main(["flagged", "--db", url, "--status", "confirmed", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing written


@pytest.mark.parametrize("argv", [["decide", "1", "--by", "kim"],  # neither --confirm nor --dismiss
                                  ["decide", "1", "--confirm", "--dismiss", "--by", "kim"],
                                  ["decide", "1", "--confirm"],  # no --by
                                  ["decide", "x1", "--confirm", "--by", "kim"],
                                  ["flagged", "--since", "yesterday"],
                                  ["flagged", "--limit", "-1"],
                                  ["flagged", "--format", "xml"],
                                  ["labels", "from-ratings", "--scale", "7"]])
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_labels_import_and_from_ratings(url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.tsv"
    path.write_text("review_id\tlabel\n1\tnegative\n4\tpositive\n999\t1\n2\t7\n", encoding="utf-8")
    assert main(["labels", "import", str(path), "--db", url]) == 0
    out = capsys.readouterr().out
    assert "2 labels loaded" in out and "2 rejected" in out
    assert "rejected line 4: unknown review_id 999" in out and "rejected line 5: label must be" in out
    assert main(["labels", "from-ratings", "--db", url]) == 0
    assert "on the 10-point scale: 4 written or changed" in capsys.readouterr().out  # ratings 1-4
    assert main(["labels", "from-ratings", "--scale", "5", "--db", url]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "not on a 5-point scale" in err


def test_labels_import_with_every_row_bad_exits_2(url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.csv"
    path.write_text("review_id,label\n999,1\n", encoding="utf-8")
    assert main(["labels", "import", str(path), "--db", url]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "line 2: unknown review_id 999" in err
    assert main(["labels", "import", str(tmp_path / "missing.csv"), "--db", url]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_models_register_list_activate(sqlite_url: str, tiny_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    db.init_schema(db.make_engine(sqlite_url))
    assert main(["models", "list", "--db", sqlite_url]) == 0
    assert "no model registered" in capsys.readouterr().out
    assert main(["models", "register", str(tiny_model_dir), "--db", sqlite_url]) == 0
    assert "registered model tiny-model" in capsys.readouterr().out
    assert main(["models", "list", "--db", sqlite_url, "--format", "json"]) == 0
    [model] = json.loads(capsys.readouterr().out)
    assert model["version"] == "tiny-model" and model["active"] is False and "roc_auc" in model
    assert main(["models", "activate", "tiny-model", "--db", sqlite_url]) == 0
    assert "tiny-model is now the active model" in capsys.readouterr().out
    assert main(["models", "list", "--db", sqlite_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("*") and "tiny-model" in lines[2]
    assert main(["models", "activate", "nope", "--db", sqlite_url]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "unknown model version 'nope'" in err
    assert main(["models", "register", str(tiny_model_dir.parent / "missing"), "--db", sqlite_url]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_commands_on_a_database_without_schema_say_db_init(sqlite_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    for argv in (["flagged"], ["stats"], ["decide", "1", "--confirm", "--by", "kim"], ["models", "list"]):
        assert main([*argv, "--db", sqlite_url]) == 2
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and "moderation db init" in err


def test_db_url_from_the_environment(url: str, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODERATION_DB_URL", url)
    assert main(["flagged", "--format", "json", "--limit", "1"]) == 0
    assert [r["review_id"] for r in json.loads(capsys.readouterr().out)] == [1]


def set_buckets(url: str, buckets: dict[int, str]) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        for review_id, bucket in buckets.items():
            conn.execute(db.moderation_queue.update().where(db.moderation_queue.c.review_id == review_id)
                         .values(bucket=bucket, kind="audit" if bucket == "audit" else "flagged"))
    engine.dispose()


def test_queue_lists_by_bucket_and_shows_claims(url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    set_buckets(url, {1: "flagged", 2: "very_likely", 3: "likely", 4: "audit", 5: "likely"})
    assert main(["claim", "5", "--by", "kim", "--minutes", "30", "--db", url]) == 0
    assert capsys.readouterr().out.startswith("review 5 claimed by kim until ")
    assert main(["queue", "--db", url, "--format", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["total"] == 5
    assert [(i["review_id"], i["bucket"]) for i in listing["items"]] == [
        (2, "very_likely"), (3, "likely"), (5, "likely"), (1, "flagged"), (4, "audit")]
    assert main(["queue", "--db", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["review_id", "bucket", "kind"]
    assert "kim until" in next(line for line in lines if line.strip().startswith("5 "))
    assert main(["queue", "--kind", "audit", "--db", url, "--format", "json"]) == 0
    assert [i["review_id"] for i in json.loads(capsys.readouterr().out)["items"]] == [4]
    # lee may not claim or decide kim's item: one line, exit 2
    assert main(["claim", "5", "--by", "lee", "--db", url]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "review 5 is claimed by kim until" in err
    assert main(["decide", "5", "--confirm", "--by", "lee", "--db", url]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "claimed by kim" in err
    assert main(["release", "5", "--by", "kim", "--db", url]) == 0
    capsys.readouterr()
    assert main(["decide", "5", "--confirm", "--by", "lee", "--reason", "abuse", "--db", url]) == 0
    assert "confirmed 1 review by lee" in capsys.readouterr().out


def test_decide_unsure_reason_and_all_matching(url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    set_buckets(url, {1: "likely", 2: "likely", 3: "maybe", 4: "audit", 5: "likely"})
    assert main(["claim", "2", "--by", "kim", "--db", url]) == 0
    assert main(["decide", "--all-matching", "--bucket", "likely", "--dismiss", "--by", "lee",
                 "--reason", "not_negative", "--db", url]) == 0
    assert "dismissed 2 matching pending reviews by lee" in capsys.readouterr().out  # 1 and 5; kim holds 2
    assert main(["decide", "3", "--unsure", "--by", "lee", "--reason", "other", "--db", url]) == 0
    capsys.readouterr()
    engine = db.make_engine(url)
    with engine.connect() as conn:
        q, lab = db.moderation_queue.c, db.review_labels.c
        assert dict(conn.execute(select(q.review_id, q.status)).tuples().all()) == {
            1: "dismissed", 2: "pending", 3: "unsure", 4: "pending", 5: "dismissed"}
        assert sorted(conn.execute(select(lab.review_id)).scalars().all()) == [1, 5]  # unsure: no label
    engine.dispose()
    with pytest.raises(SystemExit) as usage:  # argparse's own one-line usage error
        main(["decide", "1", "--confirm", "--by", "lee", "--reason", "rude", "--db", url])
    assert usage.value.code == 2 and "invalid choice: 'rude'" in capsys.readouterr().err
    for argv, message in [
        (["decide", "1", "--confirm", "--by", "lee", "--bucket", "likely"], "only with --all-matching"),
        (["decide", "1", "--confirm", "--by", "lee", "--all-matching"], "not both"),
        (["decide", "--confirm", "--by", "lee"], "give the review ids"),
    ]:
        assert main([*argv, "--db", url]) == 2, argv
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and message in err, (argv, err)


def test_accounts_add_list_disable(url: str, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from moderation.accounts import verify

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert main(["accounts", "add", "kim", "--password-stdin", "--db", url]) == 0
    assert "account kim created" in capsys.readouterr().out
    engine = db.make_engine(url)
    assert verify(engine, "kim", "correct horse battery") and not verify(engine, "kim", "correct horse")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["accounts", "add", "lee", "--password-stdin", "--db", url]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, and no --password-stdin
    assert main(["accounts", "add", "lee", "--db", url]) == 2
    assert "--password-stdin" in capsys.readouterr().err
    assert main(["accounts", "disable", "kim", "--db", url]) == 0
    assert not verify(engine, "kim", "correct horse battery")
    assert main(["accounts", "disable", "nobody", "--db", url]) == 2
    assert "no account named 'nobody'" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["accounts", "list", "--db", url, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["name"], a["disabled"]) for a in listed] == [("kim", True)]
    assert "password" not in json.dumps(listed)
    engine.dispose()
