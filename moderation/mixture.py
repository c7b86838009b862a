"""Training one model for several domains: balanced draws, shop-style noise, selection on shop rows.

Shopping text is scarce (hundreds of rows) and differs from movie text in
ways a character model notices: spacing is often dropped ("배송빠르고 굿"),
trailing punctuation comes and goes, reviews are a few words long. So each
epoch draws a fixed number of rows per domain, half negative and half
positive (rare domains are drawn with replacement, common ones without),
applies light noise of that kind to a share of the rows, and the best
epoch is the one with the best mean ROC-AUC on the shop-like domains'
validation rows, not on movie rows.

Imports Keras at module level: import it only where training runs.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from moderation import metrics
from moderation.data import Split, fingerprint
from moderation.errors import ModerationError
from moderation.model import (CURVE_FILE, ModelBundle, ModelCard, bundle_fingerprint, build_model, compile_model,
                              load_bundle, save_bundle)
from moderation.text import CLEANING_VERSION, KEPT_PUNCTUATION
from moderation.training import cleaned_texts, unseen_characters, vary_first_widths
from moderation.vocab import CharVocab, EncodedTexts

log = logging.getLogger(__name__)


@dataclass
class Augmentation:
    """Shares of drawn rows that get each kind of shop-style noise (applied to cleaned text)."""

    drop_spaces: float = 0.3
    drop_punctuation: float = 0.3
    drop_one_character: float = 0.1


@dataclass
class MixtureConfig:
    """Every knob of a mixed-domain training run; recorded in the model card."""

    rows_per_epoch: dict[str, int] = field(default_factory=lambda: {"movie": 60_000, "steam": 24_000,
                                                                     "shopping": 15_000})
    #: Domains whose mean validation ROC-AUC picks the best epoch.
    select_on: tuple[str, ...] = ("shopping", "steam")
    epochs: int = 8
    patience: int = 3
    batch_size: int = 256
    learning_rate: float = 2e-3
    lr_decay_factor: float = 0.5
    max_len: int = 150
    embedding_dim: int = 16
    min_char_freq: int = 3
    movie_validation_rows: int = 6_000
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 13


_PUNCTUATION = re.compile("[" + re.escape(KEPT_PUNCTUATION) + "]")


def augment(texts: list[str], augmentation: Augmentation, rng: np.random.Generator) -> list[str]:
    """The texts with seeded shop-style noise on a share of them (never an empty result)."""
    out = []
    for text in texts:
        changed = text
        if rng.random() < augmentation.drop_spaces:
            changed = changed.replace(" ", "")
        if rng.random() < augmentation.drop_punctuation:
            changed = _PUNCTUATION.sub("", changed).strip()
        if len(changed) > 3 and rng.random() < augmentation.drop_one_character:
            at = int(rng.integers(len(changed)))
            changed = changed[:at] + changed[at + 1:]
        out.append(changed or text)
    return out


class MixtureBatches(keras.utils.PyDataset):
    """Each epoch: class-balanced draws per domain, noise, then length-bucketed batches in random order."""

    def __init__(self, train: dict[str, tuple[list[str], np.ndarray]], vocab: CharVocab, config: MixtureConfig):
        super().__init__()
        self.train, self.vocab, self.config = train, vocab, config
        self.rng = np.random.default_rng(config.seed)
        self._draw()

    def _draw(self) -> None:
        texts: list[str] = []
        labels: list[np.ndarray] = []
        for domain, wanted in self.config.rows_per_epoch.items():
            if domain not in self.train or wanted <= 0:
                continue
            domain_texts, domain_labels = self.train[domain]
            for label in (0, 1):
                pool = np.flatnonzero(domain_labels == label)
                n = wanted // 2
                rows = self.rng.choice(pool, size=n, replace=n > len(pool))
                texts.extend(domain_texts[i] for i in rows)
                labels.append(np.full(n, label, dtype=np.float32))
        texts = augment(texts, self.config.augmentation, self.rng)
        self.labels = np.concatenate(labels)
        self.encoded = self.vocab.encode(texts, self.config.max_len)
        order = self.rng.permutation(len(self.labels))
        order = order[np.argsort(self.encoded.lengths[order], kind="stable")]
        size = self.config.batch_size
        self.batches = [order[i:i + size] for i in range(0, len(order), size)]
        self.rng.shuffle(self.batches)
        vary_first_widths(self.batches, self.encoded.lengths)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.batches[index]
        return self.encoded.padded(rows), self.labels[rows]

    def on_epoch_end(self) -> None:
        self._draw()


def _predict(model: keras.Model, encoded: EncodedTexts, batch_size: int = 1024) -> np.ndarray:
    scores = np.empty(len(encoded), dtype=np.float64)
    order = np.argsort(encoded.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        scores[rows] = np.asarray(model(encoded.padded(rows), training=False)).reshape(-1)
    return scores


class DomainValidation(keras.callbacks.Callback):
    """After each epoch, ROC-AUC per domain on validation rows; ``val_monitor_auc`` is the selection figure."""

    def __init__(self, validation: dict[str, tuple[EncodedTexts, np.ndarray]], select_on: tuple[str, ...]):
        super().__init__()
        self.validation, self.select_on = validation, select_on

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        for domain, (encoded, labels) in self.validation.items():
            logs[f"val_{domain}_auc"] = metrics.roc_auc(labels, _predict(self.model, encoded))
        logs["val_monitor_auc"] = float(np.mean([logs[f"val_{d}_auc"] for d in self.select_on]))
        shown = ", ".join(f"{d} {logs[f'val_{d}_auc']:.4f}" for d in self.validation)
        print(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}; validation ROC-AUC {shown}; "
              f"selection {logs['val_monitor_auc']:.4f}", file=sys.stderr, flush=True)


def train_mixture(splits: dict[str, Split], out_dir: Path, version: str, config: MixtureConfig,
                  init_from: Path | None = None, source: dict[str, Any] | None = None) -> ModelBundle:
    """Train on every domain's training rows; keep the epoch best on ``config.select_on`` validation.

    With ``init_from`` the model starts from that bundle's weights and keeps
    its vocabulary (unseen characters become the OOV id and are counted in
    the card); otherwise a vocabulary is built from the training rows.
    Thresholds are not chosen here: :func:`moderation.calibration.calibrate`
    does that per domain afterwards.
    """
    missing = [d for d in config.select_on if d not in splits]
    if missing:
        raise ModerationError(f"no rows of {', '.join(missing)} to select the best epoch on")
    keras.utils.set_random_seed(config.seed)
    train = {d: (cleaned_texts(s.train), s.train["label"].to_numpy(np.int8)) for d, s in splits.items() if len(s.train)}
    init: dict[str, Any] | None = None
    if init_from is not None:
        base = load_bundle(init_from)
        vocab, model = base.vocab, base.model
        compile_model(model, config.learning_rate)
        init = {"version": base.version, "fingerprint": bundle_fingerprint(init_from)}
    else:
        vocab = CharVocab.build([t for texts, _ in train.values() for t in texts], min_freq=config.min_char_freq)
        model = build_model(vocab.size, config.embedding_dim, config.learning_rate)
    unseen = unseen_characters([t for texts, _ in train.values() for t in texts], vocab)
    validation = {}
    for domain, split in splits.items():
        rows = split.validation
        if domain == "movie" and len(rows) > config.movie_validation_rows:
            rows = rows.sample(n=config.movie_validation_rows, random_state=config.seed)
        validation[domain] = (vocab.encode(cleaned_texts(rows), config.max_len), rows["label"].to_numpy(np.int8))
    batches = MixtureBatches(train, vocab, config)
    log.info("training %s on %s rows per epoch, %d batches; %d characters in vocabulary", version,
             config.rows_per_epoch, len(batches), vocab.size)
    callbacks: list[Any] = [
        DomainValidation(validation, config.select_on),
        keras.callbacks.EarlyStopping(monitor="val_monitor_auc", mode="max", patience=config.patience,
                                      restore_best_weights=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if 0 < config.lr_decay_factor < 1:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_monitor_auc", mode="max",
                                                           factor=config.lr_decay_factor, patience=1, min_lr=1e-5))
    started = time.perf_counter()
    history = model.fit(batches, epochs=config.epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - started
    losses = history.history.get("loss", [])
    if not losses or any(not math.isfinite(v) for v in losses):
        raise ModerationError("training diverged (loss became NaN); try a lower learning rate")
    monitor = history.history.get("val_monitor_auc", [])
    card = ModelCard(
        version=version,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        cleaning_version=CLEANING_VERSION,
        max_len=config.max_len,
        vocab_size=vocab.size,
        threshold=0.5,
        training_data={
            **(source or {}),
            "domains": {d: {"rows_train": int(len(s.train)), "rows_validation": int(len(s.validation)),
                            "rows_test": int(len(s.test)),
                            "fingerprint_train": fingerprint(s.train)} for d, s in splits.items()},
            "split": "per domain: movie by item_id (seeded hash, as ko-char-lstm-v1), steam and shopping by row",
            "unseen_characters": unseen,
        },
        training={
            **asdict(config),
            "select_on": list(config.select_on),
            "init_from": init,
            "epochs_run": len(losses),
            "best_epoch": int(np.argmax(monitor)) + 1 if monitor else None,
            "seconds": round(seconds, 1),
            "history": {k: [round(float(x), 5) for x in v] for k, v in history.history.items()},
        },
    )
    save_bundle(out_dir, model, vocab, card)
    plot_domain_history(history.history, out_dir / CURVE_FILE, version)
    return ModelBundle(path=out_dir, keras_model=model, vocab=vocab, card=card)


def plot_domain_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Training loss and validation ROC-AUC per domain, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history.get("loss", [])) + 1)
    axes[0].plot(epochs, history.get("loss", []), "o-", label="train loss")
    axes[0].set_title("loss")
    for key, values in history.items():
        if key.startswith("val_") and key.endswith("_auc"):
            axes[1].plot(range(1, len(values) + 1), values, "o-", label=key[4:-4])
    axes[1].set_title("validation ROC-AUC")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
