"""``make bench-scheduler``: the nightly DAG as a real Airflow scheduler runs it, start-up costs included.

``make bench`` times :func:`moderation.pipeline.run_nightly` inside one
process. A scheduler does not run the night that way: it starts a task
process for ``plan``, for every mapped ``score_chunk`` and for ``publish``,
and each of them pays its imports and, for scoring, the model load. This
benchmark measures that night:

1. a reviews database on PostgreSQL is seeded with N reviews of one day
   (the same sample as ``make bench``; not timed, and kept between runs with
   ``--reuse-db``: only the scoring tables are emptied);
2. a throwaway Airflow (``AIRFLOW_HOME`` in a temporary folder, its metadata
   in a fresh PostgreSQL database, LocalExecutor) is started as its real
   components: ``airflow scheduler``, ``airflow dag-processor`` and
   ``airflow api-server``, with the repository's ``dags/``;
3. one run of ``review_moderation_nightly`` is triggered and waited for.
   Wall time is the run's ``queued_at`` (the trigger) to its ``end_date``
   (success), from the metadata database. Per task: queue wait (queued to the
   task process's start), process start (to the first line of the task
   body), imports, model load, work and finish (the body's end to the
   task's ``end_date``), from the ``task phases`` line each task logs, with
   the task process's peak RSS;
4. the same night in one process (``run_nightly`` in a fresh interpreter,
   as ``make bench`` does) on the same database, emptied of its scores again,
   for the in-process figure beside it.

Tables go to stdout, progress to stderr, everything to a JSON file
(``docs/bench_scheduler.json`` by default). Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench  # benchmarks/bench.py: corpus sample, seeding, the in-process run
from moderation.airflow_support import TASK_PHASES_MARK

REPO_ROOT = bench.REPO_ROOT
DAG_ID = "review_moderation_nightly"
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
#: The ``task phases`` log line the DAG's tasks write (moderation.airflow_support.TaskPhases).
PHASES_MARK = TASK_PHASES_MARK
#: Tables a nightly run writes: emptied between runs so the next run scores everything again.
SCORING_TABLES = ("moderation_events", "moderation_queue", "review_scores", "scoring_runs")
START_TIMEOUT_S = 300


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/scheduler_night.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=bench._int_list, default=[100_000, 1_000_000],
                        help="nights to run, in reviews (default 100000,1000000)")
    parser.add_argument("--reuse-db", action="store_true",
                        help="keep the seeded reviews databases (moderation_sched_<N>) and reuse them next time")
    parser.add_argument("--pg-url", default=bench.DEFAULT_PG_URL, help="PostgreSQL server (superuser)")
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "ko_reviews.parquet")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--trigger", choices=("schedule", "manual"), default="schedule",
                        help="schedule (default): unpause the DAG and time the run the scheduler makes for the "
                             "latest night; manual: the schedule off, one run triggered with --conf")
    parser.add_argument("--conf", type=json.loads, default={},
                        help='DAG run conf (Params) as JSON for --trigger manual, e.g. \'{"chunk_size": 50000}\'')
    parser.add_argument("--parallelism", type=int, default=None,
                        help="LocalExecutor task processes at once (default: CPU count + 2, at least 4)")
    parser.add_argument("--pool-slots", type=int, default=None,
                        help="slots of the moderation_scoring pool (default: CPU count)")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process run beside it")
    parser.add_argument("--scoring-engine", choices=["auto", "numpy", "keras"], default="auto",
                        help="MODERATION_SCORING_ENGINE of the scoring tasks and the in-process run (default auto)")
    parser.add_argument("--label", default="", help="a word stored with the results (e.g. before/after)")
    parser.add_argument("--checkout", type=Path, default=None,
                        help="run another checkout's DAGs and package (e.g. a worktree of an earlier commit, "
                             "for a before/after pair on one machine); default: this one")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench_scheduler.json")
    parser.add_argument("--keep-home", action="store_true", help="keep AIRFLOW_HOME (logs) for a look afterwards")
    parser.add_argument("--report", type=Path, nargs="+", default=None, metavar="JSON",
                        help="measure nothing: print the Markdown tables of these result files (e.g. before, after)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        print(markdown_report([json.loads(path.read_text(encoding="utf-8")) for path in args.report]))
        return 0
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus}")
    from moderation import config

    model_dir = (args.model or config.default_model_dir()).resolve()
    if args.checkout is not None:  # its package first on the path of every process started from here
        args.checkout = args.checkout.resolve()
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.checkout), os.environ.get("PYTHONPATH")]))
    if args.scoring_engine != "auto":  # the in-process run's child inherits it; the Airflow env sets it itself
        os.environ["MODERATION_SCORING_ENGINE"] = args.scoring_engine
    cpus = os.cpu_count() or 2
    if args.conf and args.trigger != "manual":
        raise SystemExit("--conf needs --trigger manual: a scheduled run takes the Params' defaults")
    settings = {"reviews": args.reviews, "conf": args.conf, "label": args.label, "trigger": args.trigger,
                "parallelism": args.parallelism or max(4, cpus + 2), "pool_slots": args.pool_slots or cpus,
                "model_dir": str(model_dir), "reuse_db": args.reuse_db, "scoring_engine": args.scoring_engine,
                "checkout": str(args.checkout or REPO_ROOT),
                "checkout_commit": bench.git_state(args.checkout or REPO_ROOT)["git_commit"]}
    results: dict[str, Any] = {"machine": bench.machine_facts(_bench_settings(args, model_dir)),
                               "settings": settings, "nights": []}
    try:
        for size in args.reviews:
            with reviews_database(args.pg_url, size, args.corpus, model_dir, args.reuse_db,
                                  settings["checkout_commit"] if args.checkout else None) as reviews_url:
                night = scheduler_night(args, settings, reviews_url, size)
                if not args.no_in_process:
                    empty_scoring_tables(reviews_url)
                    _progress(f"{size:,}: the same night in one process")
                    with tempfile.TemporaryDirectory(prefix="moderation-sched-inproc-") as work:
                        night["in_process"] = bench.run_child(reviews_url, Path(work), f"inproc-{size}",
                                                              _in_process_chunk_size(args.conf))
                results["nights"].append(night)
                print(night_table(night), flush=True)
    finally:
        results["machine"]["load_average_end"] = bench._load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        _progress(f"wrote {args.out}")
    print(summary_table(results["nights"]), flush=True)
    return 0


def _bench_settings(args: argparse.Namespace, model_dir: Path) -> Any:
    """The few fields :func:`bench.machine_facts` reads."""
    return argparse.Namespace(pg_url=args.pg_url, model_dir=model_dir, corpus=args.corpus)


def _in_process_chunk_size(conf: dict[str, Any]) -> int:
    from moderation.pipeline import DEFAULT_CHUNK_SIZE

    return int(conf.get("chunk_size") or DEFAULT_CHUNK_SIZE)


# --- the reviews database ----------------------------------------------------

@contextmanager
def reviews_database(pg_url: str, size: int, corpus: Path, model_dir: Path, reuse: bool,
                     checkout_commit: str | None = None) -> Iterator[str]:
    """A PostgreSQL database holding ``size`` unscored reviews of :data:`bench.BENCH_DAY`."""
    from sqlalchemy import text

    admin = bench._pg_admin_engine(pg_url)
    # Seeded and emptied in children on the package under test: an earlier checkout has an earlier
    # schema, so its kept databases are its own (named by its commit).
    kept = f"moderation_sched_{size}" + (f"_{checkout_commit[:8]}" if checkout_commit else "")
    name = kept if reuse else f"moderation_sched_{uuid.uuid4().hex[:12]}"
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
    if exists and _review_count(url) != size:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        exists = None
    if exists:
        _progress(f"{size:,}: reusing database {name}")
        empty_scoring_tables(url)
    else:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        _progress(f"{size:,}: seeding database {name}")
        seconds = bench.seed_reviews_child(url, corpus, size, model_dir)
        _progress(f"{size:,}: seeded in {seconds:.1f}s")
    try:
        yield url
    finally:
        if not reuse:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _review_count(url: str) -> int:
    from sqlalchemy import text

    from moderation import db

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM reviews")).scalar_one())
    except Exception:  # no schema yet: reseed
        return -1
    finally:
        engine.dispose()


def empty_scoring_tables(url: str) -> None:
    """Every review unscored again, in a child on the package under test (its schema, not this checkout's)."""
    bench.empty_scoring_tables_child(url, SCORING_TABLES)


# --- the Airflow under test --------------------------------------------------

def scheduler_night(args: argparse.Namespace, settings: dict[str, Any], reviews_url: str, size: int) -> dict[str, Any]:
    """Start Airflow, trigger one night, wait for it, read its timings; Airflow stopped and dropped after."""
    with airflow_metadata_db(args.pg_url) as meta_url, tempfile.TemporaryDirectory(prefix="airflow-sched-") as tmp:
        home = Path(tmp)
        env = airflow_env(home, meta_url, reviews_url, settings, Path(settings["checkout"]))
        _airflow(env, "db", "migrate")
        _airflow(env, "pools", "set", "moderation_scoring", str(settings["pool_slots"]),
                 "Nightly scoring tasks at once")
        with airflow_components(env, home) as processes:
            wait_for_dag(meta_url, processes)
            wait_for_api_server(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"], processes)
            if args.trigger == "manual":
                run_id = f"bench_{size}_{uuid.uuid4().hex[:8]}"
                _progress(f"{size:,}: triggering {run_id}")
                _airflow(env, "dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(args.conf))
            else:
                _progress(f"{size:,}: unpausing {DAG_ID}: the scheduler starts the latest night")
                _airflow(env, "dags", "unpause", DAG_ID)
                run_id = wait_for_scheduled_run(meta_url, processes)
            state = wait_for_run(meta_url, run_id, processes)
            night = read_timings(meta_url, home, run_id, size)
            night["state"] = state
        if args.keep_home:
            kept = Path(tempfile.mkdtemp(prefix="airflow-sched-kept-"))
            shutil.copytree(home, kept, dirs_exist_ok=True)
            _progress(f"AIRFLOW_HOME kept at {kept}")
    if state != "success":
        raise SystemExit(f"run {run_id} ended {state}: see the task logs (--keep-home)")
    return night


@contextmanager
def airflow_metadata_db(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for Airflow's metadata, dropped afterwards (psycopg2: Airflow's driver)."""
    from sqlalchemy import text

    admin = bench._pg_admin_engine(pg_url)
    name = f"airflow_sched_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airflow_env(home: Path, meta_url: str, reviews_url: str, settings: dict[str, Any],
                checkout: Path = REPO_ROOT) -> dict[str, str]:
    """Airflow as a small production install: LocalExecutor, PostgreSQL metadata, the repository's DAGs."""
    from sqlalchemy.engine import make_url

    port = _free_port()
    reviews = make_url(reviews_url).set(drivername="postgresql")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "MODERATION_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(settings["parallelism"]),
        "AIRFLOW__CORE__DAGS_FOLDER": str(checkout / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True" if settings["trigger"] == "schedule" else "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW_CONN_REVIEWS_DB": reviews.render_as_string(hide_password=False),
        "MODERATION_HOME": str(home / "moderation"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    if settings["trigger"] == "manual":  # no scheduled run beside the triggered one
        env["MODERATION_NIGHTLY_SCHEDULE"] = "off"
    if settings.get("scoring_engine", "auto") != "auto":
        env["MODERATION_SCORING_ENGINE"] = settings["scoring_engine"]
    return env


def _airflow(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(AIRFLOW_BIN), *args], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"airflow {' '.join(args)} failed (exit {done.returncode}):\n"
                         f"{(done.stderr or done.stdout)[-3000:]}")
    return done.stdout


@contextmanager
def airflow_components(env: dict[str, str], home: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Scheduler, DAG processor and API server as separate processes, each in its own process group."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for component in ("api-server", "dag-processor", "scheduler"):
            log = (home / f"{component}.log").open("wb")
            processes[component] = subprocess.Popen([str(AIRFLOW_BIN), component], env=env, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _check_alive(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            raise SystemExit(f"airflow {name} exited with {process.returncode} (see its log with --keep-home)")


def _meta_query(meta_url: str, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(meta_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params or {}).mappings())
    finally:
        engine.dispose()


def wait_for_dag(meta_url: str, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Until the DAG processor has serialised the nightly DAG (and the API server answers)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_alive(processes)
        rows = _meta_query(meta_url, "SELECT d.is_paused FROM dag d JOIN serialized_dag s USING (dag_id) "
                                     "WHERE d.dag_id = :d", {"d": DAG_ID})
        if rows:
            return
        time.sleep(1)
    raise SystemExit(f"{DAG_ID} was not parsed within {START_TIMEOUT_S}s")


def wait_for_api_server(execution_api_url: str, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Until the API server's execution API answers its health check.

    A deployed API server runs all the time; a freshly started one spends
    its first seconds importing its apps, and a task started then waits for
    that (measured: the first task's start-up 8.6-9.6 s, against 0.6-0.8 s
    for later ones). That is Airflow starting, not the night, so the night
    is triggered once the server answers.
    """
    from urllib.error import URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_alive(processes)
        try:
            with urlopen(execution_api_url.rstrip("/") + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the API server did not answer at {execution_api_url} within {START_TIMEOUT_S}s")


def wait_for_scheduled_run(meta_url: str, processes: dict[str, subprocess.Popen[bytes]]) -> str:
    """The run id of the run the scheduler creates once the DAG is unpaused."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_alive(processes)
        rows = _meta_query(meta_url, "SELECT run_id FROM dag_run WHERE dag_id = :d AND run_type = 'scheduled'",
                           {"d": DAG_ID})
        if rows:
            return str(rows[0]["run_id"])
        time.sleep(0.5)
    raise SystemExit(f"the scheduler made no run of {DAG_ID} within {START_TIMEOUT_S}s of unpausing it")


def wait_for_run(meta_url: str, run_id: str, processes: dict[str, subprocess.Popen[bytes]]) -> str:
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        _check_alive(processes)
        rows = _meta_query(meta_url, "SELECT state FROM dag_run WHERE run_id = :r", {"r": run_id})
        if rows and rows[0]["state"] in ("success", "failed"):
            return str(rows[0]["state"])
        time.sleep(0.5)
    raise SystemExit(f"run {run_id} did not finish within an hour")


# --- reading what happened ---------------------------------------------------

def read_timings(meta_url: str, home: Path, run_id: str, size: int) -> dict[str, Any]:
    """Wall time of the run and, per task, queue wait and the phases its process logged."""
    run = _meta_query(meta_url, "SELECT queued_at, start_date, end_date FROM dag_run WHERE run_id = :r",
                      {"r": run_id})[0]
    tis = _meta_query(meta_url, "SELECT task_id, map_index, try_number, state, pool, queued_dttm, start_date, "
                                "end_date FROM task_instance WHERE run_id = :r ORDER BY start_date", {"r": run_id})
    phases = task_phases(home, run_id)
    wall = (run["end_date"] - run["queued_at"]).total_seconds()
    tasks = []
    for ti in tis:
        logged = phases.get((ti["task_id"], ti["map_index"]), {})
        row: dict[str, Any] = {"task": ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""),
                               "state": ti["state"], "pool": ti["pool"], "tries": ti["try_number"],
                               "queued_at_s": _since(run["queued_at"], ti["queued_dttm"]),
                               "ended_at_s": _since(run["queued_at"], ti["end_date"]),
                               "task_seconds": _since(ti["start_date"], ti["end_date"])}
        if logged:
            process_started = datetime.fromtimestamp(logged["process_started"], tz=timezone.utc)
            body_ended = datetime.fromtimestamp(logged["body_ended"], tz=timezone.utc)
            row.update(queue_wait_s=_since(ti["queued_dttm"], process_started),
                       process_start_s=round(logged["body_started"] - logged["process_started"], 3),
                       **{f"{name}_s": seconds for name, seconds in logged["phases"].items()},
                       finish_s=_since(body_ended, ti["end_date"]), peak_rss_mb=logged.get("peak_rss_mb"),
                       rows=logged.get("rows"))
        else:  # a DAG that logs no phases (an earlier release): what the metadata database knows
            row.update(queue_wait_s=_since(ti["queued_dttm"], ti["start_date"]))
        tasks.append(row)
    scoring = [t for t in tasks if t["task"].startswith("score_chunk")]
    return {"reviews": size, "run_id": run_id, "wall_seconds": round(wall, 3),
            "reviews_per_s": round(size / wall, 1), "chunks": len(scoring),
            "trigger_to_start_s": _since(run["queued_at"], run["start_date"]),
            "peak_rss_mb": max((t.get("peak_rss_mb") or 0 for t in tasks), default=None) or None,
            "tasks": tasks}


def _since(earlier: datetime | None, later: datetime | None) -> float | None:
    if earlier is None or later is None:
        return None
    return round((later - earlier).total_seconds(), 3)


def task_phases(home: Path, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The ``task phases`` line of each task's log (last attempt wins), keyed by (task id, map index)."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted((home / "logs").rglob("*.log")):
        if f"run_id={run_id}" not in str(path):
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            at = line.find(PHASES_MARK)
            if at < 0:
                continue
            payload = line[at + len(PHASES_MARK):]
            try:
                if line.lstrip().startswith("{"):  # structured log: the message is JSON inside JSON
                    payload = json.loads(line)["event"][len(PHASES_MARK):]
                record = json.loads(payload)
            except (ValueError, KeyError):
                continue
            found[(record["task"], int(record.get("map_index", -1)))] = record
    return found


# --- tables ------------------------------------------------------------------

TASK_COLUMNS = ("task", "queued_at_s", "task_seconds", "queue_wait_s", "process_start_s", "imports_s", "model_load_s",
                "work_s", "finish_s", "ended_at_s", "peak_rss_mb")


def night_table(night: dict[str, Any]) -> str:
    rows = [[task.get(column) for column in TASK_COLUMNS] for task in night["tasks"]]
    title = (f"{night['reviews']:,} reviews under the scheduler: {night['wall_seconds']:.1f} s from trigger to "
             f"success, {night['reviews_per_s']:,.0f} reviews/s, {night['chunks']} chunk(s)")
    inproc = night.get("in_process")
    if inproc:
        title += (f"; in one process: {inproc['wall_seconds']:.1f} s "
                  f"({night['reviews'] / inproc['wall_seconds']:,.0f} reviews/s, TF import "
                  f"{inproc.get('import_seconds', 0):.1f} s not counted)")
    headers = ["task", "queued at s", "run s", "queue wait s", "process start s", "imports s", "model load s", "work s",
               "finish s", "ended at s", "peak RSS MiB"]
    return bench.format_table(title, headers, rows)


def summary_table(nights: list[dict[str, Any]]) -> str:
    rows = []
    for night in nights:
        inproc = night.get("in_process") or {}
        rows.append([night["reviews"], night["chunks"], night["wall_seconds"], night["reviews_per_s"],
                     night["peak_rss_mb"], inproc.get("wall_seconds"),
                     round(night["reviews"] / inproc["wall_seconds"], 1) if inproc else None])
    return bench.format_table("Nightly DAG under the scheduler (trigger to success) and in one process",
                              ["reviews", "chunks", "scheduler wall s", "scheduler reviews/s",
                               "largest task peak RSS MiB", "in-process wall s", "in-process reviews/s"], rows)


def markdown_report(results: list[dict[str, Any]]) -> str:
    """docs/performance.md's tables: every night of every result file, then each night's tasks."""
    lines = ["| label | commit | reviews | chunks | trigger to success s | reviews/s | largest task peak RSS MiB "
             "| in-process wall s | in-process reviews/s | load at start |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        label = result["settings"].get("label") or "-"
        commit = (result["settings"].get("checkout_commit") or result["machine"].get("git_commit") or "")[:7]
        load = (result["machine"].get("load_average_start") or ["-"])[0]
        for night in result["nights"]:
            inproc = night.get("in_process") or {}
            wall = inproc.get("wall_seconds")
            lines.append(f"| {label} | {commit} | {night['reviews']:,} | {night['chunks']} | "
                         f"{night['wall_seconds']:.1f} | {night['reviews_per_s']:,.0f} | "
                         f"{_md(night.get('peak_rss_mb'))} | {_md(wall)} | "
                         f"{_md(night['reviews'] / wall if wall else None)} | {load} |")
    for result in results:
        for night in result["nights"]:
            lines += ["", f"{result['settings'].get('label') or 'run'}, {night['reviews']:,} reviews, "
                          f"{night['wall_seconds']:.1f} s:", "",
                      "| " + " | ".join(TASK_COLUMNS) + " |", "|" + "---|" * len(TASK_COLUMNS)]
            for task in night["tasks"]:
                lines.append("| " + " | ".join(_md(task.get(column)) for column in TASK_COLUMNS) + " |")
    return "\n".join(lines)


def _md(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
