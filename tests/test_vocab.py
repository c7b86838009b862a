"""Vocabulary: PAD/OOV ids, vectorised encoding, truncation, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moderation.errors import ModelBundleError
from moderation.vocab import OOV_ID, PAD_ID, CharVocab


def test_build_orders_by_frequency_and_respects_min_freq() -> None:
    vocab = CharVocab.build(["가가가나나다", "가나"], min_freq=2)
    assert vocab.chars == ["가", "나"]
    assert vocab.size == 4
    assert vocab.id_of("가") == 2 and vocab.id_of("다") == OOV_ID


def test_encode_is_ragged_and_keeps_the_end_of_long_texts() -> None:
    vocab = CharVocab(list("abcdef"))
    encoded = vocab.encode(["abc", "", "abcdef", "zz"], max_len=4)
    assert encoded.lengths.tolist() == [3, 0, 4, 2]
    assert vocab.decode(encoded.ids[encoded.offsets[2] : encoded.offsets[3]]) == "cdef"
    assert encoded.ids[encoded.offsets[3] : encoded.offsets[4]].tolist() == [OOV_ID, OOV_ID]


def test_padded_matrix_is_right_padded() -> None:
    vocab = CharVocab(list("ab"))
    encoded = vocab.encode(["ab", "a", "bab"], max_len=10)
    matrix = encoded.padded()
    assert matrix.dtype == np.int32
    assert matrix.tolist() == [[2, 3, PAD_ID], [2, PAD_ID, PAD_ID], [3, 2, 3]]
    assert encoded.padded(np.array([1]), width=4).tolist() == [[2, 0, 0, 0]]


def test_encode_handles_astral_characters_and_hangul() -> None:
    vocab = CharVocab(list("좋아"))
    encoded = vocab.encode(["좋아𝒜"], max_len=10)
    assert encoded.ids.tolist() == [2, 3, OOV_ID]


def test_round_trip_through_json(tmp_path: Path) -> None:
    vocab = CharVocab.build(["ㅋㅋ 좋아요!", "별로예요 ㅠㅠ"], min_freq=1)
    digest = vocab.save(tmp_path / "vocab.json")
    loaded = CharVocab.load(tmp_path / "vocab.json")
    assert loaded.chars == vocab.chars and len(digest) == 64
    texts = ["좋아요 ㅋㅋ", "처음 보는 글자"]
    assert np.array_equal(loaded.encode(texts, 50).ids, vocab.encode(texts, 50).ids)


def test_broken_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelBundleError, match="not valid"):
        CharVocab.load(tmp_path / "vocab.json")
    with pytest.raises(ModelBundleError, match="missing"):
        CharVocab.load(tmp_path / "absent.json")
