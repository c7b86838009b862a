"""Moderator commands: queue, claim, release, flagged, decide, stats, events, labels, models.

Tables are drawn for a terminal that shows Hangul (and other East Asian
wide characters) two columns wide: cells are padded by display width, not
by ``len``, so the columns line up under Korean text.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import textwrap
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wcwidth
from tabulate import tabulate

if TYPE_CHECKING:  # the CLI builds every parser at start-up: SQLAlchemy loads only for the commands using it
    from sqlalchemy import Engine

from moderation.errors import InputDataError
from moderation.cli.options import db_option, input_file, int_at_least, output_file, parse_time, score

FORMATS = ("table", "csv", "json", "parquet")
#: Output format named by an ``--output`` extension.
FORMAT_BY_SUFFIX = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}
#: Rows ``flagged`` shows on the screen unless --limit says otherwise.
TABLE_LIMIT = 50
#: Display columns of the text in ``flagged``'s table (a Hangul syllable takes 2).
TEXT_WIDTH = 50
ELLIPSIS = "…"
REJECTIONS_SHOWN = 5


#: Queue statuses a listing may ask for; "any" lifts the filter.
QUEUE_STATUSES = ("pending", "confirmed", "dismissed", "unsure", "expired", "any")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the moderators' commands to the ``moderation`` command."""
    _register_queue(commands)
    _register_claims(commands)
    _register_flagged(commands)
    _register_decide(commands)
    _register_stats(commands)
    _register_events(commands)
    _register_labels(commands)
    _register_models(commands)


# ---------------------------------------------------------------- parsers


def _filter_options(parser: argparse.ArgumentParser, status: bool = True) -> None:
    """The queue filter flags, shared by ``queue`` and ``decide --all-matching``."""
    from moderation.queue_names import BUCKETS, KINDS

    if status:
        parser.add_argument("--status", choices=QUEUE_STATUSES, default="pending",
                            help="only this status (default: pending; any: every status)")
    parser.add_argument("--bucket", choices=BUCKETS, default=None, help="only this priority bucket")
    parser.add_argument("--kind", choices=KINDS, default=None, help="flagged by the model, or audit samples")
    parser.add_argument("--since", type=parse_time, default=None, metavar="DATE",
                        help="flagged at or after (ISO date/time, UTC)")
    parser.add_argument("--until", type=parse_time, default=None, metavar="DATE", help="flagged before (exclusive)")
    parser.add_argument("--product", type=int_at_least(0), default=None, metavar="ID")


def _queue_filter(args: argparse.Namespace) -> Any:
    from moderation.queue import QueueFilter

    status = getattr(args, "status", "pending")
    return QueueFilter(status=None if status == "any" else status, bucket=args.bucket, kind=args.kind,
                       since=args.since, until=args.until, product=args.product)


def _register_queue(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("queue", help="the work queue: by priority bucket, then oldest first",
                                 description="Pending items by default, most urgent bucket first "
                                             "(very_likely, likely, maybe, flagged, audit), oldest flag first "
                                             "within a bucket, with who holds a live claim.")
    _filter_options(parser)
    parser.add_argument("--limit", type=int_at_least(1), default=TABLE_LIMIT, metavar="N",
                        help=f"at most N items (default {TABLE_LIMIT})")
    parser.add_argument("--offset", type=int_at_least(0), default=0, metavar="N", help="skip the first N")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    db_option(parser)
    parser.set_defaults(handler=_queue)


def _register_claims(commands: argparse._SubParsersAction) -> None:
    take = commands.add_parser("claim", help="claim a queue item for a few minutes, so no one else decides it",
                               description="A claim is a lease: it lapses by itself after --minutes "
                                           "(default $MODERATION_CLAIM_MINUTES, else 10). Claiming again "
                                           "extends one's own claim.")
    take.add_argument("review_id", type=int, metavar="REVIEW_ID")
    take.add_argument("--by", required=True, metavar="NAME", help="moderator's name")
    take.add_argument("--minutes", type=int_at_least(1), default=None, metavar="N")
    db_option(take)
    take.set_defaults(handler=_claim)
    give = commands.add_parser("release", help="give up one's claim on a queue item")
    give.add_argument("review_id", type=int, metavar="REVIEW_ID")
    give.add_argument("--by", required=True, metavar="NAME", help="moderator's name")
    db_option(give)
    give.set_defaults(handler=_release)


def _register_flagged(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("flagged", help="list flagged reviews, newest first")
    parser.add_argument("--status", choices=["pending", "confirmed", "dismissed", "unsure", "expired"], default=None,
                        help="only this status (default: all)")
    parser.add_argument("--since", type=parse_time, default=None, metavar="DATE",
                        help="flagged at or after (ISO date/time, UTC)")
    parser.add_argument("--until", type=parse_time, default=None, metavar="DATE", help="flagged before (exclusive)")
    parser.add_argument("--min-score", type=score, default=None, metavar="X", help="only scores >= X (0-1)")
    parser.add_argument("--product", type=int_at_least(0), default=None, metavar="ID")
    parser.add_argument("--limit", type=int_at_least(0), default=None, metavar="N",
                        help=f"at most N rows, 0 for all (default: {TABLE_LIMIT} on the screen, all into a file "
                             f"or as csv/json)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from the --output extension (.csv, .json, .parquet), else table")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="write here instead of stdout")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    db_option(parser)
    parser.set_defaults(handler=_flagged)


def _register_decide(commands: argparse._SubParsersAction) -> None:
    from moderation.queue_names import REASONS

    parser = commands.add_parser(
        "decide", help="confirm, dismiss or mark unsure queued reviews (confirm/dismiss also record labels)",
        description="Decide the REVIEW_IDs, or with --all-matching every pending item the filter flags match "
                    "(items another moderator has claimed are skipped). Items claimed by another moderator "
                    "are refused when named by id.")
    parser.add_argument("review_ids", nargs="*", type=int, metavar="REVIEW_ID")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--confirm", dest="decision", action="store_const", const="confirmed",
                        help="the review is negative: the flag was right")
    choice.add_argument("--dismiss", dest="decision", action="store_const", const="dismissed",
                        help="the review is not negative: the flag was wrong")
    choice.add_argument("--unsure", dest="decision", action="store_const", const="unsure",
                        help="cannot tell: no training label (an earlier moderator label is removed)")
    parser.add_argument("--by", required=True, metavar="NAME", help="moderator's name")
    parser.add_argument("--reason", choices=REASONS, default=None, help="why (recorded with the decision)")
    parser.add_argument("--note", default=None, metavar="TEXT")
    parser.add_argument("--all-matching", action="store_true",
                        help="decide every pending item matching the filter flags below instead of ids")
    _filter_options(parser, status=False)
    parser.add_argument("--limit", type=int_at_least(1), default=None, metavar="N",
                        help="with --all-matching: at most N items, the first in queue order")
    db_option(parser)
    parser.set_defaults(handler=_decide)


def _register_stats(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("stats", help="flags, decisions and observed precision per nightly run")
    parser.add_argument("--since", type=parse_time, default=None, metavar="DATE",
                        help="runs from this ISO date/time (UTC)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    db_option(parser)
    parser.set_defaults(handler=_stats)


def _register_events(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "events", help="the queue's history: queued, re-scored, decided, re-opened, expired",
        description="The append-only moderation_events trail (also the SQL view moderation_history): who moved "
                    "which review when, with the score, model version and threshold of the move.")
    parser.add_argument("review_ids", nargs="*", type=int, metavar="REVIEW_ID", help="only these reviews")
    parser.add_argument("--event", choices=["queued", "re-scored", "decided", "re-opened", "expired"], default=None)
    parser.add_argument("--since", type=parse_time, default=None, metavar="DATE", help="from this ISO date/time")
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="the latest N events (0: all)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    db_option(parser)
    parser.set_defaults(handler=_events)


def _register_labels(commands: argparse._SubParsersAction) -> None:
    labels = commands.add_parser("labels", help="labels for retraining")
    sub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    load = sub.add_parser("import", help="upsert labels from a file with review_id and label columns",
                          description="label: 1 or 'negative', 0 or 'positive'. Bad rows are reported "
                                      "with their number; the rest load in one transaction.")
    load.add_argument("file", type=Path, metavar="FILE", help=".parquet, .csv or .tsv")
    db_option(load)
    load.set_defaults(handler=_labels_import)
    ratings = sub.add_parser("from-ratings", help="weak labels from the stored star ratings")
    ratings.add_argument("--scale", type=int, choices=[5, 10], default=10,
                         help="rating scale: 10 (1-4 negative, 9-10 positive) or 5 (1-2, 4-5)")
    db_option(ratings)
    ratings.set_defaults(handler=_labels_from_ratings)


def _register_models(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="registered model versions")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="versions, the active one marked, with test metrics")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    db_option(listing)
    listing.set_defaults(handler=_models_list)
    register_cmd = sub.add_parser("register", help="register a model directory")
    register_cmd.add_argument("directory", type=Path, metavar="DIR")
    register_cmd.add_argument("--activate", action="store_true", help="also make it the active model")
    db_option(register_cmd)
    register_cmd.set_defaults(handler=_models_register)
    activate = sub.add_parser("activate", help="make a registered version the only active model")
    activate.add_argument("version", metavar="VERSION")
    db_option(activate)
    activate.set_defaults(handler=_models_activate)


# ---------------------------------------------------------------- handlers


@contextmanager
def _engine(args: argparse.Namespace, must_exist: bool = True) -> Iterator[Engine]:
    """An engine on ``--db``; by default an SQLite file must already exist (these commands never create one)."""
    from moderation import db

    engine = db.make_engine(args.db, must_exist=must_exist)
    try:
        yield engine
    finally:
        engine.dispose()


def output_format(given: str | None, output: Path | None) -> str:
    """The format asked for, else the one the output's extension names; a contradiction is an error."""
    named = FORMAT_BY_SUFFIX.get(output.suffix.lower()) if output is not None else None
    if given is None:
        return named or "table"
    if named is not None and named != given:
        raise InputDataError(f"--format {given} does not match --output {output.name} ({named}): "
                             f"change one of them")
    return given


def _flagged(args: argparse.Namespace) -> int:
    from moderation.queue import flagged

    args.format = output_format(args.format, args.output)
    if args.format == "parquet" and args.output is None:
        raise InputDataError("--format parquet writes a file: give --output FILE")
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise InputDataError(f"--until {args.until.isoformat()} must be after --since {args.since.isoformat()}")
    if args.output is not None:
        output_file(args.output, args.force, "--output")
    limit = args.limit
    if limit is None:  # the screen gets a page; a file or a machine format gets everything
        limit = TABLE_LIMIT if args.format == "table" and args.output is None else 0
    with _engine(args) as engine:
        rows = flagged(engine, status=args.status, since=args.since, until=args.until, min_score=args.min_score,
                       product=args.product, limit=limit + 1 if limit else None)
    cut = bool(limit) and len(rows) > limit
    rows = rows[:limit] if limit else rows
    try:
        if args.format == "parquet":
            _write_parquet(rows, args.output)
        else:
            render = {"table": flagged_table, "csv": flagged_csv, "json": flagged_json}[args.format]
            _emit(render(rows), args.output)
    except OSError as exc:  # an unwritable --output is the user's to fix: one line, not a traceback
        raise InputDataError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    more = f"; more match: --limit {limit} cut the list, --limit 0 for all" if cut else ""
    if args.output is not None:
        print(f"wrote {len(rows)} flagged reviews to {args.output} ({args.format}){more}")
    elif cut:
        print(f"showing the first {len(rows)} flagged reviews{more}", file=sys.stderr)
    return 0


def _decide(args: argparse.Namespace) -> int:
    from moderation.queue import decide, decide_matching

    filtered = [flag for flag, value in (("--bucket", args.bucket), ("--kind", args.kind), ("--since", args.since),
                                         ("--until", args.until), ("--product", args.product),
                                         ("--limit", args.limit)) if value is not None]
    if args.all_matching:
        if args.review_ids:
            raise InputDataError("give review ids or --all-matching, not both")
        with _engine(args) as engine:
            count = decide_matching(engine, _queue_filter(args), args.decision, by=args.by, reason=args.reason,
                                    note=args.note, limit=args.limit)
        print(f"{args.decision} {count} matching pending review{'s' if count != 1 else ''} by {args.by.strip()}")
        return 0
    if filtered:
        raise InputDataError(f"{', '.join(filtered)} filter the queue only with --all-matching")
    if not args.review_ids:
        raise InputDataError("give the review ids to decide, or --all-matching with filter flags")
    with _engine(args) as engine:
        count = decide(engine, args.review_ids, args.decision, by=args.by, note=args.note, reason=args.reason)
    ids = sorted(set(args.review_ids))
    shown = ", ".join(str(i) for i in ids[:10]) + (f", ... ({len(ids) - 10} more)" if len(ids) > 10 else "")
    print(f"{args.decision} {count} review{'s' if count != 1 else ''} by {args.by.strip()}: {shown}")
    return 0


def _queue(args: argparse.Namespace) -> int:
    from moderation.queue import queue_page

    with _engine(args) as engine:
        items, total = queue_page(engine, _queue_filter(args), limit=args.limit, offset=args.offset)
    if args.format == "json":
        print(json.dumps({"total": total, "items": items}, indent=2, ensure_ascii=False, default=_json_default))
        return 0
    print(queue_table(items))
    if total > args.offset + len(items):
        print(f"showing {args.offset + 1 if items else args.offset}-{args.offset + len(items)} of {total}: "
              f"--offset {args.offset + len(items)} for more", file=sys.stderr)
    return 0


def _claim(args: argparse.Namespace) -> int:
    from moderation.queue import claim

    with _engine(args) as engine:
        item = claim(engine, args.review_id, args.by, minutes=args.minutes)
    print(f"review {item['review_id']} claimed by {item['claimed_by']} until "
          f"{item['claim_expires_at'].strftime('%Y-%m-%d %H:%M')} UTC")
    return 0


def _release(args: argparse.Namespace) -> int:
    from moderation.queue import release

    with _engine(args) as engine:
        release(engine, args.review_id, args.by)
    print(f"review {args.review_id}: no claim by {args.by.strip()} any more")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from moderation.reporting import stats

    with _engine(args) as engine:
        result = stats(engine, since=args.since)
    if args.format == "json":
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(stats_text(result))
    return 0


def _events(args: argparse.Namespace) -> int:
    from moderation.queue import events

    if args.limit < 0:
        raise InputDataError(f"--limit must be 0 (all) or more, not {args.limit}")
    with _engine(args) as engine:
        rows = events(engine, args.review_ids, event=args.event, since=args.since, limit=args.limit or None)
    if args.format == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'at':<32} {'review':>12} {'event':<10} {'from':<10} {'to':<10} {'score':>6} {'model':<20} by")
    for row in rows:
        score = "" if row["score"] is None else f"{row['score']:.3f}"
        print(f"{row['at']:<32} {row['review_id']:>12} {row['event']:<10} {row['previous_status'] or '':<10} "
              f"{row['status']:<10} {score:>6} {row['model_version'] or '':<20} {row['actor']}")
    return 0


def _labels_import(args: argparse.Namespace) -> int:
    from moderation.labels import import_labels

    input_file(args.file)
    with _engine(args) as engine:
        report = import_labels(engine, args.file)
    if report.rows_read and report.rejected == report.rows_read:
        first = report.rejections[0]
        raise InputDataError(f"no label in {args.file} could be imported ({report.rejected} rejected; "
                             f"{report.unit} {first.line}: {first.reason})")
    print(f"imported labels: {report.summary()}")
    for rejection in report.rejections[:REJECTIONS_SHOWN]:
        print(f"  rejected {report.unit} {rejection.line}: {rejection.reason}")
    if report.rejected > REJECTIONS_SHOWN:
        print(f"  ... and {report.rejected - REJECTIONS_SHOWN} more rejected")
    return 0


def _labels_from_ratings(args: argparse.Namespace) -> int:
    from moderation.labels import rating_labels

    with _engine(args) as engine:
        written = rating_labels(engine, scale=args.scale)
    print(f"rating labels on the {args.scale}-point scale: {written} written or changed")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from moderation.registry import list_models

    with _engine(args) as engine:
        models = list_models(engine)
    if args.format == "json":
        print(json.dumps(models, indent=2, ensure_ascii=False, default=_json_default))
    elif not models:
        print("no model registered: `moderation models register DIR`")
    else:
        print(models_table(models))
    return 0


def _models_register(args: argparse.Namespace) -> int:
    from moderation import db
    from moderation.registry import register_model

    with _engine(args) as engine:
        with db.translate_errors(engine), engine.connect() as conn:
            db.require_tables(conn, db.model_versions)
        card = register_model(engine, args.directory, activate=args.activate)
    state = "active" if args.activate else "not active"
    points = f"; operating points {', '.join(card.operating_point_names())}" if card.operating_points else ""
    print(f"registered model {card.version} (threshold {card.threshold:.4f}, {state}{points}) from {args.directory}")
    return 0


def _models_activate(args: argparse.Namespace) -> int:
    from moderation.registry import activate_model

    with _engine(args) as engine:
        model = activate_model(engine, args.version)
    print(f"model {model['version']} is now the active model (threshold {model['threshold']:.4f})")
    return 0


# ---------------------------------------------------------------- output


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else str(value)


FLAG_COLUMNS = ["review_id", "product_id", "score", "threshold", "status", "flagged_at", "model_version", "run_id",
                "decided_by", "decided_at", "note", "rating", "created_at", "text"]


def flagged_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FLAG_COLUMNS)
    for row in rows:
        writer.writerow([_cell_text(row[c]) for c in FLAG_COLUMNS])
    return buffer.getvalue()


def flagged_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps([{c: row[c] for c in FLAG_COLUMNS} for row in rows], indent=2, ensure_ascii=False,
                      default=_json_default)


def _write_parquet(rows: list[dict[str, Any]], output: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    for column in ("flagged_at", "decided_at", "created_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame = frame.astype({"review_id": "int64", "product_id": "int64", "score": "float64", "threshold": "float64",
                          "rating": "Int16"})
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(output, index=False)


def flagged_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no flagged reviews match"
    headers = ["review_id", "score", "status", "flagged_at (UTC)", "product", "text"]
    cells = [[str(r["review_id"]), "edited" if r["score"] is None else f"{r['score']:.4f}", r["status"], r["flagged_at"].strftime("%Y-%m-%d %H:%M"),
              str(r["product_id"]), truncate(one_line(r["text"] or ""), TEXT_WIDTH)] for r in rows]
    return render_table(headers, cells, right={0, 1, 4})


def queue_table(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no queue items match"
    headers = ["review_id", "bucket", "kind", "score", "status", "flagged_at (UTC)", "claimed by", "product", "text"]
    cells = [[str(i["review_id"]), i["bucket"], i["kind"], "edited" if i["score"] is None else f"{i['score']:.4f}",
              i["status"] + (f" ({i['reason']})" if i["reason"] else ""), i["flagged_at"].strftime("%Y-%m-%d %H:%M"),
              f"{i['claimed_by']} until {i['claim_expires_at'].strftime('%H:%M')}" if i["claimed_by"] else "",
              str(i["product_id"]), truncate(one_line(i["text"] or ""), TEXT_WIDTH)] for i in items]
    return render_table(headers, cells, right={0, 3, 7})


def stats_text(result: dict[str, Any]) -> str:
    overall = result["overall"]
    lines = []
    if result["runs"]:
        headers = ["run_id", "night", "model", "scored", "flagged", "rate", "queued", "decided", "confirmed",
                   "dismissed", "precision"]
        cells = [[r["run_id"], r["interval_start"][:10], r["model_version"], str(r["reviews_scored"]),
                  str(r["reviews_flagged"]), _percent(r["flag_rate"]), str(r["flagged"]), str(r["decided"]),
                  str(r["confirmed"]), str(r["dismissed"]), _percent(r["precision"])] for r in result["runs"]]
        lines += [render_table(headers, cells, right=set(range(3, 11))), ""]
    else:
        lines.append("no scoring runs" + (f" since {result['since']}" if result["since"] else ""))
    runs = overall["runs"]
    lines.append(f"overall: {runs} run{'s' if runs != 1 else ''}, {overall['reviews_scored']} reviews scored, "
                 f"{overall['reviews_flagged']} flagged (rate {_percent(overall['flag_rate'])})")
    lines.append(f"queue: {overall['flagged']} flagged, {overall['decided']} decided "
                 f"({overall['confirmed']} confirmed, {overall['dismissed']} dismissed), {overall['pending']} pending; "
                 f"observed precision {_percent(overall['precision'])}")
    return "\n".join(lines)


def models_table(models: list[dict[str, Any]]) -> str:
    headers = ["", "version", "threshold", "created (UTC)", "bal_acc", "roc_auc", "files", "path"]
    cells = [["*" if m["active"] else "", m["version"], f"{m['threshold']:.4f}",
              m["created"].strftime("%Y-%m-%d %H:%M"), _number(m["balanced_accuracy"]), _number(m["roc_auc"]),
              m["files"], m["path"]] for m in models]
    notes = ["(* = active)"]
    if any(m["files"] == "missing" for m in models):
        notes.append("missing: the model directory or one of its files is gone; it cannot be activated")
    if any(m["files"] == "changed" for m in models):
        notes.append("changed: the files differ from the registered ones; it cannot be scored with")
    return "\n".join([render_table(headers, cells, right={2, 4, 5}), *notes, *operating_point_lines(models)])


def operating_point_lines(models: list[dict[str, Any]]) -> list[str]:
    """Each model's named operating points per domain, with what they reached on that domain's validation rows."""
    lines: list[str] = []
    for m in models:
        points = m.get("operating_points") or {}
        if not points:
            continue
        lines.append(f"operating points of {m['version']} (--operating-point NAME; precision, recall and "
                     f"false-positive rate on the domain's validation rows):")
        rows = []
        for domain, named in points.items():
            for name, point in named.items():
                label = name if domain == m.get("default_domain") else f"{domain}:{name}"
                rows.append([label, domain + (" (default)" if domain == m.get("default_domain") else ""),
                             _number(_finite_or_none(point.get("threshold"))),
                             _number(_finite_or_none(point.get("precision"))),
                             _number(_finite_or_none(point.get("recall"))),
                             _number(_finite_or_none(point.get("false_positive_rate")))])
        lines.append(textwrap.indent(render_table(["name", "domain", "threshold", "precision", "recall", "fpr"],
                                                  rows, right={2, 3, 4, 5}), "  "))
    return lines


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- display width


def one_line(text: str) -> str:
    """NFC (decomposed Hangul jamo would be counted apart) and every control or line break as one space."""
    text = unicodedata.normalize("NFC", text)
    cleaned = "".join(" " if unicodedata.category(c) in {"Cc", "Zl", "Zp"} else c for c in text)
    return " ".join(cleaned.split())


def truncate(text: str, width: int) -> str:
    """At most ``width`` terminal columns (Hangul and emoji take two), an ellipsis marking a cut."""
    if wcwidth.width(text) <= width:
        return text
    return wcwidth.clip(text, 0, width - wcwidth.width(ELLIPSIS)).rstrip() + ELLIPSIS


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> str:
    """Columns padded by display width (tabulate measures with wcwidth), so every line is equally wide."""
    align = ["right" if i in (right or set()) else "left" for i in range(len(headers))]
    return tabulate(rows, headers, tablefmt="simple", colalign=align, disable_numparse=True)
