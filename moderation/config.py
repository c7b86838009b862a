"""Where things live, from the environment with sensible defaults.

Nothing here touches the disk at import time: every value is computed when
asked for, so tests and Airflow tasks can change the environment first.

Two ways of running, one set of rules:

* from a checkout (``make install``: an editable install), the repository's
  ``models/``, ``sql/`` and ``var/`` are the defaults, as they always were;
* from an installed wheel, the shipped model and the PostgreSQL DDL come from
  the package's data, and user data (the embedded database, run files, trained
  models) goes under ``MODERATION_HOME``, else the platform's data directory
  (``$XDG_DATA_HOME/review-moderation``, ``~/.local/share/review-moderation``).

Environment variables win in both (the image sets them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: The installed package's own folder.
PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository root when the package runs from a checkout, else the folder that holds the package.
PROJECT_ROOT = PACKAGE_DIR.parent
#: The package data the wheel carries (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
SHIPPED_MODELS_DIR = PACKAGE_DIR / "_shipped"
SHIPPED_SQL_DIR = PACKAGE_DIR / "_sql"

DEFAULT_MODEL_NAME = "ko-char-lstm-v3"
APP_NAME = "review-moderation"


def checkout_root() -> Path | None:
    """The repository root when the package runs from a checkout (its ``pyproject.toml`` beside it), else None."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else None


def platform_data_dir() -> Path:
    """The user's data directory for this application (XDG on Linux, the usual places elsewhere)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_NAME


def data_dir() -> Path:
    """Working folder for the embedded database and run files.

    ``MODERATION_HOME``, else ``var/`` of the checkout, else :func:`platform_data_dir`.
    """
    explicit = os.environ.get("MODERATION_HOME")
    if explicit:
        return Path(explicit)
    root = checkout_root()
    return root / "var" if root else platform_data_dir()


def models_dir() -> Path:
    """Folder that holds model directories: ``MODERATION_MODELS_DIR``, else ``models/`` of the checkout,
    else ``models`` under :func:`data_dir`."""
    explicit = os.environ.get("MODERATION_MODELS_DIR")
    if explicit:
        return Path(explicit)
    root = checkout_root()
    return root / "models" if root else data_dir() / "models"


def default_model_dir() -> Path:
    """The shipped model, unless ``MODERATION_MODEL_DIR`` names another.

    From a checkout (or with ``MODERATION_MODELS_DIR``) it is the folder of that
    name in :func:`models_dir`; from an installed wheel, the package's copy.
    """
    explicit = os.environ.get("MODERATION_MODEL_DIR")
    if explicit:
        return Path(explicit)
    if os.environ.get("MODERATION_MODELS_DIR") or checkout_root():
        return models_dir() / DEFAULT_MODEL_NAME
    return SHIPPED_MODELS_DIR / DEFAULT_MODEL_NAME


def default_db_url() -> str:
    """``MODERATION_DB_URL``, else an embedded SQLite file under :func:`data_dir`."""
    url = os.environ.get("MODERATION_DB_URL")
    if url:
        return url
    return f"sqlite:///{data_dir() / 'reviews.db'}"


def int_setting(name: str, default: int, low: int, high: int, what: str = "a whole number",
                env: Mapping[str, str] | None = None) -> int:
    """An integer setting from the environment (``env`` in tests), ``default`` when unset or empty.

    A value that is not a whole number from ``low`` to ``high`` is a SettingError naming the variable.
    """
    from moderation.errors import SettingError

    configured = (os.environ if env is None else env).get(name, "").strip()
    if not configured:
        return default
    try:
        value = int(configured)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise SettingError(f"{name} must be {what} from {low} to {high}, got {configured!r}")
    return value
