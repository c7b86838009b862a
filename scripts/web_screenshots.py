"""Screenshots of the moderators' web page from a demo database of real shop reviews.

    .venv/bin/python scripts/web_screenshots.py            # writes docs/web-queue.png, web-item.png, web-stats.png

Tooling of the checkout, not part of the installed package. It builds a fresh
SQLite database in a temporary folder: shop reviews (scripts/shop_reviews.py)
spread over the last eight nights, each night scored by the real nightly job
(``pipeline.run_nightly``, as ``moderation score`` runs it, with the shipped
model at its card's default threshold and an audit sample of 25 a night);
then a few moderators decide part of the older nights, so the stats have
something to show. The page is served by uvicorn and photographed by the
distribution's headless Chromium through Selenium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

NIGHTS = 8
REVIEWS = 2400
SEED = 13
#: The threshold the demo flags at: the card's own, as a scheduled night does (its queue buckets all lie above it).
OPERATING_POINT = "default"
#: Unflagged reviews each night queues as audit samples (the stats page's recall).
AUDIT_SAMPLE = 25
MODERATORS = {"kim": "kim-demo-password", "lee": "lee-demo-password", "park": "park-demo-password"}
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=ko-KR")


def build_demo(work: Path, today: datetime) -> str:
    """A demo database in ``work``: reviews imported, NIGHTS nights scored, some decisions; its URL."""
    import numpy as np

    import shop_reviews
    from moderation import accounts, db, queue
    from moderation.importing import import_reviews
    from moderation.pipeline import run_nightly

    url = f"sqlite:///{work / 'reviews.db'}"
    engine = db.make_engine(url)
    db.init_schema(engine)
    rows = shop_reviews.load()
    rows = rows.sample(n=min(REVIEWS, len(rows)), random_state=SEED).reset_index(drop=True)
    q = db.moderation_queue.c
    for night in range(NIGHTS, 0, -1):  # each night: that night's reviews arrive, then the nightly job runs
        start, end = today - timedelta(days=night), today - timedelta(days=night - 1)
        source = work / f"reviews-{night}.parquet"
        rows.iloc[(NIGHTS - night)::NIGHTS].sort_values("review_id").to_parquet(source, index=False)
        import_reviews(engine, source, spread_days=1, now=end)
        run_id = f"nightly-{start:%Y-%m-%d}"
        summary = run_nightly(url, start, end, run_id=run_id, operating_point=OPERATING_POINT,
                              audit_sample=AUDIT_SAMPLE)
        print(f"{run_id}: {summary['reviews_scored']} scored, {summary['reviews_flagged']} flagged, "
              f"{summary['reviews_audited']} audit samples")
        with engine.begin() as conn:  # as if the run had finished that night (its events keep the real time)
            conn.execute(db.moderation_queue.update().where(q.run_id == run_id)
                         .values(flagged_at=end + timedelta(minutes=20 + 7 * night)))
    rng = np.random.default_rng(SEED)
    labels = dict(zip(rows["review_id"].astype(int), rows["label"].astype(int)))
    names = list(MODERATORS)
    for name, password in MODERATORS.items():
        accounts.add_account(engine, name, password)
    older = queue.QueueFilter(status="pending", until=today - timedelta(days=2))
    items, _ = queue.queue_page(engine, older, limit=5000, now=today)
    for item in items:  # moderators worked through most of the older nights: the corpus label is their verdict
        if rng.random() < 0.2:
            continue
        decision = ("confirmed" if labels.get(item["review_id"]) == 1 else "dismissed") if rng.random() > 0.05 \
            else "unsure"
        reason = ("abuse" if decision == "confirmed" else "not_negative") if decision != "unsure" else None
        queue.decide(engine, [item["review_id"]], decision, names[int(rng.integers(len(names)))],
                     reason=reason, now=item["flagged_at"] + timedelta(hours=float(rng.uniform(1, 30))))
    engine.dispose()
    return url


def browser(width: int, height: int):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="moderation-shots-")
    for flag in CHROME_FLAGS + (f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                            options=options)


def shoot(url: str, out: Path, today: datetime) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from moderation.web.app import create_app
    from web_seed import running_server

    app = create_app(url, secret=os.urandom(32).hex(), clock=lambda: today + timedelta(hours=9))
    with running_server(app) as base:
        session = browser(1440, 1000)
        try:
            wait = WebDriverWait(session, 120)
            session.get(base + "/login")
            session.find_element(By.ID, "name").send_keys("kim")
            session.find_element(By.ID, "password").send_keys(MODERATORS["kim"])
            session.find_element(By.ID, "login-submit").click()
            wait.until(lambda s: s.find_elements(By.ID, "queue"))
            session.find_element(By.TAG_NAME, "body").send_keys("jj")
            session.save_screenshot(str(out / "web-queue.png"))
            print(f"wrote {out / 'web-queue.png'}")
            longer = [b for b in session.find_elements(By.CSS_SELECTOR, "#queue tr.row button.open")
                      if 40 <= len(b.text) <= 90]
            longer[0].click()
            wait.until(lambda s: s.find_elements(By.ID, "review-text"))
            session.save_screenshot(str(out / "web-item.png"))
            print(f"wrote {out / 'web-item.png'}")
            session.get(base + "/stats")
            wait.until(lambda s: len(s.find_elements(By.CSS_SELECTOR, "figure.plot svg")) == 4)
            height = session.execute_script("return document.documentElement.scrollHeight")
            session.set_window_size(1440, min(int(height) + 40, 4000))
            time.sleep(0.5)
            session.save_screenshot(str(out / "web-stats.png"))
            print(f"wrote {out / 'web-stats.png'}")
        finally:
            session.quit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/web_screenshots.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs", help="folder of the PNG files (default docs/)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the demo database in this folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    work = Path(tempfile.mkdtemp(prefix="moderation-web-demo-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MODERATION_HOME", str(work / "home"))  # run files of the nightly job stay out of var/
    try:
        url = build_demo(work, today)
        shoot(url, args.out, today)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
