"""The web page over HTTP (Starlette's test client on the real app and a real database).

The browser drives the same page in tests/test_web_browser.py; here are the
checks a browser cannot make: status codes, headers, refusals of forged or
anonymous requests, what is written to the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from web_helpers import EXPECTED_ORDER, PASSWORDS, SECRET, Clock, seed_queue

from moderation import db
from moderation.cli import main
from moderation.errors import SettingError
from moderation.web.app import create_app, web_secret

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def seeded(any_db_url: str, pointed_model_dir: Path) -> dict[str, Any]:
    return {"url": any_db_url, "clock": Clock(), **seed_queue(any_db_url, pointed_model_dir)}


@pytest.fixture
def client(seeded: dict[str, Any], pointed_model_dir: Path) -> Iterator[TestClient]:
    app = create_app(seeded["url"], secret=SECRET, clock=seeded["clock"], model_dir=pointed_model_dir)
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as test_client:
        yield test_client
    app.state.engine.dispose()


def csrf(client: TestClient, path: str = "/login") -> str:
    found = CSRF.search(client.get(path).text)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def login(client: TestClient, name: str = "kim") -> None:
    response = client.post("/login", data={"name": name, "password": PASSWORDS[name], "csrf_token": csrf(client)})
    assert response.status_code == 303, response.text


def test_anonymous_requests_go_to_the_login_page(client: TestClient) -> None:
    for path in ("/", "/stats", "/items/101", "/?bucket=likely"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), path
    anonymous = client.post("/bulk", data={"decision": "dismissed", "scope": "filter"})
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    assert client.get("/healthz").text == "ok"


def test_login_refuses_a_wrong_password_and_a_forged_form(client: TestClient) -> None:
    token = csrf(client)
    wrong = client.post("/login", data={"name": "kim", "password": "not-it-at-all", "csrf_token": token})
    assert wrong.status_code == 401 and "Unknown name or wrong password" in wrong.text
    forged = client.post("/login", data={"name": "kim", "password": PASSWORDS["kim"]})
    assert forged.status_code == 403
    assert client.get("/").status_code == 303  # still anonymous


def test_every_write_needs_the_session_csrf_token(client: TestClient, seeded: dict[str, Any]) -> None:
    login(client)
    for path, data in (("/bulk", {"decision": "dismissed", "scope": "filter"}),
                       ("/items/101/decide", {"decision": "confirmed"}), ("/items/101/claim", {}),
                       ("/items/101/skip", {}), ("/next", {}), ("/logout", {})):
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data=data | {"csrf_token": "forged"}).status_code == 403, path
    engine = db.make_engine(seeded["url"])
    with engine.connect() as conn:
        statuses = set(conn.execute(select(db.moderation_queue.c.status)).scalars())
        claims = set(conn.execute(select(db.moderation_queue.c.claimed_by)).scalars())
    engine.dispose()
    assert statuses == {"pending"} and claims == {None}


def test_the_queue_is_in_bucket_order_then_oldest_first_and_escapes_review_text(client: TestClient) -> None:
    login(client)
    page = client.get("/")
    assert page.status_code == 200
    ids = [int(x) for x in re.findall(r'data-review-id="(\d+)"', page.text)]
    assert ids == EXPECTED_ORDER
    assert "<script>window.__pwned" not in page.text
    assert "&lt;script&gt;window.__pwned = true&lt;/script&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    likely = client.get("/?bucket=likely")
    assert [int(x) for x in re.findall(r'data-review-id="(\d+)"', likely.text)] == [103, 105]


def test_an_item_shows_its_evidence_escaped(client: TestClient) -> None:
    login(client)
    page = client.get("/items/105")
    assert page.status_code == 200
    text = re.search(r'<p class="review-text" id="review-text" lang="ko">(.*?)</p>', page.text, re.S).group(1)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert '<mark class="ev"' in page.text or "No single word raised it by much" in page.text


def test_a_decision_records_the_moderator_from_the_session(client: TestClient, seeded: dict[str, Any]) -> None:
    login(client)
    token = csrf(client, "/")
    opened = client.post("/items/101/claim", data={"csrf_token": token})
    assert opened.status_code == 303 and opened.headers["location"].startswith("/items/101")
    done = client.post("/items/101/decide", data={"csrf_token": token, "decision": "confirmed", "reason": "abuse",
                                                  "note": "욕설", "decided_by": "someone-else"})
    assert done.status_code == 303
    engine = db.make_engine(seeded["url"])
    q, e = db.moderation_queue.c, db.moderation_events.c
    with engine.connect() as conn:
        row = conn.execute(select(q.status, q.decided_by, q.reason, q.claimed_by).where(q.review_id == 101)).one()
        event = conn.execute(select(e.actor, e.status).where(e.review_id == 101, e.event == "decided")).one()
    engine.dispose()
    assert tuple(row) == ("confirmed", "kim", "abuse", None)
    assert tuple(event) == ("kim", "confirmed")


def test_the_login_redirect_stays_on_this_site(client: TestClient) -> None:
    token = csrf(client)
    for target, expected in (("//evil.example/x", "/"), ("https://evil.example", "/"), ("/stats", "/stats")):
        client.cookies.clear()
        token = csrf(client)
        response = client.post(f"/login?next={target}",
                               data={"name": "kim", "password": PASSWORDS["kim"], "csrf_token": token})
        assert response.headers["location"] == expected


def test_stats_page_draws_its_plots(client: TestClient) -> None:
    login(client)
    page = client.get("/stats")
    assert page.status_code == 200
    for name in ("nightly", "backlog", "moderators", "drift"):
        assert f'id="plot-{name}"' in page.text
    assert page.text.count("<svg") >= 4


@pytest.mark.parametrize("env, message", [
    ({}, "MODERATION_WEB_SECRET is not set"),
    ({"MODERATION_WEB_SECRET": "short"}, "at least 32 characters"),
    ({"MODERATION_WEB_SECRET": "change-me" * 5}, "at least 32 characters"),
])
def test_the_app_refuses_to_start_without_a_real_secret(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        web_secret(env)


def test_serve_refuses_a_missing_secret_in_one_line(monkeypatch: pytest.MonkeyPatch, sqlite_url: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MODERATION_WEB_SECRET", raising=False)
    assert main(["serve", "--db", sqlite_url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MODERATION_WEB_SECRET is not set" in err
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--port", "0", "--db", sqlite_url])
    assert refused.value.code == 2
    assert "--port: must be at least 1" in capsys.readouterr().err


def test_a_bulk_decision_on_selected_rows_never_takes_over_a_claimed_item(client: TestClient,
                                                                          seeded: dict[str, Any]) -> None:
    from moderation import queue

    engine = db.make_engine(seeded["url"])
    queue.claim(engine, 103, "lee", minutes=10, now=seeded["clock"]())
    login(client)
    token = csrf(client, "/")
    refused = client.post("/bulk", data={"csrf_token": token, "scope": "selection", "decision": "dismissed",
                                         "review_id": ["103", "104"]})
    assert refused.status_code == 303
    page = client.get("/").text
    assert "Nothing recorded" in page and "lee" in page  # the message names the holder
    done = client.post("/bulk", data={"csrf_token": token, "scope": "selection", "decision": "unsure",
                                      "reason": "other", "review_id": ["104", "108"]})
    assert done.status_code == 303
    q = db.moderation_queue.c
    with engine.connect() as conn:
        rows = dict(conn.execute(select(q.review_id, q.status).where(q.review_id.in_([103, 104, 108]))).tuples().all())
        labels = conn.execute(select(db.review_labels.c.review_id)
                              .where(db.review_labels.c.review_id.in_([104, 108]))).all()
    engine.dispose()
    assert rows == {103: "pending", 104: "unsure", 108: "unsure"}
    assert labels == []  # unsure never becomes a training label


def test_web_stats_per_night_precision_audit_recall_backlog_and_drift(seeded: dict[str, Any]) -> None:
    from moderation import queue
    from moderation.reporting import audit_recall, web_stats

    engine = db.make_engine(seeded["url"])
    now = seeded["clock"]()
    queue.decide(engine, [101, 105], "confirmed", "kim", now=now)
    queue.decide(engine, [103], "dismissed", "kim", now=now)
    queue.decide(engine, [106], "unsure", "kim", now=now)
    queue.decide(engine, [107], "confirmed", "lee", now=now)  # an audit sample the model missed
    report = web_stats(engine, now=now)
    engine.dispose()
    last = report["nights"][-1]  # night 1: 101, 103, 105, 106 flagged, 107 scored below the threshold
    assert (last["reviews_scored"], last["reviews_flagged"], last["decided"], last["unsure"]) == (5, 4, 3, 1)
    assert last["precision"] == pytest.approx(2 / 3)
    assert last["recall"] == pytest.approx(4 * 2 / 3 / (4 * 2 / 3 + 1 * 1.0))
    assert last["recall"] == audit_recall(5, 4, 2 / 3, 1, 1)
    assert [n["night"] for n in report["nights"]] == ["2026-03-07", "2026-03-08", "2026-03-09"]
    assert report["backlog"]["size"] == 3 and report["backlog"]["age_p50_hours"] > 24
    assert report["moderators"] == {"kim": {"confirmed": 2, "dismissed": 1, "unsure": 1},
                                    "lee": {"confirmed": 1, "dismissed": 0, "unsure": 0}}
    drift = report["drift"]
    assert drift["latest_run"] == "night-1" and sum(drift["latest"]) == 5 and sum(drift["reference"]) == 3
    assert drift["latest"][19] == 1 and drift["error"] is None  # 0.95 in the top bin
    assert audit_recall(100, 10, None, 1, 5) is None and audit_recall(100, 10, 0.5, 0, 0) is None


def test_an_item_without_its_model_still_shows_and_an_unknown_one_is_404(client: TestClient,
                                                                       seeded: dict[str, Any]) -> None:
    login(client)
    assert client.get("/items/999999").status_code == 404
    engine = db.make_engine(seeded["url"])
    with engine.begin() as conn:  # the registered directory vanished and no fallback model loads either
        conn.execute(db.model_versions.update().values(path="/nonexistent/model"))
    engine.dispose()
    client.app.state.web.evidence._fallback = Path("/nonexistent/fallback")
    page = client.get("/items/104")
    assert page.status_code == 200 and "No evidence:" in page.text and 'id="decide-form"' in page.text
