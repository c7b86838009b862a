"""Small helpers the DAG files share, kept out of ``dags/`` so the DAGs stay wiring.

Nothing here imports Airflow, SQLAlchemy, pandas or TensorFlow at module
level: DAG files import this module at parse time, and the scheduler parses
them every few seconds. Each helper imports what it needs when called, i.e.
inside a running task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from moderation.timeutil import utc, utc_now

#: Airflow Connection id of the reviews database (env: ``AIRFLOW_CONN_REVIEWS_DB``).
REVIEWS_CONN_ID = "reviews_db"

#: Default nightly schedule: 00:00 UTC, scoring the 24 hours before it.
DEFAULT_NIGHTLY_SCHEDULE = "0 0 * * *"
NIGHTLY_INTERVAL = timedelta(days=1)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConnectionLike(Protocol):
    """The fields of an Airflow ``Connection`` the URL conversion reads."""

    conn_type: str | None
    host: str | None
    schema: str | None
    login: str | None
    password: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


#: ``MODERATION_NIGHTLY_SCHEDULE`` values that mean no schedule: runs come from triggers only.
SCHEDULE_OFF = {"off", "none", "manual"}


def nightly_schedule() -> str | None:
    """Cron of the nightly DAG: ``MODERATION_NIGHTLY_SCHEDULE`` or midnight UTC; None for ``off``."""
    value = os.environ.get("MODERATION_NIGHTLY_SCHEDULE", "").strip() or DEFAULT_NIGHTLY_SCHEDULE
    return None if value.lower() in SCHEDULE_OFF else value


def nightly_timetable() -> Any:
    """The nightly DAG's ``schedule=``: a cron trigger over the 24 hours before it, or None (triggers only)."""
    from airflow.sdk import CronTriggerTimetable

    cron = nightly_schedule()
    return None if cron is None else CronTriggerTimetable(cron, timezone="UTC", interval=NIGHTLY_INTERVAL)


SCORING_QUEUE_ENV = "MODERATION_SCORING_QUEUE"
SCORING_POOL_ENV = "MODERATION_SCORING_POOL"
#: The Airflow pool of ``score_chunk`` unless ``MODERATION_SCORING_POOL`` names another.
DEFAULT_SCORING_POOL = "moderation_scoring"


def scoring_task_routing() -> dict[str, str]:
    """``queue=``/``pool=`` of ``score_chunk`` from the environment, read when the DAG file is parsed.

    The pool is :data:`DEFAULT_SCORING_POOL` unless ``MODERATION_SCORING_POOL``
    names another: its slots are how many chunks score at once, across runs
    and backfills, and an operator changes them at run time (``airflow pools
    set``), with no redeploy. ``airflow-init`` creates it. With one slot on a
    GPU worker, two runs take turns on one GPU. ``MODERATION_SCORING_QUEUE``
    sends the scoring tasks to the Celery workers of that queue (the GPU
    worker of the compose profile ``gpu``); unset: Airflow's default queue.
    """
    routing = {"pool": os.environ.get(SCORING_POOL_ENV, "").strip() or DEFAULT_SCORING_POOL}
    queue = os.environ.get(SCORING_QUEUE_ENV, "").strip()
    if queue:
        routing["queue"] = queue
    return routing


#: Where chunk files go: a folder or an object-store URL every worker reaches.
RUNS_URL_ENV = "MODERATION_RUNS_URL"


def runs_url() -> str:
    """``MODERATION_RUNS_URL``, else the folder ``runs`` under ``MODERATION_HOME`` (:func:`config.data_dir`).

    A URL such as ``s3://aws_default@bucket/runs`` names the Airflow Connection
    that holds its credentials (``gs://``, ``abfs://``... with their providers);
    Celery workers on different hosts then see each other's chunk files, which
    a local folder does not give them.
    """
    from moderation import config

    return os.environ.get(RUNS_URL_ENV, "").strip() or str(config.data_dir() / "runs")


def runs_path(location: str) -> Any:
    """A path object for a runs URL or a chunk file's location (as chunk results carry it).

    A folder or ``file://`` URL gives a :class:`pathlib.Path` (chunk files
    written beside their name and renamed into place); any other URL an
    Airflow ``ObjectStoragePath`` on the filesystem its scheme names.
    """
    from pathlib import Path

    if "://" not in location:
        return Path(location)
    if location.startswith("file://"):
        return Path(location[len("file://"):])
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(location)


def run_folder(run_id: str) -> Any:
    """The folder of one run's chunk files under :func:`runs_url`, the run id made safe for a path."""
    from moderation.pipeline import safe_run_name

    return runs_path(runs_url()) / safe_run_name(run_id)


def env_flag(name: str, default: bool) -> bool:
    """A boolean environment switch; an unrecognised value is an error, not a silent default."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use true/false)")


def connection_to_sqlalchemy_url(conn: ConnectionLike) -> str:
    """SQLAlchemy URL of an Airflow Connection to the reviews database.

    Airflow names PostgreSQL ``postgres`` and keeps the database in ``schema``;
    SQLAlchemy wants ``postgresql+psycopg`` and the database in the path. A
    SQLite connection keeps its file in ``host`` (the JSON/UI form) or, when
    given as ``sqlite:////abs/path.db``, in ``schema``. Extras (``sslmode``,
    ...) become query parameters. (``PostgresHook``'s URL names psycopg2,
    which the package does not use, and has no SQLite form.)
    """
    from sqlalchemy.engine import URL

    conn_type = (conn.conn_type or "").lower().replace("-", "_")
    if conn_type == "sqlite":
        path = conn.host or conn.schema or ""
        if not path:
            raise ValueError("a sqlite connection needs the database file in host (or the URI path)")
        return f"sqlite:///{path}"
    if conn_type in {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}:
        query = {str(k): _query_value(v) for k, v in (conn.extra_dejson or {}).items()
                 if k not in {"cursor", "iam", "aws_conn_id", "redshift", "cluster-identifier", "sqlalchemy_scheme"}}
        url = URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
            query=query,
        )
        return url.render_as_string(hide_password=False)
    raise ValueError(f"connection type {conn.conn_type!r} is not supported for the reviews database "
                     f"(use postgres or sqlite)")


def _query_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def reviews_db_url(conn_id: str = REVIEWS_CONN_ID) -> str:
    """The reviews database URL from the Airflow Connection, else the package default.

    Call this inside a task, never at parse time: a Connection lookup may hit
    the metadata database or a secrets backend. When the connection is not
    defined the package's own resolution applies (``MODERATION_DB_URL``, else
    the embedded SQLite file), so a laptop needs no Airflow setup.
    """
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from moderation.db import resolve_db_url

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return resolve_db_url()
    return connection_to_sqlalchemy_url(conn)


def interval_from_context(context: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """The run's data interval as UTC datetimes.

    The interval is converted to UTC because SQLite stores timestamps as UTC
    text without an offset: comparing against a +09:00 bound would silently
    shift the window. A run without a data interval (a manual trigger with no
    logical date) scores the :data:`NIGHTLY_INTERVAL` before it was queued.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None or end <= start:
        dag_run = context.get("dag_run")
        run_after = getattr(dag_run, "run_after", None) or utc_now()
        end = run_after
        start = end - NIGHTLY_INTERVAL
    return _as_utc(start), _as_utc(end)


def _as_utc(moment: datetime) -> datetime:
    """:func:`moderation.timeutil.utc` as a plain datetime, not pendulum: isoformat() round-trips in XCom."""
    moment = utc(moment)
    return datetime(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
                    moment.microsecond, tzinfo=timezone.utc)


def chunk_results(results: Any) -> list[dict[str, Any]]:
    """The mapped scoring results as a list; ``None`` (no chunks, task skipped) is empty."""
    if results is None:
        return []
    # A slice is one request to the XCom backend; iterating a lazy XCom sequence
    # probes one index past the end and logs a spurious "XCom not found".
    items = results[:] if hasattr(results, "__getitem__") else list(results)
    return [r for r in items if r is not None]


#: Prefix of the one log line :class:`TaskPhases` writes (``benchmarks/scheduler_night.py`` reads it).
TASK_PHASES_MARK = "task phases "


class TaskPhases:
    """Where one task process's time went: start-up, then the phases the task marks.

    A scheduler starts a process per task, and that start-up (fork, DAG file
    parse, Task SDK) and the imports are part of the night's wall time, yet
    invisible to the task's own timing. Create this first thing in the task
    body, :meth:`mark` the end of each phase, :meth:`log` at the end: one
    ``task phases {json}`` line in the task log with the process's creation
    time, the phases in seconds and the peak resident memory so far.
    """

    def __init__(self) -> None:
        import time

        self._clock = time.time
        self.body_started = self._clock()
        self._last = self.body_started
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """End ``phase`` now (seconds since the previous mark, or since the body started)."""
        now = self._clock()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last, 3)
        self._last = now

    def record(self, **extra: Any) -> dict[str, Any]:
        """The phases with the task's identity, the process's start and its peak memory."""
        import psutil  # an Airflow dependency: always there inside a task

        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
        return {"task": ti.task_id, "map_index": getattr(ti, "map_index", -1),
                "process_started": psutil.Process().create_time(), "body_started": self.body_started,
                "body_ended": self._clock(), "phases": self.phases, "peak_rss_mb": peak_rss_mb(), **extra}

    def log(self, **extra: Any) -> None:
        import logging

        logging.getLogger("moderation.task").info("%s%s", TASK_PHASES_MARK, json.dumps(self.record(**extra)))


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), in MiB; None where /proc is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
