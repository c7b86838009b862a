"""How fast the moderators' web page answers on a 10,000-item queue in PostgreSQL.

    .venv/bin/python benchmarks/web_queue.py                      # 10,000 pending items, 50 requests a page
    .venv/bin/python benchmarks/web_queue.py --items 2000 --requests 20 --out /tmp/web.json

A fresh PostgreSQL database (dropped afterwards) gets the schema, the shipped
model registered, ``--items`` pending queue items spread over 30 nights with
scores drawn at random (seeded) and real shop review texts, and a moderator
account. ``moderation serve`` then runs as a real uvicorn process, and httpx
(one logged-in client, sequential requests) times GET of: the queue's first
page, a filtered page (bucket and product), a deep page (offset 5,000), an
item page whose evidence is computed cold (a different item each request: the
model's prefix trace runs; the first one, which also loads TensorFlow and the
model, is reported apart) and warm (the same item again: cached), and the
stats page (its queries and four matplotlib plots, computed on every request
here; the page itself reuses them for 30 s). Each page's p50 and p95 are printed and
written as JSON. Timings depend on the machine and whatever else runs on it:
they are recorded, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "scripts"), str(REPO_ROOT / "benchmarks")]
PG_ADMIN_URL = os.environ.get("MODERATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NIGHTS = 30
SEED = 20261129
PASSWORD = "bench-password-1"


def seed(url: str, items: int, model_dir: Path, now: datetime) -> dict[str, Any]:
    """Schema, model, ``items`` pending queue items over NIGHTS nights (plus unflagged scores), one account."""
    import numpy as np

    import shop_reviews
    from moderation import accounts, db
    from web_seed import card_points, register, seed_night, seed_reviews

    engine = db.make_engine(url)
    db.init_schema(engine)
    version = register(engine, model_dir)
    points = card_points(model_dir)
    from moderation.model import read_card

    threshold = read_card(model_dir).threshold
    texts = shop_reviews.load()["text"].dropna().astype(str).tolist()
    rng = np.random.default_rng(SEED)
    per_night = -(-items // NIGHTS)
    review_id, queued = 1, 0
    for night in range(NIGHTS, 0, -1):
        start = (now - timedelta(days=night)).replace(hour=0, minute=0, second=0, microsecond=0)
        flagged_count = min(per_night, items - queued)
        unflagged = flagged_count * 4  # scored but not flagged: the drift histogram's bulk
        ids = list(range(review_id, review_id + flagged_count + unflagged))
        review_id += len(ids)
        seed_reviews(engine, ({"review_id": rid, "product_id": 2001 + rid % 40, "rating": int(rng.integers(1, 6)),
                               "text": texts[rid % len(texts)], "created_at": start, "ingested_at": start}
                              for rid in ids))
        flag_scores = rng.uniform(threshold, 1.0, flagged_count)
        other_scores = rng.uniform(0.0, threshold * 0.999, unflagged)
        scores = dict(zip(ids, np.concatenate([flag_scores, other_scores]).tolist()))
        queued += seed_night(engine, run_id=f"bench-{start:%Y-%m-%d}", start=start, model_version=version,
                             threshold=threshold, points=points, scores=scores,
                             flagged_at=start + timedelta(days=1, minutes=int(rng.integers(0, 120))))
        if queued >= items:
            break
    accounts.add_account(engine, "bench", PASSWORD)
    with engine.connect() as conn:
        from sqlalchemy import func, select

        pending = conn.execute(select(func.count()).select_from(db.moderation_queue)
                               .where(db.moderation_queue.c.status == "pending")).scalar_one()
    engine.dispose()
    return {"pending": int(pending), "reviews": review_id - 1, "model_version": version}


def start_server(url: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "moderation", "serve", "--db", url, "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read().decode()[-2000:] if server.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not answer within 60 s")


def timed(client: Any, paths: Sequence[str]) -> dict[str, Any]:
    """Milliseconds of each GET (each must answer 200)."""
    times = []
    for path in paths:
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text[:200]}")
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"requests": len(times), "p50_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1),
            "max_ms": round(max(times), 1), "mean_ms": round(statistics.fmean(times), 1)}


def measure(url: str, args: argparse.Namespace, model_dir: Path, now: datetime) -> dict[str, Any]:
    """Seed ``url``, serve it with ``moderation serve`` in a subprocess, time each page; the report."""
    import httpx

    started = time.perf_counter()
    seeded = seed(url, args.items, model_dir, now)
    print(f"seeded {seeded['pending']:,} pending items ({seeded['reviews']:,} reviews) in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    env = {**os.environ, "MODERATION_WEB_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
           "MODERATION_MODEL_DIR": str(model_dir),
           "MODERATION_WEB_STATS_SECONDS": "0"}  # the stats page computed on every request, not its 30 s reuse
    server = start_server(url, args.port, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120, follow_redirects=False) as client:
            login = client.get("/login").text
            token = login.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            if client.post("/login", data={"name": "bench", "password": PASSWORD,
                                           "csrf_token": token}).status_code != 303:
                raise SystemExit("login failed")
            first = client.get("/").text
            ids = [int(part.split('"', 1)[0]) for part in first.split('data-review-id="')[1:]]
            client.get("/stats")  # matplotlib's first import and font cache, once
            n = args.requests
            pages = {
                "item_first_model_load": timed(client, [f"/items/{ids[0]}"]),  # TensorFlow and the model, once
                "queue_first_page": timed(client, ["/"] * n),
                "queue_filtered": timed(client, ["/?bucket=likely&product=2003"] * n),
                "queue_deep_page": timed(client, [f"/?page={5000 // 50 + 1}"] * n),
                "item_cold": timed(client, [f"/items/{rid}" for rid in ids[1:1 + args.cold_items]]),
                "item_warm": timed(client, [f"/items/{ids[1]}"] * n),
                "stats": timed(client, ["/stats"] * max(n // 5, 3)),
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"items": seeded["pending"], "database": "postgresql", "machine": platform.node(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            "measured_at": now.isoformat(timespec="seconds"), "model": seeded["model_version"], "pages": pages}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/web_queue.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="pending queue items (default 10,000)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page (default 50)")
    parser.add_argument("--cold-items", type=int, default=20, help="item pages timed cold (default 20)")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL, help="PostgreSQL server as a user that may create databases")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench import scratch_database  # beside this script

    from moderation import config

    model_dir = args.model or config.default_model_dir()
    now = datetime.now(timezone.utc)
    with scratch_database("postgresql", args.pg_url) as url:
        report = measure(url, args, model_dir, now)
    print(f"{'page':22s} {'n':>4s} {'p50 ms':>9s} {'p95 ms':>9s} {'max ms':>9s}")
    for page, figures in report["pages"].items():
        print(f"{page:22s} {figures['requests']:4d} {figures['p50_ms']:9.1f} {figures['p95_ms']:9.1f} "
              f"{figures['max_ms']:9.1f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
