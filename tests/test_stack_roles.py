"""The Compose stack's roles, as deployed: the database made by the stack's own scripts, then every job as its role.

``docker/postgres-init/10-databases.sh`` creates the databases and users (it
revokes PUBLIC's rights on the reviews database), ``moderation db init`` runs
the migrations as the reviews owner (what ``docker/airflow-init.sh`` does),
the shipped-model step registers the model as that owner. Then: the nightly
job publishes as the scorer login (the Airflow connection's user), moderators
work as a login in the ``moderator`` group, and the retraining DAG's label
snapshot with rating labels runs as the scorer, the role its connection uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import ProgrammingError

from moderation import db, pipeline, retraining
from moderation.cli import main
from moderation.queue import events

pytestmark = pytest.mark.postgres

PG_INIT_SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "postgres-init" / "10-databases.sh"
DAY = datetime(2026, 2, 1, tzinfo=timezone.utc)


@pytest.fixture
def stack(pg_url: str, tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """URLs of the reviews owner, the scorer login and a moderator login, on a database the stack's scripts made."""
    if not shutil.which("psql"):
        pytest.fail("psql is needed to run docker/postgres-init/10-databases.sh as the stack does")
    admin_url = make_url(pg_url)
    suffix = uuid.uuid4().hex[:10]
    names = {"AIRFLOW_DB_NAME": f"stack_af_{suffix}", "AIRFLOW_DB_USER": f"stack_af_{suffix}",
             "REVIEWS_DB_NAME": f"stack_rv_{suffix}", "REVIEWS_DB_USER": f"stack_rv_{suffix}",
             "REVIEWS_SCORER_USER": f"stack_sc_{suffix}"}
    secrets = {"AIRFLOW_DB_PASSWORD": uuid.uuid4().hex, "REVIEWS_DB_PASSWORD": uuid.uuid4().hex,
               "REVIEWS_SCORER_PASSWORD": uuid.uuid4().hex}
    moderator_user, moderator_password = f"stack_mod_{suffix}", uuid.uuid4().hex
    env = {"PATH": os.environ.get("PATH", ""), "PGHOST": admin_url.host or "127.0.0.1",
           "PGPORT": str(admin_url.port or 5432), "POSTGRES_USER": admin_url.username or "postgres",
           **({"PGPASSWORD": admin_url.password} if admin_url.password else {}), **names, **secrets}
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        done = subprocess.run(["bash", str(PG_INIT_SCRIPT)], env=env, capture_output=True, text=True,
                              check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        base = admin_url.set(database=names["REVIEWS_DB_NAME"])
        urls = {
            "owner": base.set(username=names["REVIEWS_DB_USER"], password=secrets["REVIEWS_DB_PASSWORD"]),
            "scorer": base.set(username=names["REVIEWS_SCORER_USER"], password=secrets["REVIEWS_SCORER_PASSWORD"]),
            "moderator": base.set(username=moderator_user, password=moderator_password),
        }
        with admin.connect() as conn:  # a DBA adds a moderator's login, as sql/README.md says
            conn.execute(text(f'CREATE ROLE "{moderator_user}" LOGIN PASSWORD \'{moderator_password}\''))
            conn.execute(text(f'GRANT moderator TO "{moderator_user}"'))
        found = {role: url.render_as_string(hide_password=False) for role, url in urls.items()}
        # airflow-init: the migrations as the owner, then the shipped model registered and activated
        assert main(["db", "init", "--db", found["owner"]]) == 0
        assert main(["models", "register", str(tiny_model_dir), "--activate", "--db", found["owner"]]) == 0
        yield found
    finally:
        with admin.connect() as conn:
            for database in (names["AIRFLOW_DB_NAME"], names["REVIEWS_DB_NAME"]):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            for role in (moderator_user, names["REVIEWS_SCORER_USER"], names["REVIEWS_DB_USER"],
                         names["AIRFLOW_DB_USER"]):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def shop_writes(url: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        for statement, params in statements:
            conn.execute(text(statement), params)
    engine.dispose()


def test_every_job_runs_as_its_deployed_role(stack: dict[str, str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    insert = ("INSERT INTO reviews (review_id, product_id, rating, text, ingested_at) "
              "VALUES (:id, 7, :rating, :text, :at)")
    shop_writes(stack["owner"], [(insert, {"id": i, "rating": rating, "text": words, "at": DAY + timedelta(hours=i)})
                                 for i, rating, words in [(1, 1, "최악이에요 환불해주세요"), (2, 10, "최고예요 또 살게요"),
                                                          (3, 2, "배송이 너무 늦어요")]])

    # The nightly job as the scorer: a temporary staging table, scores, flags, events.
    summary = pipeline.run_nightly(stack["scorer"], DAY, DAY + timedelta(days=1), run_id="scheduled__stack",
                                   threshold=1e-6, work_dir=tmp_path / "chunks")
    assert (summary["reviews_read"], summary["newly_queued"]) == (3, 3)
    assert not (tmp_path / "chunks").exists()

    # Moderators, as a login in the moderator group.
    assert main(["flagged", "--format", "json", "--db", stack["moderator"]]) == 0
    assert {row["review_id"] for row in json.loads(capsys.readouterr().out)} == {1, 2, 3}
    assert main(["decide", "1", "--confirm", "--by", "kim", "--db", stack["moderator"]]) == 0
    assert main(["decide", "2", "--dismiss", "--by", "kim", "--db", stack["moderator"]]) == 0
    capsys.readouterr()
    assert main(["stats", "--format", "json", "--db", stack["moderator"]]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["decided"] == 2
    assert main(["events", "1", "--format", "json", "--db", stack["moderator"]]) == 0
    assert [e["event"] for e in json.loads(capsys.readouterr().out)] == ["queued", "decided"]

    # The shop edits a decided review; the next night, as the scorer, re-opens it (it may move, not decide).
    shop_writes(stack["owner"], [("UPDATE reviews SET text = :text WHERE review_id = 2", {"text": "욕설 가득한 글"})])
    summary = pipeline.run_nightly(stack["scorer"], DAY + timedelta(days=1), DAY + timedelta(days=2),
                                   run_id="scheduled__stack_2", threshold=1e-6)
    assert summary["queue_changes"]["re-opened"] == 1
    assert [e["event"] for e in events(db.make_engine(stack["moderator"]), [2])] == [
        "queued", "decided", "re-opened"]

    # Retraining's label snapshot with rating labels, as the scorer (the DAG's connection).
    snapshot = retraining.snapshot_labels(stack["scorer"], tmp_path / "snapshot",
                                          retraining.RetrainingParams(include_rating_labels=True, min_new_labels=1))
    assert snapshot["rows"] == 3 and snapshot["ready"]
    scorer = create_engine(make_url(stack["scorer"]).set(drivername="postgresql+psycopg"))
    try:
        for statement in (
            "UPDATE moderation_queue SET status = 'confirmed', decided_by = 'bot' WHERE review_id = 3",
            "INSERT INTO review_labels (review_id, label, source, labelled_at) VALUES (3, 1, 'moderator', now())",
            "UPDATE review_labels SET label = 0 WHERE source = 'moderator'",  # no row of another source is visible
            "UPDATE moderation_events SET actor = 'bot'",
        ):
            with scorer.begin() as conn:
                try:
                    changed = conn.execute(text(statement)).rowcount
                except ProgrammingError:
                    continue  # refused outright
                assert changed == 0, statement
    finally:
        scorer.dispose()
    owner = db.make_engine(stack["owner"])
    with owner.connect() as conn:
        labels = dict(conn.execute(text("SELECT source, count(*) FROM review_labels GROUP BY source")).tuples().all())
        status = conn.execute(text("SELECT status FROM moderation_queue WHERE review_id = 3")).scalar_one()
    owner.dispose()
    assert labels == {"moderator": 2, "rating": 3} and status == "pending"
