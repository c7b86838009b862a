"""The reviews database: one SQLAlchemy schema for SQLite and PostgreSQL.

These tables describe the schema at the newest migration
(``moderation/migrations``), which is what creates and changes it; a test
checks that a database upgraded to head matches them. ``sql/schema.sql`` is
the same upgrade as PostgreSQL DDL. Every statement here is built with
SQLAlchemy Core and bound parameters: no SQL is assembled from strings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from moderation.config import default_db_url
from moderation.errors import DatabaseError

metadata = MetaData()

reviews = Table(
    "reviews",
    metadata,
    Column("review_id", BigInteger, primary_key=True, autoincrement=False),
    Column("product_id", BigInteger, nullable=False),
    Column("rating", SmallInteger, nullable=True),
    Column("text", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    # Raised by a database trigger whenever text changes, for every writer (revision 0006).
    Column("text_version", Integer, nullable=False, server_default=text("1")),
    Index("ix_reviews_ingested_at", "ingested_at", "review_id"),
    Index("ix_reviews_product_id", "product_id"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(128), primary_key=True),
    Column("path", Text, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("metrics", Text, nullable=True),  # JSON of the card's metrics
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("is_active", Boolean, nullable=False, default=False),
    # SHA-256 of the directory's files (see moderation.model.bundle_fingerprint); NULL for rows
    # registered before fingerprints, filled in at their next successful load.
    Column("fingerprint", String(64), nullable=True),
    # One active model, enforced by the database (revision 0005).
    Index("ux_model_versions_one_active", "is_active", unique=True,
          postgresql_where=text("is_active"), sqlite_where=text("is_active")),
)

scoring_runs = Table(
    "scoring_runs",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("reviews_read", Integer, nullable=False, default=0),
    Column("reviews_scored", Integer, nullable=False, default=0),
    Column("reviews_skipped", Integer, nullable=False, default=0),
    Column("reviews_flagged", Integer, nullable=False, default=0),
    Column("skip_reasons", Text, nullable=True),  # JSON {reason: count}
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("operating_point", String(64), nullable=True),  # named threshold of the card (revision 0003)
    # Unflagged reviews the run queued as audit samples (revision 0011).
    Column("reviews_audited", Integer, nullable=False, default=0, server_default=text("0")),
    CheckConstraint("status IN ('running', 'success', 'failed')", name="ck_scoring_runs_status"),
    Index("ix_scoring_runs_interval", "interval_start", "interval_end"),
)

review_scores = Table(
    "review_scores",
    metadata,
    Column("review_id", BigInteger, ForeignKey("reviews.review_id"), primary_key=True),
    Column("model_version", String(128), primary_key=True),
    Column("score", Float, nullable=True),
    Column("skip_reason", String(64), nullable=True),
    Column("scored_at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("text_version", Integer, nullable=False, server_default=text("1")),  # of the text scored (0007)
    CheckConstraint("(score IS NULL) <> (skip_reason IS NULL)", name="ck_review_scores_score_or_reason"),
    Index("ix_review_scores_run_id", "run_id"),
)

moderation_queue = Table(
    "moderation_queue",
    metadata,
    Column("review_id", BigInteger, ForeignKey("reviews.review_id"), primary_key=True),
    Column("model_version", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),
    Column("flagged_at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("decided_by", String(128), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("note", Text, nullable=True),
    Column("text_version", Integer, nullable=False, server_default=text("1")),  # of the text scored (0007)
    # Revision 0011: 'flagged' by the model or an 'audit' sample of unflagged reviews; the priority bucket
    # from the card's operating points at flag time; the claim (a lease that lapses); the decision's reason.
    Column("kind", String(16), nullable=False, default="flagged", server_default=text("'flagged'")),
    Column("bucket", String(32), nullable=False, default="flagged", server_default=text("'flagged'")),
    Column("claimed_by", String(128), nullable=True),
    Column("claim_expires_at", DateTime(timezone=True), nullable=True),
    Column("reason", String(32), nullable=True),
    CheckConstraint("status IN ('pending', 'confirmed', 'dismissed', 'unsure', 'expired')",
                    name="ck_moderation_queue_status"),
    CheckConstraint("kind IN ('flagged', 'audit')", name="ck_moderation_queue_kind"),
    Index("ix_moderation_queue_status_flagged", "status", "flagged_at"),
)

review_labels = Table(
    "review_labels",
    metadata,
    Column("review_id", BigInteger, ForeignKey("reviews.review_id"), primary_key=True),
    Column("label", SmallInteger, nullable=False),  # 1 = negative, 0 = positive
    Column("source", String(16), primary_key=True),
    Column("labelled_at", DateTime(timezone=True), nullable=False),
    Column("labelled_by", String(128), nullable=True),
    Column("text_version", Integer, nullable=True),  # the text a moderator judged; NULL: any (revision 0010)
    CheckConstraint("label IN (0, 1)", name="ck_review_labels_label"),
    CheckConstraint("source IN ('moderator', 'import', 'rating')", name="ck_review_labels_source"),
)

#: Append-only history of every queue transition (revision 0008); triggers refuse UPDATE and DELETE.
moderation_events = Table(
    "moderation_events",
    metadata,
    Column("event_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("review_id", BigInteger, nullable=False),
    Column("event", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # the queue status after the event
    Column("previous_status", String(16), nullable=True),
    Column("actor", String(250), nullable=False),  # a moderator's name, or the run that did it
    Column("at", DateTime(timezone=True), nullable=False),
    Column("score", Float, nullable=True),
    Column("model_version", String(128), nullable=True),
    Column("threshold", Float, nullable=True),
    Column("text_version", Integer, nullable=True),
    Column("run_id", String(250), nullable=True),
    Column("note", Text, nullable=True),
    Column("reason", String(32), nullable=True),  # a decision's reason code (revision 0011)
    CheckConstraint("event IN ('queued', 're-scored', 'decided', 're-opened', 'expired')",
                    name="ck_moderation_events_event"),
    Index("ix_moderation_events_review", "review_id", "event_id"),
    Index("ix_moderation_events_at", "at"),
)

#: The web app's logins (revision 0011); ``password_hash`` is scrypt with a random salt (moderation.accounts).
moderator_accounts = Table(
    "moderator_accounts",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False, server_default=text("false")),
)

#: Tables the package owns, in dependency order.
TABLES = [reviews, model_versions, scoring_runs, review_scores, moderation_queue, review_labels, moderation_events,
          moderator_accounts]
#: Views the migrations create: the moderators' queue and the queue's history.
VIEWS = ["flagged_reviews", "moderation_history"]
#: Foreign keys that PostgreSQL checks with statement-level triggers instead of a per-row constraint
#: (revision 0012): a night writes a score for every review it reads and queues the flagged ones, and the
#: per-row checks were half of publishing a million. (table, column) -> the triggers, by table, that stand
#: in for each. SQLite keeps the constraints.
_ON_REVIEWS = ["reviews_delete_holds_key_writers", "reviews_delete_keeps_referenced",
               "reviews_id_update_holds_key_writers", "reviews_update_keeps_referenced"]
STATEMENT_CHECKED_KEYS = {
    (table, "review_id"): {table: [f"{table}_insert_reviews_exist", f"{table}_update_reviews_exist"],
                           "reviews": _ON_REVIEWS}
    for table in ("review_scores", "moderation_queue")
}


def declared_foreign_keys(table: Table, dialect: str) -> list[ForeignKey]:
    """The table's foreign keys that ``dialect``'s schema holds as constraints (:data:`STATEMENT_CHECKED_KEYS`)."""
    return [fk for fk in table.foreign_keys
            if dialect != "postgresql" or (table.name, fk.parent.name) not in STATEMENT_CHECKED_KEYS]


def resolve_db_url(url: str | None = None) -> str:
    """``--db`` value, else ``MODERATION_DB_URL``, else the embedded SQLite file."""
    return url or os.environ.get("MODERATION_DB_URL") or default_db_url()


#: What a URL may name: the two databases the schema is written for.
SUPPORTED = "sqlite:///PATH or postgresql://USER@HOST/DATABASE"


def make_engine(url: str | None = None, must_exist: bool = False) -> Engine:
    """An engine for the URL; SQLite gets foreign keys, WAL and a busy timeout.

    A ``postgresql://`` URL is routed to the psycopg 3 driver. A URL that is
    not SQLite or PostgreSQL is refused here with a :class:`DatabaseError`
    rather than a driver's import error later. With ``must_exist`` (read-only
    commands) a missing SQLite file is an error instead of being created,
    folder and all.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = resolve_db_url(url)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        parsed = make_url(url)
    except ArgumentError:
        hidden = re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
        raise DatabaseError(f"not a database URL: {hidden!r} (use {SUPPORTED})") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise DatabaseError(f"unsupported database {shown}: use {SUPPORTED}")
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if not path or path == ":memory:":
            raise DatabaseError(f"{shown} names no database file: use sqlite:///PATH")
        if Path(path).is_dir():
            raise DatabaseError(f"database path {path} is a directory, not a SQLite file")
        if must_exist and not Path(path).is_file():
            raise DatabaseError(f"database file not found: {path} (create it with `moderation db init` "
                                f"or `moderation reviews import`)")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = _create(url, shown, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return _create(url, shown, pool_pre_ping=True)


def _create(url: str, shown: str, **kwargs: object) -> Engine:
    """``create_engine``, a missing driver or bad option reported as a :class:`DatabaseError`."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        return create_engine(url, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError, TypeError, ValueError) as exc:
        raise DatabaseError(f"cannot use database {shown}: {exc} (use {SUPPORTED})") from None


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def init_schema(engine: Engine) -> None:
    """Bring the database to the newest schema revision (idempotent): ``moderation db init``/``upgrade``."""
    from moderation import migrations

    migrations.upgrade(engine)


@contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn driver errors into :class:`DatabaseError` naming the database (password hidden)."""
    try:
        yield
    except OperationalError as exc:
        raise DatabaseError(f"database {engine.url.render_as_string(hide_password=True)} is unavailable: "
                            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database error on {engine.url.render_as_string(hide_password=True)}: "
                            f"{str(exc).strip().splitlines()[0]}") from exc


def activate_only(conn: Connection, version: str) -> None:
    """Make ``version`` the one active model: others off first, so the unique index never sees two."""
    conn.execute(model_versions.update().where(model_versions.c.is_active.is_(True),
                                               model_versions.c.version != version).values(is_active=False))
    conn.execute(model_versions.update().where(model_versions.c.version == version).values(is_active=True))


#: Ids per ``IN (...)`` list: well inside both databases' bound-parameter limits.
IN_BATCH = 5_000


def batches(values: Sequence[Any], size: int = IN_BATCH) -> Iterator[Sequence[Any]]:
    """``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


# ---------------------------------------------------------------- SQLite and PostgreSQL differences
# Where the two databases need different statements, the difference lives here, once.


def dialect_insert(conn: Connection) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` on both databases."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def id_in(conn: Connection, column: Any, ids: Sequence[int]) -> Any:
    """``column IN ids``; on PostgreSQL one array parameter instead of thousands of bound values."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy import ARRAY, any_, bindparam

        return column == any_(bindparam(None, list(ids), type_=ARRAY(BigInteger)))
    return column.in_(ids)


#: Keys of PostgreSQL's transaction-scoped advisory locks.
MIGRATION_LOCK = 1297040712
PUBLISH_LOCK = 0x5EED_0001


def advisory_lock(conn: Connection, key: int) -> None:
    """PostgreSQL: wait for the transaction-scoped advisory lock ``key`` (released at commit); SQLite: nothing."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def lock_interval(conn: Connection) -> None:
    """Serialise publishers of scoring runs: two runs of one interval never interleave their writes.

    PostgreSQL: the advisory lock :data:`PUBLISH_LOCK`. SQLite: its one write
    lock, taken now (by an update that matches no row) rather than at the
    first write, so a second publisher waits before reading, not after.
    """
    if conn.dialect.name == "postgresql":
        advisory_lock(conn, PUBLISH_LOCK)
    else:
        conn.execute(scoring_runs.update().where(scoring_runs.c.run_id == "\0lock").values(status="running"))


def copy_arrow(conn: Connection, table_name: str, rows: Any) -> None:
    """PostgreSQL's COPY from an Arrow table, written as CSV by Arrow (nulls as empty fields)."""
    import io

    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(rows, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    columns = ", ".join(rows.column_names)
    cursor = conn.connection.driver_connection.cursor()
    with cursor, cursor.copy(f"COPY {table_name} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
        copy.write(buffer.getvalue())


def copy_upsert(conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """PostgreSQL: COPY rows into a temporary copy of ``table``, then one INSERT ... ON CONFLICT (key) from it.

    Far fewer round trips than ``executemany`` for a large batch. The SQL
    names only ``table`` and its columns (from the metadata, quoted by the
    dialect); the values travel as COPY rows. A driver error becomes a
    :class:`DatabaseError`.
    """
    import psycopg

    if not rows:
        return
    names = list(rows[0])
    unknown = [name for name in names if name not in table.c]
    if unknown or key not in names:
        raise ValueError(f"copy_upsert into {table.name}: unknown columns {unknown} or key {key!r} missing")
    quote = conn.dialect.identifier_preparer.quote
    target, stage = quote(table.name), quote(f"{table.name}_copy_stage")
    columns = ", ".join(quote(name) for name in names)
    updates = ", ".join(f"{quote(name)} = EXCLUDED.{quote(name)}" for name in names if name != key)
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {target} INCLUDING DEFAULTS) "
                           f"ON COMMIT DROP")
            cursor.execute(f"TRUNCATE {stage}")
            with cursor.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(tuple(row[name] for name in names))
            cursor.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage} "
                           f"ON CONFLICT ({quote(key)}) DO UPDATE SET {updates}")
    except psycopg.Error as exc:
        message = str(exc).strip()
        raise DatabaseError(f"database error on {conn.engine.url.render_as_string(hide_password=True)}: "
                            f"{message.splitlines()[0] if message else type(exc).__name__}") from exc


def require_tables(conn: Connection, *tables: Table) -> None:
    """Say `run moderation db init` rather than a driver's 'no such table'."""
    inspector = inspect(conn)
    missing = [t.name for t in tables if not inspector.has_table(t.name)]
    if missing:
        where = conn.engine.url.render_as_string(hide_password=True)
        raise DatabaseError(f"database {where} has no {', '.join(missing)} table: run `moderation db init` first")
