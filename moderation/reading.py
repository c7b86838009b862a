"""What every reader of review and label files shares: the file kind, per-line rejections, integer limits.

Three readers use it: :func:`moderation.data.read_table` (whole files into a
DataFrame, for training and scoring), :func:`moderation.importing.import_reviews`
and :func:`moderation.labels.import_labels` (row by row, rejecting broken rows
with their line or row number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from moderation.errors import InputDataError

#: Rejections kept in a report's list; the count is always exact.
MAX_REJECTIONS_KEPT = 1_000
#: The largest id both databases' BIGINT holds.
MAX_BIGINT = 2**63 - 1
#: An integer as a file writes it.
INTEGER = re.compile(r"[+-]?[0-9]+")


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
