CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE reviews (
    review_id BIGINT NOT NULL, 
    product_id BIGINT NOT NULL, 
    rating SMALLINT, 
    text TEXT, 
    created_at TIMESTAMP WITH TIME ZONE, 
    ingested_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (review_id)
);

CREATE INDEX ix_reviews_ingested_at ON reviews (ingested_at, review_id);

CREATE INDEX ix_reviews_product_id ON reviews (product_id);

CREATE TABLE model_versions (
    version VARCHAR(128) NOT NULL, 
    path TEXT NOT NULL, 
    threshold FLOAT NOT NULL, 
    metrics TEXT, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    registered_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    is_active BOOLEAN NOT NULL, 
    PRIMARY KEY (version)
);

CREATE TABLE scoring_runs (
    run_id VARCHAR(250) NOT NULL, 
    interval_start TIMESTAMP WITH TIME ZONE NOT NULL, 
    interval_end TIMESTAMP WITH TIME ZONE NOT NULL, 
    model_version VARCHAR(128) NOT NULL, 
    threshold FLOAT NOT NULL, 
    reviews_read INTEGER NOT NULL, 
    reviews_scored INTEGER NOT NULL, 
    reviews_skipped INTEGER NOT NULL, 
    reviews_flagged INTEGER NOT NULL, 
    skip_reasons TEXT, 
    started_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    finished_at TIMESTAMP WITH TIME ZONE, 
    status VARCHAR(16) NOT NULL, 
    PRIMARY KEY (run_id), 
    CONSTRAINT ck_scoring_runs_status CHECK (status IN ('running', 'success', 'failed'))
);

CREATE INDEX ix_scoring_runs_interval ON scoring_runs (interval_start, interval_end);

CREATE TABLE review_scores (
    review_id BIGINT NOT NULL, 
    model_version VARCHAR(128) NOT NULL, 
    score FLOAT, 
    skip_reason VARCHAR(64), 
    scored_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    run_id VARCHAR(250) NOT NULL, 
    PRIMARY KEY (review_id, model_version), 
    CONSTRAINT ck_review_scores_score_or_reason CHECK ((score IS NULL) <> (skip_reason IS NULL)), 
    FOREIGN KEY(review_id) REFERENCES reviews (review_id)
);

CREATE INDEX ix_review_scores_run_id ON review_scores (run_id);

CREATE TABLE moderation_queue (
    review_id BIGINT NOT NULL, 
    model_version VARCHAR(128) NOT NULL, 
    score FLOAT NOT NULL, 
    threshold FLOAT NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    flagged_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    run_id VARCHAR(250) NOT NULL, 
    decided_by VARCHAR(128), 
    decided_at TIMESTAMP WITH TIME ZONE, 
    note TEXT, 
    PRIMARY KEY (review_id), 
    CONSTRAINT ck_moderation_queue_status CHECK (status IN ('pending', 'confirmed', 'dismissed')), 
    FOREIGN KEY(review_id) REFERENCES reviews (review_id)
);

CREATE INDEX ix_moderation_queue_status_flagged ON moderation_queue (status, flagged_at);

CREATE TABLE review_labels (
    review_id BIGINT NOT NULL, 
    label SMALLINT NOT NULL, 
    source VARCHAR(16) NOT NULL, 
    labelled_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    labelled_by VARCHAR(128), 
    PRIMARY KEY (review_id, source), 
    CONSTRAINT ck_review_labels_label CHECK (label IN (0, 1)), 
    CONSTRAINT ck_review_labels_source CHECK (source IN ('moderator', 'import', 'rating')), 
    FOREIGN KEY(review_id) REFERENCES reviews (review_id)
);

CREATE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating, q.score, q.threshold, q.model_version,
       q.status, q.flagged_at, q.decided_by, q.decided_at, q.note, r.created_at, r.ingested_at
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC;

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

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;

-- Running upgrade 0001 -> 0002

ALTER TABLE model_versions ADD COLUMN fingerprint VARCHAR(64);

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';

-- Running upgrade 0002 -> 0003

ALTER TABLE scoring_runs ADD COLUMN operating_point VARCHAR(64);

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';

-- Running upgrade 0003 -> 0004

GRANT SELECT ON alembic_version TO moderator, scorer;

DO $$
BEGIN
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO scorer', current_database());
END
$$;

GRANT INSERT, DELETE ON review_labels TO scorer;

GRANT UPDATE (label, labelled_at, labelled_by) ON review_labels TO scorer;

ALTER TABLE review_labels ENABLE ROW LEVEL SECURITY;

CREATE POLICY review_labels_read ON review_labels FOR SELECT TO moderator, scorer USING (true);

CREATE POLICY review_labels_moderator_insert ON review_labels FOR INSERT TO moderator WITH CHECK (true);

CREATE POLICY review_labels_moderator_update ON review_labels FOR UPDATE TO moderator USING (true) WITH CHECK (true);

CREATE POLICY review_labels_scorer_rating ON review_labels FOR ALL TO scorer USING (source = 'rating') WITH CHECK (source = 'rating');

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003';

-- Running upgrade 0004 -> 0005

UPDATE model_versions SET is_active = false WHERE is_active AND version <> (SELECT version FROM model_versions WHERE is_active ORDER BY registered_at DESC, version DESC LIMIT 1);

CREATE UNIQUE INDEX ux_model_versions_one_active ON model_versions (is_active) WHERE is_active;

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004';

