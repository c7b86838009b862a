"""PostgreSQL: review_scores' key to reviews checked once per statement instead of once per row.

A night writes a score for every review it reads, a million on a large shop.
The foreign key ran its check (an index probe and a row lock through SPI) for
each of them: 13 s of the publish transaction's 34 s at 1,000,000 reviews.
On PostgreSQL the same guarantees now come from statement-level triggers:

* a statement writing ``review_scores`` fails, as the foreign key did, if any
  row it wrote names a review that does not exist (one anti-join over the
  statement's rows, read from a snapshot taken after the write);
* a statement deleting reviews, or changing their ids, first takes a SHARE
  lock on ``review_scores``: it waits for any open write of scores to commit
  (and holds off new ones), so the check after it sees every score that
  names a review it removed, and fails as the foreign key's NO ACTION did.
  Edits that keep the id take no lock.

The trigger functions run as the owner (SECURITY DEFINER, search_path
pinned), so the roles need no new grants. SQLite keeps its foreign key: its
check is an in-process B-tree lookup. ``db.STATEMENT_CHECKED_KEYS`` names
the key for the schema tests.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: The name PostgreSQL gave the first release's unnamed foreign key.
SCORES_KEY = "review_scores_review_id_fkey"

PG_UPGRADE = [
    f"ALTER TABLE review_scores DROP CONSTRAINT {SCORES_KEY}",
    """CREATE FUNCTION review_scores_reviews_exist() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    missing BIGINT;
BEGIN
    SELECT s.review_id INTO missing FROM written_scores s
    WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.review_id = s.review_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "review_scores" violates its key to "reviews"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (review_id)=(%s) is not present in table "reviews".', missing);
    END IF;
    RETURN NULL;
END
$$""",
    """CREATE FUNCTION reviews_hold_score_writers() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    LOCK TABLE review_scores IN SHARE MODE;
    RETURN NULL;
END
$$""",
    """CREATE FUNCTION reviews_keep_scored() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    kept BIGINT;
BEGIN
    SELECT o.review_id INTO kept FROM removed_reviews o
    WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.review_id = o.review_id)
      AND EXISTS (SELECT 1 FROM review_scores s WHERE s.review_id = o.review_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'update or delete on table "reviews" violates the key of "review_scores"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (review_id)=(%s) is still referenced from table "review_scores".', kept);
    END IF;
    RETURN NULL;
END
$$""",
    *(f"REVOKE ALL ON FUNCTION {name}() FROM PUBLIC"
      for name in ("review_scores_reviews_exist", "reviews_hold_score_writers", "reviews_keep_scored")),
    # Transition tables allow one event per trigger, hence pairs.
    "CREATE TRIGGER review_scores_insert_reviews_exist AFTER INSERT ON review_scores "
    "REFERENCING NEW TABLE AS written_scores FOR EACH STATEMENT EXECUTE FUNCTION review_scores_reviews_exist()",
    "CREATE TRIGGER review_scores_update_reviews_exist AFTER UPDATE ON review_scores "
    "REFERENCING NEW TABLE AS written_scores FOR EACH STATEMENT EXECUTE FUNCTION review_scores_reviews_exist()",
    "CREATE TRIGGER reviews_delete_holds_score_writers BEFORE DELETE ON reviews "
    "FOR EACH STATEMENT EXECUTE FUNCTION reviews_hold_score_writers()",
    "CREATE TRIGGER reviews_id_update_holds_score_writers BEFORE UPDATE OF review_id ON reviews "
    "FOR EACH STATEMENT EXECUTE FUNCTION reviews_hold_score_writers()",
    "CREATE TRIGGER reviews_delete_keeps_scored AFTER DELETE ON reviews "
    "REFERENCING OLD TABLE AS removed_reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_keep_scored()",
    "CREATE TRIGGER reviews_update_keeps_scored AFTER UPDATE ON reviews "
    "REFERENCING OLD TABLE AS removed_reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_keep_scored()",
]

PG_DOWNGRADE = [
    "DROP TRIGGER review_scores_insert_reviews_exist ON review_scores",
    "DROP TRIGGER review_scores_update_reviews_exist ON review_scores",
    "DROP TRIGGER reviews_delete_holds_score_writers ON reviews",
    "DROP TRIGGER reviews_id_update_holds_score_writers ON reviews",
    "DROP TRIGGER reviews_delete_keeps_scored ON reviews",
    "DROP TRIGGER reviews_update_keeps_scored ON reviews",
    "DROP FUNCTION review_scores_reviews_exist()",
    "DROP FUNCTION reviews_hold_score_writers()",
    "DROP FUNCTION reviews_keep_scored()",
    f"ALTER TABLE review_scores ADD CONSTRAINT {SCORES_KEY} FOREIGN KEY (review_id) REFERENCES reviews (review_id)",
]


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in PG_UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in PG_DOWNGRADE:
            op.execute(statement)
