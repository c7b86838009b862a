"""A seeded queue and a running server for the web page's tests (HTTP and browser)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from web_seed import bucket_for, card_points, register, running_server, seed_night, seed_reviews  # noqa: F401

from moderation import accounts, db

SECRET = "test-secret-" + "0123456789abcdef" * 3
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=timezone.utc)
PASSWORDS = {"kim": "kim-password-1", "lee": "lee-password-2"}
#: Scores chosen so that the buckets (card points 0.31 maybe, 0.61 likely, 0.93 very_likely; threshold 0.25)
#: and the flag times make the expected order: very_likely (oldest first), likely, maybe, flagged, audit.
REVIEWS = [
    # review_id, product_id, rating, text, score, night (days before NOW), kind
    (101, 2001, 1, "배송이 너무 느리고 포장도 엉망이에요 최악", 0.95, 1, "flagged"),
    (102, 2001, 2, "품질이 별로예요 다시는 안 삽니다", 0.97, 2, "flagged"),
    (103, 2002, 2, "사이즈가 작아요 교환하기도 귀찮네요", 0.70, 1, "flagged"),
    (104, 2002, 3, "그냥 그래요 가격 생각하면 쏘쏘", 0.40, 2, "flagged"),
    (105, 2003, 1, "<script>window.__pwned = true</script> 환불해 주세요", 0.65, 1, "flagged"),
    (106, 2003, 4, "생각보다 괜찮은데 배송이 좀 늦었어요", 0.28, 1, "flagged"),
    (107, 2004, 5, "정말 좋아요 또 살게요", 0.05, 1, "audit"),
    (108, 2004, 2, "색상이 사진과 달라요", 0.50, 3, "flagged"),
]
EXPECTED_ORDER = [102, 101, 103, 105, 108, 104, 106, 107]
THRESHOLD = 0.25


@dataclass
class Clock:
    """The app's clock, moved by tests (a claim expires when the clock passes its lease)."""

    now: datetime = NOW
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, **delta: float) -> None:
        with self.lock:
            self.now = self.now + timedelta(**delta)


def seed_queue(url: str, model_dir: Path, extra_pending: int = 0) -> dict[str, Any]:
    """Schema, the model registered, the reviews above in three nights, two moderator accounts."""
    engine = db.make_engine(url)
    db.init_schema(engine)
    version = register(engine, model_dir)
    points = card_points(model_dir)
    reviews = [{"review_id": rid, "product_id": pid, "rating": rating, "text": text,
                "created_at": NOW - timedelta(days=night + 1), "ingested_at": NOW - timedelta(days=night)}
               for rid, pid, rating, text, _s, night, _k in REVIEWS]
    extra = [{"review_id": 10_000 + i, "product_id": 3001, "rating": 3, "text": f"평범한 후기 {i}번 입니다",
              "created_at": NOW - timedelta(days=4), "ingested_at": NOW - timedelta(days=4)}
             for i in range(extra_pending)]
    seed_reviews(engine, reviews + extra)
    for night in (3, 2, 1):
        start = (NOW - timedelta(days=night)).replace(hour=0, minute=0)
        scores = {rid: s for rid, _p, _r, _t, s, n, _k in REVIEWS if n == night}
        audits = [rid for rid, _p, _r, _t, _s, n, k in REVIEWS if n == night and k == "audit"]
        if night == 3:
            scores |= {row["review_id"]: 0.26 for row in extra}
        # within a night the flag times differ by review so that "oldest first" is visible
        seed_night(engine, run_id=f"night-{night}", start=start, model_version=version, threshold=THRESHOLD,
                   points=points, scores=scores, audits=audits, flagged_at=start + timedelta(days=1, hours=night))
    for name, password in PASSWORDS.items():
        accounts.add_account(engine, name, password)
    engine.dispose()
    return {"version": version, "points": points,
            "bucket_of": {r[0]: bucket_for(r[4], points) if r[6] == "flagged" else "audit" for r in REVIEWS}}
