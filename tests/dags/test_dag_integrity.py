"""DAG policy: the files in ``dags/`` parse, follow the team's rules, and stay cheap to parse.

The scheduler re-parses every DAG file every few seconds, so parsing must not
import TensorFlow/pandas or the pipeline, and must not reach a database or a
Connection. That is checked in a fresh interpreter, where ``sys.modules``
shows exactly what parsing imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moderation.airflow_support import connection_to_sqlalchemy_url

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
HEAVY_MODULES = ("tensorflow", "keras", "pandas", "pyarrow", "moderation.pipeline", "moderation.scoring",
                 "moderation.model", "moderation.db", "psycopg")
#: A PostgreSQL no one can reach: a parse-time connection attempt would hang here, not fail fast.
UNREACHABLE_DB = "postgresql://nobody:secret@10.255.255.1:5432/reviews"

PARSE_PROBE = r"""
import json, socket, sys, time

import airflow.sdk
import sqlalchemy
from airflow.sdk import BaseHook, Connection, Variable

calls = []
def recorder(name):
    def record(*args, **kwargs):
        calls.append(name)
        raise RuntimeError(f"{name} called while parsing DAGs")
    return record

socket.socket.connect = recorder("socket.connect")
socket.socket.connect_ex = recorder("socket.connect_ex")
sqlalchemy.create_engine = recorder("sqlalchemy.create_engine")
Connection.get = classmethod(recorder("Connection.get"))
BaseHook.get_connection = classmethod(recorder("BaseHook.get_connection"))
Variable.get = staticmethod(recorder("Variable.get"))
before = set(sys.modules)

from airflow.dag_processing.dagbag import DagBag

started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - started
print(json.dumps({
    "dags": sorted(bag.dags), "import_errors": bag.import_errors, "calls": calls, "seconds": seconds,
    "new_modules": sorted(m for m in sys.modules if m not in before), "modules": sorted(sys.modules),
}))
"""


@pytest.fixture(scope="module")
def parse_probe(airflow_home: Path) -> dict[str, Any]:
    """Parse ``dags/`` in a fresh interpreter with the network and connection look-ups booby-trapped."""
    env = {**os.environ, "AIRFLOW_CONN_REVIEWS_DB": UNREACHABLE_DB, "MODERATION_DB_URL": UNREACHABLE_DB}
    done = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(DAGS_FOLDER)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dag_folder_parses_without_errors(parse_probe: dict[str, Any]) -> None:
    assert parse_probe["import_errors"] == {}
    assert "review_moderation_nightly" in parse_probe["dags"]


def test_parsing_imports_nothing_heavy(parse_probe: dict[str, Any]) -> None:
    imported = set(parse_probe["modules"])
    assert "moderation.airflow_support" in parse_probe["new_modules"]  # the probe did see the DAG's imports
    heavy = sorted(m for m in imported if m in HEAVY_MODULES or m.split(".")[0] in {"tensorflow", "keras", "pandas"})
    assert heavy == []


def test_parsing_touches_no_database_or_connection(parse_probe: dict[str, Any]) -> None:
    assert parse_probe["calls"] == []
    assert parse_probe["seconds"] < 15, f"parsing dags/ took {parse_probe['seconds']:.1f}s"


def test_every_dag_follows_the_policy(dag_bag: Any) -> None:
    assert dag_bag.import_errors == {}
    assert dag_bag.dags
    for dag_id, dag in dag_bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md.strip()) > 50, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries {task.retries}"


def test_nightly_dag_shape(dag_bag: Any) -> None:
    dag = dag_bag.dags["review_moderation_nightly"]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.timetable.expression == "0 0 * * *"
    assert set(dag.task_dict) == {"plan", "list_chunks", "score_chunk", "publish"}
    assert dag.task_dict["publish"].trigger_rule == "none_failed"  # runs when zero chunks skip scoring
    assert dag.task_dict["plan"].retry_exponential_backoff
    assert dag.params["threshold"] is None
    assert dag.params["chunk_size"] is None  # sized by plan from the backlog and the scoring slots
    assert dag.params["scoring_slots"] == 2
    assert dag.task_dict["score_chunk"].pool == "moderation_scoring"
    assert dag.task_dict["score_chunk"].max_active_tis_per_dagrun is None  # the pool's slots limit it


def test_schedule_off_leaves_runs_to_triggers(monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MODERATION_NIGHTLY_SCHEDULE", "off")
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["review_moderation_nightly"]
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert not dag.timetable.can_be_scheduled


def test_reviews_db_url_prefers_the_connection(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moderation.airflow_support import reviews_db_url

    monkeypatch.setenv("MODERATION_DB_URL", "sqlite:////srv/fallback.db")
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_DB", "postgresql://mod@db.internal:5432/reviews")
    assert reviews_db_url() == "postgresql+psycopg://mod@db.internal:5432/reviews"
    monkeypatch.delenv("AIRFLOW_CONN_REVIEWS_DB")
    assert reviews_db_url() == "sqlite:////srv/fallback.db"  # no connection: the package's own default


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("threshold", None, True), ("threshold", 0.7, True), ("threshold", 1.5, False), ("threshold", -0.1, False),
    ("threshold", "high", False), ("chunk_size", 1_000, True), ("chunk_size", 5, False), ("chunk_size", 2.5, False),
    ("chunk_size", None, True), ("scoring_slots", 4, True), ("scoring_slots", 0, False),
    ("audit_sample", None, True), ("audit_sample", 0, True), ("audit_sample", 50, True), ("audit_sample", -1, False),
    ("audit_sample", 20_000, False), ("audit_sample", 2.5, False),
])
def test_nightly_params_are_typed_and_bounded(dag_bag: Any, name: str, value: Any, ok: bool) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    param = dag_bag.dags["review_moderation_nightly"].params.get_param(name)
    if ok:
        assert param.resolve(value) == value
    else:
        with pytest.raises(ParamValidationError):
            param.resolve(value)


def test_retraining_dag_defaults_match_the_retraining_params(dag_bag: Any) -> None:
    """Every form field has the default of :class:`RetrainingParams` (the DAG cannot import it at parse time)."""
    from dataclasses import fields

    from moderation.retraining import RetrainingParams

    dag = dag_bag.dags["review_model_retraining"]
    defaults = RetrainingParams()
    for name in dag.params:
        assert name in {f.name for f in fields(RetrainingParams)}, name
        assert dag.params[name] == getattr(defaults, name), name


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("rating_scale", 5, True), ("rating_scale", 10, True), ("rating_scale", None, True), ("rating_scale", 7, False),
    ("warm_start", False, True), ("warm_start", "yes", False), ("max_train_rows", None, True),
    ("max_train_rows", 5_000, True), ("max_train_rows", 10, False), ("max_false_positive_rate", 0.05, True),
    ("max_false_positive_rate", 1.0, False), ("learning_rate", 0.0, False),
])
def test_retraining_params_are_typed_and_bounded(dag_bag: Any, name: str, value: Any, ok: bool) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    param = dag_bag.dags["review_model_retraining"].params.get_param(name)
    if ok:
        assert param.resolve(value) == value
    else:
        with pytest.raises(ParamValidationError):
            param.resolve(value)


def test_schedule_and_catchup_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MODERATION_NIGHTLY_SCHEDULE", "30 2 * * *")
    monkeypatch.setenv("MODERATION_NIGHTLY_CATCHUP", "true")
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["review_moderation_nightly"]
    assert dag.timetable.expression == "30 2 * * *"
    assert dag.catchup is True


def test_scoring_queue_and_pool_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv("MODERATION_SCORING_QUEUE", raising=False)
    monkeypatch.delenv("MODERATION_SCORING_POOL", raising=False)
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["review_moderation_nightly"]
    default_queue, default_pool = dag.task_dict["score_chunk"].queue, dag.task_dict["score_chunk"].pool
    assert default_pool == "moderation_scoring"
    monkeypatch.setenv("MODERATION_SCORING_QUEUE", "gpu")
    monkeypatch.setenv("MODERATION_SCORING_POOL", "gpu_scoring")
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["review_moderation_nightly"]
    assert (dag.task_dict["score_chunk"].queue, dag.task_dict["score_chunk"].pool) == ("gpu", "gpu_scoring")
    for other in ("plan", "list_chunks", "publish"):  # only the scoring goes to the GPU worker
        assert (dag.task_dict[other].queue, dag.task_dict[other].pool) == (default_queue, "default_pool")


class _Conn:
    """The fields of an Airflow Connection; the real class is checked in the URI tests below."""

    def __init__(self, conn_type: str, host: str | None = None, schema: str | None = None, login: str | None = None,
                 password: str | None = None, port: int | None = None, extra: dict[str, Any] | None = None):
        self.conn_type, self.host, self.schema, self.login = conn_type, host, schema, login
        self.password, self.port, self.extra_dejson = password, port, extra or {}


@pytest.mark.parametrize(("uri", "url"), [
    ("postgresql://postgres@127.0.0.1:5432/reviews", "postgresql+psycopg://postgres@127.0.0.1:5432/reviews"),
    ("postgres://mod:p%40ss@db.internal/reviews?sslmode=require",
     "postgresql+psycopg://mod:p%40ss@db.internal/reviews?sslmode=require"),
    ("sqlite:////var/lib/moderation/reviews.db", "sqlite:////var/lib/moderation/reviews.db"),
])
def test_connection_uri_becomes_a_sqlalchemy_url(uri: str, url: str) -> None:
    from airflow.sdk import Connection

    assert connection_to_sqlalchemy_url(Connection.from_uri(uri, conn_id="reviews_db")) == url


def test_connection_json_form_becomes_a_sqlalchemy_url() -> None:
    from airflow.sdk import Connection

    sqlite = Connection.from_json('{"conn_type": "sqlite", "host": "/data/reviews.db"}', conn_id="reviews_db")
    assert connection_to_sqlalchemy_url(sqlite) == "sqlite:////data/reviews.db"
    postgres = Connection.from_json(json.dumps({"conn_type": "postgres", "host": "db", "port": 5433, "login": "mod",
                                                "password": "비밀 번호", "schema": "reviews"}), conn_id="reviews_db")
    url = connection_to_sqlalchemy_url(postgres)
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    assert (parsed.drivername, parsed.host, parsed.port, parsed.username, parsed.password, parsed.database) == \
        ("postgresql+psycopg", "db", 5433, "mod", "비밀 번호", "reviews")


def test_unsupported_connection_type_is_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        connection_to_sqlalchemy_url(_Conn("mysql", host="db"))
    with pytest.raises(ValueError, match="sqlite"):
        connection_to_sqlalchemy_url(_Conn("sqlite"))
