"""Airflow test harness: a throwaway metadata database and the real DAGs, run in-process.

How it works:

* :func:`pytest_configure` points Airflow at a temporary ``AIRFLOW_HOME`` (its
  metadata database a SQLite file there, the DAG folder the repository's
  ``dags/``, no examples) BEFORE anything imports ``airflow``: Airflow reads
  its configuration once, at import. Test modules here therefore import
  Airflow inside fixtures and tests only.
* The session fixture :func:`airflow_db` migrates that database once with
  ``airflow db migrate`` (a subprocess, a few seconds).
* :func:`run_dag` runs a DAG with ``dag.test()`` in this process: every task
  really runs through the Task SDK (XCom, mapping, trigger rules), without a
  scheduler. The reviews database reaches the tasks as the Connection
  ``reviews_db`` from ``AIRFLOW_CONN_REVIEWS_DB``, the model as
  ``MODERATION_MODEL_DIR``; tests set both with ``monkeypatch``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")

_HOME_KEY = pytest.StashKey[Path]()


def airflow_env(home: Path) -> dict[str, str]:
    """The environment that makes Airflow use ``home`` and this repository's DAGs."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }


def pytest_configure(config: pytest.Config) -> None:
    if "airflow" in sys.modules:
        raise pytest.UsageError("airflow was imported before tests/dags/conftest.py could configure it; "
                                "import airflow inside tests and fixtures, not at module level")
    home = Path(tempfile.mkdtemp(prefix="airflow-home-"))
    config.stash[_HOME_KEY] = home
    os.environ.update(airflow_env(home))


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_HOME_KEY, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.stash[_HOME_KEY]


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """The migrated metadata database (migrated once per session)."""
    done = subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env={**os.environ, **airflow_env(airflow_home)},
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    from airflow.configuration import conf

    configured = conf.get("database", "sql_alchemy_conn")
    assert configured.endswith(str(airflow_home / "airflow.db")), f"airflow is configured for {configured}"
    return airflow_home / "airflow.db"


@pytest.fixture
def dag_bag(airflow_home: Path) -> Any:
    """A fresh parse of ``dags/`` (fresh DAG objects: a test may change retries)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture
def nightly_dag(dag_bag: Any) -> Any:
    assert not dag_bag.import_errors, dag_bag.import_errors
    return dag_bag.dags["review_moderation_nightly"]


@pytest.fixture
def reviews_connection(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Iterator[Any]:
    """Point the DAG at a reviews database (as the ``reviews_db`` Connection) and the tiny model."""
    monkeypatch.setenv("MODERATION_MODEL_DIR", str(tiny_model_dir))

    def connect(db_url: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_DB", db_url)

    yield connect


def run_dag(dag: Any, logical_date: datetime, conf: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """Run ``dag`` for ``logical_date`` with ``dag.test()``; returns the run state and each task's state.

    ``run_after`` is the logical date, so the run id is the same on every
    run of one date (``manual__<date>``), as a cleared and re-run DAG run's is.
    """
    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf or {})
    states = {}
    for ti in dag_run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = _state(ti.state)
    return _state(dag_run.state), states


def _state(state: Any) -> str:
    return str(getattr(state, "value", state))


@pytest.fixture
def dag_runner(airflow_db: Path) -> Any:
    """:func:`run_dag`, for tests (test modules cannot import this conftest)."""
    return run_dag
