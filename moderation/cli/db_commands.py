"""Database commands: db init, reviews import, score (the nightly job without Airflow)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from moderation.errors import InputDataError


def register(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    init = db_sub.add_parser("init", help="create the schema (idempotent)")
    _db_option(init)
    init.set_defaults(handler=_db_init)

    score = commands.add_parser("score", help="score the reviews ingested in [start, end) and publish flags")
    _db_option(score)
    score.add_argument("--start", required=True, type=parse_time, help="interval start, ISO date or time (UTC)")
    score.add_argument("--end", required=True, type=parse_time, help="interval end, exclusive")
    score.add_argument("--chunk-size", type=int, default=50_000)
    score.add_argument("--threshold", type=float, default=None, help="override the active model's threshold")
    score.add_argument("--run-id", default=None)
    score.set_defaults(handler=_score)


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, metavar="URL",
                        help="database URL (default: $MODERATION_DB_URL, else the embedded SQLite file)")


def parse_time(value: str) -> datetime:
    """ISO date or date-time; naive values are taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _db_init(args: argparse.Namespace) -> int:
    from moderation import db

    engine = db.make_engine(args.db)
    db.init_schema(engine)
    print(f"schema ready on {engine.url.render_as_string(hide_password=True)}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from moderation.pipeline import run_nightly

    if args.end <= args.start:
        raise InputDataError(f"--end {args.end.isoformat()} must be after --start {args.start.isoformat()}")
    summary = run_nightly(args.db, args.start, args.end, run_id=args.run_id, chunk_size=args.chunk_size,
                          threshold=args.threshold)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
