"""Reading review files and turning ratings into labels.

Accepted inputs (chosen by extension and columns):

* Parquet/CSV/TSV with a ``text`` column, optionally ``rating`` (1-10, or
  1-5 with ``--scale 5``), ``label`` (1 = negative), ``item_id``,
  ``review_id``: the shared corpus file is one of these.
* NSMC files: ``id<TAB>document<TAB>label`` with label 1 = positive.
* Naver shopping files: ``rating<TAB>review`` without a header, 1-5 stars.

Splits keep an item's reviews together: the group is ``item_id``, else
``review_id``, else the row. Ids may be of any type (numbers, texts such as
``"x0"``); a row with an empty id is a group of its own (:func:`group_keys`).

Labels follow the usual convention: on the 10-point scale 1-4 is negative,
9-10 positive, 5-8 ambiguous and left out; on the 5-point scale 1-2 is
negative, 4-5 positive and 3 left out. ``label`` is 1 for NEGATIVE.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moderation.errors import InputDataError
from moderation.reading import (MAX_REJECTIONS_KEPT, Rejection, describe_rejections, file_kind, frame_rejections,
                                is_utf8, not_utf8, read_parquet_utf8, valid_utf8_text)

log = logging.getLogger(__name__)

TEXT_COLUMN = "text"


def read_table(path: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read Parquet, CSV or TSV into a DataFrame; format by extension.

    Lines or rows that are not valid UTF-8 are left out and listed in
    ``frame.attrs`` (:func:`moderation.reading.frame_rejections`);
    a file with no valid text is refused (the rule: :mod:`moderation.reading`).
    """
    path = Path(path)
    if path.is_dir():
        raise InputDataError(f"{path} is a directory, not a review file")
    kind = file_kind(path)
    try:
        if kind == "parquet":
            table, rejections = read_parquet_utf8(path, columns)
            frame = table.to_pandas()
        elif kind == "tsv":
            frame, rejections = _read_tsv(path)
        else:
            source, rejections = (path, []) if is_utf8(path) else valid_utf8_text(path, ",", csv.QUOTE_MINIMAL)
            frame = pd.read_csv(source, dtype={TEXT_COLUMN: "string"}, keep_default_na=False, na_values=[],
                                encoding="utf-8-sig")  # a BOM is dropped
            if len(frame.columns) == 1 and TEXT_COLUMN not in frame.columns:
                hint = _separator_hint(path)
                if hint:
                    raise InputDataError(f"cannot read {path}: {hint}")
    except pd.errors.ParserError as exc:
        raise InputDataError(f"cannot read {path}: {_parser_hint(path, exc)}") from None
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    if rejections and not _texts(frame):
        raise not_utf8(path, len(rejections))
    frame.attrs["rejected"] = len(rejections)
    frame.attrs["rejections"] = rejections[:MAX_REJECTIONS_KEPT]
    return frame


def _texts(frame: pd.DataFrame) -> int:
    """Non-empty texts (rows, in a file without a text column)."""
    if TEXT_COLUMN not in frame.columns:
        return len(frame)
    return int((frame[TEXT_COLUMN].astype("string").fillna("").str.strip() != "").sum())


def _parser_hint(path: Path, exc: Exception) -> str:
    """pandas' parser message, with the likely cause when the file is not comma-separated."""
    message = " ".join(str(exc).split())
    hint = _separator_hint(path)
    return f"{message}; {hint}" if hint else f"{message} (a field with a comma or a line break must be quoted)"


def _separator_hint(path: Path) -> str | None:
    """What is wrong when a .csv's header has no comma but another separator."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    if path.suffix.lower() == ".csv" and "," not in header:
        for name, sep in (("semicolon", ";"), ("tab", "\t"), ("pipe", "|")):
            if sep in header:
                return (f"its header is {name}-separated, but .csv must be comma-separated "
                        f"(save it with commas, or tab-separated as .tsv)")
    return None


def _read_tsv(path: Path) -> tuple[pd.DataFrame, list[Rejection]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = handle.readline().lstrip("\ufeff").rstrip("\n").split("\t")
    source, rejections = (path, []) if is_utf8(path) else valid_utf8_text(path, "\t", csv.QUOTE_NONE)
    options = {"sep": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8-sig", "keep_default_na": False}
    if first[:3] == ["id", "document", "label"]:
        frame = pd.read_csv(source, dtype={"document": "string"}, **options)
        frame = frame.rename(columns={"document": TEXT_COLUMN, "id": "review_id"})
        frame["label"] = 1 - frame["label"].astype(int)  # NSMC: 1 = positive
    elif len(first) == 2 and first[0].strip().isdigit():
        frame = pd.read_csv(source, header=None, names=["rating", TEXT_COLUMN], dtype={TEXT_COLUMN: "string"},
                            **options)
        frame.attrs["rating_scale"] = 5
    else:
        frame = pd.read_csv(source, dtype={TEXT_COLUMN: "string"}, **options)
    return frame, rejections


#: A text that is only a number: a review column holding ids or ratings by mistake.
NUMBER_ONLY = r"^\s*[+-]?\d+(?:[.,]\d+)?\s*$"


def require_text_column(frame: pd.DataFrame, source: str) -> None:
    """The text column exists and holds texts, not numbers (a wrong column mapped to ``text``)."""
    require_columns(frame, [TEXT_COLUMN], source)
    column = frame[TEXT_COLUMN]
    if pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        raise InputDataError(f"{source}: column text holds numbers ({column.dtype}), not review texts")
    present = column.dropna().astype("string")
    present = present[present.str.strip() != ""]
    if len(present) and bool(present.str.match(NUMBER_ONLY).all()):
        raise InputDataError(f"{source}: every value of column text is a number (e.g. {present.iloc[0]!r}): "
                             f"is it the right column?")


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputDataError(f"{source} has no column {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))})")


#: Rating bands per scale: (negative low, negative high, positive low, positive high), inclusive.
#: The middle (5-8 of 10, 3 of 5) is ambiguous and left unlabelled.
RATING_BANDS = {10: (1, 4, 9, 10), 5: (1, 2, 4, 5)}


def rating_bands(scale: int) -> tuple[int, int, int, int]:
    """The bands of a 5- or 10-point scale; any other scale is refused."""
    if scale not in RATING_BANDS:
        raise InputDataError(f"rating scale must be 5 or 10, not {scale}")
    return RATING_BANDS[scale]


def labels_from_ratings(ratings: pd.Series, scale: int = 10) -> pd.Series:
    """1 = negative, 0 = positive, NA = ambiguous middle, per the scale's convention."""
    neg_low, neg_high, pos_low, pos_high = rating_bands(scale)
    r = pd.to_numeric(ratings, errors="coerce")
    negative, positive = r.between(neg_low, neg_high), r.between(pos_low, pos_high)
    labels = pd.Series(pd.NA, index=r.index, dtype="Int8")
    labels[negative] = 1
    labels[positive] = 0
    return labels


def load_labelled(path: Path | str, rating_scale: int | None = None) -> pd.DataFrame:
    """Rows with a text and a 0/1 label (1 = negative); ambiguous ratings dropped.

    Returns columns ``text``, ``label``, ``group`` (what splits must keep
    together: the item when known, else the review, else the row; see
    :func:`group_keys` for the values a key may take).
    """
    frame = read_table(path)
    require_text_column(frame, str(path))
    rejected, rejections = frame_rejections(frame)
    if rejected:
        log.warning("%s: %s", path, describe_rejections(rejected, rejections))
    if "label" in frame.columns:
        labels = pd.to_numeric(frame["label"], errors="coerce").astype("Int8")
    elif "rating" in frame.columns:
        scale = rating_scale or frame.attrs.get("rating_scale") or _guess_scale(frame["rating"])
        labels = labels_from_ratings(frame["rating"], scale)
    else:
        raise InputDataError(f"{path} has neither a 'label' nor a 'rating' column to learn from")
    if "item_id" in frame.columns:
        group = group_keys(frame["item_id"], "item_id", str(path))
    elif "review_id" in frame.columns:
        group = group_keys(frame["review_id"], "review_id", str(path))
    else:
        group = pd.Series(np.arange(len(frame)), index=frame.index, dtype="int64")
    out = pd.DataFrame({TEXT_COLUMN: frame[TEXT_COLUMN].astype("string"), "label": labels, "group": group})
    return out[out["label"].notna()].reset_index(drop=True).astype({"label": "int8"})


#: The key of a row whose group column is empty: never equal to a real key (``group_keys``).
_NULL_KEY = "\0row:{}"


def group_keys(column: pd.Series, name: str, source: str) -> pd.Series:
    """A group column's values as split keys: kept as given, whatever their type.

    Integers stay int64 (a whole-number float column, such as a CSV column
    with blanks, becomes one), so an integer id hashes as it always has and a
    split made before is made again; strings, mixed values or any other
    hashable value are kept as they are. A row whose key is empty (null, NaN
    or a blank text, as an empty CSV cell reads) is a group of its own, as
    every row of a file without the column is. A value that cannot be a key
    (a list, say) is an :class:`InputDataError` naming the column.
    """
    missing = column.isna().to_numpy(dtype=bool, copy=True)
    if pd.api.types.is_string_dtype(column.dtype):  # text or mixed values: a blank text is empty too
        missing |= column.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy(bool)
    present = column[~missing]
    whole = pd.api.types.is_float_dtype(present.dtype) and bool((present % 1 == 0).all())
    if whole or (pd.api.types.is_integer_dtype(present.dtype) and not pd.api.types.is_bool_dtype(present.dtype)):
        present = present.astype("int64")
    else:
        present = present.astype(object)
    try:
        pd.unique(present)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in present if not isinstance(v, (str, int, float))})
        raise InputDataError(f"{source}: column {name} holds values that cannot identify a group "
                             f"({', '.join(kinds) or present.dtype}): give each row a string or number id") from None
    if not missing.any():
        return present
    keys = pd.Series([_NULL_KEY.format(i) for i in range(len(column))], index=column.index, dtype=object)
    keys[~missing] = present.astype(object).to_numpy()
    return keys


def _guess_scale(ratings: pd.Series) -> int:
    top = pd.to_numeric(ratings, errors="coerce").max()
    return 5 if pd.notna(top) and top <= 5 else 10


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def split_by_group(frame: pd.DataFrame, validation: float = 0.1, test: float = 0.1, seed: int = 13) -> Split:
    """Item-disjoint split: every row of a group lands on the same side.

    A group's side comes from a seeded hash of its id, so the split is the
    same on every machine and does not shift when rows are added.
    """
    groups = frame["group"].to_numpy()
    keys = pd.unique(frame["group"])  # any hashable key; the side depends on its text alone
    unit = np.array([zlib.crc32(f"{seed}:{g}".encode()) for g in keys], dtype=np.float64) / 2**32
    position = pd.Series(unit, index=keys).reindex(groups).to_numpy()
    is_test = position < test
    is_validation = (position >= test) & (position < test + validation)
    is_train = ~is_test & ~is_validation
    return Split(
        train=frame[is_train].reset_index(drop=True),
        validation=frame[is_validation].reset_index(drop=True),
        test=frame[is_test].reset_index(drop=True),
    )


#: Shares of the groups held out for validation and test by default.
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
#: Fewest reviews of each class a split needs: fewer gives a threshold and metrics that mean nothing.
MIN_PER_CLASS = 5


def check_split(split: Split, require_test: bool = False, source: str = "the data") -> None:
    """Refuse degenerate training data with the reason: a class missing, or too few rows on a side."""
    if not len(split.train) + len(split.validation) + len(split.test):
        raise InputDataError(f"{source} has no labelled rows to train on")
    sides = [("training", split.train), ("validation", split.validation)]
    if require_test:
        sides.append(("test", split.test))
    for name, frame in sides:
        negative = int((frame["label"] == 1).sum())
        positive = int(len(frame) - negative)
        for label, count in (("negative", negative), ("positive", positive)):
            if count < MIN_PER_CLASS:
                raise InputDataError(
                    f"{source}: the {name} split has {count} {label} reviews ({negative} negative, {positive} positive "
                    f"in {len(frame)} rows); each split needs at least {MIN_PER_CLASS} of each class: "
                    f"add labelled reviews of both kinds")


def balance_classes(frame: pd.DataFrame, seed: int = 13) -> pd.DataFrame:
    """Down-sample the larger class so both labels have equal counts."""
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        return frame
    n = int(counts.min())
    parts = [frame[frame["label"] == lab].sample(n=n, random_state=seed) for lab in sorted(counts.index)]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over texts and labels in order: identifies the exact training data."""
    digest = hashlib.sha256()
    hashed = pd.util.hash_pandas_object(frame[[TEXT_COLUMN, "label"]].astype({TEXT_COLUMN: object}), index=False)
    digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()
