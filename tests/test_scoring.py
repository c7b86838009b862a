"""Batched scoring: input order, batch-composition invariance, skips, truncation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moderation.model import load_bundle
from moderation.scoring import (
    WORKERS_ENV,
    Scorer,
    default_workers,
    length_sorted_batches,
    prefix_trace,
    seed_style_predict,
)


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


def test_batches_scored_side_by_side_give_the_same_scores(bundle, sample_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = pd.read_parquet(sample_path)["text"].head(2000)
    alone = Scorer(bundle, batch_size=64, workers=1).score_texts(texts)
    side_by_side = Scorer(bundle, batch_size=64, workers=3).score_texts(texts)
    np.testing.assert_array_equal(alone.score, side_by_side.score)
    np.testing.assert_array_equal(alone.flagged, side_by_side.flagged)


def test_batches_are_bounded_in_rows_and_characters() -> None:
    lengths = np.random.default_rng(1).integers(0, 151, size=5000)
    lengths[:3] = [400, 0, 150]  # one row over the character budget on its own, one empty
    batches = length_sorted_batches(lengths, batch_size=256, max_chars=4096)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once
    assert np.all(np.diff(lengths[rows]) >= 0)  # shortest first
    for batch in batches:
        assert 1 <= len(batch) <= 256
        assert len(batch) == 1 or len(batch) * max(int(lengths[batch].max()), 1) <= 4096
    assert [len(b) for b in batches][:2] == [256, 256]  # short rows (up to 16 characters) fill whole batches
    assert len(batches[-1]) == 1 and lengths[batches[-1][0]] == 400


def test_scores_do_not_depend_on_the_character_budget(bundle, sample_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = pd.read_parquet(sample_path)["text"].head(1000)
    roomy = Scorer(bundle, batch_size=512).score_texts(texts).score
    tight = Scorer(bundle, batch_size=512, max_batch_chars=60).score_texts(texts).score
    np.testing.assert_allclose(roomy, tight, atol=1e-6, rtol=0, equal_nan=True)


def test_a_failing_batch_fails_the_call(bundle, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    scorer = Scorer(bundle, batch_size=2, workers=2)
    calls = []

    def broken(batch: np.ndarray) -> np.ndarray:  # injected fault: the third batch fails
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("injected batch failure")
        return np.zeros(len(batch))

    monkeypatch.setattr(scorer, "_predict", broken)
    with pytest.raises(RuntimeError, match="injected batch failure"):
        scorer.score_texts(["좋아요", "별로", "최고", "환불", "그냥 그래요", "배송 빨라요"])


def test_workers_default_to_the_usable_cpus_and_obey_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert default_workers() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers() == 3
    for bad in ("zero", "0"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=WORKERS_ENV):
            default_workers()


@pytest.mark.slow
def test_a_fresh_process_scores_with_one_thread_per_operation(tiny_model_dir: Path) -> None:
    """On Keras' plan, load_scorer sets TensorFlow's threading before the model starts it."""
    code = (
        "import json, sys, tensorflow as tf\n"
        "from moderation.scoring import load_scorer\n"
        "scorer = load_scorer(sys.argv[1], workers=3)\n"
        "scores = scorer.score_texts(['좋아요', '최악이에요']).score\n"
        "print(json.dumps({'intra': tf.config.threading.get_intra_op_parallelism_threads(),\n"
        "                  'inter': tf.config.threading.get_inter_op_parallelism_threads(),\n"
        "                  'workers': scorer.workers, 'scored': int((scores == scores).sum())}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MODERATION_SCORING_ENGINE": "keras"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"intra": 1, "inter": 3, "workers": 3, "scored": 2}


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


class _Counter:
    def __init__(self) -> None:
        self.done = 0

    def advance(self, count: int = 1) -> None:
        self.done += count


@pytest.mark.parametrize("fixed_shapes", [False, True], ids=["cpu-plan", "gpu-plan-shapes"])
def test_repeated_texts_are_scored_once_and_every_row_gets_the_score(bundle, fixed_shapes: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from moderation.scoring import current_plan

    plan = replace(current_plan(), fixed_shapes=fixed_shapes)
    texts = ["좋아요", "최악이에요", None, "좋아요", " 좋아요 ", "좋아요!!", "최악이에요", "", "별로"] * 50
    scorer = Scorer(bundle, plan=plan)
    predicted_rows: list[int] = []
    predict = scorer._predict

    def counting(matrix: np.ndarray) -> np.ndarray:
        predicted_rows.append(len(matrix))
        return predict(matrix)

    monkeypatch.setattr(scorer, "_predict", counting)
    progress = _Counter()
    result = scorer.score_texts(texts, progress=progress)
    alone = {text: Scorer(bundle).score_texts([text]).score[0] for text in set(texts) - {None, ""}}
    for text, score in zip(texts, result.score):
        if text:
            assert abs(score - alone[text]) < 1e-5, text
        else:
            assert np.isnan(score)
    distinct_cleaned = len({t.strip() for t in texts if t})  # " 좋아요 " cleans to "좋아요"
    assert distinct_cleaned <= 5
    assert sum(predicted_rows) <= (16 if not fixed_shapes else 256 * 2)  # distinct texts (padded shapes on the GPU plan)
    assert progress.done == len(texts)


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
