"""Batched scoring: input order, batch-composition invariance, skips, truncation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moderation.model import load_bundle
from moderation.scoring import Scorer, prefix_trace, seed_style_predict


@pytest.fixture(scope="module")
def bundle(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_bundle(tiny_model_dir)


def test_scores_do_not_depend_on_batch_composition(bundle, sample_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = pd.read_parquet(sample_path)["text"].head(1500)
    whole = Scorer(bundle, batch_size=4096).score_texts(texts).score
    small = Scorer(bundle, batch_size=7).score_texts(texts).score
    shuffled_order = np.random.default_rng(0).permutation(len(texts))
    shuffled = Scorer(bundle, batch_size=256).score_texts(texts.iloc[shuffled_order]).score
    unshuffled = np.empty_like(shuffled)
    unshuffled[shuffled_order] = shuffled
    assert np.allclose(whole, small, atol=1e-5, equal_nan=True)
    assert np.allclose(whole, unshuffled, atol=1e-5, equal_nan=True)
    single = Scorer(bundle).score_texts([texts.iloc[3]]).score[0]
    assert abs(single - whole[3]) < 1e-5


def test_bucketed_scores_match_fixed_padding(bundle) -> None:  # type: ignore[no-untyped-def]
    texts = ["정말 최고의 상품입니다", "별로", "배송이 늦고 포장이 엉망이라 다시는 안 삽니다 ㅠㅠ"]
    ours = Scorer(bundle).score_texts(texts).score
    seeds = seed_style_predict(bundle, texts, max_len=bundle.card.max_len)
    assert np.allclose(ours, seeds, atol=1e-5)


def test_unscorable_rows_get_reasons_not_crashes(bundle) -> None:  # type: ignore[no-untyped-def]
    texts = ["좋아요", None, "", "🙂🙂🙂", "\x00\x01", "ㅋ" * 100_000, "\ud800"]
    result = Scorer(bundle).score_texts(texts)
    assert len(result.score) == len(texts)
    assert not np.isnan(result.score[0]) and not np.isnan(result.score[5])
    assert result.skip_reason.tolist()[1:5] == ["null_text", "empty", "no_text_after_cleaning", "no_text_after_cleaning"]
    assert result.skip_reason.tolist()[6] == "no_text_after_cleaning"
    assert not result.flagged[1]


def test_long_texts_are_cut_like_training(bundle) -> None:  # type: ignore[no-untyped-def]
    max_len = bundle.card.max_len
    tail = "최악이에요 환불해주세요"
    long_text = "가" * (5 * max_len) + " " + tail
    cut_by_hand = long_text[-max_len:]
    scores = Scorer(bundle).score_texts([long_text, cut_by_hand]).score
    assert abs(scores[0] - scores[1]) < 1e-6


def test_flagged_follows_threshold(bundle) -> None:  # type: ignore[no-untyped-def]
    texts = ["좋아요", "최악", "그럭저럭"]
    result = Scorer(bundle, threshold=0.0).score_texts(texts)
    assert result.flagged.all()
    result = Scorer(bundle, threshold=1.01).score_texts(texts)
    assert not result.flagged.any()


def test_prefix_trace_scores_growing_prefixes(bundle) -> None:  # type: ignore[no-untyped-def]
    trace = prefix_trace(Scorer(bundle), "배송은 빨랐지만 품질이 최악")
    assert [p for p, _ in trace] == ["배송은", "배송은 빨랐지만", "배송은 빨랐지만 품질이", "배송은 빨랐지만 품질이 최악"]
    assert all(0.0 <= s <= 1.0 for _, s in trace)
