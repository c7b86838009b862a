"""The seed network and its on-disk bundle.

A model directory is one unit::

    models/<version>/
        model.keras        weights and architecture (Keras 3 format)
        vocab.json         the character vocabulary
        card.json          version, data fingerprint, cleaning version,
                           max length, decision threshold, test metrics,
                           and SHA-256 of the two files above
        training_curve.png loss and accuracy per epoch (when trained here)

``score`` everywhere means the probability that a review is NEGATIVE, the
class moderators act on; a review is flagged when ``score >= threshold``.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderation.errors import ModelBundleError, OperatingPointError
from moderation.text import CLEANING_VERSION
from moderation.vocab import CharVocab

if TYPE_CHECKING:
    import keras

    from moderation.numpy_lstm import SeedWeights

MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.json"
CARD_FILE = "card.json"
CURVE_FILE = "training_curve.png"
SCORE_MEANING = "probability that the review is negative"
#: The files whose bytes make a bundle's fingerprint, in name order.
FINGERPRINT_FILES = (CARD_FILE, MODEL_FILE, VOCAB_FILE)


def check_threshold(value: object, what: str = "threshold") -> float:
    """A decision threshold as a float strictly between 0 and 1, else a :class:`ModelBundleError`.

    0 would flag every review and 1 none; NaN compares false with every score.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelBundleError(f"{what} must be a number between 0 and 1, not {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ModelBundleError(f"{what} must be between 0 and 1 (exclusive), not {value!r}")
    return float(value)


def strict_json_value(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: JSON that every parser accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    return value


@dataclass
class ModelCard:
    """What a model is, how it was made and how good it is."""

    version: str
    created_at: str
    cleaning_version: str
    max_len: int
    vocab_size: int
    threshold: float
    score_meaning: str = SCORE_MEANING
    training_data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    #: Per domain, named thresholds with the precision and recall they reached on validation.
    operating_points: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: The domain whose rows chose ``threshold`` and whose points a bare point name means.
    default_domain: str | None = None
    #: Per domain, the queue's priority levels (very_likely, likely, maybe): thresholds chosen by a
    #: budget of good reviews flagged (:data:`moderation.metrics.QUEUE_BUCKET_FPR`), with the rate and
    #: recall reached on validation. Not operating points: a run cannot be set to one.
    queue_buckets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def operating_threshold(self, name: str) -> float:
        """The threshold of a named operating point: ``likely``, or ``steam:likely`` for another domain.

        ``default`` is the card's own threshold. An unknown name is an error
        that lists the names this card has.
        """
        name = name.strip()
        if name == "default":
            return self.threshold
        domain, _, point = name.rpartition(":")
        domain = domain or self.default_domain or ""
        found = self.operating_points.get(domain, {}).get(point)
        if found is None:
            raise OperatingPointError(f"model {self.version} has no operating point {name!r} "
                                      f"(it has: {', '.join(self.operating_point_names())})")
        return float(found["threshold"])

    def operating_point_names(self) -> list[str]:
        """Every name :meth:`operating_threshold` accepts: ``default``, the default domain's points, ``domain:point``."""
        return ["default"] + [(p if d == self.default_domain else f"{d}:{p}")
                              for d, named in self.operating_points.items() for p in named]

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ModelCard:
        """A card from its JSON; fields this release does not know are ignored, the ones it uses checked."""
        if not isinstance(payload, dict):
            raise ModelBundleError(f"model card must be a JSON object, not {type(payload).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        missing = {"version", "created_at", "cleaning_version", "max_len", "vocab_size", "threshold"} - payload.keys()
        if missing:
            raise ModelBundleError(f"model card lacks {', '.join(sorted(missing))}")
        validate_card(payload)
        return cls(**{k: v for k, v in payload.items() if k in known})

    def to_json(self) -> str:
        """Strict JSON: a metric that came out NaN is written as null, never as a bare NaN."""
        return json.dumps(strict_json_value(asdict(self)), ensure_ascii=False, indent=2, allow_nan=False)


#: Longest operating point name a run can record (``scoring_runs.operating_point``).
MAX_OPERATING_POINT_NAME = 64


def check_one_threshold_choice(threshold: float | None, operating_point: str | None) -> None:
    """Refuse a threshold and an operating point given together: each sets the threshold."""
    if threshold is not None and operating_point is not None:
        raise OperatingPointError(f"threshold {threshold!r} and operating point {operating_point!r} were both "
                                  f"given: give one (a named point sets its own threshold)")


def choose_threshold(card: ModelCard, threshold: float | None = None,
                     operating_point: str | None = None) -> tuple[float, str | None]:
    """The threshold to flag with, and the operating point it is: a run records the second.

    A named point gives its threshold and its name (``default`` is the card's
    threshold); a raw ``threshold`` gives itself and None; neither gives the
    card's threshold as ``default``. Both at once, or a name the card lacks,
    is an :class:`OperatingPointError`.
    """
    check_one_threshold_choice(threshold, operating_point)
    if threshold is not None:
        return check_threshold(threshold, "threshold override"), None
    if operating_point is None:
        return card.threshold, "default"
    name = operating_point.strip()
    if not name or len(name) > MAX_OPERATING_POINT_NAME:
        raise OperatingPointError(f"operating point must be a name of 1-{MAX_OPERATING_POINT_NAME} characters, "
                                  f"not {operating_point!r} (model {card.version} has: "
                                  f"{', '.join(card.operating_point_names())})")
    return check_threshold(card.operating_threshold(name), f"operating point {name}"), name


def validate_card(payload: dict[str, Any]) -> None:
    """Refuse a card whose values would score wrongly: the threshold and every operating point's."""
    version = payload.get("version")
    if not isinstance(version, str) or not version.strip() or len(version) > 128:
        raise ModelBundleError(f"model card version must be a name of 1-128 characters, not {version!r}")
    check_threshold(payload.get("threshold"), f"model card {version}: threshold")
    for key in ("max_len", "vocab_size"):
        value = payload.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelBundleError(f"model card {version}: {key} must be a positive integer, not {value!r}")
    try:
        datetime.fromisoformat(str(payload.get("created_at")))
    except ValueError:
        raise ModelBundleError(f"model card {version}: created_at is not an ISO date-time: "
                               f"{payload.get('created_at')!r}") from None
    for key in ("operating_points", "queue_buckets"):
        _validate_points(version, key, payload.get(key))


def _validate_points(version: str, key: str, points: Any) -> None:
    """Refuse named thresholds per domain (``operating_points``, ``queue_buckets``) that are malformed."""
    if points is None:
        return
    if not isinstance(points, dict):
        raise ModelBundleError(f"model card {version}: {key} must be an object per domain")
    for domain, named in points.items():
        if not isinstance(named, dict):
            raise ModelBundleError(f"model card {version}: {key}.{domain} must be an object")
        for name, point in named.items():
            if not isinstance(point, dict) or "threshold" not in point:
                raise ModelBundleError(f"model card {version}: {key}.{domain}.{name} has no threshold")
            check_threshold(point["threshold"], f"model card {version}: {key}.{domain}.{name}.threshold")


def bundle_fingerprint(directory: Path | str) -> str:
    """SHA-256 over the bytes of card.json, model.keras and vocab.json, concatenated in that (name) order.

    The same as ``cat card.json model.keras vocab.json | sha256sum``. The
    registry keeps it so a directory changed after registration is refused.
    """
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        part = Path(directory) / name
        try:
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            raise ModelBundleError(f"model file is missing: {part}") from None
    return digest.hexdigest()


@dataclass(eq=False)
class ModelBundle:
    """A loaded model directory: its vocabulary, its card and the network.

    The network comes in two forms. ``keras_model`` is the Keras model (for
    training, evaluation and the GPU plan); ``seed_weights`` are the seed
    network's weights as NumPy arrays, read from the same archive without
    importing TensorFlow (for the CPU scoring plan). A bundle loaded for
    NumPy scoring loads the Keras model only if something asks for
    :attr:`model`.
    """

    path: Path
    vocab: CharVocab
    card: ModelCard
    keras_model: keras.Model | None = None
    seed_weights: SeedWeights | None = None
    #: Why ``seed_weights`` is None for a bundle loaded without Keras (not the seed network).
    seed_weights_unusable: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> keras.Model:
        """The Keras model, loaded (and its TensorFlow imported) on first use."""
        with self._lock:
            if self.keras_model is None:
                self.keras_model = _load_keras_model(self.path, self.vocab)
            return self.keras_model

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def threshold(self) -> float:
        return self.card.threshold


def build_model(vocab_size: int, embedding_dim: int = 16, learning_rate: float = 1e-3) -> keras.Model:
    """Embedding -> LSTM(64, sequences) -> LSTM(32) -> Dense(1, sigmoid), as in the seeds.

    The LSTMs keep Keras' default activations, no recurrent dropout and no
    unrolling, so the fused cuDNN kernel stays eligible on a GPU; padding is
    id 0 on the right and masked, which that kernel supports.
    """
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(None,), dtype="int32", name="char_ids"),
            keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name="embedding"),
            keras.layers.LSTM(64, return_sequences=True, name="lstm_64"),
            keras.layers.LSTM(32, name="lstm_32"),
            keras.layers.Dense(1, activation="sigmoid", name="negative_probability"),
        ],
        name="ko_char_lstm",
    )
    return compile_model(model, learning_rate)


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, binary cross-entropy, accuracy and ROC-AUC: for a new network or a loaded one to fine-tune.

    :func:`load_bundle` loads without compiling (scoring needs no optimizer), so
    a model loaded to train further must be compiled here first.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(directory: Path, model: keras.Model, vocab: CharVocab, card: ModelCard) -> Path:
    """Write the three parts; the card records the hashes of the other two."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    vocab_hash = vocab.save(directory / VOCAB_FILE)
    card.vocab_size = vocab.size
    card.files = {MODEL_FILE: sha256_of(directory / MODEL_FILE), VOCAB_FILE: vocab_hash}
    (directory / CARD_FILE).write_text(card.to_json() + "\n", encoding="utf-8")
    return directory


def read_card(directory: Path) -> ModelCard:
    """The card alone (cheap: no TensorFlow), with a clear error when absent or broken."""
    path = Path(directory) / CARD_FILE
    if not Path(directory).is_dir():
        raise ModelBundleError(f"model directory not found: {directory}")
    try:
        return ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ModelBundleError(f"model card is missing: {path}") from None
    except (ValueError, TypeError) as exc:
        raise ModelBundleError(f"model card is not valid JSON: {path} ({exc})") from None


def verify_bundle(directory: Path) -> ModelCard:
    """Check every part is present, unmodified and consistent (vocabulary size too), without loading Keras."""
    return _verified_parts(Path(directory))[0]


def _verified_parts(directory: Path) -> tuple[ModelCard, CharVocab]:
    """The card and vocabulary of a bundle whose parts passed every check."""
    card = read_card(directory)
    for name in (MODEL_FILE, VOCAB_FILE):
        part = directory / name
        if not part.is_file():
            raise ModelBundleError(f"model file is missing: {part}")
        expected = card.files.get(name)
        if expected and sha256_of(part) != expected:
            raise ModelBundleError(f"model file does not match its card (corrupt or replaced): {part}")
    vocab = CharVocab.load(directory / VOCAB_FILE)
    if vocab.size != card.vocab_size:
        raise ModelBundleError(
            f"vocabulary {directory / VOCAB_FILE} has {vocab.size} ids but the card {directory / CARD_FILE} "
            f"says {card.vocab_size}"
        )
    if card.cleaning_version != CLEANING_VERSION:
        raise ModelBundleError(
            f"model {card.version} was trained with cleaning {card.cleaning_version}, "
            f"this code cleans with {CLEANING_VERSION}: retrain or use a matching release"
        )
    return card, vocab


def load_bundle(directory: Path | str, with_keras: bool = True) -> ModelBundle:
    """Load a model directory, refusing one whose parts are missing or disagree.

    ``with_keras=False`` reads the seed network's weights with h5py instead of
    loading the model with Keras, so TensorFlow is not imported; a model of
    another architecture then gets ``seed_weights`` None and the reason, and
    its Keras model loads on first use of :attr:`ModelBundle.model`.
    """
    directory = Path(directory)
    card, vocab = _verified_parts(directory)
    if with_keras:
        return ModelBundle(path=directory, vocab=vocab, card=card, keras_model=_load_keras_model(directory, vocab))
    from moderation.numpy_lstm import read_seed_weights

    weights, unusable = read_seed_weights(directory / MODEL_FILE)
    if weights is not None and weights.embedding.shape[0] != vocab.size:
        raise ModelBundleError(f"model {directory / MODEL_FILE} embeds {weights.embedding.shape[0]} ids "
                               f"but the vocabulary has {vocab.size}")
    return ModelBundle(path=directory, vocab=vocab, card=card, seed_weights=weights, seed_weights_unusable=unusable)


def _load_keras_model(directory: Path, vocab: CharVocab) -> keras.Model:
    """The Keras model of a verified bundle directory, checked against its vocabulary."""
    import keras

    try:
        model = keras.saving.load_model(directory / MODEL_FILE, compile=False)
    except Exception as exc:  # Keras raises many types for a broken archive
        raise ModelBundleError(f"cannot load model file {directory / MODEL_FILE}: {exc}") from None
    embedding_rows = model.get_layer("embedding").input_dim
    if embedding_rows != vocab.size:
        raise ModelBundleError(
            f"model {directory / MODEL_FILE} embeds {embedding_rows} ids but the vocabulary has {vocab.size}"
        )
    return model
