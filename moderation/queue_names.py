"""The work queue's names: statuses, decisions, reasons, kinds, priority buckets.

Kept apart from :mod:`moderation.queue` so that the command line can offer
them as choices without importing SQLAlchemy and the queue's code: every
``moderation`` command builds the whole parser, scoring ones included.
"""

from __future__ import annotations

STATUSES = ("pending", "confirmed", "dismissed", "unsure", "expired")
DECISIONS = ("confirmed", "dismissed", "unsure")
#: A decision's label: confirmed means negative (1), dismissed positive (0); unsure has none.
DECISION_LABEL = {"confirmed": 1, "dismissed": 0}
#: Why a moderator decided as they did; stored with the decision and its event.
REASONS: tuple[str, ...] = ("abuse", "spam", "off_topic", "false_claim", "not_negative", "other")
#: 'flagged' by the model, or an 'audit' sample of the reviews it did not flag.
KINDS = ("flagged", "audit")
#: Priority buckets, most urgent first: the card's queue buckets a flag's score reached, then the
#: flags that reached none of them, then the audit sample.
BUCKETS = ("very_likely", "likely", "maybe", "flagged", "audit")
BUCKET_ORDER: dict[str, int] = {name: rank for rank, name in enumerate(BUCKETS)}
#: The card's points that name a bucket (:func:`moderation.registry.bucket_thresholds`), highest threshold first.
BUCKET_POINTS = ("very_likely", "likely", "maybe")
