"""Scores and queue rows for a text version; a queue row can expire.

* ``review_scores.text_version`` and ``moderation_queue.text_version``: the
  version of the review's text the score was computed for. Existing rows get
  version 1, the version every existing review starts at (0006).
* queue status ``expired``: a pending flag whose review, re-scored, falls
  below the threshold, or a decided one whose text changed and no longer
  crosses it. The decision stays in the history (moderation_events, 0008).
* ``flagged_reviews`` shows the score of the text it shows (NULL while an
  edited text awaits its re-score) and both text versions.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moderation.migrations import baseline, views

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    views.drop_view(views.DROP_FLAGGED)  # SQLite batch mode rebuilds moderation_queue below
    op.add_column("review_scores",
                  sa.Column("text_version", sa.Integer, nullable=False, server_default=sa.text("1")))
    op.add_column("moderation_queue",
                  sa.Column("text_version", sa.Integer, nullable=False, server_default=sa.text("1")))
    queue = baseline.moderation_queue.to_metadata(sa.MetaData())
    queue.append_column(sa.Column("text_version", sa.Integer, nullable=False, server_default=sa.text("1")))
    with op.batch_alter_table("moderation_queue", copy_from=queue) as batch:  # SQLite: copy and move
        batch.drop_constraint("ck_moderation_queue_status", type_="check")
        batch.create_check_constraint("ck_moderation_queue_status",
                                      "status IN ('pending', 'confirmed', 'dismissed', 'expired')")
    views.create_view(views.FLAGGED_VIEW_0007, views.FLAGGED_GRANTS)


def downgrade() -> None:
    raise NotImplementedError("0007 is not reversible: expired queue rows have no earlier status")
