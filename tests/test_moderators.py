"""Moderators in the loop, on SQLite and PostgreSQL: queue, decisions, labels, stats, models."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, select

from moderation import db
from moderation.errors import DecisionError, InputDataError, ModelBundleError
from moderation.labels import import_labels, labelled_snapshot, rating_labels, stored_rating_scale
from moderation.queue import decide, flagged
from moderation.registry import activate_model, list_models, register_model
from moderation.reporting import stats
from moderation.timeutil import utc

NIGHT1 = datetime(2024, 5, 2, 1, 0, tzinfo=timezone.utc)
NIGHT2 = datetime(2024, 5, 3, 1, 0, tzinfo=timezone.utc)

#: review_id -> (product_id, rating, text)
REVIEWS = {
    1: (100, 1, "최악이에요 환불해 주세요"),
    2: (100, 2, "배송이 너무 느려요"),
    3: (200, 10, "좋아요 또 살게요"),
    4: (200, 3, "사이즈가 안 맞아요"),
    5: (300, 9, "가성비 최고"),
    6: (300, 5, "그냥 그래요"),
    7: (300, 10, None),
    8: (400, 4, "별로예요"),
}
#: review_id -> (run_id, flagged_at, score)
QUEUE = {1: ("r1", NIGHT1, 0.91), 2: ("r1", NIGHT1, 0.75), 3: ("r1", NIGHT1, 0.62),
         4: ("r2", NIGHT2, 0.88), 5: ("r2", NIGHT2, 0.55)}


def seed(url: str) -> Engine:
    """Schema, eight reviews, two nightly runs and five queued flags."""
    engine = db.make_engine(url)
    db.init_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(db.reviews), [
            {"review_id": rid, "product_id": p, "rating": rating, "text": text,
             "ingested_at": NIGHT1 - timedelta(hours=5)}
            for rid, (p, rating, text) in REVIEWS.items()])
        conn.execute(insert(db.scoring_runs), [
            {"run_id": run, "interval_start": night - timedelta(days=1), "interval_end": night, "model_version": "v1",
             "threshold": 0.5, "reviews_read": read, "reviews_scored": read, "reviews_skipped": 0,
             "reviews_flagged": flagged, "started_at": night, "finished_at": night, "status": "success"}
            for run, night, read, flagged in (("r1", NIGHT1, 30, 3), ("r2", NIGHT2, 40, 2))])
        conn.execute(insert(db.moderation_queue), [
            {"review_id": rid, "model_version": "v1", "score": score, "threshold": 0.5, "status": "pending",
             "flagged_at": at, "run_id": run} for rid, (run, at, score) in QUEUE.items()])
    return engine


def queue_rows(engine: Engine) -> dict[int, tuple]:
    q = db.moderation_queue.c
    with engine.connect() as conn:
        rows = conn.execute(select(q.review_id, q.status, q.decided_by, q.decided_at, q.note)).all()
    return {r[0]: (r[1], r[2], None if r[3] is None else utc(r[3]), r[4]) for r in rows}


def label_rows(engine: Engine, source: str | None = None) -> dict[tuple[int, str], int]:
    lab = db.review_labels.c
    query = select(lab.review_id, lab.source, lab.label)
    if source:
        query = query.where(lab.source == source)
    with engine.connect() as conn:
        return {(r[0], r[1]): r[2] for r in conn.execute(query)}


@pytest.fixture
def engine(any_db_url: str):  # type: ignore[no-untyped-def]
    engine = seed(any_db_url)
    yield engine
    engine.dispose()


# ---------------------------------------------------------------- queue


def test_flagged_newest_first_then_highest_score_with_text(engine: Engine) -> None:
    rows = flagged(engine)
    assert [r["review_id"] for r in rows] == [4, 5, 1, 2, 3]
    assert rows[0]["text"] == "사이즈가 안 맞아요" and rows[0]["product_id"] == 200
    assert rows[0]["flagged_at"] == NIGHT2 and rows[0]["status"] == "pending"


def test_flagged_filters(engine: Engine) -> None:
    ids = lambda **kw: [r["review_id"] for r in flagged(engine, **kw)]  # noqa: E731
    assert ids(since=NIGHT2) == [4, 5]
    assert ids(until=NIGHT2) == [1, 2, 3]
    assert ids(since=NIGHT1, until=NIGHT1 + timedelta(seconds=1)) == [1, 2, 3]
    assert ids(min_score=0.8) == [4, 1]
    assert ids(product=100) == [1, 2]
    assert ids(limit=2) == [4, 5]
    decide(engine, [2], "confirmed", by="kim")
    assert ids(status="confirmed") == [2]
    assert ids(status="pending") == [4, 5, 1, 3]
    # a naive time is UTC; an aware one is converted
    assert ids(since=datetime(2024, 5, 3, 10, 0, tzinfo=timezone(timedelta(hours=9)))) == [4, 5]
    with pytest.raises(InputDataError, match="status must be one of"):
        flagged(engine, status="done")


# ---------------------------------------------------------------- decisions


def test_decisions_update_queue_and_record_moderator_labels(engine: Engine) -> None:
    at = datetime(2024, 5, 4, 9, 30, tzinfo=timezone.utc)
    assert decide(engine, [1, 2, 2], "confirmed", by="kim", note="욕설", now=at) == 2
    assert decide(engine, [3], "dismissed", by="lee", now=at) == 1
    queue = queue_rows(engine)
    assert queue[1] == ("confirmed", "kim", at, "욕설") and queue[2][0] == "confirmed"
    assert queue[3] == ("dismissed", "lee", at, None)
    assert queue[4] == ("pending", None, None, None)
    assert label_rows(engine) == {(1, "moderator"): 1, (2, "moderator"): 1, (3, "moderator"): 0}


def test_deciding_twice_keeps_the_latest_decision_and_time(engine: Engine) -> None:
    first, second = NIGHT2 + timedelta(hours=8), NIGHT2 + timedelta(hours=9)
    decide(engine, [4], "confirmed", by="kim", note="first look", now=first)
    decide(engine, [4], "dismissed", by="park", now=second)
    assert queue_rows(engine)[4] == ("dismissed", "park", second, None)
    assert label_rows(engine) == {(4, "moderator"): 0}
    with engine.connect() as conn:
        row = conn.execute(select(db.review_labels.c.labelled_at, db.review_labels.c.labelled_by)).one()
    assert utc(row[0]) == second and row[1] == "park"


@pytest.mark.parametrize("ids, named", [([1, 999], ["unknown review ids: 999"]),
                                        ([6, 2], ["not in the moderation queue: 6"]),
                                        ([1, 6, 999, 998], ["unknown review ids: 998, 999", "queue: 6"])])
def test_unknown_or_unflagged_ids_write_nothing(engine: Engine, ids: list[int], named: list[str]) -> None:
    before = queue_rows(engine)
    with pytest.raises(DecisionError) as caught:
        decide(engine, ids, "confirmed", by="kim")
    for part in named:
        assert part in str(caught.value)
    assert queue_rows(engine) == before
    assert label_rows(engine) == {}


@pytest.mark.parametrize("ids, decision, by, message", [
    ([], "confirmed", "kim", "no review ids"),
    ([1], "pending", "kim", "decision must be one of"),
    ([1], "confirmed", "  ", "moderator's name"),
    (["1"], "confirmed", "kim", "must be integers"),
])
def test_bad_decisions_are_refused(sqlite_url: str, ids: list, decision: str, by: str, message: str) -> None:
    engine = seed(sqlite_url)
    with pytest.raises(DecisionError, match=message):
        decide(engine, ids, decision, by=by)
    assert label_rows(engine) == {}


# ---------------------------------------------------------------- stats


def test_stats_per_run_and_overall(engine: Engine) -> None:
    decide(engine, [1, 2], "confirmed", by="kim")
    decide(engine, [3], "dismissed", by="kim")
    decide(engine, [4], "dismissed", by="kim")
    result = stats(engine)
    runs = {r["run_id"]: r for r in result["runs"]}
    assert [r["run_id"] for r in result["runs"]] == ["r2", "r1"]
    assert (runs["r1"]["flagged"], runs["r1"]["decided"], runs["r1"]["confirmed"], runs["r1"]["dismissed"],
            runs["r1"]["pending"]) == (3, 3, 2, 1, 0)
    assert runs["r1"]["precision"] == pytest.approx(2 / 3)
    assert runs["r1"]["flag_rate"] == pytest.approx(3 / 30)
    assert (runs["r2"]["decided"], runs["r2"]["pending"], runs["r2"]["precision"]) == (1, 1, 0.0)
    assert runs["r2"]["flag_rate"] == pytest.approx(2 / 40)
    overall = result["overall"]
    assert (overall["runs"], overall["reviews_scored"], overall["reviews_flagged"]) == (2, 70, 5)
    assert (overall["flagged"], overall["decided"], overall["confirmed"], overall["dismissed"]) == (5, 4, 2, 2)
    assert overall["precision"] == pytest.approx(0.5) and overall["flag_rate"] == pytest.approx(5 / 70)
    later = stats(engine, since=NIGHT2 - timedelta(days=1))  # r2's interval start
    assert [r["run_id"] for r in later["runs"]] == ["r2"]
    overall = later["overall"]
    assert (overall["flagged"], overall["precision"], overall["reviews_scored"]) == (2, 0.0, 40)


def test_stats_before_any_decision_has_no_precision(engine: Engine) -> None:
    overall = stats(engine)["overall"]
    assert overall["decided"] == 0 and overall["precision"] is None and overall["pending"] == 5


# ---------------------------------------------------------------- labels


def test_import_labels_rejects_bad_rows_with_line_numbers(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("review_id,label,comment\n"
                    "1,1,ok\n"           # line 2
                    "3,positive,ok\n"    # line 3
                    "5,NEGATIVE,ok\n"    # line 4
                    "999,1,unknown\n"    # line 5
                    "2,maybe,bad\n"      # line 6
                    "x7,0,bad id\n"      # line 7
                    "1,0,duplicate\n"    # line 8
                    "6,2,bad label\n"    # line 9
                    '8,0,"two\nlines"\n'  # lines 10-11
                    "4\n",               # line 12: too short
                    encoding="utf-8")
    report = import_labels(engine, path)
    assert (report.rows_read, report.loaded, report.rejected) == (10, 4, 6)
    rejected = {r.line: r.reason for r in report.rejections}
    assert set(rejected) == {5, 6, 7, 8, 9, 12}
    assert "unknown review_id 999" in rejected[5] and "label must be" in rejected[6]
    assert "not an integer" in rejected[7] and "first at line 2" in rejected[8]
    assert label_rows(engine, "import") == {(1, "import"): 1, (3, "import"): 0, (5, "import"): 1, (8, "import"): 0}


def test_import_labels_again_changes_only_what_differs(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"review_id": [1, 3], "label": [1, 0]}).to_parquet(path)
    import_labels(engine, path)
    pd.DataFrame({"review_id": [1, 3, 4, 42], "label": [1, 1, 0, 1]}).to_parquet(path)
    report = import_labels(engine, path)
    assert (report.unit, report.loaded, report.updated, report.unchanged, report.rejected) == ("row", 1, 1, 1, 1)
    assert report.rejections[0].line == 4
    assert label_rows(engine, "import") == {(1, "import"): 1, (3, "import"): 1, (4, "import"): 0}


def test_import_labels_nsmc_tsv_is_flipped_and_bad_files_refused(sqlite_url: str, tmp_path: Path) -> None:
    engine = seed(sqlite_url)
    nsmc = tmp_path / "nsmc.txt"
    nsmc.write_text("id\tdocument\tlabel\n1\t최악\t0\n3\t좋아요\t1\n", encoding="utf-8")
    report = import_labels(engine, nsmc)
    assert report.source_format == "nsmc"
    assert label_rows(engine, "import") == {(1, "import"): 1, (3, "import"): 0}
    (tmp_path / "nolabel.csv").write_text("review_id,text\n1,x\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="needs columns review_id and label"):
        import_labels(engine, tmp_path / "nolabel.csv")
    with pytest.raises(InputDataError, match="input file not found"):
        import_labels(engine, tmp_path / "missing.csv")
    (tmp_path / "labels.json").write_text("[]", encoding="utf-8")
    with pytest.raises(InputDataError, match="unsupported file type"):
        import_labels(engine, tmp_path / "labels.json")


def test_rating_labels_on_both_scales(engine: Engine) -> None:
    assert rating_labels(engine) == 7  # ratings 1-4 negative, 9-10 positive, 5 (review 6) left out
    assert label_rows(engine, "rating") == {(1, "rating"): 1, (2, "rating"): 1, (4, "rating"): 1, (8, "rating"): 1,
                                            (3, "rating"): 0, (5, "rating"): 0, (7, "rating"): 0}
    assert rating_labels(engine) == 0  # idempotent
    with engine.begin() as conn:  # a rating moves into the ambiguous middle, another flips
        conn.execute(db.reviews.update().where(db.reviews.c.review_id == 8).values(rating=6))
        conn.execute(db.reviews.update().where(db.reviews.c.review_id == 2).values(rating=9))
    assert rating_labels(engine) == 1
    labels = label_rows(engine, "rating")
    assert (8, "rating") not in labels and labels[(2, "rating")] == 0
    with pytest.raises(InputDataError, match="not on a 5-point scale"):
        rating_labels(engine, scale=5)
    with pytest.raises(InputDataError, match="5 or 10"):
        rating_labels(engine, scale=7)


def test_rating_labels_five_point_scale(sqlite_url: str) -> None:
    engine = seed(sqlite_url)
    with engine.begin() as conn:
        conn.execute(db.reviews.update().values(rating=func.min(db.reviews.c.rating, 5)))
    written = rating_labels(engine, scale=5)
    labels = label_rows(engine, "rating")
    # ratings now 1, 2, 5, 3, 5, 5, 5, 4: 1-2 negative, 4-5 positive, 3 left out
    assert written == 7 and labels[(1, "rating")] == 1 and labels[(3, "rating")] == 0 and (4, "rating") not in labels


def test_the_rating_scale_is_read_from_the_stored_ratings(engine: Engine) -> None:
    assert stored_rating_scale(engine) == 10  # the seeded reviews are rated up to 10
    with engine.begin() as conn:
        conn.execute(db.reviews.update().where(db.reviews.c.rating > 5).values(rating=5))
    assert stored_rating_scale(engine) == 5
    with engine.begin() as conn:
        conn.execute(db.reviews.update().values(rating=None))
    assert stored_rating_scale(engine) == 5  # no ratings at all: shop stars by default


def test_snapshot_prefers_moderator_over_import_over_rating(engine: Engine, tmp_path: Path) -> None:
    rating_labels(engine)
    path = tmp_path / "labels.csv"
    path.write_text("review_id,label\n1,0\n3,1\n6,negative\n", encoding="utf-8")
    import_labels(engine, path)
    decide(engine, [1], "confirmed", by="kim")
    without = labelled_snapshot(engine)
    assert without[["review_id", "label", "source"]].values.tolist() == [[1, 1, "moderator"], [3, 1, "import"],
                                                                         [6, 1, "import"]]
    full = labelled_snapshot(engine, include_rating=True).set_index("review_id")
    assert full.loc[1, "source"] == "moderator" and full.loc[3, "source"] == "import"
    assert full.loc[2, "source"] == "rating" and full.loc[2, "product_id"] == 100
    assert full.loc[2, "text"] == "배송이 너무 느려요"
    assert 7 not in full.index  # rated, but no text to learn from
    assert list(full.reset_index().columns) == ["review_id", "text", "label", "source", "product_id"]
    assert str(full["label"].dtype) == "int8"


def test_snapshot_of_an_empty_database_has_the_columns(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    db.init_schema(engine)
    frame = labelled_snapshot(engine, include_rating=True)
    assert frame.empty and list(frame.columns) == ["review_id", "text", "label", "source", "product_id"]


def test_missing_schema_says_to_run_db_init(sqlite_url: str) -> None:
    from moderation.errors import DatabaseError

    with pytest.raises(DatabaseError, match="moderation db init"):
        flagged(db.make_engine(sqlite_url))


# ---------------------------------------------------------------- models


def copy_as_version(source: Path, target: Path, version: str) -> Path:
    """A second bundle: same network, another card version (the card is not hashed)."""
    shutil.copytree(source, target)
    card = json.loads((target / "card.json").read_text(encoding="utf-8"))
    card["version"] = version
    (target / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return target


def test_models_list_and_activate(any_db_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = db.make_engine(any_db_url)
    db.init_schema(engine)
    other = copy_as_version(tiny_model_dir, tmp_path / "tiny-b", "tiny-model-b")
    register_model(engine, tiny_model_dir, activate=True)
    register_model(engine, other)
    models = {m["version"]: m for m in list_models(engine)}
    assert set(models) == {"tiny-model", "tiny-model-b"}
    tiny = models["tiny-model"]
    assert tiny["active"] and not models["tiny-model-b"]["active"]
    assert tiny["path"] == str(tiny_model_dir.resolve()) and 0 < tiny["threshold"] < 1
    card = json.loads((tiny_model_dir / "card.json").read_text(encoding="utf-8"))
    assert tiny["balanced_accuracy"] == pytest.approx(card["metrics"]["test_balanced"]["balanced_accuracy"])
    assert tiny["created"].tzinfo is not None

    assert activate_model(engine, "tiny-model-b")["active"]
    assert [m["version"] for m in list_models(engine) if m["active"]] == ["tiny-model-b"]

    with pytest.raises(ModelBundleError, match="unknown model version 'nope'.*tiny-model"):
        activate_model(engine, "nope")
    broken = copy_as_version(tiny_model_dir, tmp_path / "tiny-c", "tiny-model-c")
    register_model(engine, broken)
    (broken / "model.keras").write_bytes(b"not a model")
    with pytest.raises(ModelBundleError, match="does not match its card"):
        activate_model(engine, "tiny-model-c")
    assert [m["version"] for m in list_models(engine) if m["active"]] == ["tiny-model-b"]
    engine.dispose()
