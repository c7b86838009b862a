"""Alembic's environment: the connection comes from :func:`moderation.migrations.upgrade`.

Online the caller's connection and transaction are used as they are (one
transaction for the whole upgrade); SQLite gets batch mode, so column
changes become copy-and-move. Offline (``--sql``) writes PostgreSQL DDL with
no BEGIN/COMMIT of its own, so the caller chooses (``psql -1``).
"""

from __future__ import annotations

from alembic import context

from moderation import db

config = context.config


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=db.metadata,
                      literal_binds=True, transactional_ddl=False,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("moderation migrations run through moderation.migrations.upgrade(engine)")
    context.configure(connection=connection, target_metadata=db.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
