"""The schema of the first release, frozen: what ``create_all`` built before migrations.

Revision 0001 creates exactly these tables, the moderators' view and (on
PostgreSQL) the roles; a database made by that release's ``create_all`` is
recognised and stamped at 0001. Never edit this file: change the schema with
a new revision instead.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

reviews = Table(
    "reviews",
    metadata,
    Column("review_id", BigInteger, primary_key=True, autoincrement=False),
    Column("product_id", BigInteger, nullable=False),
    Column("rating", SmallInteger, nullable=True),
    Column("text", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Index("ix_reviews_ingested_at", "ingested_at", "review_id"),
    Index("ix_reviews_product_id", "product_id"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(128), primary_key=True),
    Column("path", Text, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("metrics", Text, nullable=True),  # JSON of the card's metrics
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("is_active", Boolean, nullable=False, default=False),
)

scoring_runs = Table(
    "scoring_runs",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("reviews_read", Integer, nullable=False, default=0),
    Column("reviews_scored", Integer, nullable=False, default=0),
    Column("reviews_skipped", Integer, nullable=False, default=0),
    Column("reviews_flagged", Integer, nullable=False, default=0),
    Column("skip_reasons", Text, nullable=True),  # JSON {reason: count}
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    CheckConstraint("status IN ('running', 'success', 'failed')", name="ck_scoring_runs_status"),
    Index("ix_scoring_runs_interval", "interval_start", "interval_end"),
)

review_scores = Table(
    "review_scores",
    metadata,
    Column("review_id", BigInteger, ForeignKey("reviews.review_id"), primary_key=True),
    Column("model_version", String(128), primary_key=True),
    Column("score", Float, nullable=True),
    Column("skip_reason", String(64), nullable=True),
    Column("scored_at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(250), nullable=False),
    CheckConstraint("(score IS NULL) <> (skip_reason IS NULL)", name="ck_review_scores_score_or_reason"),
    Index("ix_review_scores_run_id", "run_id"),
)

moderation_queue = Table(
    "moderation_queue",
    metadata,
    Column("review_id", BigInteger, ForeignKey("reviews.review_id"), primary_key=True),
    Column("model_version", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),
    Column("flagged_at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("decided_by", String(128), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("note", Text, nullable=True),
    CheckConstraint("status IN ('pending', 'confirmed', 'dismissed')", name="ck_moderation_queue_status"),
    Index("ix_moderation_queue_status_flagged", "status", "flagged_at"),
)

review_labels = Table(
    "review_labels",
    metadata,
    Column("review_id", BigInteger, ForeignKey("reviews.review_id"), primary_key=True),
    Column("label", SmallInteger, nullable=False),  # 1 = negative, 0 = positive
    Column("source", String(16), primary_key=True),
    Column("labelled_at", DateTime(timezone=True), nullable=False),
    Column("labelled_by", String(128), nullable=True),
    CheckConstraint("label IN (0, 1)", name="ck_review_labels_label"),
    CheckConstraint("source IN ('moderator', 'import', 'rating')", name="ck_review_labels_source"),
)

#: Tables the package owns, in dependency order.
TABLES = [reviews, model_versions, scoring_runs, review_scores, moderation_queue, review_labels]


FLAGGED_VIEW_SQL = """
CREATE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating, q.score, q.threshold, q.model_version,
       q.status, q.flagged_at, q.decided_by, q.decided_at, q.note, r.created_at, r.ingested_at
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC
"""


#: The roles and grants of the first release (PostgreSQL only): sql/003_roles.sql of that release.
ROLES_SQL = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'moderator') THEN
        BEGIN
            CREATE ROLE moderator NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a session applying this file to another database
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'scorer') THEN
        BEGIN
            CREATE ROLE scorer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO moderator, scorer', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO moderator, scorer;

REVOKE ALL ON reviews, model_versions, scoring_runs, review_scores, moderation_queue, review_labels,
              flagged_reviews
    FROM moderator, scorer;

-- moderator
GRANT SELECT ON flagged_reviews, moderation_queue, reviews TO moderator;
GRANT UPDATE (status, decided_by, decided_at, note) ON moderation_queue TO moderator;
GRANT SELECT, INSERT ON review_labels TO moderator;
GRANT UPDATE (label, labelled_at, labelled_by) ON review_labels TO moderator;
GRANT SELECT ON model_versions, scoring_runs TO moderator;  -- read-only, for stats and model listings

-- scorer
GRANT SELECT ON reviews TO scorer;
GRANT SELECT, INSERT, UPDATE ON review_scores TO scorer;
GRANT SELECT, INSERT ON moderation_queue TO scorer;
GRANT SELECT, INSERT, UPDATE, DELETE ON scoring_runs TO scorer;
GRANT SELECT, INSERT, UPDATE ON model_versions TO scorer;
GRANT SELECT ON review_labels TO scorer;
"""
