"""Shared fixtures: real SQLite files, real PostgreSQL databases, a real tiny model.

PostgreSQL: each test that asks for ``pg_url`` gets a fresh database on the
server named by ``MODERATION_TEST_PG_URL`` (default: the local server with
trust auth), dropped afterwards. An unreachable server FAILS those tests
rather than skipping them, so CI cannot go green without PostgreSQL; set
``MODERATION_SKIP_PG=1`` to skip them deliberately on a laptop without one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
SAMPLE_PATH = TESTS_DIR / "data" / "reviews_sample.parquet"
PG_ADMIN_URL = os.environ.get("MODERATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep run files and the embedded database of every test out of the checkout."""
    home = tmp_path_factory.mktemp("moderation_home")
    monkeypatch.setenv("MODERATION_HOME", str(home))
    monkeypatch.delenv("MODERATION_DB_URL", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def sample_path() -> Path:
    """6,012 real corpus reviews (all ratings, a few empty and multi-line texts)."""
    return SAMPLE_PATH


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'reviews.db'}"


def _pg_admin_engine():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    if os.environ.get("MODERATION_SKIP_PG") == "1":
        pytest.skip("MODERATION_SKIP_PG=1")
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    admin = _pg_admin_engine()
    name = f"moderation_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.orig}); start it or set MODERATION_SKIP_PG=1")
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on a SQLite file and once on a PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Any]:
    """An engine on a fresh schema, once per database kind (see ``any_db_url``)."""
    from moderation import db

    engine = db.make_engine(any_db_url)
    db.init_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model trained for one epoch on the sample: small, fast, and not a mock."""
    from moderation.training import TrainingConfig, train_from_file

    out = tmp_path_factory.mktemp("models") / "tiny-model"
    config = TrainingConfig(epochs=1, batch_size=128, max_len=120, patience=1, verbose=0)
    train_from_file(SAMPLE_PATH, out, config, version="tiny-model")
    return out


#: The named points of ``pointed_model_dir``'s card: its default domain's, and another domain's.
POINTS = {
    "shopping": {"maybe": {"threshold": 0.31, "target_precision": 0.6, "precision": 0.62, "recall": 0.9,
                           "false_positive_rate": 0.2},
                 "likely": {"threshold": 0.61, "target_precision": 0.8, "precision": 0.81, "recall": 0.7,
                            "false_positive_rate": 0.06},
                 "very_likely": {"threshold": 0.93, "target_precision": 0.9, "precision": 0.92, "recall": 0.3,
                                 "false_positive_rate": 0.01}},
    "steam": {"likely": {"threshold": 0.72, "target_precision": 0.8, "precision": 0.8, "recall": 0.5,
                         "false_positive_rate": 0.05}},
}


@pytest.fixture(scope="session")
def card_points() -> dict[str, dict[str, dict[str, float]]]:
    """:data:`POINTS`, for tests (test modules cannot import this conftest)."""
    return POINTS


@pytest.fixture(scope="session")
def pointed_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as ``tiny-model-points``, its card given :data:`POINTS` (default domain shopping)."""
    import shutil

    from moderation.calibration import write_card
    from moderation.model import read_card

    out = tmp_path_factory.mktemp("models") / "tiny-model-points"
    shutil.copytree(tiny_model_dir, out)
    card = read_card(out)
    card.version = "tiny-model-points"
    card.operating_points = POINTS
    card.default_domain = "shopping"
    write_card(out, card)
    return out
