"""Training the char-LSTM: item-disjoint split, length-bucketed batches,
class weights, early stopping, threshold chosen on validation, card written.

Imports Keras at module level: import this module only where training runs.

The recipe differs from the seeds in ways that matter for accuracy and
speed, not in the network: the full review is kept (max 150 characters
instead of a cut at 100), each batch is padded only to its longest row
(masked), the 1:3 class imbalance is weighted away, and the best epoch by
validation ROC-AUC is kept.

Warm start (``TrainingConfig.init_from``): instead of a new network and a
vocabulary built from the data, an existing model directory is loaded and
trained further on the new rows, with its vocabulary and architecture kept.
Characters the new rows use but that vocabulary lacks are read as the
out-of-vocabulary id, exactly as the scorer reads them; they are counted,
logged and recorded on the card (``training_data["unseen_characters"]``), so a
shop whose text the base model never saw is visible, not silently blurred.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from moderation import metrics
from moderation.data import (DEFAULT_TEST_FRACTION, DEFAULT_VALIDATION_FRACTION, Split, balance_classes, check_split,
                             fingerprint, load_labelled, split_by_group)
from moderation.errors import ModerationError
from moderation.model import (CURVE_FILE, ModelBundle, ModelCard, build_model, bundle_fingerprint, compile_model,
                              load_bundle, save_bundle)
from moderation.progress import Progress
from moderation.progress import progress as progress_bar
from moderation.scoring import Scorer
from moderation.text import CLEANING_VERSION, clean_texts
from moderation.vocab import CharVocab, EncodedTexts

log = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """Every knob of a training run; recorded in the model card."""

    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 2e-3
    max_len: int = 150
    embedding_dim: int = 16
    min_char_freq: int = 3
    patience: int = 2
    lr_decay_factor: float = 0.3
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 13
    max_train_rows: int | None = None
    verbose: int = 2
    #: A model directory to fine-tune (warm start): its vocabulary and network are kept, not rebuilt.
    init_from: str | None = None

#: How many of the commonest unseen characters a card lists.
UNSEEN_TOP = 20


def version_name(prefix: str = "ko-char-lstm") -> str:
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def train_from_file(data_path: Path | str, out_dir: Path | str, config: TrainingConfig | None = None,
                    version: str | None = None, progress: bool = False) -> ModelBundle:
    """Load a labelled file, split it by item and train; see :func:`train_on_split`."""
    config = config or TrainingConfig()
    frame = load_labelled(data_path)
    split = split_by_group(frame, config.validation_fraction, config.test_fraction, config.seed)
    check_split(split, require_test=config.test_fraction > 0, source=str(data_path))
    source = {"path": str(data_path), "rows_labelled": int(len(frame))}
    return train_on_split(split, Path(out_dir), config, version or Path(out_dir).name, source, progress=progress)


def _validate_config(config: TrainingConfig) -> None:
    """Refuse settings that cannot train (they would fail late, or train a model that flags everything)."""
    checks = [
        ("epochs", config.epochs, isinstance(config.epochs, int) and config.epochs >= 1, "at least 1"),
        ("batch size", config.batch_size, isinstance(config.batch_size, int) and config.batch_size >= 1, "at least 1"),
        ("learning rate", config.learning_rate,
         isinstance(config.learning_rate, (int, float)) and math.isfinite(config.learning_rate)
         and 0 < config.learning_rate <= 1, "above 0 and at most 1"),
        ("max length", config.max_len, isinstance(config.max_len, int) and config.max_len >= 1, "at least 1"),
        ("patience", config.patience, isinstance(config.patience, int) and config.patience >= 0, "at least 0"),
        ("init from", config.init_from, config.init_from is None or (isinstance(config.init_from, str)
                                                                     and bool(config.init_from.strip())),
         "a model directory"),
        ("max train rows", config.max_train_rows,
         config.max_train_rows is None or (isinstance(config.max_train_rows, int) and config.max_train_rows >= 1),
         "at least 1"),
    ]
    for name, value, ok, rule in checks:
        if not ok:
            raise ModerationError(f"{name} must be {rule}, not {value!r}")


def train_on_split(split: Split, out_dir: Path, config: TrainingConfig, version: str,
                   source: dict[str, Any] | None = None, progress: bool = False) -> ModelBundle:
    """Train on ``split.train``, stop on ``split.validation``, report on a balanced ``split.test``.

    With ``progress``, epochs and evaluation are reported on stderr (see
    :mod:`moderation.progress`) instead of Keras' lines.
    """
    _validate_config(config)
    check_split(split)
    init = load_bundle(config.init_from) if config.init_from else None  # refuses a missing or broken model
    keras.utils.set_random_seed(config.seed)
    train = split.train
    if config.max_train_rows and len(train) > config.max_train_rows:
        train = train.sample(n=config.max_train_rows, random_state=config.seed).reset_index(drop=True)
    train_text = cleaned_texts(train)
    val_text = cleaned_texts(split.validation)
    unseen: dict[str, Any] | None = None
    if init is None:
        vocab = CharVocab.build(train_text, min_freq=config.min_char_freq)
    else:
        vocab = init.vocab
        unseen = unseen_characters(train_text, vocab)
        top = ", ".join(f"{c!r}×{n}" for c, n in unseen["top"][:10])
        log.warning("warm start from %s: %d of %d training reviews hold characters its vocabulary lacks "
                    "(%d distinct, read as out-of-vocabulary)%s", init.version, unseen["rows_with_unseen"],
                    len(train_text), unseen["distinct"], f"; commonest: {top}" if top else "")
    log.info("training on %d reviews (%.1f%% negative), validating on %d; %d characters in vocabulary",
             len(train), 100 * train["label"].mean(), len(split.validation), vocab.size)

    train_ids = vocab.encode(train_text, config.max_len)
    val_ids = vocab.encode(val_text, config.max_len)
    y_train = train["label"].to_numpy(np.float32)
    weights = class_weights(y_train)
    if init is None:
        model = build_model(vocab.size, config.embedding_dim, config.learning_rate)
    else:
        model = compile_model(init.model, config.learning_rate)  # loaded uncompiled: give it an optimizer
    train_batches = BucketedBatches(train_ids, y_train, config.batch_size, weights, shuffle=True, seed=config.seed)
    val_batches = BucketedBatches(val_ids, split.validation["label"].to_numpy(np.float32), 2048, None, shuffle=False)
    started = time.perf_counter()
    reporter = [EpochProgress(config.epochs, len(train_batches))] if progress else []
    history = model.fit(
        train_batches,
        validation_data=val_batches,
        epochs=config.epochs,
        verbose=0 if progress else config.verbose,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config.patience,
                                          restore_best_weights=True),
            keras.callbacks.TerminateOnNaN(),
            *_lr_decay(config),
            *reporter,
        ],
    )
    seconds = time.perf_counter() - started
    losses = history.history.get("loss", [])
    if not losses or any(not math.isfinite(v) for v in losses):
        raise ModerationError("training diverged (loss became NaN); try a lower learning rate")

    card = ModelCard(
        version=version,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        cleaning_version=CLEANING_VERSION,
        max_len=config.max_len,
        vocab_size=vocab.size,
        threshold=0.5,
        training_data={
            **(source or {}),
            "fingerprint": fingerprint(train),
            "rows_train": int(len(train)),
            "rows_validation": int(len(split.validation)),
            "rows_test": int(len(split.test)),
            "split": "by item_id (seeded hash)",
            **({"unseen_characters": unseen} if unseen is not None else {}),
        },
        training={
            **asdict(config),
            **({"init_from": {"version": init.version, "fingerprint": bundle_fingerprint(init.path),
                              "path": str(init.path)},
                "embedding_dim": int(model.get_layer("embedding").output_dim)} if init is not None else {}),
            "epochs_run": len(losses),
            "seconds": round(seconds, 1),
            "samples_per_second": round(len(train) * len(losses) / max(seconds, 1e-9), 1),
            "class_weights": {"negative": round(weights[1], 4), "positive": round(weights[0], 4)},
            "history": {k: [round(float(x), 5) for x in v] for k, v in history.history.items()},
        },
    )
    bundle = ModelBundle(path=out_dir, keras_model=model, vocab=vocab, card=card)
    scorer = Scorer(bundle)
    balanced_test = balance_classes(split.test, config.seed) if len(split.test) else split.test
    to_score = len(split.validation) + len(balanced_test) + len(split.test)
    with progress_bar("evaluating", to_score, enabled=progress) as evaluated:
        val_scores = scorer.score_texts(split.validation["text"], evaluated).score
        valid = ~np.isnan(val_scores)
        val_labels = split.validation["label"].to_numpy()[valid]
        card.threshold = round(metrics.best_threshold(val_labels, val_scores[valid]), 6)
        card.metrics = {"validation": metrics.summary(val_labels, val_scores[valid], card.threshold)}
        if not 0.0 < card.threshold < 1.0:
            raise ModerationError(
                f"training produced no usable model: the best validation threshold is {card.threshold} "
                f"(validation ROC-AUC {card.metrics['validation'].get('roc_auc')}), so it would flag every review "
                f"or none; check the labels, or train longer or with another learning rate")
        if len(split.test):
            card.metrics["test_balanced"] = evaluate_frame(Scorer(bundle), balanced_test, evaluated)
            card.metrics["test"] = evaluate_frame(Scorer(bundle), split.test, evaluated)
    save_bundle(out_dir, model, vocab, card)
    plot_history(history.history, out_dir / CURVE_FILE, title=version)
    return bundle


def unseen_characters(texts: Sequence[str], vocab: CharVocab, top: int = UNSEEN_TOP) -> dict[str, Any]:
    """Characters of ``texts`` that ``vocab`` lacks (they encode as the OOV id): rows, distinct, commonest."""
    known = set(vocab.chars)
    counts: Counter[str] = Counter()
    rows = 0
    for text in texts:
        missing = [c for c in text if c not in known]
        if missing:
            rows += 1
            counts.update(missing)
    return {"rows_with_unseen": rows, "distinct": len(counts),
            "top": [[char, int(n)] for char, n in counts.most_common(top)]}


def _lr_decay(config: TrainingConfig) -> list[Any]:
    """Lower the learning rate when validation ROC-AUC stalls: the last epochs then refine."""
    if not 0.0 < config.lr_decay_factor < 1.0:
        return []
    return [keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=config.lr_decay_factor,
                                              patience=1, min_lr=1e-5, verbose=1 if config.verbose else 0)]


class EpochProgress(keras.callbacks.Callback):
    """Training progress on stderr: batches of each epoch, then the epoch's loss and validation ROC-AUC."""

    def __init__(self, epochs: int, batches: int):
        super().__init__()
        self.epochs, self.batches = epochs, batches
        self._bar: Any = None
        self._context: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._context = progress_bar(f"epoch {epoch + 1}/{self.epochs}", self.batches, unit="batches")
        self._bar = self._context.__enter__()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.advance(1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = self._bar = None
        logs = logs or {}
        shown = ", ".join(f"{k} {float(logs[k]):.4f}" for k in ("loss", "auc", "val_loss", "val_auc") if k in logs)
        print(f"epoch {epoch + 1}/{self.epochs}: {shown}", file=sys.stderr, flush=True)


def evaluate_frame(scorer: Scorer, frame: pd.DataFrame, progress: Progress | None = None) -> dict[str, Any]:
    """Metrics of ``scorer`` on labelled rows; rows without a score are counted, not hidden."""
    scores = scorer.score_texts(frame["text"], progress).score
    valid = ~np.isnan(scores)
    result: dict[str, Any] = metrics.summary(frame["label"].to_numpy()[valid], scores[valid], scorer.threshold)
    result["skipped"] = int((~valid).sum())
    return result


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Weights that make both classes count equally in the loss."""
    n = len(labels)
    n_neg = max(int(labels.sum()), 1)
    n_pos = max(n - n_neg, 1)
    return {0: n / (2 * n_pos), 1: n / (2 * n_neg)}


def cleaned_texts(frame: pd.DataFrame) -> list[str]:
    """A frame's texts cleaned for training: a text with nothing left is an empty string, not a null."""
    return clean_texts(frame["text"]).fillna("").tolist()


class BucketedBatches(keras.utils.PyDataset):
    """Batches of similar-length rows, each padded to its own longest row.

    Rows are shuffled, then stably sorted by length, cut into batches, and
    the batch order is shuffled again every epoch: the model sees short and
    long batches in random order while each batch wastes little on padding.
    """

    def __init__(self, encoded: EncodedTexts, labels: np.ndarray, batch_size: int,
                 weights: dict[int, float] | None, shuffle: bool, seed: int = 0):
        super().__init__()
        self.encoded = encoded
        self.labels = labels
        self.batch_size = batch_size
        self.sample_weight = None if weights is None else np.where(labels > 0.5, weights[1], weights[0]).astype(np.float32)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self._make_batches()

    def _make_batches(self) -> None:
        n = len(self.encoded)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[np.argsort(self.encoded.lengths[order], kind="stable")]
        self.batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.shuffle:
            self.rng.shuffle(self.batches)
        vary_first_widths(self.batches, self.encoded.lengths)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rows = self.batches[index]
        x = self.encoded.padded(rows)
        if self.sample_weight is None:
            return x, self.labels[rows]
        return x, self.labels[rows], self.sample_weight[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._make_batches()


def vary_first_widths(batches: list[np.ndarray], lengths: np.ndarray) -> None:
    """Put batches of two different padded widths first, when there are any (in place).

    Keras fixes a dataset's shapes from its first two batches: if both have
    the same width (say, both at the maximum length), every later, narrower
    batch is refused. Seeing two widths first keeps the width dimension free.
    """
    if len(batches) < 3:
        return
    first = int(lengths[batches[0]].max(initial=0))
    if int(lengths[batches[1]].max(initial=0)) != first:
        return
    for index in range(2, len(batches)):
        if int(lengths[batches[index]].max(initial=0)) != first:
            batches[1], batches[index] = batches[index], batches[1]
            return


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs validation, as the seeds plot them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        epochs = range(1, len(history.get(key, [])) + 1)
        ax.plot(epochs, history.get(key, []), "o-", label=f"train {key}")
        ax.plot(epochs, history.get(f"val_{key}", []), "s--", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
