"""Grants the deployed roles lacked (PostgreSQL only; nothing on SQLite).

* ``scorer`` and ``moderator`` may read ``alembic_version``: the nightly plan
  and the CLI check the schema revision before they work.
* ``scorer`` gets TEMPORARY on the database: publish stages a run's scores in
  a temporary table, and a database whose owner revoked PUBLIC's rights (the
  Compose stack's init script does) otherwise refuses it.
* ``scorer`` may write rating labels (the retraining DAG's "include rating
  labels" runs as the scorer), and only those: row-level security keeps the
  moderators' and imported labels out of its reach. The table's owner (the
  importer, ``db init``) is not subject to the policies.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = [
    "GRANT SELECT ON alembic_version TO moderator, scorer",
    """DO $$
BEGIN
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO scorer', current_database());
END
$$""",
    "GRANT INSERT, DELETE ON review_labels TO scorer",
    "GRANT UPDATE (label, labelled_at, labelled_by) ON review_labels TO scorer",
    "ALTER TABLE review_labels ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY review_labels_read ON review_labels FOR SELECT TO moderator, scorer USING (true)",
    "CREATE POLICY review_labels_moderator_insert ON review_labels FOR INSERT TO moderator WITH CHECK (true)",
    "CREATE POLICY review_labels_moderator_update ON review_labels FOR UPDATE TO moderator USING (true) "
    "WITH CHECK (true)",
    "CREATE POLICY review_labels_scorer_rating ON review_labels FOR ALL TO scorer "
    "USING (source = 'rating') WITH CHECK (source = 'rating')",
]

DOWNGRADE = [
    "DROP POLICY review_labels_scorer_rating ON review_labels",
    "DROP POLICY review_labels_moderator_update ON review_labels",
    "DROP POLICY review_labels_moderator_insert ON review_labels",
    "DROP POLICY review_labels_read ON review_labels",
    "ALTER TABLE review_labels DISABLE ROW LEVEL SECURITY",
    "REVOKE INSERT, UPDATE, DELETE ON review_labels FROM scorer",
    "REVOKE SELECT ON alembic_version FROM moderator, scorer",
]


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
