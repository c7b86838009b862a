"""The web page driven in a real headless browser: the distribution's Chromium through Selenium.

The server is the real app under uvicorn on a loopback port, on a real SQLite
file (and on PostgreSQL as a login of the deployed ``moderator`` role); the
browser logs in, reads the queue, opens items with the keyboard, decides,
bulk-dismisses, holds claims in two sessions, and loads the stats page.

Chromium and chromedriver come from the distribution (``apt-get install
chromium chromium-driver``; ``.ci/run`` installs them when missing). Without
them these tests FAIL with that instruction: they are never skipped.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, select, text
from web_helpers import EXPECTED_ORDER, PASSWORDS, SECRET, Clock, running_server, seed_queue

from moderation import db
from moderation.web.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1366,900", "--lang=ko-KR")
WAIT_SECONDS = 20


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    if not browser or not driver:
        pytest.fail("the browser tests need Chromium and chromedriver from the distribution: "
                    "apt-get install -y chromium chromium-driver (.ci/run installs them)")
    return browser, driver


@pytest.fixture
def new_browser() -> Iterator[Callable[[], Any]]:
    """Opens headless Chromium sessions, each with its own fresh profile (cookies, storage)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    opened: list[Any] = []
    profiles: list[str] = []

    def open_one() -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        profile = tempfile.mkdtemp(prefix="moderation-chromium-")
        profiles.append(profile)
        for flag in CHROME_FLAGS + (f"--user-data-dir={profile}",):
            options.add_argument(flag)
        session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        session.set_page_load_timeout(60)
        opened.append(session)
        return session

    yield open_one
    for session in opened:
        session.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def serve(url: str, model_dir: Path, clock: Clock) -> Any:
    return running_server(create_app(url, secret=SECRET, clock=clock, model_dir=model_dir, minutes=10))


@pytest.fixture
def site(sqlite_url: str, pointed_model_dir: Path) -> Iterator[dict[str, Any]]:
    """The app on a seeded SQLite queue, served on a loopback port."""
    seed_queue(sqlite_url, pointed_model_dir)
    clock = Clock()
    with serve(sqlite_url, pointed_model_dir, clock) as base:
        yield {"base": base, "clock": clock, "url": sqlite_url}


# ---------------------------------------------------------------- helpers


def wait_for(session: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Poll ``condition``; elements read while the page is being replaced (stale) mean "not yet"."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(session, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message=f"waited for {what}")


def css(session: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return session.find_elements(By.CSS_SELECTOR, selector)


def log_in(session: Any, base: str, name: str) -> None:
    session.get(base + "/")
    wait_for(session, lambda s: css(s, "#login-form"), "the login form (anonymous visit redirected)")
    css(session, "#name")[0].send_keys(name)
    css(session, "#password")[0].send_keys(PASSWORDS[name])
    css(session, "#login-submit")[0].click()
    wait_for(session, lambda s: css(s, "#queue"), "the queue after logging in")
    assert css(session, "#who")[0].text == name


def press(session: Any, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(session).send_keys(keys).perform()


def row_ids(session: Any) -> list[int]:
    return [int(row.get_attribute("data-review-id")) for row in css(session, "#queue tr.row")]


def item_on_page(session: Any) -> int | None:
    found = css(session, "#item")
    return int(found[0].get_attribute("data-review-id")) if found else None


def queue_row(url: str, review_id: int) -> dict[str, Any]:
    engine = db.make_engine(url)
    q = db.moderation_queue.c
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(q.status, q.decided_by, q.reason, q.note, q.claimed_by)
                                     .where(q.review_id == review_id)).mappings().one())
    finally:
        engine.dispose()


def decided_events(url: str) -> list[tuple[int, str, str]]:
    engine = db.make_engine(url)
    e = db.moderation_events.c
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(select(e.review_id, e.status, e.actor)
                                                       .where(e.event == "decided").order_by(e.review_id))]
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the tests


def test_log_in_and_see_the_queue_in_working_order_with_a_script_review_inert(
        site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    session = new_browser()
    session.get(site["base"] + "/stats")
    assert "/login" in session.current_url  # no anonymous access
    log_in(session, site["base"], "kim")
    assert row_ids(session) == EXPECTED_ORDER  # very likely first, then likely, maybe, flagged, audit; oldest first
    buckets = [cell.text for cell in css(session, "#queue tr.row td:nth-child(2) .bucket")]
    assert buckets[:2] == ["very likely", "very likely"] and buckets[-1] == "audit"
    # The review holding <script> shows it as text, and the script never ran.
    script_row = css(session, 'tr.row[data-review-id="105"] td.text')[0]
    assert "<script>window.__pwned = true</script>" in script_row.text
    assert session.execute_script("return window.__pwned === undefined") is True
    assert css(session, 'tr.row[data-review-id="105"] td.text script') == []


def test_open_an_item_with_the_keyboard_see_its_evidence_and_confirm_with_c(
        site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    session = new_browser()
    log_in(session, site["base"], "kim")
    press(session, "j")  # the first row
    assert "current" in css(session, "#queue tr.row")[0].get_attribute("class")
    press(session, "o")
    wait_for(session, lambda s: item_on_page(s) == EXPECTED_ORDER[0], "the first item opened")
    assert "yours until" in css(session, "#claim")[0].text
    assert queue_row(site["url"], EXPECTED_ORDER[0])["claimed_by"] == "kim"
    marks = css(session, "#review-text mark.ev")
    assert marks, "no word highlighted as evidence"
    assert all(float(m.get_attribute("data-shift")) > 0 for m in marks)
    shade = marks[0].value_of_css_property("background-color")
    assert shade.startswith("rgba(255, 170, 0"), shade  # highlighted, not plain text
    assert css(session, "#review-text")[0].text == "품질이 별로예요 다시는 안 삽니다"
    press(session, "c")
    wait_for(session, lambda s: item_on_page(s) == EXPECTED_ORDER[1], "the next item after confirming")
    assert "confirmed" in css(session, "#message")[0].text
    decided = queue_row(site["url"], EXPECTED_ORDER[0])
    assert (decided["status"], decided["decided_by"], decided["claimed_by"]) == ("confirmed", "kim", None)
    assert decided_events(site["url"]) == [(EXPECTED_ORDER[0], "confirmed", "kim")]


def test_an_item_holding_a_script_shows_it_as_text(site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    session = new_browser()
    log_in(session, site["base"], "kim")
    session.get(site["base"] + "/items/105")
    wait_for(session, lambda s: item_on_page(s) == 105, "item 105")
    assert css(session, "#review-text")[0].text.startswith("<script>window.__pwned = true</script>")
    assert css(session, "#review-text script") == []
    assert session.execute_script("return window.__pwned === undefined") is True


def test_bulk_dismiss_every_item_of_a_filter(site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    from selenium.webdriver.support.ui import Select

    session = new_browser()
    log_in(session, site["base"], "kim")
    Select(css(session, "#f-bucket")[0]).select_by_value("maybe")
    css(session, "#apply-filter")[0].click()
    wait_for(session, lambda s: row_ids(s) == [108, 104], "the maybe bucket alone")
    Select(css(session, "#bulk-decision")[0]).select_by_value("dismissed")
    Select(css(session, "#bulk-reason")[0]).select_by_value("not_negative")
    css(session, "#bulk-note")[0].send_keys("불만이지만 욕설 아님")
    css(session, "#bulk-filter")[0].click()
    wait_for(session, lambda s: s.switch_to.alert, "the confirmation of the bulk decision").accept()
    wait_for(session, lambda s: css(s, "#message"), "the bulk decision's message")
    assert "dismissed: 2 item(s) matching the filter" in css(session, "#message")[0].text
    assert row_ids(session) == []  # the filter (pending, maybe) is now empty
    for review_id in (108, 104):
        row = queue_row(site["url"], review_id)
        assert (row["status"], row["decided_by"], row["reason"], row["note"]) == \
            ("dismissed", "kim", "not_negative", "불만이지만 욕설 아님")
    assert queue_row(site["url"], 103)["status"] == "pending"


def test_a_claim_blocks_a_second_session_until_it_expires(site: dict[str, Any],
                                                          new_browser: Callable[[], Any]) -> None:
    check_claims(site, new_browser)


def check_claims(site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    first = EXPECTED_ORDER[0]
    kim, lee = new_browser(), new_browser()
    log_in(kim, site["base"], "kim")
    log_in(lee, site["base"], "lee")
    assert row_ids(kim) == EXPECTED_ORDER
    press(kim, "n")  # the next free item: the first in working order
    wait_for(kim, lambda s: item_on_page(s) == first, "kim's item")

    lee.refresh()
    taken = css(lee, f'tr.row[data-review-id="{first}"]')[0]
    assert "taken" in taken.get_attribute("class") and "taken by kim" in taken.text
    lee.get(f"{site['base']}/items/{first}")
    wait_for(lee, lambda s: item_on_page(s) == first, "the taken item in lee's session")
    assert "taken by kim" in css(lee, "#taken")[0].text
    assert css(lee, "#decide-form") == [] and css(lee, "#claim-button") == []
    lee.get(site["base"] + "/")
    press(lee, "n")  # lee's next free item skips kim's
    wait_for(lee, lambda s: item_on_page(s) == EXPECTED_ORDER[1], "lee's next item, not kim's")

    site["clock"].advance(minutes=11)  # kim walked away: the 10-minute lease lapses
    lee.get(f"{site['base']}/items/{first}")
    wait_for(lee, lambda s: css(s, "#claim-button"), "the lapsed claim shown as free")
    assert "free" in css(lee, "#claim")[0].text
    css(lee, "#claim-button")[0].click()
    # While the claim's post and redirect load, the page may have no #claim yet: that is "not yet" too.
    wait_for(lee, lambda s: any("yours until" in e.text for e in css(s, "#claim")), "lee holding the item")
    assert queue_row(site["url"], first)["claimed_by"] == "lee"
    kim.refresh()
    assert "taken by lee" in css(kim, "#taken")[0].text and css(kim, "#decide-form") == []


def test_the_stats_page_shows_its_plots(site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    session = new_browser()
    log_in(session, site["base"], "kim")
    css(session, "header nav a[href='/stats']")[0].click()
    wait_for(session, lambda s: css(s, "figure.plot"), "the plots")
    names = [figure.get_attribute("id") for figure in css(session, "figure.plot")]
    assert names == ["plot-nightly", "plot-backlog", "plot-moderators", "plot-drift"]
    for figure in css(session, "figure.plot svg"):
        assert figure.size["width"] > 200 and figure.size["height"] > 100
    assert len(css(session, "figure.plot svg path")) > 20  # drawn, not empty frames
    assert css(session, "#backlog-size")[0].text == str(len(EXPECTED_ORDER))


# ---------------------------------------------------------------- PostgreSQL, as the deployed moderator role


@pytest.fixture
def pg_moderator_site(pg_url: str, pointed_model_dir: Path) -> Iterator[dict[str, Any]]:
    """The schema migrated as its owner, the queue seeded, and the app logged in as a member of ``moderator``."""
    seed_queue(pg_url, pointed_model_dir)
    login, password = f"web_mod_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    admin = create_engine(make_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{login}" LOGIN PASSWORD \'{password}\' IN ROLE moderator'))
    moderator_url = make_url(pg_url).set(username=login, password=password).render_as_string(hide_password=False)
    clock = Clock()
    try:
        with serve(moderator_url, pointed_model_dir, clock) as base:
            yield {"base": base, "clock": clock, "url": pg_url}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"))
            conn.execute(text(f'DROP ROLE IF EXISTS "{login}"'))
        admin.dispose()


@pytest.mark.postgres
def test_on_postgresql_as_the_moderator_role_order_claims_and_stats(
        pg_moderator_site: dict[str, Any], new_browser: Callable[[], Any]) -> None:
    check_claims(pg_moderator_site, new_browser)
    kim = new_browser()
    log_in(kim, pg_moderator_site["base"], "kim")
    kim.get(pg_moderator_site["base"] + "/stats")
    wait_for(kim, lambda s: len(css(s, "figure.plot svg")) == 4, "the four plots as the moderator role")
    drift = css(kim, "#plot-drift")[0].get_attribute("innerHTML")
    assert "not readable" not in drift and "latest run" in drift  # the role reads scores: a chart, not a note
