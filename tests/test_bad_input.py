"""Whatever customers type, the nightly job keeps going and every review gets an answer.

Property-based (hypothesis) over arbitrary Unicode -- lone surrogates, control
characters, NUL bytes, direction marks, zero-width joiners, emoji ZWJ
sequences, 100,000-character texts, None, HTML and SQL-looking strings -- for
the three stages a review passes: cleaning, encoding and scoring with a real
(tiny) trained model. Example counts are modest: each scoring example calls
the network.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moderation.model import load_bundle
from moderation.scoring import Scorer, Scores
from moderation.text import SKIP_EMPTY, SKIP_NOTHING_LEFT, SKIP_NULL, clean_texts, skip_reasons
from moderation.vocab import OOV_ID, PAD_ID, CharVocab

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_VOCAB = ROOT / "models" / "ko-char-lstm-v3" / "vocab.json"

#: The alphabet text.py promises, written out independently of its regex.
ALLOWED = re.compile(r"[\uac00-\ud7a3\u3131-\u3163a-z0-9 !?.,~^;]*")  # 가-힣, ㄱ-ㅎ and ㅏ-ㅣ, a-z, 0-9, space, tone punctuation
LONG = 100_000

# No database is written here; the autouse home fixture is harmless to share across examples.
FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MODEL = settings(max_examples=60, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])

#: Every code point, lone surrogates (category Cs) included.
EVERY_CHARACTER = st.characters(exclude_categories=())
NASTY_PIECES = [
    "\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\x7f", "\u0085",
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2066", "\u2069", "\ufeff", "\u00ad",
    "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "👍🏽", "🇰🇷", "\U0001f600", "\ud800", "\udfff", "\udbff\udc00",
    "<script>alert('xss')</script>", "<b>최악</b>&nbsp;&amp;", "'; DROP TABLE reviews; --", "1' OR '1'='1",
    "%s %(text)s {0} :rid $1 ?", "\\x00", "ㅋㅋㅋㅋㅋㅋㅋ", "ㅠㅠ", "배송 최악", "\u1100\u1161\u11a8", "ｗｗｗ", "Ａ１",
    "\u3000", "İ", "ß", "ﬁ", "\u0301", "١٢٣", "שלום", "مرحبا", "\U000e0001", "\U0010ffff", "\uffff",
    "https://example.com/a?b=1", "   ", "",
]
REAL_REVIEWS = ["정말 최고의 상품입니다", "별로", "배송이 늦고 포장이 엉망이라 다시는 안 삽니다 ㅠㅠ",
                "가성비 좋아요!! 재구매 의사 있음^^", "사이즈가 너무 작아요;; 반품합니다", "Good 제품 강추 10점"]

pieces = st.one_of(st.sampled_from(NASTY_PIECES), st.text(EVERY_CHARACTER, max_size=6))
mixed_text = st.lists(pieces, max_size=16).map("".join)
long_text = st.tuples(st.sampled_from([p for p in NASTY_PIECES if p] + REAL_REVIEWS), st.sampled_from(REAL_REVIEWS)
                      ).map(lambda pair: ((pair[0] * (LONG // len(pair[0]) + 1))[: LONG - len(pair[1])] + pair[1]))
review_text = st.one_of(st.none(), st.text(EVERY_CHARACTER, max_size=120), mixed_text,
                        st.sampled_from(REAL_REVIEWS))
#: What a batch's worst row may be.
pathological = st.one_of(st.none(), long_text, mixed_text, st.sampled_from(NASTY_PIECES),
                         st.just("\x00" * LONG), st.just("\ud800" * 1000), st.just("👨\u200d👩\u200d👧" * 5000))


def _values(column: pd.Series) -> list[str | None]:
    """The column as plain strings and None (pandas' NA does not compare)."""
    return [None if pd.isna(v) else v for v in column.tolist()]


def _is_reason(value: object) -> bool:
    return isinstance(value, str) and bool(value)


# ----------------------------------------------------------------------------- cleaning


@FAST
@given(st.lists(review_text, max_size=12))
def test_cleaning_keeps_length_order_and_nulls(texts: list[str | None]) -> None:
    cleaned = _values(clean_texts(texts))
    assert len(cleaned) == len(texts)
    for raw, out in zip(texts, cleaned):
        assert (out is None) == (raw is None)
    # Row i depends only on text i: cleaning one at a time gives the same column.
    assert cleaned == [_values(clean_texts([t]))[0] for t in texts]


@FAST
@given(review_text)
@example("\x00" * LONG)
@example("ㅋ" * LONG)
@example("\ud800가\udfff")
@example("👨\u200d👩\u200d👧\u200d👦 최악 \u202e요어좋")
def test_cleaned_text_uses_only_the_allowed_alphabet(text: str | None) -> None:
    out = _values(clean_texts([text]))[0]
    if text is None:
        assert out is None
        return
    assert ALLOWED.fullmatch(out), f"{out!r} has characters outside the alphabet"
    assert out == out.strip() and "  " not in out
    assert not re.search(r"(.)\1{3}", out), "runs longer than three survive"
    assert unicodedata.is_normalized("NFC", out)


@FAST
@given(st.lists(review_text, max_size=8))
@example(["ｗｗｗ．abc"])
def test_cleaning_is_idempotent(texts: list[str | None]) -> None:
    once = clean_texts(texts)
    twice = clean_texts(once)
    for first, second in zip(_values(once), _values(twice)):
        assert first == second


@pytest.mark.parametrize("text", ["www\u200b.spam.example 최악", "ｗｗｗ．spam．example 최악", "w\u200bww.spam.kr"])
def test_urls_hidden_by_invisible_or_full_width_characters_are_removed(text: str) -> None:
    once = clean_texts([text]).iloc[0]
    assert "www" not in once
    assert clean_texts([once]).iloc[0] == once


@FAST
@given(st.lists(review_text, max_size=12))
def test_skip_reasons_explain_exactly_the_unscorable_rows(texts: list[str | None]) -> None:
    raw = pd.Series(texts, dtype=object)
    cleaned = clean_texts(raw)
    reasons = skip_reasons(raw, cleaned).tolist()
    assert len(reasons) == len(texts)
    for text, out, reason in zip(texts, _values(cleaned), reasons):
        if text is None:
            assert reason == SKIP_NULL
        elif not text.strip():
            assert reason == SKIP_EMPTY
        elif not out:
            assert reason == SKIP_NOTHING_LEFT
        else:
            assert reason is None


# ----------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def vocab() -> CharVocab:
    return CharVocab.load(SHIPPED_VOCAB)


@FAST
@given(texts=st.lists(st.one_of(review_text.map(lambda t: clean_texts([t]).fillna("").iloc[0]),
                                st.text(st.characters(codec="utf-8"), max_size=300)), max_size=10),
       max_len=st.integers(min_value=1, max_value=200))
@example(texts=["ㅋ" * LONG, "", "\x00"], max_len=150)
def test_encoding_ids_stay_in_the_vocabulary_and_keep_the_end(vocab: CharVocab, texts: list[str], max_len: int) -> None:
    encoded = vocab.encode(texts, max_len)
    assert len(encoded) == len(texts)
    assert encoded.lengths.tolist() == [min(len(t), max_len) for t in texts]
    if encoded.ids.size:
        assert encoded.ids.min() >= OOV_ID and encoded.ids.max() < vocab.size  # PAD is never a character
    for i, text in enumerate(texts):
        row = encoded.ids[encoded.offsets[i]:encoded.offsets[i + 1]].tolist()
        tail = text[-max_len:] if text else ""
        assert row == [vocab.id_of(c) for c in tail]  # the end of a long review is what the model reads
    matrix = encoded.padded()
    assert matrix.dtype == np.int32 and matrix.shape == (len(texts), max(1, int(encoded.lengths.max(initial=1))))
    assert ((matrix >= PAD_ID) & (matrix < vocab.size)).all()
    for i, length in enumerate(encoded.lengths):
        assert matrix[i, :length].tolist() == encoded.ids[encoded.offsets[i]:encoded.offsets[i + 1]].tolist()
        assert not matrix[i, length:].any(), "padding must be PAD (0) on the right"


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> Scorer:
    """Small batches, so that a handful of rows already spans several length buckets."""
    return Scorer(load_bundle(tiny_model_dir), batch_size=4)


def _check_contract(texts: list[str | None], result: Scores, threshold: float) -> None:
    assert len(result.score) == len(result.skip_reason) == len(result.flagged) == len(texts)
    for text, score, reason, flagged in zip(texts, result.score, result.skip_reason.tolist(), result.flagged):
        scored = not math.isnan(score)
        assert scored != _is_reason(reason), f"{text!r:.60}: score {score} and reason {reason!r}"
        if scored:
            assert math.isfinite(score) and 0.0 <= score <= 1.0
            assert bool(flagged) == (score >= threshold)
        else:
            assert not flagged
        if text is None:
            assert reason == SKIP_NULL


@MODEL
@given(st.lists(review_text, min_size=1, max_size=10))
@example(["\x00", None, "", "   ", "\u200b\u200d", "정말 최고"])
@example(["ㅋ" * LONG, "'; DROP TABLE reviews; --", "<script>alert(1)</script>"])
def test_every_row_gets_a_score_or_a_reason_in_input_order(scorer: Scorer, texts: list[str | None]) -> None:
    result = scorer.score_texts(texts)
    _check_contract(texts, result, scorer.threshold)
    # Order: the reversed batch gives the reversed answers.
    backwards = scorer.score_texts(list(reversed(texts)))
    assert np.allclose(result.score, backwards.score[::-1], atol=1e-5, equal_nan=True)
    assert result.skip_reason.tolist() == backwards.skip_reason.tolist()[::-1]
    # A Series with any index is answered by position.
    series = pd.Series(texts, index=[f"r{i}" for i in range(len(texts))][::-1], dtype=object)
    assert np.allclose(scorer.score_texts(series).score, result.score, atol=1e-5, equal_nan=True)


@MODEL
@given(others=st.lists(review_text, min_size=1, max_size=8), bad=pathological, position=st.integers(0, 8))
@example(others=REAL_REVIEWS, bad="\x00" * LONG, position=2)
@example(others=REAL_REVIEWS, bad="👨\u200d👩\u200d👧" * 5000, position=0)
@example(others=REAL_REVIEWS, bad="\ud800" * 1000, position=6)
def test_a_pathological_review_does_not_change_the_others(scorer: Scorer, others: list[str | None],
                                                          bad: str | None, position: int) -> None:
    position = min(position, len(others))
    alone = scorer.score_texts(others)
    batch = [*others[:position], bad, *others[position:]]
    together = scorer.score_texts(batch)
    _check_contract(batch, together, scorer.threshold)
    rest = np.delete(np.arange(len(batch)), position)
    assert np.allclose(together.score[rest], alone.score, atol=1e-5, equal_nan=True)
    assert together.skip_reason.iloc[rest].tolist() == alone.skip_reason.tolist()
    assert together.flagged[rest].tolist() == alone.flagged.tolist()
