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

-- Running upgrade 0005 -> 0006

ALTER TABLE reviews ADD COLUMN text_version INTEGER DEFAULT 1 NOT NULL;

CREATE FUNCTION reviews_text_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.text IS DISTINCT FROM OLD.text THEN
        NEW.text_version := OLD.text_version + 1;
    ELSE
        NEW.text_version := OLD.text_version;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER reviews_text_version BEFORE UPDATE ON reviews FOR EACH ROW EXECUTE FUNCTION reviews_text_version();

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005';

-- Running upgrade 0006 -> 0007

DROP VIEW IF EXISTS flagged_reviews;

ALTER TABLE review_scores ADD COLUMN text_version INTEGER DEFAULT 1 NOT NULL;

ALTER TABLE moderation_queue ADD COLUMN text_version INTEGER DEFAULT 1 NOT NULL;

ALTER TABLE moderation_queue DROP CONSTRAINT ck_moderation_queue_status;

ALTER TABLE moderation_queue ADD CONSTRAINT ck_moderation_queue_status CHECK (status IN ('pending', 'confirmed', 'dismissed', 'expired'));

CREATE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating,
       CASE WHEN q.text_version = r.text_version THEN q.score END AS score,
       q.threshold, q.model_version, q.status, q.flagged_at, q.decided_by, q.decided_at, q.note,
       r.created_at, r.ingested_at, r.text_version, q.text_version AS scored_text_version
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC;

GRANT SELECT ON flagged_reviews TO moderator;

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0006';

-- Running upgrade 0007 -> 0008

CREATE TABLE moderation_events (
    event_id BIGSERIAL NOT NULL, 
    review_id BIGINT NOT NULL, 
    event VARCHAR(16) NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    previous_status VARCHAR(16), 
    actor VARCHAR(250) NOT NULL, 
    at TIMESTAMP WITH TIME ZONE NOT NULL, 
    score FLOAT, 
    model_version VARCHAR(128), 
    threshold FLOAT, 
    text_version INTEGER, 
    run_id VARCHAR(250), 
    note TEXT, 
    PRIMARY KEY (event_id), 
    CONSTRAINT ck_moderation_events_event CHECK (event IN ('queued', 're-scored', 'decided', 're-opened', 'expired'))
);

CREATE INDEX ix_moderation_events_review ON moderation_events (review_id, event_id);

CREATE INDEX ix_moderation_events_at ON moderation_events (at);

INSERT INTO moderation_events (review_id, event, status, previous_status, actor, at, score, model_version,
                                   threshold, text_version, run_id, note)
SELECT review_id, 'queued', 'pending', NULL, run_id, flagged_at, score, model_version, threshold, text_version,
       run_id, NULL
FROM moderation_queue ORDER BY flagged_at, review_id;

INSERT INTO moderation_events (review_id, event, status, previous_status, actor, at, score, model_version,
                                   threshold, text_version, run_id, note)
SELECT review_id, 'decided', status, 'pending', COALESCE(decided_by, 'unknown'), COALESCE(decided_at, flagged_at),
       score, model_version, threshold, text_version, run_id, note
FROM moderation_queue WHERE status IN ('confirmed', 'dismissed') ORDER BY decided_at, review_id;

CREATE FUNCTION moderation_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'moderation_events is append-only';
END
$$;

CREATE TRIGGER moderation_events_append_only BEFORE UPDATE OR DELETE ON moderation_events FOR EACH ROW EXECUTE FUNCTION moderation_events_append_only();

GRANT SELECT, INSERT ON moderation_events TO moderator, scorer;

GRANT USAGE ON SEQUENCE moderation_events_event_id_seq TO moderator, scorer;

CREATE VIEW moderation_history AS
SELECT e.event_id, e.at, e.review_id, r.product_id, e.event, e.previous_status, e.status, e.actor,
       e.score, e.threshold, e.model_version, e.text_version, e.run_id, e.note
FROM moderation_events e
LEFT JOIN reviews r ON r.review_id = e.review_id
ORDER BY e.event_id;

GRANT SELECT ON moderation_history TO moderator, scorer;

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0007';

-- Running upgrade 0008 -> 0009

GRANT UPDATE (status, score, model_version, threshold, text_version, run_id, flagged_at, decided_by, decided_at, note) ON moderation_queue TO scorer;

ALTER TABLE moderation_queue ENABLE ROW LEVEL SECURITY;

CREATE POLICY moderation_queue_read ON moderation_queue FOR SELECT TO moderator, scorer USING (true);

CREATE POLICY moderation_queue_moderator_decides ON moderation_queue FOR UPDATE TO moderator USING (true) WITH CHECK (true);

CREATE POLICY moderation_queue_scorer_queues ON moderation_queue FOR INSERT TO scorer WITH CHECK (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL);

CREATE POLICY moderation_queue_scorer_moves ON moderation_queue FOR UPDATE TO scorer USING (true) WITH CHECK (status = 'expired' OR (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL AND note IS NULL));

UPDATE alembic_version SET version_num='0009' WHERE alembic_version.version_num = '0008';

-- Running upgrade 0009 -> 0010

ALTER TABLE review_labels ADD COLUMN text_version INTEGER;

UPDATE review_labels SET text_version = 1 WHERE source = 'moderator';

GRANT UPDATE (text_version) ON review_labels TO moderator;

UPDATE alembic_version SET version_num='0010' WHERE alembic_version.version_num = '0009';

-- Running upgrade 0010 -> 0011

DROP VIEW IF EXISTS flagged_reviews;

DROP VIEW IF EXISTS moderation_history;

ALTER TABLE moderation_queue ADD COLUMN kind VARCHAR(16) DEFAULT 'flagged' NOT NULL;

ALTER TABLE moderation_queue ADD COLUMN bucket VARCHAR(32) DEFAULT 'flagged' NOT NULL;

ALTER TABLE moderation_queue ADD COLUMN claimed_by VARCHAR(128);

ALTER TABLE moderation_queue ADD COLUMN claim_expires_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE moderation_queue ADD COLUMN reason VARCHAR(32);

ALTER TABLE moderation_queue DROP CONSTRAINT ck_moderation_queue_status;

ALTER TABLE moderation_queue ADD CONSTRAINT ck_moderation_queue_status CHECK (status IN ('pending', 'confirmed', 'dismissed', 'unsure', 'expired'));

ALTER TABLE moderation_queue ADD CONSTRAINT ck_moderation_queue_kind CHECK (kind IN ('flagged', 'audit'));

ALTER TABLE moderation_events ADD COLUMN reason VARCHAR(32);

ALTER TABLE scoring_runs ADD COLUMN reviews_audited INTEGER DEFAULT 0 NOT NULL;

CREATE TABLE moderator_accounts (
    name VARCHAR(128) NOT NULL, 
    password_hash TEXT NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    disabled BOOLEAN DEFAULT false NOT NULL, 
    PRIMARY KEY (name)
);

CREATE FUNCTION moderation_queue_unsure_unlabels() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM review_labels WHERE review_id = NEW.review_id AND source = 'moderator';
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION moderation_queue_unsure_unlabels() FROM PUBLIC;

CREATE TRIGGER moderation_queue_unsure_unlabels AFTER UPDATE OF status ON moderation_queue FOR EACH ROW WHEN (NEW.status = 'unsure') EXECUTE FUNCTION moderation_queue_unsure_unlabels();

GRANT UPDATE (claimed_by, claim_expires_at, reason) ON moderation_queue TO moderator;

GRANT SELECT ON moderator_accounts TO moderator;

GRANT SELECT ON review_scores TO moderator;

GRANT UPDATE (kind, bucket, claimed_by, claim_expires_at, reason) ON moderation_queue TO scorer;

DROP POLICY moderation_queue_scorer_queues ON moderation_queue;

CREATE POLICY moderation_queue_scorer_queues ON moderation_queue FOR INSERT TO scorer WITH CHECK (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL AND reason IS NULL);

DROP POLICY moderation_queue_scorer_moves ON moderation_queue;

CREATE POLICY moderation_queue_scorer_moves ON moderation_queue FOR UPDATE TO scorer USING (true) WITH CHECK (status = 'expired' OR (status = 'pending' AND decided_by IS NULL AND decided_at IS NULL AND note IS NULL AND reason IS NULL));

CREATE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating,
       CASE WHEN q.text_version = r.text_version THEN q.score END AS score,
       q.threshold, q.model_version, q.status, q.kind, q.bucket, q.flagged_at, q.claimed_by, q.claim_expires_at,
       q.decided_by, q.decided_at, q.reason, q.note,
       r.created_at, r.ingested_at, r.text_version, q.text_version AS scored_text_version
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC;

GRANT SELECT ON flagged_reviews TO moderator;

CREATE VIEW moderation_history AS
SELECT e.event_id, e.at, e.review_id, r.product_id, e.event, e.previous_status, e.status, e.actor,
       e.score, e.threshold, e.model_version, e.text_version, e.run_id, e.reason, e.note
FROM moderation_events e
LEFT JOIN reviews r ON r.review_id = e.review_id
ORDER BY e.event_id;

GRANT SELECT ON moderation_history TO moderator, scorer;

UPDATE alembic_version SET version_num='0011' WHERE alembic_version.version_num = '0010';

-- Running upgrade 0011 -> 0012

ALTER TABLE review_scores DROP CONSTRAINT review_scores_review_id_fkey;

ALTER TABLE moderation_queue DROP CONSTRAINT moderation_queue_review_id_fkey;

CREATE FUNCTION written_rows_name_reviews() RETURNS trigger LANGUAGE plpgsql
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
$$;

CREATE FUNCTION reviews_hold_writers_of_keys() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    LOCK TABLE review_scores, moderation_queue IN SHARE MODE;
    RETURN NULL;
END
$$;

CREATE FUNCTION reviews_keep_referenced() RETURNS trigger LANGUAGE plpgsql
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
$$;

REVOKE ALL ON FUNCTION written_rows_name_reviews() FROM PUBLIC;

REVOKE ALL ON FUNCTION reviews_hold_writers_of_keys() FROM PUBLIC;

REVOKE ALL ON FUNCTION reviews_keep_referenced() FROM PUBLIC;

CREATE TRIGGER review_scores_insert_reviews_exist AFTER INSERT ON review_scores REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews();

CREATE TRIGGER review_scores_update_reviews_exist AFTER UPDATE ON review_scores REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews();

CREATE TRIGGER moderation_queue_insert_reviews_exist AFTER INSERT ON moderation_queue REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews();

CREATE TRIGGER moderation_queue_update_reviews_exist AFTER UPDATE ON moderation_queue REFERENCING NEW TABLE AS written_rows FOR EACH STATEMENT EXECUTE FUNCTION written_rows_name_reviews();

CREATE TRIGGER reviews_delete_holds_key_writers BEFORE DELETE ON reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_hold_writers_of_keys();

CREATE TRIGGER reviews_id_update_holds_key_writers BEFORE UPDATE OF review_id ON reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_hold_writers_of_keys();

CREATE TRIGGER reviews_delete_keeps_referenced AFTER DELETE ON reviews REFERENCING OLD TABLE AS removed_reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_keep_referenced();

CREATE TRIGGER reviews_update_keeps_referenced AFTER UPDATE ON reviews REFERENCING OLD TABLE AS removed_reviews FOR EACH STATEMENT EXECUTE FUNCTION reviews_keep_referenced();

UPDATE alembic_version SET version_num='0012' WHERE alembic_version.version_num = '0011';

