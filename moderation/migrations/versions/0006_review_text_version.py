"""reviews.text_version: a counter the database raises whenever a review's text changes.

Scores and queue rows record the text version they were computed for, so
work is chosen by state (no score for the active model and the current text),
not by ingestion time. The database keeps the counter for every writer (the
importer, a shop's own SQL, a psql session): a trigger on both databases.
A counter rather than a text hash because SQLite has no hash function in SQL,
and a trigger must not depend on one registered by Python.

Existing reviews start at version 1; revision 0007 stamps the existing
scores and queue rows with version 1 as well (they were computed for the text
the rows hold now, as far as anything recorded can tell).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PG_FUNCTION = """
CREATE FUNCTION reviews_text_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.text IS DISTINCT FROM OLD.text THEN
        NEW.text_version := OLD.text_version + 1;
    ELSE
        NEW.text_version := OLD.text_version;
    END IF;
    RETURN NEW;
END
$$"""
PG_TRIGGER = ("CREATE TRIGGER reviews_text_version BEFORE UPDATE ON reviews "
              "FOR EACH ROW EXECUTE FUNCTION reviews_text_version()")
# recursive_triggers is off by default: the inner UPDATE does not fire the trigger again.
SQLITE_TRIGGER = """
CREATE TRIGGER reviews_text_version AFTER UPDATE OF text ON reviews
FOR EACH ROW WHEN OLD.text IS NOT NEW.text
BEGIN
    UPDATE reviews SET text_version = OLD.text_version + 1 WHERE review_id = NEW.review_id;
END"""


def upgrade() -> None:
    # A plain ADD COLUMN on both databases: batch mode would rebuild reviews under the view.
    op.add_column("reviews", sa.Column("text_version", sa.Integer, nullable=False, server_default=sa.text("1")))
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER reviews_text_version ON reviews")
        op.execute("DROP FUNCTION reviews_text_version()")
    else:
        op.execute("DROP TRIGGER reviews_text_version")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("text_version")
