"""The model registry (``model_versions``): register, verify, list and activate model versions.

A registered model is immutable: its directory's files are fingerprinted at
registration and checked again before it is scored with or activated. The
nightly run (:mod:`moderation.pipeline`), retraining and the ``moderation
models`` commands all go through here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from moderation import config, db
from moderation.errors import MAX_IDS_NAMED, ModelBundleError, ModerationError
from moderation.model import (bundle_fingerprint, check_one_threshold_choice, check_threshold, choose_threshold,
                              verify_bundle)
from moderation.timeutil import utc, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    version: str
    path: str
    threshold: float
    #: The card's named point the threshold is (``default``: the card's own); None: a raw threshold override.
    operating_point: str | None = None
    #: Thresholds of the card's default-domain queue buckets (maybe, likely, very_likely; see
    #: :func:`bucket_thresholds`): a flag's priority bucket is the highest it reaches. Empty for a card
    #: without points.
    buckets: dict[str, float] = field(default_factory=dict, hash=False)



def active_model(engine: Engine, threshold: float | None = None, operating_point: str | None = None) -> ModelChoice:
    """The active row of ``model_versions``, else the shipped model (registered then), and the threshold to use.

    ``operating_point`` names a point of the active model's card (``likely``,
    ``steam:likely``, ``default``); ``threshold`` overrides the card with a
    number; at most one of them. Only the card is read (no TensorFlow).
    """
    if threshold is not None:
        check_threshold(threshold, "threshold override")
    check_one_threshold_choice(threshold, operating_point)
    m = db.model_versions.c
    with db.translate_errors(engine), engine.connect() as conn:
        row = conn.execute(select(m.version, m.path, m.threshold, m.fingerprint).where(m.is_active.is_(True))).first()
    if row is None:
        card = register_model(engine, config.default_model_dir(), activate=True)
        row = (card.version, str(config.default_model_dir()), card.threshold, None)
    card = verify_registered(engine, row[0], Path(row[1]), row[3])  # fail before any work if broken or swapped
    chosen, point = choose_threshold(card, threshold, operating_point)
    if point == "default":
        chosen = float(row[2])  # the registered threshold: the card's, as the fingerprint guarantees
    return ModelChoice(version=row[0], path=row[1], threshold=float(chosen), operating_point=point,
                       buckets=bucket_thresholds(card))


def bucket_thresholds(card: Any) -> dict[str, float]:
    """The thresholds of the queue's priority buckets for this card's flags, as name -> threshold.

    The card's default-domain ``queue_buckets`` (chosen by false-flag budgets,
    which hold in any shop's mix of reviews) when it has them; else, for a card
    made before them, its default-domain operating points of the same names
    (chosen by precision on validation rows, which may all lie below the card's
    threshold and then put every flag in ``very_likely``).
    """
    from moderation.queue import BUCKET_POINTS

    domain = card.default_domain or ""
    points = (getattr(card, "queue_buckets", None) or {}).get(domain) \
        or (card.operating_points or {}).get(domain, {})
    return {name: float(points[name]["threshold"]) for name in BUCKET_POINTS if name in points}


def verify_registered(engine: Engine, version: str, directory: Path, registered: str | None) -> Any:
    """The card of a registered model whose directory still holds exactly the registered files.

    A registered model is immutable: scoring under its name must run the
    network it was registered with. A row without a fingerprint (registered
    by an earlier release) gets the directory's fingerprint now.
    """
    card = verify_bundle(directory)
    if card.version != version:
        raise ModelBundleError(f"{directory} now holds model {card.version}, not the registered {version}: "
                               f"register that directory as a new version")
    current = bundle_fingerprint(directory)
    if registered is None:
        with db.translate_errors(engine), engine.begin() as conn:
            conn.execute(db.model_versions.update()
                         .where(db.model_versions.c.version == version, db.model_versions.c.fingerprint.is_(None))
                         .values(fingerprint=current))
    elif registered != current:
        raise ModelBundleError(f"model directory {directory} no longer matches registered model {version} "
                               f"(its files changed after registration): restore them, or train a new version "
                               f"and register that")
    return card


def register_model(engine: Engine, directory: Path, activate: bool = False) -> Any:
    """Insert or refresh a model version from its card; optionally make it the only active one.

    Registering the same files again is harmless; registering different
    files under a version name already taken is refused.
    """
    card = verify_bundle(directory)
    current = bundle_fingerprint(directory)
    now = utc_now()
    values = {
        "version": card.version,
        "path": str(Path(directory).resolve()),
        "threshold": card.threshold,
        "metrics": json.dumps(card.metrics, ensure_ascii=False),
        "created_at": datetime.fromisoformat(card.created_at),
        "fingerprint": current,
    }
    m = db.model_versions.c
    with db.translate_errors(engine), engine.begin() as conn:
        exists = conn.execute(select(m.version, m.fingerprint).where(m.version == card.version)).first()
        if exists and exists[1] is not None and exists[1] != current:
            raise ModelBundleError(f"model {card.version} is already registered with other files: a registered "
                                   f"model cannot change; train under a new name (--out models/NEW-NAME)")
        if exists:
            conn.execute(db.model_versions.update().where(m.version == card.version).values(**values))
        else:
            conn.execute(db.model_versions.insert().values(**values, registered_at=now, is_active=False))
        if activate:
            db.activate_only(conn, card.version)
    return card


def registered_version_at(engine: Engine, directory: Path) -> str | None:
    """The version registered from ``directory`` (by its path), or None; a database without the table has none."""
    from sqlalchemy import inspect

    with db.translate_errors(engine), engine.connect() as conn:
        if not inspect(conn).has_table(db.model_versions.name):
            return None
        m = db.model_versions.c
        return conn.execute(select(m.version).where(m.path == str(Path(directory).resolve())).limit(1)).scalar()



def list_models(engine: Engine) -> list[dict[str, Any]]:
    """Registered versions, newest first, with the card's balanced test metrics."""
    m = db.model_versions.c
    query = select(m.version, m.path, m.is_active, m.threshold, m.created_at, m.registered_at, m.metrics,
                   m.fingerprint)
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.model_versions)
        rows = conn.execute(query.order_by(m.created_at.desc(), m.version)).mappings().all()
    return [_model_row(row) for row in rows]


def model_files_state(path: str, registered: str | None) -> str:
    """``ok``, ``missing`` (folder or a file gone) or ``changed`` (not the registered files)."""
    from moderation.model import FINGERPRINT_FILES, bundle_fingerprint

    if not all((Path(path) / name).is_file() for name in FINGERPRINT_FILES):
        return "missing"
    if registered is not None and bundle_fingerprint(path) != registered:
        return "changed"
    return "ok"


def _model_row(row: Any) -> dict[str, Any]:
    balanced = _metrics(row["metrics"]).get("test_balanced")
    balanced = balanced if isinstance(balanced, dict) else {}
    files = model_files_state(row["path"], row["fingerprint"])
    default_domain, points = _operating_points(row["path"]) if files == "ok" else (None, {})
    return {"version": row["version"], "path": row["path"], "active": bool(row["is_active"]),
            "files": files,
            "threshold": float(row["threshold"]), "created": utc(row["created_at"]),
            "registered": utc(row["registered_at"]),
            "balanced_accuracy": _finite(balanced.get("balanced_accuracy")),
            "roc_auc": _finite(balanced.get("roc_auc")),
            "default_domain": default_domain, "operating_points": points}


def _operating_points(path: str) -> tuple[str | None, dict[str, dict[str, dict[str, Any]]]]:
    """The card's default domain and named points per domain (the card alone is read); none when unreadable."""
    from moderation.model import read_card

    try:
        card = read_card(Path(path))
    except ModerationError:
        return None, {}
    return card.default_domain, card.operating_points


def _metrics(payload: str | None) -> dict[str, Any]:
    try:
        value = json.loads(payload) if payload else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _finite(value: Any) -> float | None:
    """A metric as a float, or None when absent or NaN (JSON and tables cannot show NaN well)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def activate_model(engine: Engine, version: str) -> dict[str, Any]:
    """Make ``version`` the only active model, after checking its files still match its card.

    The nightly job would refuse a broken bundle anyway; refusing here keeps
    the previous model active instead of stopping the next night's run.
    """
    m = db.model_versions.c
    with db.translate_errors(engine), engine.connect() as conn:
        db.require_tables(conn, db.model_versions)
        row = conn.execute(select(m.path, m.fingerprint).where(m.version == version)).first()
        known = conn.execute(select(m.version).order_by(m.version)).scalars().all() if row is None else []
    if row is None:
        listed = ", ".join(known[:MAX_IDS_NAMED]) or "none"
        raise ModelBundleError(f"unknown model version {version!r} (registered: {listed}); "
                               f"register it with `moderation models register DIR`")
    path = row[0]
    verify_registered(engine, version, Path(path), row[1])
    with db.translate_errors(engine), engine.begin() as conn:
        if conn.execute(select(m.version).where(m.version == version)).scalar() is None:
            raise ModelBundleError(f"model version {version!r} was removed while activating it")
        db.activate_only(conn, version)
    log.debug("model %s is now the active model", version)
    return next(row for row in list_models(engine) if row["version"] == version)
