"""Cleaning rules on real corpus shapes: jamo, emoji, English, decomposed Hangul, long text."""

from __future__ import annotations

import unicodedata

import pandas as pd
import pytest

from moderation.text import (
    CLEANING_VERSION,
    SKIP_EMPTY,
    SKIP_NOTHING_LEFT,
    SKIP_NULL,
    clean_text,
    clean_texts,
    skip_reasons,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ㅋㅋㅋㅋㅋㅋㅋㅋ 진짜 최악", "ㅋㅋㅋ 진짜 최악"),  # jamo kept, long runs squeezed
        ("ㅠㅠ 배송이 너무 늦어요", "ㅠㅠ 배송이 너무 늦어요"),
        ("재밌어요!!!!!!", "재밌어요!!!"),
        ("Good 제품 강추", "good 제품 강추"),  # Latin kept, lower-cased
        ("10점 만점에 2점", "10점 만점에 2점"),
        ("😀😀 최고 👍", "최고"),  # emoji dropped
        ("좋아요^^ 별로;;", "좋아요^^ 별로;;"),
        ("링크 https://shop.example.com/x?y=1 확인", "링크 확인"),
        ("ＡＢＣ　좋아요", "abc 좋아요"),  # full-width ASCII and ideographic space
        ("멋지\u3164ㄴㅔㅋ", "멋지 ㄴㅔㅋ"),  # Hangul filler is not a letter
        ("zero\u200bwidth 조이너\u200d", "zerowidth 조이너"),
        ("줄\n바꿈\t탭", "줄 바꿈 탭"),
        ("<b>굵게</b> DROP TABLE reviews;--", "b 굵게 b drop table reviews;"),
    ],
)
def test_cleaning_rules(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_decomposed_jamo_compose_to_syllables() -> None:
    decomposed = unicodedata.normalize("NFD", "배송 느려요")
    assert len(decomposed) > len("배송 느려요")
    assert clean_text(decomposed) == "배송 느려요"


def test_very_long_text_is_cleaned_whole() -> None:
    long_text = "정말 좋아요 " * 20_000
    cleaned = clean_text(long_text)
    assert cleaned is not None and cleaned.startswith("정말 좋아요") and len(cleaned) > 100_000


def test_nulls_stay_null_and_order_is_kept() -> None:
    cleaned = clean_texts(["하나", None, "셋", float("nan")])
    assert cleaned.iloc[0] == "하나" and pd.isna(cleaned.iloc[1]) and cleaned.iloc[2] == "셋" and pd.isna(cleaned.iloc[3])


def test_lone_surrogates_and_control_characters_do_not_crash() -> None:
    assert clean_text("\ud800깨진\x00문자\x07") == "깨진 문자"


def test_skip_reasons_name_every_unscorable_row() -> None:
    raw = pd.Series(["좋아요", None, "", "   ", "😀😀", "!!"], dtype=object)
    reasons = skip_reasons(raw, clean_texts(raw))
    assert reasons.tolist() == [None, SKIP_NULL, SKIP_EMPTY, SKIP_EMPTY, SKIP_NOTHING_LEFT, None]


def test_series_index_is_preserved() -> None:
    raw = pd.Series(["가", "나"], index=[10, 20])
    assert clean_texts(raw).index.tolist() == [10, 20]


def test_real_corpus_sample_cleans_without_loss(sample_path) -> None:
    frame = pd.read_parquet(sample_path)
    cleaned = clean_texts(frame["text"])
    assert len(cleaned) == len(frame)
    reasons = skip_reasons(frame["text"], cleaned)
    # Every row is either scorable text or has a named reason.
    assert ((cleaned.fillna("").str.len() > 0) | reasons.notna()).all()
    assert not cleaned.fillna("").str.contains("\n").any()


def test_cleaning_version_is_named() -> None:
    assert CLEANING_VERSION.startswith("ko-clean-")


def test_column_steps_keep_rows_apart_and_nulls_in_place() -> None:
    """Full-width fixes touch only their rows; repeat squeezing never runs across two rows."""
    raw = [None, "ｇｏｏｄ ＧＯＯＤ", "ㅋㅋ", "ㅋㅋ", "ㅋㅋㅋㅋㅋ\nㅋㅋㅋㅋ", "", "좋아요!!!!", None, "ㅋ\u3000ㅋ"]
    cleaned = clean_texts(raw)
    assert cleaned.tolist()[1:7] == ["good good", "ㅋㅋ", "ㅋㅋ", "ㅋㅋㅋ ㅋㅋㅋ", "", "좋아요!!!"]
    assert cleaned.isna().tolist() == [True, False, False, False, False, False, False, True, False]
    assert cleaned.iloc[8] == "ㅋ ㅋ"
    assert [clean_text(t) for t in raw] == [None if v is pd.NA else v for v in cleaned.tolist()]
