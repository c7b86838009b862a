"""scoring_runs.triggered_by: who ran a pass over an interval (an Airflow run id, ``cli``).

From this revision a run row is one per interval (its run_id is the interval,
the same for the CLI and Airflow), and passes over the same interval add to
it; ``triggered_by`` names the latest pass.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scoring_runs", sa.Column("triggered_by", sa.String(250), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs") as batch:
        batch.drop_column("triggered_by")
