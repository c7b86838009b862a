"""Where things live, from the environment with sensible defaults.

Nothing here touches the disk at import time: every value is computed when
asked for, so tests and Airflow tasks can change the environment first.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root when the package runs from a checkout or the image.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_MODEL_NAME = "ko-char-lstm-v2"


def models_dir() -> Path:
    """Folder that holds model directories (``MODERATION_MODELS_DIR``)."""
    return Path(os.environ.get("MODERATION_MODELS_DIR", PROJECT_ROOT / "models"))


def default_model_dir() -> Path:
    """The shipped model, unless ``MODERATION_MODEL_DIR`` names another."""
    explicit = os.environ.get("MODERATION_MODEL_DIR")
    return Path(explicit) if explicit else models_dir() / DEFAULT_MODEL_NAME


def data_dir() -> Path:
    """Working folder for the embedded database and run files (``MODERATION_HOME``)."""
    return Path(os.environ.get("MODERATION_HOME", PROJECT_ROOT / "var"))


def default_db_url() -> str:
    """``MODERATION_DB_URL``, else an embedded SQLite file under :func:`data_dir`."""
    url = os.environ.get("MODERATION_DB_URL")
    if url:
        return url
    return f"sqlite:///{data_dir() / 'reviews.db'}"
