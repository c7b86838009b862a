"""Apply the PostgreSQL DDL in ``sql/`` (``schema.sql``: the migrations' offline output).

``moderation db init``/``upgrade`` run the migrations themselves; this applies
the generated SQL as a DBA would with ``psql -1 -f`` (tests use it to prove the
file and the migrations build the same schema). Each file goes to the server
whole, through the driver's simple query protocol, so ``DO $$ ... $$`` blocks
need no statement splitting.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine

from moderation import config, db
from moderation.errors import DatabaseError

#: Environment variable naming another folder of ``NNN_*.sql`` files.
SQL_DIR_ENV = "MODERATION_SQL_DIR"


def sql_dir() -> Path:
    """``$MODERATION_SQL_DIR``, else the checkout's ``sql/`` folder, else the copy an installed wheel carries."""
    explicit = os.environ.get(SQL_DIR_ENV)
    if explicit:
        return Path(explicit)
    root = config.checkout_root()
    return root / "sql" if root else config.SHIPPED_SQL_DIR


def sql_files(directory: Path | None = None) -> list[Path]:
    """The ``*.sql`` files of the folder in name order."""
    directory = directory or sql_dir()
    if not directory.is_dir():
        raise DatabaseError(f"SQL folder not found: {directory} (set {SQL_DIR_ENV} to the repository's sql/ folder)")
    files = sorted(p for p in directory.glob("*.sql") if p.is_file())
    if not files:
        raise DatabaseError(f"no .sql files in {directory}")
    return files


def apply_sql(engine: Engine, directory: Path | None = None) -> list[Path]:
    """Run every file of :func:`sql_dir` in order, in ONE transaction; returns the files.

    All or nothing: a failing file rolls back the ones before it, so a
    database never keeps tables without their grants. Safe to repeat.
    """
    if engine.dialect.name != "postgresql":
        raise DatabaseError(f"the sql/ files are PostgreSQL DDL; {engine.url.render_as_string(hide_password=True)} "
                            f"is {engine.dialect.name}")
    files = sql_files(directory)
    import psycopg

    current: Path | None = None
    try:
        with db.translate_errors(engine), engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor:
                for current in files:
                    # No parameters: psycopg sends the text as one simple query, semicolons and all.
                    cursor.execute(current.read_text(encoding="utf-8"))  # type: ignore[call-overload]
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"applying {current} to {engine.url.render_as_string(hide_password=True)} "
                            f"failed: {first}") from exc
    return files
