"""Seed a reviews database with nightly runs and a moderation queue, for the web page's demo, tests and benchmark.

Tooling of the checkout (``scripts/``), not part of the installed package.
It writes what the nightly job writes (``scoring_runs``, ``review_scores``,
``moderation_queue`` rows with their ``queued`` events), with buckets from
the model card's operating points, as direct inserts: fast enough for
10,000-item queues, and independent of TensorFlow (the caller brings the
scores: real ones from a model, or made-up ones for a benchmark).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from moderation import db
from moderation.queue import BUCKET_POINTS, bucket_for

def card_points(model_dir: Any) -> dict[str, float]:
    """{point name: threshold} of the card's default domain (empty when the card has none)."""
    from moderation.model import read_card

    card = read_card(model_dir)
    named = card.operating_points.get(card.default_domain or "", {})
    return {name: float(point["threshold"]) for name, point in named.items() if name in BUCKET_POINTS}


def seed_reviews(engine: Engine, reviews: Iterable[Mapping[str, Any]]) -> int:
    """Insert reviews (review_id, product_id, rating, text, created_at, ingested_at)."""
    rows = [dict(r) for r in reviews]
    with engine.begin() as conn:
        for part in db.batches(rows):
            conn.execute(db.reviews.insert(), list(part))
    return len(rows)


def seed_night(engine: Engine, *, run_id: str, start: datetime, model_version: str, threshold: float,
               points: Mapping[str, float], scores: Mapping[int, float], audits: Sequence[int] = (),
               flagged_at: datetime | None = None) -> int:
    """One successful nightly run over ``[start, start + 1 day)``: scores, flags (score >= threshold), audits.

    Returns the number of queue rows added. ``flagged_at`` defaults to the end of the interval.
    """
    when = flagged_at or start + timedelta(days=1)
    flagged = {rid: s for rid, s in scores.items() if s >= threshold}
    audit_ids = [rid for rid in audits if rid not in flagged]
    queue_rows = [{"review_id": rid, "model_version": model_version, "score": s, "threshold": threshold,
                   "status": "pending", "flagged_at": when, "run_id": run_id, "text_version": 1,
                   "kind": "flagged", "bucket": bucket_for(s, points)} for rid, s in flagged.items()]
    queue_rows += [{"review_id": rid, "model_version": model_version, "score": scores[rid], "threshold": threshold,
                    "status": "pending", "flagged_at": when, "run_id": run_id, "text_version": 1,
                    "kind": "audit", "bucket": "audit"} for rid in audit_ids]
    events = [{"review_id": row["review_id"], "event": "queued", "status": "pending", "previous_status": None,
               "actor": run_id, "at": when, "score": row["score"], "model_version": model_version,
               "threshold": threshold, "text_version": 1, "run_id": run_id, "note": None} for row in queue_rows]
    score_rows = [{"review_id": rid, "model_version": model_version, "score": s, "skip_reason": None,
                   "scored_at": when, "run_id": run_id, "text_version": 1} for rid, s in scores.items()]
    with engine.begin() as conn:
        conn.execute(db.scoring_runs.insert().values(
            run_id=run_id, interval_start=start, interval_end=start + timedelta(days=1), model_version=model_version,
            threshold=threshold, reviews_read=len(scores), reviews_scored=len(scores), reviews_skipped=0,
            reviews_flagged=len(flagged), started_at=when, finished_at=when, status="success"))
        for table, rows in ((db.review_scores, score_rows), (db.moderation_queue, queue_rows),
                            (db.moderation_events, events)):
            for part in db.batches(rows, 2_000):
                conn.execute(table.insert(), list(part))
    return len(queue_rows)


def register(engine: Engine, model_dir: Any) -> str:
    """Register and activate the model directory; its version."""
    from moderation.registry import register_model

    return register_model(engine, model_dir, activate=True).version


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
