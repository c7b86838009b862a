"""PostgreSQL: the keys of review_scores and moderation_queue to reviews checked per statement, not per row.

A night writes a score for every review it reads, a million on a large shop,
and queues the flagged ones (about 30 % of them). Their foreign keys ran a
check (an index probe and a row lock through SPI) for each row: 13 s of the
publish transaction's 34 s at 1,000,000 reviews for the scores, 4 s for the
queue. On PostgreSQL the same guarantees now come from statement-level
triggers:

* a statement writing ``review_scores`` or ``moderation_queue`` fails, as
  the foreign key did, if any row it wrote names a review that does not
  exist (one anti-join over the statement's rows, read from a snapshot taken
  after the write);
* a statement deleting reviews, or changing their ids, first takes a SHARE
  lock on both tables: it waits for any open write of them to commit (and
  holds off new ones), so the check after it sees every score or queue row
  that names a review it removed, and fails as the foreign keys' NO ACTION
  did. Edits that keep the id take no lock.

The trigger functions run as the owner (SECURITY DEFINER, search_path
pinned), so the roles need no new grants. SQLite keeps its foreign keys: a
check there is an in-process B-tree lookup. ``db.STATEMENT_CHECKED_KEYS``
names the keys for the schema tests. ``review_labels`` keeps its foreign key
(a handful of rows a night).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: The names PostgreSQL gave the first release's unnamed keys.
PG_DROP_KEYS = [
    "ALTER TABLE review_scores DROP CONSTRAINT review_scores_review_id_fkey",
    "ALTER TABLE moderation_queue DROP CONSTRAINT moderation_queue_review_id_fkey",
]

PG_FUNCTIONS = [
    """CREATE FUNCTION written_rows_name_reviews() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    missing BIGINT;
BEGIN
    SELECT w.review_id INTO missing FROM written_rows w
    WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.review_id = w.review_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "%" violates its key to "reviews"', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (review_id)=(%s) is not present in table "reviews".', missing);
    END IF;
    RETURN NULL;
END
$$""",
    """CREATE FUNCTION reviews_hold_writers_of_keys() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    LOCK TABLE review_scores, moderation_queue IN SHARE MODE;
    RETURN NULL;
END
$$""",
    """CREATE FUNCTION reviews_keep_referenced() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    kept BIGINT;
    referrer TEXT;
BEGIN
    SELECT o.review_id, CASE WHEN EXISTS (SELECT 1 FROM review_scores s WHERE s.review_id = o.review_id)
                             THEN 'review_scores' ELSE 'moderation_queue' END
    INTO kept, referrer FROM removed_reviews o
    WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.review_id = o.review_id)
      AND (EXISTS (SELECT 1 FROM review_scores s WHERE s.review_id = o.review_id)
           OR EXISTS (SELECT 1 FROM moderation_queue q WHERE q.review_id = o.review_id)) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'update or delete on table "reviews" violates the key of "%"', referrer
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (review_id)=(%s) is still referenced from table "%s".', kept, referrer);
    END IF;
    RETURN NULL;
END
$$""",
    "REVOKE ALL ON FUNCTION written_rows_name_reviews() FROM PUBLIC",
    "REVOKE ALL ON FUNCTION reviews_hold_writers_of_keys() FROM PUBLIC",
    "REVOKE ALL ON FUNCTION reviews_keep_referenced() FROM PUBLIC",
]

# Transition tables allow one event per trigger, hence pairs. Names as in db.STATEMENT_CHECKED_KEYS.
PG_TRIGGERS = [
    "CREATE TRIGGER review_scores_insert_reviews_exist AFTER INSERT ON review_scores "
    "REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews()",
    "CREATE TRIGGER review_scores_update_reviews_exist AFTER UPDATE ON review_scores "
    "REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews()",
    "CREATE TRIGGER moderation_queue_insert_reviews_exist AFTER INSERT ON moderation_queue "
    "REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews()",
    "CREATE TRIGGER moderation_queue_update_reviews_exist AFTER UPDATE ON moderation_queue "
    "REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews()",
    "CREATE TRIGGER reviews_delete_holds_key_writers BEFORE DELETE ON reviews "
    "FOR EACH STATEMENT EXECUTE FUNCTION reviews_hold_writers_of_keys()",
    "CREATE TRIGGER reviews_id_update_holds_key_writers BEFORE UPDATE OF review_id ON reviews "
    "FOR EACH STATEMENT EXECUTE FUNCTION reviews_hold_writers_of_keys()",
    "CREATE TRIGGER reviews_delete_keeps_referenced AFTER DELETE ON reviews "
    "REFERENCING OLD TABLE AS removed_reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_keep_referenced()",
    "CREATE TRIGGER reviews_update_keeps_referenced AFTER UPDATE ON reviews "
    "REFERENCING OLD TABLE AS removed_reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_keep_referenced()",
]

PG_DOWNGRADE = [
    "DROP TRIGGER review_scores_insert_reviews_exist ON review_scores",
    "DROP TRIGGER review_scores_update_reviews_exist ON review_scores",
    "DROP TRIGGER moderation_queue_insert_reviews_exist ON moderation_queue",
    "DROP TRIGGER moderation_queue_update_reviews_exist ON moderation_queue",
    "DROP TRIGGER reviews_delete_holds_key_writers ON reviews",
    "DROP TRIGGER reviews_id_update_holds_key_writers ON reviews",
    "DROP TRIGGER reviews_delete_keeps_referenced ON reviews",
    "DROP TRIGGER reviews_update_keeps_referenced ON reviews",
    "DROP FUNCTION written_rows_name_reviews()",
    "DROP FUNCTION reviews_hold_writers_of_keys()",
    "DROP FUNCTION reviews_keep_referenced()",
    "ALTER TABLE review_scores ADD CONSTRAINT review_scores_review_id_fkey "
    "FOREIGN KEY (review_id) REFERENCES reviews (review_id)",
    "ALTER TABLE moderation_queue ADD CONSTRAINT moderation_queue_review_id_fkey "
    "FOREIGN KEY (review_id) REFERENCES reviews (review_id)",
]


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in PG_DROP_KEYS + PG_FUNCTIONS + PG_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in PG_DOWNGRADE:
            op.execute(statement)
