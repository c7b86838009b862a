-- Tables of the reviews database: the PostgreSQL twin of moderation/db.py.
-- Idempotent: every statement may run again on a database that has them
-- (tests/test_sql_files.py checks both agree, column by column).
-- Defaults such as status = 'pending' live in the application, as in db.py.

CREATE TABLE IF NOT EXISTS reviews (
    review_id   BIGINT NOT NULL,
    product_id  BIGINT NOT NULL,
    rating      SMALLINT,
    text        TEXT,
    created_at  TIMESTAMP WITH TIME ZONE,
    ingested_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT reviews_pkey PRIMARY KEY (review_id)
);
-- The nightly run reads one ingestion interval, in review-id chunks.
CREATE INDEX IF NOT EXISTS ix_reviews_ingested_at ON reviews (ingested_at, review_id);
CREATE INDEX IF NOT EXISTS ix_reviews_product_id ON reviews (product_id);

CREATE TABLE IF NOT EXISTS model_versions (
    version       VARCHAR(128) NOT NULL,
    path          TEXT NOT NULL,
    threshold     FLOAT NOT NULL,
    metrics       TEXT,                      -- JSON of the model card's metrics
    created_at    TIMESTAMP WITH TIME ZONE NOT NULL,
    registered_at TIMESTAMP WITH TIME ZONE NOT NULL,
    is_active     BOOLEAN NOT NULL,
    fingerprint   VARCHAR(64),               -- SHA-256 of card.json, model.keras, vocab.json; NULL: not yet taken
    CONSTRAINT model_versions_pkey PRIMARY KEY (version)
);

CREATE TABLE IF NOT EXISTS scoring_runs (
    run_id          VARCHAR(250) NOT NULL,
    interval_start  TIMESTAMP WITH TIME ZONE NOT NULL,
    interval_end    TIMESTAMP WITH TIME ZONE NOT NULL,
    model_version   VARCHAR(128) NOT NULL,
    threshold       FLOAT NOT NULL,
    reviews_read    INTEGER NOT NULL,
    reviews_scored  INTEGER NOT NULL,
    reviews_skipped INTEGER NOT NULL,
    reviews_flagged INTEGER NOT NULL,
    skip_reasons    TEXT,                    -- JSON {reason: count}
    started_at      TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at     TIMESTAMP WITH TIME ZONE,
    status          VARCHAR(16) NOT NULL,
    CONSTRAINT scoring_runs_pkey PRIMARY KEY (run_id),
    CONSTRAINT ck_scoring_runs_status CHECK (status IN ('running', 'success', 'failed'))
);
CREATE INDEX IF NOT EXISTS ix_scoring_runs_interval ON scoring_runs (interval_start, interval_end);

CREATE TABLE IF NOT EXISTS review_scores (
    review_id     BIGINT NOT NULL,
    model_version VARCHAR(128) NOT NULL,
    score         FLOAT,
    skip_reason   VARCHAR(64),
    scored_at     TIMESTAMP WITH TIME ZONE NOT NULL,
    run_id        VARCHAR(250) NOT NULL,
    CONSTRAINT review_scores_pkey PRIMARY KEY (review_id, model_version),
    CONSTRAINT ck_review_scores_score_or_reason CHECK ((score IS NULL) <> (skip_reason IS NULL)),
    CONSTRAINT review_scores_review_id_fkey FOREIGN KEY (review_id) REFERENCES reviews (review_id)
);
CREATE INDEX IF NOT EXISTS ix_review_scores_run_id ON review_scores (run_id);

CREATE TABLE IF NOT EXISTS moderation_queue (
    review_id     BIGINT NOT NULL,
    model_version VARCHAR(128) NOT NULL,
    score         FLOAT NOT NULL,
    threshold     FLOAT NOT NULL,
    status        VARCHAR(16) NOT NULL,
    flagged_at    TIMESTAMP WITH TIME ZONE NOT NULL,
    run_id        VARCHAR(250) NOT NULL,
    decided_by    VARCHAR(128),
    decided_at    TIMESTAMP WITH TIME ZONE,
    note          TEXT,
    CONSTRAINT moderation_queue_pkey PRIMARY KEY (review_id),
    CONSTRAINT ck_moderation_queue_status CHECK (status IN ('pending', 'confirmed', 'dismissed')),
    CONSTRAINT moderation_queue_review_id_fkey FOREIGN KEY (review_id) REFERENCES reviews (review_id)
);
CREATE INDEX IF NOT EXISTS ix_moderation_queue_status_flagged ON moderation_queue (status, flagged_at);

CREATE TABLE IF NOT EXISTS review_labels (
    review_id   BIGINT NOT NULL,
    label       SMALLINT NOT NULL,           -- 1 = negative, 0 = positive
    source      VARCHAR(16) NOT NULL,
    labelled_at TIMESTAMP WITH TIME ZONE NOT NULL,
    labelled_by VARCHAR(128),
    CONSTRAINT review_labels_pkey PRIMARY KEY (review_id, source),
    CONSTRAINT ck_review_labels_label CHECK (label IN (0, 1)),
    CONSTRAINT ck_review_labels_source CHECK (source IN ('moderator', 'import', 'rating')),
    CONSTRAINT review_labels_review_id_fkey FOREIGN KEY (review_id) REFERENCES reviews (review_id)
);
