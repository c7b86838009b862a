-- What moderators work from: the queue joined to the review, newest first.
-- Same definition as moderation.db.FLAGGED_VIEW_SQL (a test compares them).
CREATE OR REPLACE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating, q.score, q.threshold, q.model_version,
       q.status, q.flagged_at, q.decided_by, q.decided_at, q.note, r.created_at, r.ingested_at
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC;
