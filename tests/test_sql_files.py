"""sql/ against the migrations and moderation/db.py on real PostgreSQL databases: they must not drift apart.

``sql/schema.sql`` is the migrations' offline output (``moderation db sql``);
a test regenerates it and compares, another applies it and compares the
result with an online upgrade and with the metadata.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, inspect, make_url, select, text

from moderation import config, db, migrations
from moderation.errors import DatabaseError
from moderation.sql_files import SQL_DIR_ENV, apply_sql, sql_dir, sql_files

pytestmark = pytest.mark.postgres

NOW = datetime(2024, 5, 1, tzinfo=timezone.utc)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = db.make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def reference_engine(pg_url: str) -> Iterator[Engine]:
    """A second fresh database on the same server, upgraded online by the migrations."""
    admin = create_engine(make_url(db.make_engine(pg_url).url), isolation_level="AUTOCOMMIT")
    name = f"moderation_ref_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(admin.url.set(database=name).render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def describe(engine: Engine) -> dict[str, Any]:
    """Everything the inspector sees of the package's tables and the view, in comparable form."""
    inspector = inspect(engine)
    dialect = engine.dialect
    tables: dict[str, Any] = {}
    for name in sorted(inspector.get_table_names()):
        pk = inspector.get_pk_constraint(name)
        tables[name] = {
            "columns": [(c["name"], c["type"].compile(dialect=dialect), c["nullable"], c.get("default"))
                        for c in inspector.get_columns(name)],
            "primary_key": (pk["name"], pk["constrained_columns"]),
            "foreign_keys": sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                                    tuple(fk["referred_columns"])) for fk in inspector.get_foreign_keys(name)),
            "indexes": sorted((ix["name"], tuple(ix["column_names"]), ix["unique"])
                              for ix in inspector.get_indexes(name)),
            "checks": sorted((ck["name"], ck["sqltext"]) for ck in inspector.get_check_constraints(name)),
            "uniques": sorted((uq["name"], tuple(uq["column_names"]))
                              for uq in inspector.get_unique_constraints(name)),
        }
    views = {name: inspector.get_view_definition(name) for name in sorted(inspector.get_view_names())}
    return {"tables": tables, "views": views}


def test_schema_sql_is_the_migrations_offline_output() -> None:
    """Regenerate with ``moderation db sql > sql/schema.sql`` after adding a revision."""
    assert [p.name for p in sql_files()] == ["schema.sql"]
    assert (sql_dir() / "schema.sql").read_text(encoding="utf-8") == migrations.offline_sql(), \
        "sql/schema.sql is stale: run `moderation db sql > sql/schema.sql`"


def test_sql_files_match_the_metadata(pg_engine: Engine) -> None:
    apply_sql(pg_engine)
    inspector = inspect(pg_engine)
    assert sorted(inspector.get_table_names()) == sorted([*db.metadata.tables, "alembic_version"])
    assert sorted(inspector.get_view_names()) == db.VIEWS
    for table in db.TABLES:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert list(columns) == [c.name for c in table.columns], table.name
        for column in table.columns:
            found = columns[column.name]
            assert found["nullable"] == column.nullable, f"{table.name}.{column.name} nullability"
            assert found["type"].python_type is column.type.python_type, f"{table.name}.{column.name} type"
            assert getattr(found["type"], "length", None) == getattr(column.type, "length", None)
            assert getattr(found["type"], "timezone", None) == getattr(column.type, "timezone", None)
            if column.autoincrement is True:  # a serial key: the sequence is its default
                assert str(found["default"]).startswith("nextval("), f"{table.name}.{column.name} sequence"
            else:  # defaults are the application's, except the counters the database keeps
                expected = column.server_default.arg.text if column.server_default is not None else None
                found_default = found["default"]
                if isinstance(found_default, str):  # PostgreSQL writes a string default with its cast
                    found_default = re.sub(r"^('.*')::character varying$", r"\1", found_default)
                assert found_default == expected, f"{table.name}.{column.name} default"
        assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [c.name for c in table.primary_key]
        assert sorted((ix["name"], ix["column_names"]) for ix in inspector.get_indexes(table.name)) == sorted(
            (ix.name, [c.name for c in ix.columns]) for ix in table.indexes)
        assert sorted((fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
                      for fk in inspector.get_foreign_keys(table.name)) == sorted(
            ([fk.parent.name], fk.column.table.name, [fk.column.name])
            for fk in db.declared_foreign_keys(table, "postgresql"))
        assert sorted(ck["name"] for ck in inspector.get_check_constraints(table.name)) == sorted(
            c.name for c in table.constraints if c.__class__.__name__ == "CheckConstraint")


def test_sql_files_build_what_the_migrations_build(pg_engine: Engine, reference_engine: Engine) -> None:
    apply_sql(pg_engine)
    db.init_schema(reference_engine)
    assert describe(pg_engine) == describe(reference_engine)
    with pg_engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()


def test_upgrade_after_the_sql_file_changes_nothing(pg_engine: Engine) -> None:
    """A DBA applied sql/schema.sql by hand: ``moderation db upgrade`` finds the database at head."""
    apply_sql(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(db.reviews.insert().values(review_id=1, product_id=2, text="좋아요", ingested_at=NOW))
    shape = describe(pg_engine)
    assert migrations.upgrade(pg_engine) == (migrations.head(), migrations.head())
    assert describe(pg_engine) == shape
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.reviews)).scalar_one() == 1
        roles = conn.execute(text("SELECT rolname, rolcanlogin FROM pg_roles "
                                  "WHERE rolname IN ('moderator', 'scorer') ORDER BY rolname")).all()
        granted = conn.execute(text("SELECT has_table_privilege('moderator', 'flagged_reviews', 'SELECT')"))
        assert granted.scalar_one() is True
    assert [tuple(r) for r in roles] == [("moderator", False), ("scorer", False)]


def test_the_sql_file_twice_fails_whole_and_changes_nothing(pg_engine: Engine) -> None:
    """The file is a plain upgrade from empty: a second apply stops at its first table, and rolls back."""
    apply_sql(pg_engine)
    shape = describe(pg_engine)
    with pytest.raises(DatabaseError, match=r"schema.sql .*already exists"):
        apply_sql(pg_engine)
    assert describe(pg_engine) == shape


def test_sql_dir_defaults_to_the_repository_and_follows_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_engine: Engine) -> None:
    monkeypatch.delenv(SQL_DIR_ENV, raising=False)
    assert sql_dir() == config.PROJECT_ROOT / "sql"
    (tmp_path / "002_second.sql").write_text("INSERT INTO marks VALUES (2);\n")
    (tmp_path / "001_first.sql").write_text("CREATE TABLE marks (n int);\nINSERT INTO marks VALUES (1);\n")
    (tmp_path / "notes.txt").write_text("not SQL")
    monkeypatch.setenv(SQL_DIR_ENV, str(tmp_path))
    assert [p.name for p in sql_files()] == ["001_first.sql", "002_second.sql"]
    apply_sql(pg_engine)
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT array_agg(n ORDER BY n) FROM marks")).scalar_one() == [1, 2]


def test_a_failing_file_rolls_back_the_whole_apply(tmp_path: Path, pg_engine: Engine) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE kept_if_committed (n int);")
    (tmp_path / "002_broken.sql").write_text("CREATE TABLE broken (n no_such_type);")
    with pytest.raises(DatabaseError, match="002_broken.sql"):
        apply_sql(pg_engine, tmp_path)
    assert not inspect(pg_engine).has_table("kept_if_committed")


def test_apply_sql_refuses_sqlite_and_a_missing_folder(sqlite_url: str, tmp_path: Path, pg_engine: Engine) -> None:
    engine = db.make_engine(sqlite_url)
    with pytest.raises(DatabaseError, match="PostgreSQL"):
        apply_sql(engine)
    engine.dispose()
    with pytest.raises(DatabaseError, match="not found"):
        apply_sql(pg_engine, tmp_path / "nowhere")
    with pytest.raises(DatabaseError, match="no .sql files"):
        apply_sql(pg_engine, tmp_path)
