"""Character vocabulary: cleaned text -> integer ids, vectorised.

Id 0 is padding (the model masks it), id 1 stands for any character the
training data did not show often enough (out of vocabulary). The vocabulary
is saved as JSON beside the model so that scoring reproduces training's
encoding exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moderation.errors import ModelBundleError

PAD_ID = 0
OOV_ID = 1
PAD_TOKEN = "<PAD>"
OOV_TOKEN = "<OOV>"


@dataclass(frozen=True)
class EncodedTexts:
    """Ragged ids: row ``i`` is ``ids[offsets[i]:offsets[i+1]]`` (never longer than max_len)."""

    ids: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def padded(self, rows: np.ndarray | None = None, width: int | None = None) -> np.ndarray:
        """Right-padded int32 matrix of the given rows (all rows by default).

        Right padding keeps the real characters first, which is what the
        masked LSTM (and cuDNN's masked kernel) needs.
        """
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        width = int(lengths.max(initial=1)) if width is None else width
        lengths = np.minimum(lengths, width)
        matrix = np.zeros((len(rows), max(width, 1)), dtype=np.int32)
        total = int(lengths.sum())
        if total:
            row_of = np.repeat(np.arange(len(rows)), lengths)
            first_of_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
            col = np.arange(total) - first_of_row
            matrix[row_of, col] = self.ids[np.repeat(starts, lengths) + col]
        return matrix


class CharVocab:
    """Maps characters to ids with a dense code-point lookup table."""

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ModelBundleError("vocabulary must list distinct single characters")
        self.chars: list[str] = list(chars)
        self._index = {c: i + 2 for i, c in enumerate(self.chars)}
        top = max((ord(c) for c in self.chars), default=0) + 1
        self._lookup = np.full(top, OOV_ID, dtype=np.int32)
        for char, idx in self._index.items():
            self._lookup[ord(char)] = idx

    @classmethod
    def build(cls, texts: Sequence[str], min_freq: int = 3, max_size: int | None = None) -> CharVocab:
        """Characters seen at least ``min_freq`` times, most frequent first (ties by code point)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        kept = sorted((c for c, n in counts.items() if n >= min_freq), key=lambda c: (-counts[c], c))
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls(kept)

    @property
    def size(self) -> int:
        """Embedding rows needed: the characters plus PAD and OOV."""
        return len(self.chars) + 2

    def id_of(self, char: str) -> int:
        return self._index.get(char, OOV_ID)

    def encode(self, texts: Sequence[str], max_len: int) -> EncodedTexts:
        """Encode cleaned texts; longer ones keep their last ``max_len`` characters.

        The end of a review is kept because that is where Korean reviews
        usually put the verdict ("...연기는 좋은데 스토리가 별로").
        """
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        joined = "".join(texts)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        ids = np.full(codes.shape, OOV_ID, dtype=np.int32)
        known = codes < len(self._lookup)
        ids[known] = self._lookup[codes[known]]
        ends = np.cumsum(lengths)
        starts = np.maximum(ends - lengths, ends - max_len)
        kept = ends - starts
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(kept)
        flat_index = np.repeat(starts, kept) + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], kept))
        return EncodedTexts(ids=ids[flat_index], offsets=offsets)

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of encode for inspection (PAD dropped, OOV as U+FFFD)."""
        out = []
        for i in ids:
            if i == PAD_ID:
                continue
            out.append("\ufffd" if i == OOV_ID else self.chars[i - 2])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps(
            {"pad": PAD_TOKEN, "oov": OOV_TOKEN, "pad_id": PAD_ID, "oov_id": OOV_ID, "chars": self.chars},
            ensure_ascii=False,
            indent=0,
        )

    def save(self, path: Path) -> str:
        """Write the vocabulary; returns its SHA-256 (recorded in the model card)."""
        data = self.to_json().encode("utf-8")
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path) -> CharVocab:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            chars = payload["chars"]
        except FileNotFoundError:
            raise ModelBundleError(f"vocabulary file is missing: {path}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelBundleError(f"vocabulary file is not valid: {path} ({exc})") from None
        if payload.get("pad_id") != PAD_ID or payload.get("oov_id") != OOV_ID:
            raise ModelBundleError(f"vocabulary uses other PAD/OOV ids than this code: {path}")
        return cls(chars)
