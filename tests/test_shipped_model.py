"""The shipped model, as a shop gets it: a card with per-domain points and figures, and sane verdicts on shop text."""

from __future__ import annotations

import pytest

from moderation import config
from moderation.model import load_bundle, verify_bundle

#: Four- and five-star shop reviews the movie-only model flagged (and the word "delivery" alone).
SHOP_POSITIVE = ["늘 믿고 구매하는 제품이에요~", "배송 잘왔습니다 ..", "배송", "배송 빠르고 좋아요", "재구매 의사 있어요",
                 "배공빠르고 굿", "사이즈 딱 맞아요 만족합니다"]
SHOP_NEGATIVE = ["최악이에요 환불해주세요", "배송이 너무 느리고 포장도 엉망이에요", "한번 쓰고 고장났어요 돈아까워요",
                 "배송이 넘 느려요ㅜ"]


@pytest.fixture(scope="module")
def shipped():  # type: ignore[no-untyped-def]
    return load_bundle(config.default_model_dir())


def test_the_card_is_for_shops() -> None:
    card = verify_bundle(config.default_model_dir())
    assert card.default_domain == "shopping"
    assert set(card.operating_points) == {"movie", "steam", "shopping"}
    assert {"likely", "very_likely"} <= set(card.operating_points["shopping"])
    assert card.training["init_from"]["version"] == "ko-char-lstm-v1"
    for domain in ("movie", "steam", "shopping"):
        figures = card.metrics["per_domain"][domain]["test_at_default"]
        assert figures["n"] > 0 and 0 < figures["roc_auc"] <= 1
    shopping = card.metrics["per_domain"]["shopping"]
    assert shopping["test_at_default"]["positives_flagged"] <= 0.10
    assert card.operating_threshold("default") == card.threshold
    assert card.operating_threshold("shopping:likely") == card.operating_threshold("likely")


def test_the_shipped_queue_buckets_rank_flags_above_the_default_threshold() -> None:
    from moderation.registry import bucket_thresholds

    card = verify_bundle(config.default_model_dir())
    buckets = bucket_thresholds(card)
    assert list(buckets) == ["very_likely", "likely", "maybe"]
    assert buckets["very_likely"] > buckets["likely"] > buckets["maybe"] > card.threshold  # each separates flags
    assert buckets == {name: point["threshold"] for name, point in card.queue_buckets["shopping"].items()}
    for domain in ("movie", "steam", "shopping"):
        for point in card.queue_buckets[domain].values():
            assert point["false_positive_rate"] <= point["max_false_positive_rate"]


def test_shop_reviews_get_shop_verdicts(shipped) -> None:  # type: ignore[no-untyped-def]
    from moderation.scoring import Scorer

    scorer = Scorer(shipped)
    positive = scorer.score_texts(SHOP_POSITIVE)
    negative = scorer.score_texts(SHOP_NEGATIVE)
    assert not positive.flagged.any(), dict(zip(SHOP_POSITIVE, positive.score.round(3)))
    assert negative.flagged.all(), dict(zip(SHOP_NEGATIVE, negative.score.round(3)))
