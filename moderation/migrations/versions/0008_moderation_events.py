"""moderation_events: the append-only history of every queue transition, and its view.

One row per transition (queued, re-scored, decided, re-opened, expired) with
who, when, the score, model version, threshold and text version; written in
the transaction that changes the queue. Append-only for everyone, owner
included: a trigger refuses UPDATE and DELETE on both databases, and the roles
get SELECT and INSERT only. The queue rows already there are written into the
history as their ``queued`` and (for decided ones) ``decided`` events.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moderation.migrations import views

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

EVENTS = ("queued", "re-scored", "decided", "re-opened", "expired")

HISTORY_VIEW = """
CREATE VIEW moderation_history AS
SELECT e.event_id, e.at, e.review_id, r.product_id, e.event, e.previous_status, e.status, e.actor,
       e.score, e.threshold, e.model_version, e.text_version, e.run_id, e.note
FROM moderation_events e
LEFT JOIN reviews r ON r.review_id = e.review_id
ORDER BY e.event_id
"""

PG_APPEND_ONLY = [
    """CREATE FUNCTION moderation_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'moderation_events is append-only';
END
$$""",
    "CREATE TRIGGER moderation_events_append_only BEFORE UPDATE OR DELETE ON moderation_events "
    "FOR EACH ROW EXECUTE FUNCTION moderation_events_append_only()",
    "GRANT SELECT, INSERT ON moderation_events TO moderator, scorer",
    "GRANT USAGE ON SEQUENCE moderation_events_event_id_seq TO moderator, scorer",
]
SQLITE_APPEND_ONLY = [
    f"""CREATE TRIGGER moderation_events_no_{action.lower()} BEFORE {action} ON moderation_events
BEGIN
    SELECT RAISE(ABORT, 'moderation_events is append-only');
END""" for action in ("UPDATE", "DELETE")
]

BACKFILL = [
    """INSERT INTO moderation_events (review_id, event, status, previous_status, actor, at, score, model_version,
                                   threshold, text_version, run_id, note)
SELECT review_id, 'queued', 'pending', NULL, run_id, flagged_at, score, model_version, threshold, text_version,
       run_id, NULL
FROM moderation_queue ORDER BY flagged_at, review_id""",
    """INSERT INTO moderation_events (review_id, event, status, previous_status, actor, at, score, model_version,
                                   threshold, text_version, run_id, note)
SELECT review_id, 'decided', status, 'pending', COALESCE(decided_by, 'unknown'), COALESCE(decided_at, flagged_at),
       score, model_version, threshold, text_version, run_id, note
FROM moderation_queue WHERE status IN ('confirmed', 'dismissed') ORDER BY decided_at, review_id""",
]


def upgrade() -> None:
    op.create_table(
        "moderation_events",
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("review_id", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("previous_status", sa.String(16), nullable=True),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("text_version", sa.Integer, nullable=True),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.CheckConstraint("event IN ('queued', 're-scored', 'decided', 're-opened', 'expired')",
                           name="ck_moderation_events_event"),
    )
    op.create_index("ix_moderation_events_review", "moderation_events", ["review_id", "event_id"])
    op.create_index("ix_moderation_events_at", "moderation_events", ["at"])
    for statement in BACKFILL:
        op.execute(statement)
    postgres = op.get_context().dialect.name == "postgresql"
    for statement in PG_APPEND_ONLY if postgres else SQLITE_APPEND_ONLY:
        op.execute(statement)
    views.create_view(HISTORY_VIEW, ["GRANT SELECT ON moderation_history TO moderator, scorer"])


def downgrade() -> None:
    views.drop_view(views.DROP_HISTORY)
    op.drop_table("moderation_events")
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION moderation_events_append_only()")
