"""Loaders for the three label formats, the item-disjoint split, and the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moderation import metrics
from moderation.data import balance_classes, fingerprint, labels_from_ratings, load_labelled, split_by_group
from moderation.errors import InputDataError


def test_ratings_map_to_negative_positive_and_ambiguous() -> None:
    ten = labels_from_ratings(pd.Series([1, 4, 5, 8, 9, 10]), scale=10)
    assert ten.tolist() == [1, 1, pd.NA, pd.NA, 0, 0]
    five = labels_from_ratings(pd.Series([1, 2, 3, 4, 5]), scale=5)
    assert five.tolist() == [1, 1, pd.NA, 0, 0]


def test_corpus_file_loads_with_items_as_groups(sample_path: Path) -> None:
    frame = load_labelled(sample_path)
    raw = pd.read_parquet(sample_path)
    assert len(frame) == int(((raw.rating <= 4) | (raw.rating >= 9)).sum())
    assert set(frame.columns) == {"text", "label", "group"}
    assert set(frame["label"].unique()) == {0, 1}


def test_nsmc_format(tmp_path: Path) -> None:
    path = tmp_path / "ratings.txt"
    path.write_text("id\tdocument\tlabel\n1\t재밌다\t1\n2\t노잼\t0\n", encoding="utf-8")
    frame = load_labelled(path)
    assert frame["text"].tolist() == ["재밌다", "노잼"]
    assert frame["label"].tolist() == [0, 1]  # NSMC's 1 = positive becomes our 0


def test_naver_shopping_format(tmp_path: Path) -> None:
    path = tmp_path / "naver_shopping.txt"
    path.write_text("5\t배공빠르고 굿\n2\t택배가 엉망이네용\n3\t그냥 그래요\n", encoding="utf-8")
    frame = load_labelled(path)
    assert frame["text"].tolist() == ["배공빠르고 굿", "택배가 엉망이네용"]
    assert frame["label"].tolist() == [0, 1]


def test_file_without_text_or_labels_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("body,rating\n좋아요,10\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="no column text"):
        load_labelled(path)
    path.write_text("text\n좋아요\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="neither"):
        load_labelled(path)
    with pytest.raises(InputDataError, match="not found"):
        load_labelled(tmp_path / "missing.parquet")


def test_split_keeps_items_on_one_side_and_is_stable(sample_path: Path) -> None:
    frame = load_labelled(sample_path)
    split = split_by_group(frame, validation=0.2, test=0.2)
    groups = [set(part["group"]) for part in (split.train, split.validation, split.test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sum(len(p) for p in (split.train, split.validation, split.test)) == len(frame)
    again = split_by_group(frame, validation=0.2, test=0.2)
    assert fingerprint(again.test) == fingerprint(split.test)


def test_balance_classes_equalises_counts(sample_path: Path) -> None:
    balanced = balance_classes(load_labelled(sample_path))
    counts = balanced["label"].value_counts()
    assert counts[0] == counts[1]


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.random(300).round(2)  # with ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise)


def test_best_threshold_separates_separable_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    threshold = metrics.best_threshold(labels, scores)
    assert 0.3 < threshold <= 0.7
    assert metrics.at_threshold(labels, scores, threshold)["balanced_accuracy"] == 1.0


# ---------------------------------------------------------------- group keys of any type


def _split_before_any_type_keys(frame: pd.DataFrame, validation: float, test: float, seed: int) -> np.ndarray:
    """Each row's position as the split placed integer item ids before keys of any type: the reference."""
    import zlib

    groups = frame["group"].to_numpy()
    unit = np.array([zlib.crc32(f"{seed}:{g}".encode()) for g in np.unique(groups)], dtype=np.float64) / 2**32
    return pd.Series(unit, index=np.unique(groups)).reindex(groups).to_numpy()


def test_integer_item_ids_split_exactly_as_before(sample_path: Path, tmp_path: Path) -> None:
    frame = load_labelled(sample_path)
    assert frame["group"].dtype == "int64"
    position = _split_before_any_type_keys(frame, 0.1, 0.1, 13)
    split = split_by_group(frame, validation=0.1, test=0.1, seed=13)
    assert fingerprint(split.test) == fingerprint(frame[position < 0.1].reset_index(drop=True))
    assert fingerprint(split.validation) == fingerprint(frame[(position >= 0.1) & (position < 0.2)]
                                                        .reset_index(drop=True))
    # The same ids as whole-number floats (a CSV column with a blank) are the same keys.
    raw = pd.read_parquet(sample_path)
    raw["item_id"] = raw["item_id"].astype("float64")
    raw.loc[raw.index[0], "item_id"] = np.nan
    raw.to_parquet(tmp_path / "floats.parquet")
    floats = load_labelled(tmp_path / "floats.parquet")
    kept = floats["group"].map(lambda g: not str(g).startswith("\0"))
    assert floats.loc[kept, "group"].map(str).tolist() == frame.loc[kept, "group"].map(str).tolist()


def test_string_item_ids_are_groups(sample_path: Path, tmp_path: Path) -> None:
    raw = pd.read_parquet(sample_path)
    raw["item_id"] = "x" + raw["item_id"].astype(str)
    raw.to_parquet(tmp_path / "strings.parquet")
    frame = load_labelled(tmp_path / "strings.parquet")
    assert frame["group"].iloc[0].startswith("x")
    split = split_by_group(frame, validation=0.2, test=0.2)
    sides = [set(part["group"]) for part in (split.train, split.validation, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(p) for p in (split.train, split.validation, split.test)) == len(frame)
    assert min(len(p) for p in (split.train, split.validation, split.test)) > 0


@pytest.mark.parametrize("column", ["item_id", "review_id"])
def test_empty_group_keys_are_groups_of_their_own(tmp_path: Path, column: str) -> None:
    path = tmp_path / "keys.csv"
    pd.DataFrame({"text": ["좋아요", "별로", "최악", "굿"], "label": [0, 1, 1, 0],
                  column: ["a", None, None, "a"]}).to_csv(path, index=False)
    groups = load_labelled(path)["group"].tolist()
    assert groups[0] == groups[3] == "a"
    assert len({groups[1], groups[2], "a"}) == 3  # two empty keys, two groups, neither equal to a real key


def test_string_review_ids_are_groups_when_items_are_unknown(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["좋아요", "별로", "최악"], "label": [0, 1, 1],
                  "review_id": ["r1", "r2", "r3"]}).to_csv(path, index=False)
    assert load_labelled(path)["group"].tolist() == ["r1", "r2", "r3"]  # not one group for all three


def test_group_keys_that_cannot_be_keys_are_refused_naming_the_column(tmp_path: Path) -> None:
    path = tmp_path / "lists.parquet"
    pd.DataFrame({"text": ["좋아요", "별로"], "label": [0, 1], "item_id": [[1, 2], [3]]}).to_parquet(path)
    with pytest.raises(InputDataError, match="column item_id holds values that cannot identify a group"):
        load_labelled(path)
