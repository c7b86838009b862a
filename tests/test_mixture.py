"""Mixed-domain training on tiny real data: splits per domain, balanced draws, noise, warm start, calibration."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moderation.domains import load_mixture, split_domains

OTHER_SAMPLE = Path(__file__).resolve().parent / "data" / "other_domains_sample.parquet"


@pytest.fixture(scope="module")
def mixture(sample_path_module: Path) -> pd.DataFrame:
    return load_mixture(sample_path_module, OTHER_SAMPLE)


@pytest.fixture(scope="module")
def sample_path_module() -> Path:
    return Path(__file__).resolve().parent / "data" / "reviews_sample.parquet"


def test_every_domain_is_split_on_its_own_and_movie_as_the_movie_model_was(mixture: pd.DataFrame,
                                                                          sample_path_module: Path) -> None:
    from moderation.data import load_labelled, split_by_group

    splits = split_domains(mixture)
    assert set(splits) == {"movie", "steam", "shopping"}
    old = split_by_group(load_labelled(sample_path_module), 0.1, 0.1, 13)
    assert sorted(splits["movie"].test["text"].dropna()) == sorted(old.test["text"].dropna())
    shopping = splits["shopping"]
    total = len(shopping.train) + len(shopping.validation) + len(shopping.test)
    assert total == 400
    assert 0.25 < len(shopping.test) / total < 0.45  # 35 % of rows, by seeded hash
    for split in splits.values():  # no row on two sides
        assert not set(split.train["group"]) & set(split.test["group"])
        assert not set(split.validation["group"]) & set(split.test["group"])


def test_augmentation_drops_spacing_and_punctuation_but_never_empties() -> None:
    from moderation.mixture import Augmentation, augment

    rng = np.random.default_rng(0)
    always = Augmentation(drop_spaces=1.0, drop_punctuation=1.0, drop_one_character=0.0)
    assert augment(["배송 빠르고 좋아요!!", "..."], always, rng) == ["배송빠르고좋아요", "..."]
    never = Augmentation(0.0, 0.0, 0.0)
    assert augment(["배송 빠르고 좋아요!!"], never, rng) == ["배송 빠르고 좋아요!!"]


def test_warm_started_mixture_model_keeps_vocab_and_gets_per_domain_points(
        mixture: pd.DataFrame, tiny_model_dir: Path, tmp_path: Path) -> None:
    from moderation.calibration import calibrate, write_card
    from moderation.data import balance_classes
    from moderation.mixture import MixtureConfig, train_mixture
    from moderation.model import load_bundle, read_card, verify_bundle

    splits = split_domains(mixture)
    config = MixtureConfig(rows_per_epoch={"movie": 512, "steam": 256, "shopping": 256}, epochs=1,
                           batch_size=128, max_len=120, movie_validation_rows=300)
    out = tmp_path / "mixed"
    bundle = train_mixture(splits, out, "mixed", config, init_from=tiny_model_dir)
    base = read_card(tiny_model_dir)
    assert bundle.card.vocab_size == base.vocab_size
    assert bundle.card.training["init_from"]["version"] == "tiny-model"
    unseen = bundle.card.training_data["unseen_characters"]
    assert unseen["distinct"] > 0 and unseen["rows_with_unseen"] > 0  # shop words the movie sample lacks
    assert set(bundle.card.training["history"]) >= {"loss", "val_shopping_auc", "val_steam_auc", "val_monitor_auc"}

    tests = {d: balance_classes(s.test) for d, s in splits.items()}
    calibrate(bundle, {d: s.validation for d, s in splits.items()}, tests, "shopping")
    write_card(out, bundle.card)
    card = verify_bundle(out)  # the rewritten card still matches its model and vocabulary
    assert card.default_domain == "shopping"
    assert set(card.metrics["per_domain"]) == {"movie", "steam", "shopping"}
    shopping = card.metrics["per_domain"]["shopping"]
    assert shopping["validation_at_default"]["n"] == shopping["validation_rows"]
    fpr = 1 - (2 * shopping["validation_at_default"]["balanced_accuracy"]
               - shopping["validation_at_default"]["recall_negative"])
    assert fpr <= 0.08 + 1e-9
    for domain, named in card.operating_points.items():
        for point in named.values():
            assert point["precision"] >= point["target_precision"]
    assert set(card.queue_buckets) == {"movie", "steam", "shopping"}  # FPR-budget buckets per domain
    for named in card.queue_buckets.values():
        for point in named.values():
            assert point["false_positive_rate"] <= point["max_false_positive_rate"] + 1e-9 or \
                point["threshold"] == max(p["threshold"] for p in named.values())
    assert load_bundle(out).card.threshold == card.threshold


def test_calibration_needs_the_default_domain(tiny_model_dir: Path, mixture: pd.DataFrame) -> None:
    from moderation.calibration import calibrate
    from moderation.errors import ModerationError
    from moderation.model import load_bundle

    bundle = load_bundle(tiny_model_dir)
    splits = split_domains(mixture)
    with pytest.raises(ModerationError, match="no validation rows for the default domain 'shop'"):
        calibrate(bundle, {"steam": splits["steam"].validation}, {}, "shop")
