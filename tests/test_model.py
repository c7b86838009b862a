"""Model bundle: seed architecture, save/load identity, refusal of broken bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from moderation.errors import ModelBundleError
from moderation.model import CARD_FILE, MODEL_FILE, VOCAB_FILE, build_model, load_bundle, read_card
from moderation.scoring import Scorer


def test_architecture_is_the_seed_stack_and_cudnn_eligible() -> None:
    model = build_model(vocab_size=50)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Embedding", "LSTM", "LSTM", "Dense"]
    embedding, lstm64, lstm32, dense = model.layers
    assert embedding.output_dim == 16 and embedding.mask_zero
    assert (lstm64.units, lstm64.return_sequences) == (64, True)
    assert (lstm32.units, lstm32.return_sequences) == (32, False)
    for lstm in (lstm64, lstm32):  # the conditions Keras checks before using cuDNN
        assert lstm.activation.__name__ == "tanh" and lstm.recurrent_activation.__name__ == "sigmoid"
        assert lstm.recurrent_dropout == 0 and not lstm.unroll and lstm.use_bias
    assert dense.units == 1 and dense.activation.__name__ == "sigmoid"


def test_save_and_load_give_identical_scores(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    texts = ["배송 빠르고 좋아요", "최악이에요 환불해주세요", "그냥 그래요 ㅋㅋ"]
    first = Scorer(load_bundle(tiny_model_dir)).score_texts(texts).score
    second = Scorer(load_bundle(copy)).score_texts(texts).score
    assert np.array_equal(first, second)


def test_card_records_what_made_the_model(tiny_model_dir: Path) -> None:
    card = read_card(tiny_model_dir)
    assert card.version == "tiny-model"
    assert card.cleaning_version.startswith("ko-clean-")
    assert 0.0 < card.threshold < 1.0
    assert len(card.training_data["fingerprint"]) == 64
    for key in ("roc_auc", "balanced_accuracy", "precision_negative", "recall_negative"):
        assert key in card.metrics["test_balanced"]
    assert card.metrics["test_balanced"]["n_negative"] * 2 == card.metrics["test_balanced"]["n"]
    assert (tiny_model_dir / "training_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("part", [MODEL_FILE, VOCAB_FILE, CARD_FILE])
def test_missing_part_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path, part: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / part).unlink()
    with pytest.raises(ModelBundleError, match=part.split(".")[0]):
        load_bundle(broken)


def test_corrupt_model_file_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / MODEL_FILE).write_bytes(b"not a keras archive")
    with pytest.raises(ModelBundleError, match=str(broken / MODEL_FILE)):
        load_bundle(broken)


def test_vocab_that_disagrees_with_card_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    payload = json.loads((broken / VOCAB_FILE).read_text(encoding="utf-8"))
    payload["chars"] = payload["chars"][:-1]
    (broken / VOCAB_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ModelBundleError, match="vocab"):
        load_bundle(broken)


def test_other_cleaning_version_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    card = json.loads((other / CARD_FILE).read_text(encoding="utf-8"))
    card["cleaning_version"] = "ko-clean-0"
    (other / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelBundleError, match="cleaning"):
        load_bundle(other)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelBundleError, match="not found"):
        load_bundle(tmp_path / "nope")
