"""review_labels.text_version: a moderator's label is for the text they judged.

A decision is about one text; once the review is edited, retraining must not
pair that label with the new text. Moderator labels record the review's text
version when decided; the training snapshot leaves out those whose text has
changed since. NULL for imported and rating labels, which are not tied to a
text version. Existing moderator labels get version 1: revisions 0006 to
0010 ship in one release, so a database reaching this one still has every
review at the version 0006 gave it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("review_labels", sa.Column("text_version", sa.Integer, nullable=True))
    op.execute("UPDATE review_labels SET text_version = 1 WHERE source = 'moderator'")
    if op.get_context().dialect.name == "postgresql":
        op.execute("GRANT UPDATE (text_version) ON review_labels TO moderator")


def downgrade() -> None:
    with op.batch_alter_table("review_labels") as batch:
        batch.drop_column("text_version")
