-- Group roles (NOLOGIN) of the two kinds of client; people and services log in
-- as their own LOGIN users and are granted one of them:
--     CREATE ROLE alice LOGIN PASSWORD '...';  GRANT moderator TO alice;
--
-- moderator: reads the flagged reviews, records decisions (the decision
--            columns of moderation_queue only) and the labels they become.
-- scorer:    the nightly pipeline: reads reviews, writes scores, queues new
--            flags (never decides them), records runs and model versions.
-- Neither may change a review's text or a model's score, nor delete history
-- (except the scorer's own scoring_runs rows, which a retried run replaces).
--
-- Idempotent: roles are created only when missing (roles are cluster-wide, so
-- another database may have created them, even concurrently), and every
-- table's grants are first revoked so the file states the complete set.
-- Creating the roles needs CREATEROLE; once they exist, the owner of the
-- tables can re-apply this file.

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
