"""Baseline: the schema of the first release (six tables, the moderators' view, the roles).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.schema import CreateIndex, CreateTable

from moderation.migrations import baseline

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in baseline.TABLES:
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda ix: ix.name or ""):
            op.execute(CreateIndex(index))
    op.execute(baseline.FLAGGED_VIEW_SQL)
    if op.get_context().dialect.name == "postgresql":
        op.execute(baseline.ROLES_SQL.strip().rstrip(";"))


def downgrade() -> None:
    op.execute("DROP VIEW flagged_reviews")
    for table in reversed(baseline.TABLES):
        op.drop_table(table.name)
