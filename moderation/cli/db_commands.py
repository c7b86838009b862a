"""Database commands: db init, reviews import, score (the nightly job without Airflow)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moderation.cli.options import db_option, input_file, int_at_least, parse_time, progress_option, threshold_choice
from moderation.errors import InputDataError

#: Rejected lines ``reviews import`` names; the count covers them all.
REJECTIONS_SHOWN = 5


def register(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, text in (("init", "create the schema, or bring it to the newest revision (idempotent)"),
                       ("upgrade", "apply the schema migrations the database lacks (same as init)")):
        action = db_sub.add_parser(name, help=text, description=text + ". A database made by the first "
                                   "release (no alembic_version table) is recognised and upgraded in place.")
        db_option(action)
        action.set_defaults(handler=_db_upgrade)
    status = db_sub.add_parser("status", help="the database's schema revision and the code's")
    db_option(status)
    status.set_defaults(handler=_db_status)
    sql = db_sub.add_parser("sql", help="print the migrations as PostgreSQL DDL (alembic upgrade --sql)",
                            description="Print the upgrade as SQL for a DBA to review and run with psql -1. "
                                        "Without --from: the whole schema (what sql/schema.sql holds).")
    sql.add_argument("--from", dest="start", default=None, metavar="REV",
                     help="the revision the database is at (see `moderation db status`)")
    sql.set_defaults(handler=_db_sql)

    reviews = commands.add_parser("reviews", help="load reviews into the database")
    reviews_sub = reviews.add_subparsers(dest="reviews_command", metavar="ACTION", required=True)
    load = reviews_sub.add_parser(
        "import", help="upsert a review file (corpus Parquet, CSV/TSV, NSMC or Naver shopping TSV)",
        description="Upsert reviews on review_id: importing a file again changes nothing. Broken rows are "
                    "reported with their line number and skipped; the rest load in one transaction.")
    load.add_argument("file", type=Path, metavar="FILE", help=".parquet, .csv, .tsv or .txt")
    db_option(load)
    load.add_argument("--spread-days", type=int_at_least(1), default=None, metavar="N",
                      help="spread ingested_at over the last N days (demo history) instead of now")
    progress_option(load)
    load.set_defaults(handler=_reviews_import)

    score = commands.add_parser("score", help="score the reviews ingested in [start, end) and publish flags",
                                description="The nightly job without Airflow. The run records in scoring_runs "
                                            "the operating point its threshold came from: the --operating-point "
                                            "given, default (the card's threshold), or none for --threshold.")
    db_option(score)
    score.add_argument("--start", required=True, type=parse_time, help="interval start, ISO date or time (UTC)")
    score.add_argument("--end", required=True, type=parse_time, help="interval end, exclusive")
    score.add_argument("--chunk-size", type=int_at_least(1), default=50_000, help="reviews per scoring chunk")
    threshold_choice(score, "override the active model's threshold (between 0 and 1); the run records no "
                            "operating point")
    score.add_argument("--run-id", type=run_id, default=None,
                       help="name of the run record (default: from the interval); one run id, one interval")
    score.add_argument("--audit-sample", type=int_at_least(0), default=0, metavar="N",
                       help="also queue N of the run's unflagged reviews as audit items, seeded by the run id "
                            "(default 0; the nightly DAG uses MODERATION_AUDIT_SAMPLE, default 50)")
    score.set_defaults(handler=_score)


def run_id(value: str) -> str:
    """A run id: printable, 1-250 characters (the column's width)."""
    if not value.strip() or len(value) > 250 or not value.isprintable():
        raise argparse.ArgumentTypeError(f"must be 1-250 printable characters, not {value!r}")
    return value


def _db_upgrade(args: argparse.Namespace) -> int:
    from moderation import db, migrations

    engine = db.make_engine(args.db)
    try:
        before, after = migrations.upgrade(engine)
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    change = f"upgraded from {before or 'an empty database'} to {after}" if before != after else f"already at {after}"
    print(f"schema ready on {where}: {change}")
    return 0


def _db_status(args: argparse.Namespace) -> int:
    from moderation import db, migrations

    engine = db.make_engine(args.db)
    try:
        with db.translate_errors(engine), engine.connect() as conn:
            found = migrations.current(conn)
            legacy = found is None and migrations.is_legacy(conn)
    finally:
        engine.dispose()
    wanted = migrations.head()
    state = found or ("first release, unversioned" if legacy else "empty")
    verdict = "up to date" if found == wanted else f"run `{migrations.UPGRADE_COMMAND}`"
    print(f"database: {state}; code: {wanted}; {verdict}")
    return 0


def _db_sql(args: argparse.Namespace) -> int:
    from moderation import migrations

    print(migrations.offline_sql(start=args.start), end="")
    return 0


def _reviews_import(args: argparse.Namespace) -> int:
    from moderation import db
    from moderation.importing import import_reviews

    from moderation.progress import wanted

    input_file(args.file)
    engine = db.make_engine(args.db)
    try:
        report = import_reviews(engine, args.file, spread_days=args.spread_days, progress=wanted(args.progress))
    finally:
        engine.dispose()
    if report.rows_read and report.rejected == report.rows_read:
        first = report.rejections[0]
        raise InputDataError(f"no row of {args.file} could be imported ({report.rejected} rejected; "
                             f"{report.unit} {first.line}: {first.reason})")
    print(f"imported into {engine.url.render_as_string(hide_password=True)}: {report.summary(first=0)}")
    shown = report.rejections[:REJECTIONS_SHOWN]
    for rejection in shown:
        print(f"  rejected {report.unit} {rejection.line}: {rejection.reason}")
    if report.rejected > len(shown):
        print(f"  ... and {report.rejected - len(shown)} more rejected")
    return 0


def _score(args: argparse.Namespace) -> int:
    from moderation.pipeline import run_nightly

    if args.end <= args.start:
        raise InputDataError(f"--end {args.end.isoformat()} must be after --start {args.start.isoformat()}")
    summary = run_nightly(args.db, args.start, args.end, run_id=args.run_id, chunk_size=args.chunk_size,
                          threshold=args.threshold, operating_point=args.operating_point,
                          audit_sample=args.audit_sample)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
