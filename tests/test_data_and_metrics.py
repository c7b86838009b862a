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
