"""The queue as a shared work list: kinds, priority buckets, claims, reasons, 'unsure', moderator accounts.

* ``moderation_queue`` gains ``kind`` ('flagged' by the model, or 'audit': a
  random unflagged review sampled so precision and recall can be estimated
  honestly), ``bucket`` (priority from the model card's operating points at
  flag time: very_likely, likely, maybe, flagged; audits are 'audit'), the
  claim (``claimed_by``, ``claim_expires_at``: a lease that simply lapses) and
  the decision's ``reason`` code; status 'unsure' joins the decisions.
  Existing rows are kind 'flagged', bucket 'flagged' (their card's points were
  not recorded with them).
* A queue row decided 'unsure' has no moderator label: a trigger removes the
  label when the row becomes unsure, for every writer (on PostgreSQL as the
  table owner, so the ``moderator`` role still has no DELETE on labels).
* ``moderation_events.reason``: the reason code of a decision, queryable.
* ``scoring_runs.reviews_audited``: how many audit reviews a run queued.
* ``moderator_accounts``: the web app's logins (scrypt hashes). ``moderator``
  may read it, never write it; the owner (the CLI) manages accounts.
* ``moderator`` may read ``review_scores`` (the stats page's score drift),
  never write it.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moderation.migrations import baseline, views

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

STATUS_CHECK = "status IN ('pending', 'confirmed', 'dismissed', 'unsure', 'expired')"
KIND_CHECK = "kind IN ('flagged', 'audit')"

FLAGGED_VIEW_0011 = """
CREATE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating,
       CASE WHEN q.text_version = r.text_version THEN q.score END AS score,
       q.threshold, q.model_version, q.status, q.kind, q.bucket, q.flagged_at, q.claimed_by, q.claim_expires_at,
       q.decided_by, q.decided_at, q.reason, q.note,
       r.created_at, r.ingested_at, r.text_version, q.text_version AS scored_text_version
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC
"""

HISTORY_VIEW_0011 = """
CREATE VIEW moderation_history AS
SELECT e.event_id, e.at, e.review_id, r.product_id, e.event, e.previous_status, e.status, e.actor,
       e.score, e.threshold, e.model_version, e.text_version, e.run_id, e.reason, e.note
FROM moderation_events e
LEFT JOIN reviews r ON r.review_id = e.review_id
ORDER BY e.event_id
"""
HISTORY_GRANTS = ["GRANT SELECT ON moderation_history TO moderator, scorer"]

PG_UNSURE = [
    # SECURITY DEFINER: runs as the owner, who may delete labels; search_path pinned against spoofing.
    """CREATE FUNCTION moderation_queue_unsure_unlabels() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM review_labels WHERE review_id = NEW.review_id AND source = 'moderator';
    RETURN NULL;
END
$$""",
    "REVOKE ALL ON FUNCTION moderation_queue_unsure_unlabels() FROM PUBLIC",
    "CREATE TRIGGER moderation_queue_unsure_unlabels AFTER UPDATE OF status ON moderation_queue "
    "FOR EACH ROW WHEN (NEW.status = 'unsure') EXECUTE FUNCTION moderation_queue_unsure_unlabels()",
]
SQLITE_UNSURE = """
CREATE TRIGGER moderation_queue_unsure_unlabels AFTER UPDATE OF status ON moderation_queue
FOR EACH ROW WHEN NEW.status = 'unsure'
BEGIN
    DELETE FROM review_labels WHERE review_id = NEW.review_id AND source = 'moderator';
END"""

PG_GRANTS = [
    "GRANT UPDATE (claimed_by, claim_expires_at, reason) ON moderation_queue TO moderator",
    "GRANT SELECT ON moderator_accounts TO moderator",
    # The stats page's drift plot reads score histograms; scores stay written by the scorer only.
    "GRANT SELECT ON review_scores TO moderator",
    # A re-score or re-open sets the bucket and kind, and clears a stale claim and reason.
    "GRANT UPDATE (kind, bucket, claimed_by, claim_expires_at, reason) ON moderation_queue TO scorer",
    "DROP POLICY moderation_queue_scorer_queues ON moderation_queue",
    "CREATE POLICY moderation_queue_scorer_queues ON moderation_queue FOR INSERT TO scorer "
    "WITH CHECK (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL AND reason IS NULL)",
    "DROP POLICY moderation_queue_scorer_moves ON moderation_queue",
    "CREATE POLICY moderation_queue_scorer_moves ON moderation_queue FOR UPDATE TO scorer USING (true) "
    "WITH CHECK (status = 'expired' OR (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL "
    "AND note IS NULL AND reason IS NULL))",
]


def _queue_at_0010() -> sa.Table:
    """moderation_queue as revision 0010 left it, plus this revision's columns: the batch copy's source."""
    queue = baseline.moderation_queue.to_metadata(sa.MetaData())
    for column in (sa.Column("text_version", sa.Integer, nullable=False, server_default=sa.text("1")),
                   *_new_queue_columns()):
        queue.append_column(column)
    return queue


def _new_queue_columns() -> list[sa.Column]:
    return [
        sa.Column("kind", sa.String(16), nullable=False, server_default="flagged"),
        sa.Column("bucket", sa.String(32), nullable=False, server_default="flagged"),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
    ]


def upgrade() -> None:
    postgres = op.get_context().dialect.name == "postgresql"
    views.drop_view(views.DROP_FLAGGED)  # SQLite batch mode rebuilds moderation_queue below
    views.drop_view(views.DROP_HISTORY)
    for column in _new_queue_columns():
        op.add_column("moderation_queue", column)
    with op.batch_alter_table("moderation_queue", copy_from=_queue_at_0010()) as batch:  # SQLite: copy and move
        batch.drop_constraint("ck_moderation_queue_status", type_="check")
        batch.create_check_constraint("ck_moderation_queue_status", STATUS_CHECK)
        batch.create_check_constraint("ck_moderation_queue_kind", KIND_CHECK)
    op.add_column("moderation_events", sa.Column("reason", sa.String(32), nullable=True))
    op.add_column("scoring_runs",
                  sa.Column("reviews_audited", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.create_table(
        "moderator_accounts",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    if postgres:
        for statement in PG_UNSURE + PG_GRANTS:
            op.execute(statement)
    else:
        op.execute(SQLITE_UNSURE)
    views.create_view(FLAGGED_VIEW_0011, views.FLAGGED_GRANTS)
    views.create_view(HISTORY_VIEW_0011, HISTORY_GRANTS)


def downgrade() -> None:
    raise NotImplementedError("0011 is not reversible: 'unsure' decisions have no earlier status")
