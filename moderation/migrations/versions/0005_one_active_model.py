"""At most one active model, enforced by the database (a partial unique index).

Where an earlier release left several versions active, the most recently
registered one stays active, as the nightly run would have had no rule to
choose between them.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE model_versions SET is_active = false WHERE is_active AND version <> "
        "(SELECT version FROM model_versions WHERE is_active ORDER BY registered_at DESC, version DESC LIMIT 1)"
    )
    op.create_index("ux_model_versions_one_active", "model_versions", ["is_active"], unique=True,
                    postgresql_where=sa.text("is_active"), sqlite_where=sa.text("is_active"))


def downgrade() -> None:
    op.drop_index("ux_model_versions_one_active", table_name="model_versions")
