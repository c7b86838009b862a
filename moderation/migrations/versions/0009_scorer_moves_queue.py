"""The scorer may move queue rows (re-score, expire, re-open) but never decide them (PostgreSQL only).

Publishing now updates queue rows whose model or text changed, so ``scorer``
gets UPDATE on the columns such a move writes. Row-level security keeps the
decisions the moderators': a row the scorer inserts is pending, and a row it
updates ends pending with no decision (a re-score, a re-open) or expired.
The table's owner is not subject to the policies.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = [
    "GRANT UPDATE (status, score, model_version, threshold, text_version, run_id, flagged_at, "
    "decided_by, decided_at, note) ON moderation_queue TO scorer",
    "ALTER TABLE moderation_queue ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY moderation_queue_read ON moderation_queue FOR SELECT TO moderator, scorer USING (true)",
    "CREATE POLICY moderation_queue_moderator_decides ON moderation_queue FOR UPDATE TO moderator "
    "USING (true) WITH CHECK (true)",
    "CREATE POLICY moderation_queue_scorer_queues ON moderation_queue FOR INSERT TO scorer "
    "WITH CHECK (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL)",
    "CREATE POLICY moderation_queue_scorer_moves ON moderation_queue FOR UPDATE TO scorer USING (true) "
    "WITH CHECK (status = 'expired' OR (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL "
    "AND note IS NULL))",
]

DOWNGRADE = [
    "DROP POLICY moderation_queue_scorer_moves ON moderation_queue",
    "DROP POLICY moderation_queue_scorer_queues ON moderation_queue",
    "DROP POLICY moderation_queue_moderator_decides ON moderation_queue",
    "DROP POLICY moderation_queue_read ON moderation_queue",
    "ALTER TABLE moderation_queue DISABLE ROW LEVEL SECURITY",
    "REVOKE UPDATE ON moderation_queue FROM scorer",
]


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
