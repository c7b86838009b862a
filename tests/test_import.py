"""Importing review files into real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, select

from moderation import db
from moderation.cli import main
from moderation.errors import DatabaseError, InputDataError
from moderation.importing import GENERATED_ID_BASE, STARS_TO_TEN, generated_review_id, import_reviews

NOW = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)


def stored(engine: Engine) -> dict[int, dict[str, Any]]:
    """review_id -> row, datetimes in UTC (SQLite hands them back naive)."""
    def utc(moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)

    with engine.connect() as conn:
        rows = conn.execute(select(db.reviews)).mappings().all()
    return {r["review_id"]: {**r, "created_at": utc(r["created_at"]), "ingested_at": utc(r["ingested_at"])}
            for r in rows}


def test_corpus_sample_loads_as_it_is(engine: Engine, sample_path: Path) -> None:
    report = import_reviews(engine, sample_path, now=NOW)
    frame = pd.read_parquet(sample_path)
    assert (report.source_format, report.rows_read, report.loaded, report.rejected) == ("parquet", 6012, 6012, 0)
    rows = stored(engine)
    assert len(rows) == len(frame)
    for record in frame.itertuples():
        row = rows[record.review_id]
        assert row["product_id"] == record.item_id
        assert row["rating"] == record.rating
        assert row["text"] == record.text
        assert row["created_at"] == datetime.fromisoformat(record.created).replace(tzinfo=timezone.utc)
        assert row["ingested_at"] == NOW
    assert sum(1 for r in rows.values() if r["text"] == "") == (frame["text"] == "").sum() > 0
    assert any("\n" in r["text"] for r in rows.values())


def test_reimport_changes_nothing(engine: Engine, sample_path: Path) -> None:
    import_reviews(engine, sample_path, now=NOW)
    before = stored(engine)
    again = import_reviews(engine, sample_path, now=NOW + timedelta(days=1))
    assert (again.loaded, again.updated, again.unchanged, again.rejected) == (0, 0, 6012, 0)
    assert stored(engine) == before  # ingested_at included: nothing is re-scored


def test_spread_days_puts_ingestion_in_the_window(engine: Engine, sample_path: Path) -> None:
    import_reviews(engine, sample_path, spread_days=7, now=NOW)
    times = [r["ingested_at"] for r in stored(engine).values()]
    assert all(NOW - timedelta(days=7) < t <= NOW for t in times)
    days = {(NOW - t).days for t in times}
    assert days == set(range(7))  # every day of the window has reviews: history for 7 nightly runs


def test_changed_reviews_are_updated_and_reingested(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("review_id,product_id,rating,text,created_at\n1,10,9,좋아요,2024-01-02\n2,10,1,별로,2024-01-03\n",
                    encoding="utf-8")
    import_reviews(engine, path, now=NOW)
    path.write_text("review_id,product_id,rating,text,created_at\n1,10,9,좋아요,2024-01-02\n2,10,2,별로예요,2024-01-03\n"
                    "3,11,5,그냥 그래요,\n", encoding="utf-8")
    later = NOW + timedelta(hours=5)
    report = import_reviews(engine, path, now=later)
    assert (report.loaded, report.updated, report.unchanged) == (1, 1, 1)
    rows = stored(engine)
    assert (rows[1]["ingested_at"], rows[2]["ingested_at"], rows[3]["ingested_at"]) == (NOW, later, later)
    assert (rows[2]["rating"], rows[2]["text"], rows[3]["created_at"]) == (2, "별로예요", None)


def test_nsmc_tsv(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "ratings_test.txt"
    path.write_text("id\tdocument\tlabel\n6270596\t굳 ㅋ\t1\n9274899\tGDNTOPCLASSINTHECLUB\t0\n"
                    "8544678\t뭐야 이 평점들은.... 나쁘진 않지만 10점 짜리는 더더욱 아니잖아\t0\n"
                    "6825595\t\t0\n123\t라벨이 이상해\t5\n", encoding="utf-8")
    report = import_reviews(engine, path, now=NOW)
    assert report.source_format == "nsmc"
    assert (report.loaded, report.rejected) == (4, 1)
    assert [(r.line, r.reason) for r in report.rejections] == [(6, "label '5' is not 0 or 1")]
    rows = stored(engine)
    assert rows[6270596] == {"review_id": 6270596, "product_id": 0, "rating": None, "text": "굳 ㅋ",
                                  "created_at": None, "ingested_at": NOW, "text_version": 1}
    assert rows[6825595]["text"] == ""


def test_nsmc_after_the_corpus_keeps_what_the_table_knows(engine: Engine, sample_path: Path, tmp_path: Path) -> None:
    import_reviews(engine, sample_path, now=NOW)
    known = pd.read_parquet(sample_path).iloc[1]
    path = tmp_path / "nsmc.tsv"
    path.write_text(f"id\tdocument\tlabel\n{known.review_id}\t{known.text}\t1\n", encoding="utf-8")
    report = import_reviews(engine, path, now=NOW + timedelta(days=1))
    assert (report.loaded, report.updated, report.unchanged) == (0, 0, 1)
    row = stored(engine)[int(known.review_id)]
    assert (row["product_id"], row["rating"]) == (known.item_id, known.rating)


def test_naver_shopping_tsv(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "naver_shopping.txt"
    lines = ["5\t배공빠르고 굿", "2\t택배가 엉망이네용 저희집 밑에층에 말도없이 놔두고가고", "1\t완전\t별로",
             "6\t별이 여섯 개", "x\t평점 없음", "4\t재구매 의사 있어요", "3"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_reviews(engine, path, now=NOW)
    assert report.source_format == "shopping"
    assert (report.loaded, report.rejected) == (4, 3)
    assert [r.line for r in report.rejections] == [4, 5, 7]
    rows = stored(engine)
    by_text = {r["text"]: r for r in rows.values()}
    assert by_text["완전\t별로"]["rating"] == STARS_TO_TEN[1]
    assert {t: r["rating"] for t, r in by_text.items()} == {
        "배공빠르고 굿": 10, "택배가 엉망이네용 저희집 밑에층에 말도없이 놔두고가고": 4, "완전\t별로": 2, "재구매 의사 있어요": 9}
    assert all(r["product_id"] == 0 and r["review_id"] >= GENERATED_ID_BASE for r in rows.values())
    assert by_text["배공빠르고 굿"]["review_id"] == generated_review_id(1, "배공빠르고 굿")
    again = import_reviews(engine, path, now=NOW)
    assert (again.loaded, again.updated, again.unchanged) == (0, 0, 4)


def test_broken_rows_are_rejected_with_their_line_and_the_rest_loaded(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    content = (
        b"review_id,product_id,rating,text,created_at\n"           # line 1
        b"1,10,9,\"two\nlines, a \\ and a\ttab\",2015-08-26\n"     # lines 2-3: fine
        b"x1,10,9,not an id,2015-08-26\n"                          # line 4: review_id
        b"3,10,11,rating too high,2015-08-26\n"                    # line 5: rating
        b"4,10,9,bad date,2015-13-40\n"                            # line 6: date
        b"5,10,9,nul \x00 inside,2015-08-26\n"                     # line 7: kept, NUL removed
        b"6,10,9,bad bytes \xed\xa0\x80 \xff,2015-08-26\n"         # line 8: not UTF-8
        b"1,10,9,same id again,2015-08-26\n"                       # line 9: duplicate
        b"7,10,9,too,many,fields\n"                                # line 10: field count
        b"8,,9,no product,2015-08-26\n"                            # line 11: product missing
        b"\n"                                                      # line 12: blank, ignored
        b"9,12,,no rating,2015-08-26T10:30:00+09:00\n"             # line 13: fine
    )
    path.write_bytes(content)
    report = import_reviews(engine, path, now=NOW)
    assert [r.line for r in report.rejections] == [4, 5, 6, 8, 9, 10, 11]
    reasons = dict((r.line, r.reason) for r in report.rejections)
    assert reasons[4] == "review_id 'x1' is not an integer"
    assert reasons[5] == "rating 11 out of range 1-10"
    assert reasons[6] == "created_at '2015-13-40' is not an ISO date"
    assert reasons[8] == "invalid UTF-8"
    assert reasons[9] == "duplicate review_id 1 (first at line 2)"
    assert reasons[10] == "expected 5 fields, found 6"
    assert reasons[11] == "missing product_id"
    assert (report.rows_read, report.loaded, report.rejected, report.repaired) == (10, 3, 7, 1)
    rows = stored(engine)
    assert sorted(rows) == [1, 5, 9]
    assert rows[1]["text"] == "two\nlines, a \\ and a\ttab"
    assert rows[5]["text"] == "nul  inside"
    assert rows[9]["created_at"] == datetime(2015, 8, 26, 1, 30, tzinfo=timezone.utc)
    assert rows[9]["rating"] is None
    assert "line 4: review_id 'x1' is not an integer" in report.summary()


def test_broken_parquet_rows_are_numbered_by_row(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({
        "review_id": pa.array([1, 2, None, 4], pa.int64()),
        "product_id": pa.array([5, 5, 5, 5], pa.int64()),
        "rating": pa.array([3, 0, 3, 3], pa.int8()),
        "text": ["a", "b", "c", None],
        "created_at": pa.array([datetime(2020, 1, 1, tzinfo=timezone.utc)] * 4, pa.timestamp("us", tz="UTC")),
    }), path)
    report = import_reviews(engine, path, now=NOW)
    assert report.unit == "row"
    assert [(r.line, r.reason) for r in report.rejections] == [(2, "rating 0 out of range 1-10"),
                                                               (3, "missing review_id")]
    rows = stored(engine)
    assert sorted(rows) == [1, 4]
    assert rows[4]["text"] is None and rows[4]["created_at"] == datetime(2020, 1, 1, tzinfo=timezone.utc)


def test_generic_tsv_with_a_header(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "reviews.tsv"
    path.write_text("review_id\titem_id\trating\ttext\tcreated\n11\t3\t10\t최고예요\t2014-02-03\n", encoding="utf-8")
    report = import_reviews(engine, path, now=NOW)
    assert (report.source_format, report.loaded) == ("tsv", 1)
    assert stored(engine)[11]["product_id"] == 3


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.parquet"])
def test_a_file_without_text_is_an_input_error(tmp_path: Path, sqlite_url: str, name: str) -> None:
    path = tmp_path / name
    frame = pd.DataFrame({"review_id": [1], "comment": ["no text column"]})
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    engine = db.make_engine(sqlite_url)
    db.init_schema(engine)
    with pytest.raises(InputDataError, match="no text column.*comment"):
        import_reviews(engine, path)
    with pytest.raises(InputDataError, match="not found"):
        import_reviews(engine, tmp_path / "missing.parquet")
    with pytest.raises(InputDataError, match="unsupported"):
        import_reviews(engine, _touch(tmp_path / "reviews.json"))
    engine.dispose()


def _touch(path: Path) -> Path:
    path.write_text("{}")
    return path


def test_a_database_without_the_schema_is_a_database_error(sqlite_url: str, sample_path: Path) -> None:
    engine = db.make_engine(sqlite_url)
    with pytest.raises(DatabaseError, match="db init"):
        import_reviews(engine, sample_path)
    engine.dispose()


def test_cli_reviews_import(any_db_url: str, sample_path: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "init", "--db", any_db_url]) == 0
    capsys.readouterr()
    assert main(["reviews", "import", str(sample_path), "--db", any_db_url, "--spread-days", "3"]) == 0
    assert "6012 loaded, 0 updated, 0 unchanged, 0 rejected" in capsys.readouterr().out
    assert main(["reviews", "import", str(sample_path), "--db", any_db_url]) == 0
    assert "0 loaded, 0 updated, 6012 unchanged" in capsys.readouterr().out

    broken = tmp_path / "shop.txt"
    broken.write_text("".join(f"{9 if i % 4 == 0 else 5}\t리뷰 {i}\n" for i in range(1, 29)), encoding="utf-8")
    assert main(["reviews", "import", str(broken), "--db", any_db_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "21 loaded, 0 updated, 0 unchanged, 7 rejected" in out[0]
    assert out[1:] == [f"  rejected line {n}: rating '9' is not 1-5 stars" for n in (4, 8, 12, 16, 20)] + [
        "  ... and 2 more rejected"]


def test_cli_errors_are_one_line_and_exit_2(sqlite_url: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "init", "--db", sqlite_url]) == 0
    capsys.readouterr()
    assert main(["reviews", "import", str(tmp_path / "nope.parquet"), "--db", sqlite_url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    missing = tmp_path / "nope.parquet"
    assert captured.err.splitlines() == [f"moderation reviews: error: input file not found: {missing}"]

    hopeless = tmp_path / "hopeless.csv"
    hopeless.write_text("review_id,text\nx,a\ny,b\n", encoding="utf-8")
    assert main(["reviews", "import", str(hopeless), "--db", sqlite_url]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no row of" in err[0] and "line 2: review_id 'x' is not an integer" in err[0]

    with pytest.raises(SystemExit) as exited:
        main(["reviews", "import", str(hopeless), "--spread-days", "0"])
    assert exited.value.code == 2
