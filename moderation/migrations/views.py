"""Views and their grants as they are at each revision, for the revisions that replace them.

A revision that changes a view drops it and creates the new definition (SQLite
has no CREATE OR REPLACE, and PostgreSQL refuses to drop a view's column that
way), then grants it again on PostgreSQL, since a dropped view loses its grants.
Tables a view reads must not be rebuilt by SQLite batch mode while the view
exists, so such revisions drop the view first.
"""

from __future__ import annotations

from alembic import op

#: 0007: the score shown is the score of the text shown; NULL while an edited text awaits its re-score.
FLAGGED_VIEW_0007 = """
CREATE VIEW flagged_reviews AS
SELECT q.review_id, r.product_id, r.text, r.rating,
       CASE WHEN q.text_version = r.text_version THEN q.score END AS score,
       q.threshold, q.model_version, q.status, q.flagged_at, q.decided_by, q.decided_at, q.note,
       r.created_at, r.ingested_at, r.text_version, q.text_version AS scored_text_version
FROM moderation_queue q
JOIN reviews r ON r.review_id = q.review_id
ORDER BY q.flagged_at DESC, q.score DESC
"""


#: Statements, not names to format: every SQL text of the package is a literal.
DROP_FLAGGED = "DROP VIEW IF EXISTS flagged_reviews"
DROP_HISTORY = "DROP VIEW IF EXISTS moderation_history"


def drop_view(statement: str) -> None:
    """Run one of the DROP statements above."""
    op.execute(statement)


def create_view(sql: str, grants: list[str]) -> None:
    """Create a view from its SQL; on PostgreSQL also run its GRANT statements."""
    op.execute(sql)
    if op.get_context().dialect.name == "postgresql":
        for grant in grants:
            op.execute(grant)


FLAGGED_GRANTS = ["GRANT SELECT ON flagged_reviews TO moderator"]
