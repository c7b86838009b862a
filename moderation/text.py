"""Korean review cleaning, vectorised over a whole column.

What is kept and why:

* Hangul syllables (가-힣) and compatibility jamo (ㄱ-ㅎ, ㅏ-ㅣ): ``ㅋㅋ``, ``ㅠㅠ``,
  ``ㅡㅡ`` carry much of a review's tone.
* Digits and Latin letters (lower-cased): scores ("10점"), brand names, "good".
* The punctuation that carries tone in Korean reviews: ``! ? . , ~ ^ ;``
  ("^^" is a smile, ";;" embarrassment, "..." disappointment).
* Single spaces.

Everything else (emoji, symbols, other scripts, control characters, zero-width
marks) is dropped. Text is first put in Unicode NFC, so decomposed jamo
(U+1100 block) compose into syllables; full-width ASCII becomes ASCII; URLs
are removed; runs of one character longer than three are squeezed to three
(ㅋㅋㅋㅋㅋㅋ -> ㅋㅋㅋ) so that a vocabulary of characters sees one shape.

Bump :data:`CLEANING_VERSION` on any change here: every model records the
version it was trained with and refuses to load under another one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

CLEANING_VERSION = "ko-clean-3"

KEPT_PUNCTUATION = "!?.,~^;"

_URL = r"(?i)(?:https?://|www\.)\S+"
# Full-width ASCII (U+FF01..U+FF5E) -> ASCII, and the ideographic space.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_DROP = r"[^가-힣ㄱ-ㅎㅏ-ㅣ0-9a-z " + re.escape(KEPT_PUNCTUATION) + r"]"
_REPEAT = re.compile(r"(.)\1{3,}")
_SURROGATE = re.compile("[\ud800-\udfff]")

#: Why a text got no score.
SKIP_EMPTY = "empty"
SKIP_NULL = "null_text"
SKIP_NOTHING_LEFT = "no_text_after_cleaning"


def clean_texts(texts: Iterable[str | None] | pd.Series | pa.Array) -> pd.Series:
    """Clean a column of review texts; nulls stay null, the order is kept.

    The heavy steps run in Arrow's compute kernels over the whole column;
    the full-width fix runs only on the rows that need it, and the repeat
    squeeze (a back-reference, which Arrow's RE2 lacks) runs once over the
    column joined into one string.
    """
    array = _as_string_array(texts)
    array = _nfc(array)
    array = pc.utf8_lower(array)
    # Zero-width and direction marks sit inside words: delete, do not split.
    array = pc.replace_substring_regex(array, r"\p{Cf}", "")
    full_width = pc.fill_null(pc.match_substring_regex(array, "[\uff01-\uff5e\u3000]"), False)
    if pc.any(full_width).as_py():
        fixed = [s.translate(_FULLWIDTH) for s in array.filter(full_width).to_pylist()]
        array = pc.replace_with_mask(array, full_width, pa.array(fixed, type=pa.large_string()))
    # URLs last among the rewrites: "ｗｗｗ．x" and "www\u200b.x" are URLs too.
    array = pc.replace_substring_regex(array, _URL, " ")
    array = pc.replace_substring_regex(array, _DROP, " ")
    array = pc.replace_substring_regex(array, " {2,}", " ")
    array = pc.utf8_trim_whitespace(array)
    squeezed = pa.array(_squeeze_repeats(array), type=pa.large_string())
    return pd.Series(squeezed, dtype=pd.StringDtype("pyarrow"), index=_index_of(texts))


#: Rows made only of these characters are already in NFC: ASCII and precomposed syllables have no
#: canonical decomposition to redo, and nothing here combines with what follows it.
_NFC_STABLE = "[^\x00-\x7f가-힣ㄱ-ㆎ]"


def _nfc(array: pa.Array) -> pa.Array:
    """Unicode NFC, computed only for the rows that could change (most reviews are plain syllables)."""
    unstable = pc.fill_null(pc.match_substring_regex(array, _NFC_STABLE), False)
    if not pc.any(unstable).as_py():
        return array
    normalized = pc.utf8_normalize(array.filter(unstable), form="NFC")
    return pc.replace_with_mask(array, unstable, normalized)


def _squeeze_repeats(array: pa.Array) -> list[str | None]:
    """Runs of one character longer than three cut to three, over the whole column at once.

    Rows are joined with newlines, which cleaning has already turned into
    spaces, so no run crosses two rows. The runs are found by comparing
    code points in NumPy; only when there are some does a character go.
    """
    values = pc.fill_null(array, "").to_pylist()
    joined = "\n".join(values)
    points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    same = points[3:] == points[:-3]
    same &= points[3:] == points[1:-2]
    same &= points[3:] == points[2:-1]
    same &= points[3:] != ord("\n")
    if same.any():  # a character that is the fourth (or later) of a run goes
        keep = np.ones(len(points), dtype=bool)
        keep[3:] = ~same
        squeezed = points[keep].tobytes().decode("utf-32-le").split("\n")
        if len(squeezed) != len(values):  # impossible after cleaning; never misalign rows if it happens
            squeezed = [_REPEAT.sub(r"\1\1\1", v) for v in values]
    else:
        squeezed = values
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return [v if ok else None for v, ok in zip(squeezed, valid)]


def clean_text(text: str | None) -> str | None:
    """Clean one text (the same rules as :func:`clean_texts`)."""
    return clean_texts([text]).iloc[0] if text is not None else None


def skip_reasons(raw: pd.Series, cleaned: pd.Series) -> pd.Series:
    """Why each row cannot be scored (``None`` for rows that can)."""
    reasons = np.full(len(raw), None, dtype=object)
    raw_na = raw.isna().to_numpy()
    raw_blank = np.fromiter(
        (isinstance(v, str) and not v.strip() for v in raw.tolist()), dtype=bool, count=len(raw)
    )
    nothing_left = ~raw_na & ~raw_blank & (cleaned.fillna("").str.len() == 0).to_numpy()
    reasons[raw_na] = SKIP_NULL
    reasons[raw_blank] = SKIP_EMPTY
    reasons[nothing_left] = SKIP_NOTHING_LEFT
    return pd.Series(reasons, index=raw.index, dtype=object)


def _index_of(texts: object) -> pd.Index | None:
    return texts.index if isinstance(texts, pd.Series) else None


def _as_string_array(texts: Iterable[str | None] | pd.Series | pa.Array) -> pa.Array:
    if isinstance(texts, pd.Series) and _holds_arrow_strings(texts.dtype):
        texts = pa.array(texts)  # already Arrow strings (pandas' own str dtype): valid UTF-8, no surrogates
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array):
        array = texts
    else:
        values = texts.tolist() if isinstance(texts, pd.Series) else list(texts)
        array = _plain_strings(values)
        if array is None:
            array = pa.array([_to_text(v) for v in values], type=pa.large_string())
    if pa.types.is_null(array.type):
        array = array.cast(pa.large_string())
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        raise TypeError(f"review texts must be strings, got {array.type}")
    return array.cast(pa.large_string())


def _holds_arrow_strings(dtype: object) -> bool:
    if isinstance(dtype, pd.StringDtype):
        return dtype.storage == "pyarrow"
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)
    return False


def _plain_strings(values: list[object]) -> pa.Array | None:
    """The column in one Arrow call where it holds only str and missing values; None where a value needs a look.

    Lone surrogates (which Arrow refuses) and values of other types go the
    slow way, value by value, to be scrubbed or reported.
    """
    if pd.api.types.infer_dtype(values, skipna=True) not in {"string", "empty"}:
        return None
    try:
        return pa.array(values, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowException, UnicodeError, TypeError, ValueError):
        return None


def _to_text(value: object) -> str | None:
    """None and NaN become null; lone surrogates (unstorable in UTF-8) become U+FFFD."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    if not isinstance(value, str):
        raise TypeError(f"review texts must be strings, got {type(value).__name__}")
    return scrub_surrogates(value)


def scrub_surrogates(text: str) -> str:
    """Replace lone UTF-16 surrogates, which no database or file can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text
