"""One decoding rule for the three readers of review and label files (moderation.reading).

A line (or Parquet row) whose bytes are not valid UTF-8 is rejected with its
number and "invalid UTF-8", the rest is read, the report counts it; a file with
no valid text is refused with a hint; a header that is not UTF-8 refuses the
file. Each reader is checked on every format it accepts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, select

from moderation import db
from moderation.cli import main
from moderation.data import load_labelled, read_table
from moderation.errors import InputDataError
from moderation.importing import import_reviews
from moderation.labels import import_labels
from moderation.reading import INVALID_UTF8, Rejection, frame_rejections

NOW = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
BAD = "나빠요".encode("cp949")  # Korean in CP949: not UTF-8


def _write(path: Path, rows: list[tuple[bytes, bytes, bytes]], header: bytes = b"review_id,label,text") -> Path:
    """A file of review_id, label, text (CSV, TSV or Parquet by extension) holding raw bytes."""
    if path.suffix == ".parquet":
        ids, labels, texts = zip(*rows)
        pq.write_table(pa.table({
            "review_id": pa.array([int(v) for v in ids], pa.int64()),
            "label": (pa.array([int(v) for v in labels], pa.int8()) if all(v.isdigit() for v in labels)
                      else pa.array(labels, pa.binary()).view(pa.string())),  # bytes as they are, valid or not
            "text": pa.array(texts, pa.binary()).view(pa.string()),
        }), path)
        return path
    sep = b"," if path.suffix == ".csv" else b"\t"
    path.write_bytes(b"\n".join([header.replace(b",", sep)] + [sep.join(r) for r in rows]) + b"\n")
    return path


ROWS = [(b"1", b"1", "최악이에요".encode()), (b"2", b"1", BAD), (b"3", b"0", "좋아요".encode())]
FORMATS = [("csv", "line", 3), ("tsv", "line", 3), ("parquet", "row", 2)]  # kind, unit, number of the bad one


@pytest.mark.parametrize(("kind", "unit", "bad"), FORMATS)
def test_read_table_leaves_out_and_counts_the_lines_that_are_not_utf8(tmp_path: Path, kind: str, unit: str,
                                                                      bad: int) -> None:
    path = _write(tmp_path / f"reviews.{kind}", ROWS)
    frame = read_table(path)
    assert list(frame["text"]) == ["최악이에요", "좋아요"]
    assert list(frame["review_id"]) == [1, 3]
    assert frame_rejections(frame) == (1, [Rejection(bad, INVALID_UTF8)])
    assert list(load_labelled(path)["text"]) == ["최악이에요", "좋아요"]


@pytest.mark.parametrize(("kind", "unit", "bad"), FORMATS)
def test_import_reviews_rejects_the_lines_that_are_not_utf8(engine: Engine, tmp_path: Path, kind: str, unit: str,
                                                            bad: int) -> None:
    path = _write(tmp_path / f"reviews.{kind}", ROWS)
    report = import_reviews(engine, path, now=NOW)
    assert (report.rows_read, report.loaded, report.rejected, report.repaired) == (3, 2, 1, 0)
    assert report.rejections == [Rejection(bad, INVALID_UTF8)]
    assert f"1 rejected ({unit} {bad}: invalid UTF-8)" in report.summary()
    with engine.connect() as conn:
        texts = dict(conn.execute(select(db.reviews.c.review_id, db.reviews.c.text)).tuples().all())
    assert texts == {1: "최악이에요", 3: "좋아요"}


@pytest.mark.parametrize(("kind", "unit", "bad"), FORMATS)
def test_import_labels_rejects_the_lines_that_are_not_utf8(engine: Engine, tmp_path: Path, kind: str, unit: str,
                                                           bad: int) -> None:
    """The labels use the id and the label: a label that is not UTF-8 rejects its line, a text never read does not."""
    reviews = _write(tmp_path / "reviews.csv", [(b"1", b"1", b"a"), (b"2", b"1", b"b"), (b"3", b"0", b"c")])
    import_reviews(engine, reviews, now=NOW)
    words = [(b"1", "부정".encode(), BAD), (b"2", "부정".encode("cp949"), b"x"), (b"3", "긍정".encode(), b"y")]
    path = _write(tmp_path / f"labels.{kind}", words)
    report = import_labels(engine, path)
    assert (report.rows_read, report.loaded, report.rejected) == (3, 2, 1)
    assert report.rejections == [Rejection(bad, INVALID_UTF8)]
    assert f"1 rejected ({unit} {bad}: invalid UTF-8)" in report.summary(first=5)
    with engine.connect() as conn:
        labels = dict(conn.execute(select(db.review_labels.c.review_id, db.review_labels.c.label)).tuples().all())
    assert labels == {1: 1, 3: 0}


def test_a_quoted_record_over_several_lines_is_rejected_by_its_first_line(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(b'review_id,label,text\n1,1,"first\n' + BAD + b'"\n2,0,fine\n')
    frame = read_table(path)
    assert list(frame["review_id"]) == [2] and frame_rejections(frame) == (1, [Rejection(2, INVALID_UTF8)])
    report = import_reviews(engine, path, now=NOW)
    assert (report.loaded, report.rejections) == (1, [Rejection(2, INVALID_UTF8)])


def test_nsmc_and_shop_files_follow_the_same_rule(engine: Engine, tmp_path: Path) -> None:
    nsmc = tmp_path / "nsmc.tsv"
    nsmc.write_bytes(b"id\tdocument\tlabel\n1\t" + "재밌다".encode() + b"\t1\n2\t" + BAD + b"\t0\n")
    shop = tmp_path / "shop.tsv"
    shop.write_bytes(b"5\t" + BAD + b"\n2\t" + "택배가 엉망".encode() + b"\n")  # no header: line 1 is a review
    for path, bad in ((nsmc, 3), (shop, 1)):
        frame = read_table(path)
        assert len(frame) == 1 and frame_rejections(frame) == (1, [Rejection(bad, INVALID_UTF8)])
        report = import_reviews(engine, path, now=NOW)
        assert (report.loaded, report.rejections) == (1, [Rejection(bad, INVALID_UTF8)])


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_a_file_with_no_utf8_text_is_refused_by_every_reader(engine: Engine, tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path / f"cp949.{kind}", [(b"1", b"1", BAD), (b"2", b"0", "좋아요".encode("cp949"))])
    with pytest.raises(InputDataError, match="is not UTF-8: every one of its 2 texts.*iconv -f cp949"):
        read_table(path)
    with pytest.raises(InputDataError, match="is not UTF-8: every one of its 2 texts"):
        import_reviews(engine, path, now=NOW)
    labels = _write(tmp_path / f"labels.{kind}", [(b"1", "부정".encode("cp949"), b"x"), (b"2", BAD, b"y")])
    with pytest.raises(InputDataError, match="is not UTF-8: every one of its 2 lines"):
        import_labels(engine, labels)
    with engine.connect() as conn:
        assert conn.execute(select(db.reviews.c.review_id)).first() is None


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_a_header_that_is_not_utf8_refuses_the_file(engine: Engine, tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path / f"reviews.{kind}", ROWS[:1], header=b"review_id,label," + BAD)
    for read in (read_table, lambda p: import_reviews(engine, p, now=NOW), lambda p: import_labels(engine, p)):
        with pytest.raises(InputDataError, match=r"line 1 \(the header\) has bytes that are not valid UTF-8"):
            read(path)


def test_the_cli_names_the_rejected_lines(any_db_url: str, tiny_model_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "reviews.csv", ROWS)
    assert main(["db", "init", "--db", any_db_url]) == 0
    assert main(["reviews", "import", str(path), "--db", any_db_url]) == 0
    out = capsys.readouterr().out
    assert "2 loaded" in out and "1 rejected" in out and "line 3: invalid UTF-8" in out
    labels = _write(tmp_path / "labels.csv", [(b"1", "부정".encode("cp949"), b""), (b"3", b"0", b"")])
    assert main(["labels", "import", str(labels), "--db", any_db_url]) == 0
    out = capsys.readouterr().out
    assert "1 labels loaded" in out and "1 rejected" in out and "line 2: invalid UTF-8" in out
    assert main(["score-file", str(path), str(tmp_path / "out.csv"), "--model", str(tiny_model_dir)]) == 0
    assert "1 rejected (line 3: invalid UTF-8)" in capsys.readouterr().out
