"""What every reader of review and label files shares: the file kind, per-line rejections, decoding, limits.

Three readers use it: :func:`moderation.data.read_table` (whole files into a
DataFrame, for training and scoring), :func:`moderation.importing.import_reviews`
and :func:`moderation.labels.import_labels` (row by row, rejecting broken rows
with their line or row number).

Decoding, the same rule for all three:

* Files are UTF-8; a byte-order mark at the start is dropped.
* A line (CSV/TSV; a quoted CSV record spanning lines counts as one, named by
  its first line) or a row (Parquet) in which a value the reader uses holds
  bytes that are not valid UTF-8 is **rejected** with the reason
  ``invalid UTF-8`` and its number; the other lines are read. (``read_table``
  uses every column it reads; ``import_reviews`` the review columns;
  ``import_labels`` the id and the label.) Nothing is repaired or guessed, so
  no text is silently altered, and the rejection is counted in the reader's report
  (``import_reviews`` and ``import_labels``: ``rejected``/``rejections``;
  ``read_table``: ``frame.attrs``, see :func:`frame_rejections`).
* A file whose lines with a text were all rejected so (a CP949/EUC-KR export,
  say) is refused as a whole, with a hint to convert it; a header that is not
  valid UTF-8 refuses the file too: its columns cannot be named.

Text is decoded with ``surrogateescape``, so an undecodable byte survives as a
lone surrogate (U+DC80-U+DCFF) that :func:`undecodable` finds; valid UTF-8
never decodes to one.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderation.errors import NOT_UTF8_HINT, InputDataError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

#: Rejections kept in a report's list; the count is always exact.
MAX_REJECTIONS_KEPT = 1_000
#: The largest id both databases' BIGINT holds.
MAX_BIGINT = 2**63 - 1
#: An integer as a file writes it.
INTEGER = re.compile(r"[+-]?[0-9]+")
#: The rejection reason of a line or row whose bytes are not valid UTF-8.
INVALID_UTF8 = "invalid UTF-8"
#: What ``surrogateescape`` makes of a byte that is not UTF-8 (the whole surrogate range, to be safe).
_UNDECODED = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Rejection:
    """A rejected row of an input file, and why."""

    line: int  # line (CSV/TSV, header included) or row (Parquet), 1-based
    reason: str


class Rejecting:
    """What an import report adds to its own fields: a rejection counted, and kept while the list is short."""

    rejected: int
    rejections: list[Rejection]

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS_KEPT:
            self.rejections.append(Rejection(line, reason))


def undecodable(values: Iterable[Any]) -> bool:
    """Whether any of the values holds bytes that were not valid UTF-8 (decoded with ``surrogateescape``)."""
    return any(isinstance(value, str) and _UNDECODED.search(value) is not None for value in values)


def not_utf8(path: Path | str, count: int, what: str = "texts") -> InputDataError:
    """The refusal of a file in which every text (or line) had bytes that are not valid UTF-8."""
    return InputDataError(f"{path} is not UTF-8: every one of its {count} {what} has bytes that are not "
                          f"valid UTF-8 ({NOT_UTF8_HINT}); nothing read")


def check_header(names: Iterable[Any], path: Path | str) -> None:
    """Refuse a file whose header is not valid UTF-8: its columns cannot be named."""
    if undecodable(names):
        raise InputDataError(f"{path}: line 1 (the header) has bytes that are not valid UTF-8 ({NOT_UTF8_HINT})")


def arrow_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A Parquet column's values; strings decoded with ``surrogateescape`` (pyarrow would raise on bad bytes)."""
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [None if v is None else v.decode("utf-8", "surrogateescape")
                for v in column.cast(pa.large_binary()).to_pylist()]
    return column.to_pylist()


def read_parquet_utf8(path: Path, columns: list[str] | None = None) -> tuple[pa.Table, list[Rejection]]:
    """A Parquet file as a table without its rows holding strings that are not valid UTF-8, and those rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=columns, use_pandas_metadata=True)  # as pandas.read_parquet reads it
    try:
        table.validate(full=True)
        return table, []
    except pa.ArrowInvalid:
        pass
    bad = [False] * table.num_rows
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for i, value in enumerate(arrow_values(column)):
                bad[i] = bad[i] or undecodable([value])
    rejections = [Rejection(i + 1, INVALID_UTF8) for i, is_bad in enumerate(bad) if is_bad]
    return table.filter(pc.invert(pa.array(bad))), rejections


def delimited_records(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str], str]]:
    """(first line, fields, source text) per record of a CSV/TSV file; blank lines skipped, BOM dropped.

    Decoded with ``surrogateescape``: a record with bytes that are not UTF-8
    reads, and :func:`undecodable` tells. A quoted field may span lines; the
    record is named by its first line.
    """
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # long texts are data, not errors
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        consumed: list[str] = []

        def lines() -> Iterator[str]:
            for line in handle:
                consumed.append(line)
                yield line

        reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
        while True:
            first = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputDataError(f"cannot read {path} line {first}: {exc}") from None
            source = "".join(consumed)
            consumed.clear()
            if fields:
                yield first, fields, source


def is_utf8(path: Path) -> bool:
    """Whether the whole file is valid UTF-8 (read in blocks; the common case needs no record pass)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def valid_utf8_text(path: Path, delimiter: str, quoting: int) -> tuple[io.StringIO, list[Rejection]]:
    """A CSV/TSV file's text without its records that are not valid UTF-8, and those records' rejections.

    For readers that hand the text to another parser (pandas): what they
    parse is the file as written, less the rejected records.
    """
    kept: list[str] = []
    rejections: list[Rejection] = []
    for line, fields, source in delimited_records(path, delimiter, quoting):
        if not undecodable([source]):
            kept.append(source)
        elif line == 1 and not (delimiter == "\t" and fields[0].strip().isdigit()):  # a shop file has no header
            check_header(fields, path)
        else:
            rejections.append(Rejection(line, INVALID_UTF8))
    return io.StringIO("".join(kept)), rejections


def frame_rejections(frame: pd.DataFrame) -> tuple[int, list[Rejection]]:
    """How many lines or rows :func:`moderation.data.read_table` left out of a frame, and the first of them."""
    return int(frame.attrs.get("rejected", 0)), list(frame.attrs.get("rejections", []))


def describe_rejections(rejected: int, rejections: list[Rejection], unit: str = "line", first: int = 5) -> str:
    """``N rejected (line 4: reason; ...; and M more)``: the count, and the first lines named."""
    text = f"{rejected} rejected"
    if rejections and first > 0:
        shown = "; ".join(f"{unit} {r.line}: {r.reason}" for r in rejections[:first])
        more = rejected - min(first, len(rejections))
        text += f" ({shown}{f'; and {more} more' if more else ''})"
    return text


def file_kind(path: Path) -> str:
    """``parquet``, ``csv`` or ``tsv`` (.tsv or .txt), by extension; a missing file or another type is refused."""
    if not path.is_file():
        raise InputDataError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix in {".tsv", ".txt"}:
        return "tsv"
    raise InputDataError(f"unsupported file type {suffix!r} for {path}: use .parquet, .csv or .tsv")
