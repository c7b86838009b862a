"""``make demo``: seed the embedded SQLite database and run the real nightly DAG on it.

Steps, each visible in the output:

1. create ``var/reviews.db`` (under ``MODERATION_HOME``) and its schema;
2. import a few thousand real shop reviews with 5-point stars, ``ingested_at``
   spread over the three days before today (UTC), so "yesterday" has about a
   third of them: every shopping review and Steam (game-store) reviews of
   ``other_domains.parquet``, prepared by ``scripts/shop_reviews.py``
   (stars the corpus lacks are DERIVED from the review's label: negative 1-2,
   positive 4-5; products are synthetic, a few dozen per domain). Without the
   shared corpus the 800-row sample in ``tests/data`` is used, and said so;
3. migrate a private Airflow metadata database in ``var/airflow``;
4. ``airflow dags test review_moderation_nightly <today>``: the run whose data
   interval is yesterday, every task run for real (plan, mapped scoring,
   publish), with the reviews database given as the Connection ``reviews_db``;
5. print the run's summary and the ten highest-scored flagged reviews.

Re-running is safe: the import upserts (nothing changes) and the nightly run
is idempotent. ``--fresh`` starts over with a new database
(``.venv/bin/python scripts/demo.py --fresh``).

The demo is tooling of the checkout, beside the package: it is not part of
the installed wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from moderation import config

#: The checkout this script belongs to: its DAGs, the corpus beside it, the test samples.
REPO_ROOT = Path(__file__).resolve().parents[1]

DAG_ID = "review_moderation_nightly"
DEMO_REVIEWS = 6_000
SPREAD_DAYS = 3
SEED = 20240301


def corpus_path() -> Path:
    """The shop reviews' source: the shared other-domains corpus, else the sample shipped with the tests."""
    import shop_reviews  # beside this script

    return shop_reviews.corpus_path()


def training_corpus_path() -> Path:
    """The movie-review corpus a model can be trained on (for the hint when no model is there)."""
    shared = REPO_ROOT.parent / "shared" / "data" / "ko_reviews.parquet"
    return shared if shared.is_file() else REPO_ROOT / "tests" / "data" / "reviews_sample.parquet"


def demo_reviews_file(work: Path) -> Path:
    """The shop's reviews: every shopping review, then Steam reviews up to :data:`DEMO_REVIEWS` (seeded)."""
    import pandas as pd

    import shop_reviews  # beside this script

    source = corpus_path()
    if source.name != shop_reviews.SHARED_FILE:
        print(f"  note: {shop_reviews.SHARED_FILE} is not in shared/data beside the checkout; "
              f"using the {source.name} sample ({source})")
    rows = shop_reviews.load(source)
    shopping = rows[rows["domain"] == "shopping"]
    steam = rows[rows["domain"] == "steam"]
    room = max(DEMO_REVIEWS - len(shopping), 0)
    if len(steam) > room:
        steam = steam.sample(n=room, random_state=SEED)
    frame = pd.concat([shopping, steam]).sort_values("review_id").reset_index(drop=True)
    out = work / "demo_reviews.parquet"
    frame.to_parquet(out, index=False)
    derived = int((frame["rating_source"] == "derived").sum())
    print(f"  {len(frame):,} shop reviews from {source}: {len(shopping):,} shopping, {len(steam):,} Steam, "
          f"{frame['product_id'].nunique()} synthetic products; stars derived from the label for {derived:,} "
          f"(negative 1-2, positive 4-5), the author's own for {len(frame) - derived:,}")
    return out


def airflow_env(home: Path, db_url: str) -> dict[str, str]:
    """Environment for the ``airflow`` CLI: a private home, this checkout's DAGs, the demo database."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_REVIEWS_DB": db_url,
        "MODERATION_HOME": str(config.data_dir()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def run_logged(command: list[str], env: dict[str, str], log_path: Path, what: str) -> None:
    """Run an ``airflow`` command with its (long) output in a log file; on failure show the tail."""
    with log_path.open("w", encoding="utf-8") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"demo: {what} failed (exit {done.returncode}); full log: {log_path}")


def latest_run(engine: Any, start: datetime, end: datetime) -> dict[str, Any] | None:
    from sqlalchemy import select

    from moderation import db

    runs = db.scoring_runs
    with engine.connect() as conn:
        row = conn.execute(
            select(runs).where(runs.c.interval_start == start, runs.c.interval_end == end)
            .order_by(runs.c.finished_at.desc()).limit(1)
        ).first()
    return dict(row._mapping) if row else None


def top_flagged(engine: Any, limit: int = 10) -> list[dict[str, Any]]:
    from sqlalchemy import column, select, table

    view = table("flagged_reviews", column("review_id"), column("text"), column("score"), column("rating"),
                 column("status"))
    with engine.connect() as conn:
        rows = conn.execute(select(view).order_by(view.c.score.desc(), view.c.review_id).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def one_line(text: str | None, width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="delete the demo database and Airflow home first")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from moderation import db
    from moderation.errors import ModerationError
    from moderation.importing import import_reviews

    model_dir = config.default_model_dir()
    if not (model_dir / "card.json").is_file():
        print(f"demo: no model at {model_dir}. Train one first, e.g.\n"
              f"  .venv/bin/moderation train --data {training_corpus_path()} --out {model_dir}\n"
              f"or point MODERATION_MODEL_DIR at a model directory.", file=sys.stderr)
        return 2

    started = time.perf_counter()
    var = config.data_dir()
    db_path = var / "reviews.db"
    airflow_home = var / "airflow"
    if args.fresh:
        for path in (db_path, db_path.with_name("reviews.db-wal"), db_path.with_name("reviews.db-shm")):
            path.unlink(missing_ok=True)
        shutil.rmtree(airflow_home, ignore_errors=True)
    var.mkdir(parents=True, exist_ok=True)
    airflow_home.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{db_path}"
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    interval = (today - timedelta(days=1), today)

    try:
        print(f"1. database {db_path}")
        engine = db.make_engine(db_url)
        db.init_schema(engine)
        print(f"2. importing shop reviews (5-point stars), ingested_at spread over the {SPREAD_DAYS} days before {today:%Y-%m-%d}")
        report = import_reviews(engine, demo_reviews_file(var), spread_days=SPREAD_DAYS, now=today)
        print(f"  {report.summary()}")
    except ModerationError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2

    airflow = str(Path(sys.executable).with_name("airflow"))
    env = airflow_env(airflow_home, db_url)
    print(f"3. Airflow metadata database in {airflow_home}")
    run_logged([airflow, "db", "migrate"], env, airflow_home / "db-migrate.log", "airflow db migrate")
    logical_date = today.date().isoformat()
    print(f"4. airflow dags test {DAG_ID} {logical_date}  (data interval {interval[0]:%Y-%m-%d %H:%M} .. "
          f"{interval[1]:%Y-%m-%d %H:%M} UTC)")
    run_logged([airflow, "dags", "test", DAG_ID, logical_date], env, airflow_home / "dags-test.log",
               "the nightly DAG run")

    run = latest_run(engine, *interval)
    if run is None:
        raise SystemExit(f"demo: the DAG run recorded no scoring run; see {airflow_home / 'dags-test.log'}")
    rate = run["reviews_flagged"] / run["reviews_scored"] if run["reviews_scored"] else 0.0
    print("\n=== run summary ===")
    print(f"run          {run['run_id']}")
    print(f"model        {run['model_version']} (threshold {run['threshold']:.4f})")
    print(f"read         {run['reviews_read']:,}")
    print(f"scored       {run['reviews_scored']:,}")
    reasons = json.loads(run["skip_reasons"] or "{}")
    print(f"skipped      {run['reviews_skipped']:,}" + (f"  {reasons}" if reasons else ""))
    print(f"flagged      {run['reviews_flagged']:,}  ({rate:.1%} of scored)")
    print("\n=== top 10 flagged reviews (flagged_reviews view) ===")
    for row in top_flagged(engine):
        stars = "-" if row["rating"] is None else f"{row['rating']}★"
        print(f"{row['score']:.3f}  {stars:3s} {row['status']:9s}  {one_line(row['text'])}")
    engine.dispose()
    print(f"\ndone in {time.perf_counter() - started:.0f}s. Database: {db_path}; Airflow logs: {airflow_home}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
