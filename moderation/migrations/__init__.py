"""Schema migrations (Alembic), shipped inside the package.

The Alembic configuration is built here in code, so an installed package
needs no ``alembic.ini``: :func:`upgrade` brings any database to the head
revision, :func:`offline_sql` writes the same steps as SQL for a DBA
(``sql/schema.sql`` is that output, and a test keeps it so).

A database created by the first release (``create_all``, no
``alembic_version`` table) is recognised by its ``reviews`` table and
stamped at the baseline revision 0001 before upgrading.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect

from moderation.errors import DatabaseError

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
#: The command a user runs to bring a database to head.
UPGRADE_COMMAND = "moderation db upgrade"

# Alembic narrates every step at INFO; the CLI's own lines say what happened.
logging.getLogger("alembic").setLevel(logging.WARNING)


@contextmanager
def _alembic_errors() -> Iterator[None]:
    """Alembic's own errors (an unknown revision, say) as one-line DatabaseErrors."""
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise DatabaseError(f"schema migration: {exc}") from exc


def alembic_config(connection: Connection | None = None, output: io.StringIO | None = None):  # type: ignore[no-untyped-def]
    """An Alembic ``Config`` for the package's migrations, bound to ``connection`` (online) or none (offline)."""
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision id."""
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def current(connection: Connection) -> str | None:
    """The revision a database is at; ``None`` for an empty or pre-migration database."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def is_legacy(connection: Connection) -> bool:
    """A database built by the first release: package tables but no ``alembic_version``."""
    names = set(inspect(connection).get_table_names())
    return "reviews" in names and "alembic_version" not in names


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the database to ``revision`` in one transaction; returns (from, to).

    A first-release database is completed (tables it lacks are created as
    that release would have) and stamped at 0001 first.
    """
    from alembic import command

    from moderation import db

    with _alembic_errors(), db.translate_errors(engine), engine.begin() as conn:
        db.advisory_lock(conn, db.MIGRATION_LOCK)  # one upgrader at a time; the others wait, then find head
        before = current(conn)
        if before is None and is_legacy(conn):
            from moderation.migrations import baseline

            baseline.metadata.create_all(conn)
            command.stamp(alembic_config(conn), BASELINE)
            before = BASELINE
        command.upgrade(alembic_config(conn), revision)
        after = current(conn)
    assert after is not None
    return before, after


def require_head(engine: Engine) -> None:
    """Raise one clear line when the database is not at the head revision."""
    from moderation import db

    with db.translate_errors(engine), engine.connect() as conn:
        found = current(conn)
        legacy = found is None and is_legacy(conn)
    wanted = head()
    if found != wanted:
        where = engine.url.render_as_string(hide_password=True)
        state = ("created by an earlier release" if legacy else "not initialised") if found is None \
            else f"at schema revision {found}"
        raise DatabaseError(f"database {where} is {state}, the code needs revision {wanted}: "
                            f"run `{UPGRADE_COMMAND} --db {where}`")


def offline_sql(dialect: str = "postgresql", start: str | None = None, end: str = "head") -> str:
    """The upgrade as SQL text (``alembic upgrade [start:]end --sql``), for a DBA to read and run."""
    from alembic import command

    buffer = io.StringIO()
    config = alembic_config(output=buffer)
    config.set_main_option("sqlalchemy.url", f"{dialect}://")
    with _alembic_errors():
        command.upgrade(config, f"{start}:{end}" if start else end, sql=True)
    return buffer.getvalue()
