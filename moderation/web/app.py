"""The moderators' web page: the queue, one item with its evidence, bulk decisions, stats.

A small server-rendered Starlette application (``moderation serve``). Every
page needs a logged-in moderator (accounts in ``moderator_accounts``,
:mod:`moderation.accounts`); the session is a signed cookie whose key is
``MODERATION_WEB_SECRET``, and every POST carries the session's CSRF token.
All writes go through :mod:`moderation.queue` (bound parameters, the decision
and its audit event in one transaction, the moderator's name from the session,
never from the form). Templates are Jinja2 with autoescape: review text is
always shown as text.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from moderation import accounts, db, queue
from moderation.errors import ClaimError, DecisionError, InputDataError, ModerationError, SettingError
from moderation.timeutil import utc_now
from moderation.web.evidence import EvidenceService

log = logging.getLogger(__name__)

SECRET_ENV = "MODERATION_WEB_SECRET"
#: "1" when the page is served over HTTPS (behind a TLS proxy): the session cookie is then sent over HTTPS only.
HTTPS_ENV = "MODERATION_WEB_HTTPS"
#: A session secret shorter than this is refused: it signs every login.
MIN_SECRET_LENGTH = 32
#: How long a login lasts without activity.
SESSION_SECONDS = 8 * 3600
PAGE_SIZE = 50
#: Seconds the stats page's figures are reused before they are computed again (0: every request).
STATS_SECONDS = 30
STATS_SECONDS_ENV = "MODERATION_WEB_STATS_SECONDS"
#: Rows one bulk decision on a filter may decide (a larger backlog takes several).
BULK_LIMIT = 10_000
HERE = Path(__file__).resolve().parent
#: The page's own content only: no inline script, nothing from another origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SHORTCUTS = [("j / k", "move down / up the queue"), ("x", "select the row"), ("o or Enter", "open the row"),
             ("n", "open the next free item"), ("c", "confirm: the review is negative"),
             ("d", "dismiss: the review is fine"), ("u", "unsure (never a training label)"),
             ("s", "skip: release the item, open the next"), ("Esc", "back to the queue"), ("?", "this help")]


class Forbidden(Exception):
    """A POST without the session's CSRF token."""


def web_secret(env: dict[str, str] | None = None) -> str:
    """``MODERATION_WEB_SECRET``: required, at least :data:`MIN_SECRET_LENGTH` characters, not the placeholder."""
    value = (env if env is not None else os.environ).get(SECRET_ENV, "")
    if not value:
        raise SettingError(f"{SECRET_ENV} is not set: the page signs its login sessions with it "
                           f"(e.g. export {SECRET_ENV}=$(openssl rand -hex 32))")
    if "change-me" in value or len(value) < MIN_SECRET_LENGTH:
        raise SettingError(f"{SECRET_ENV} must be a random string of at least {MIN_SECRET_LENGTH} characters "
                           f"(e.g. openssl rand -hex 32)")
    return value


def _stats_seconds() -> int:
    raw = os.environ.get(STATS_SECONDS_ENV, "").strip()
    if not raw:
        return STATS_SECONDS
    if not raw.isdigit() or int(raw) > 3600:
        raise SettingError(f"{STATS_SECONDS_ENV} must be a whole number of seconds from 0 to 3600, not {raw!r}")
    return int(raw)


def create_app(db_url: str | None = None, *, secret: str | None = None, engine: Engine | None = None,
               minutes: int | None = None, model_dir: Path | None = None,
               clock: Callable[[], datetime] | None = None, https_only: bool | None = None) -> Starlette:
    """The application on the database ``db_url`` (or ``engine``).

    ``secret`` defaults to ``MODERATION_WEB_SECRET`` (refused when missing),
    ``minutes`` (the claim lease) to ``MODERATION_CLAIM_MINUTES`` or the
    queue's default, ``clock`` to the wall clock (tests move it to expire a
    claim), ``https_only`` (a ``Secure`` session cookie) to ``MODERATION_WEB_HTTPS=1``.
    Nothing connects or loads a model until a request needs it.
    """
    secret = secret if secret is not None else web_secret()
    if len(secret) < MIN_SECRET_LENGTH:
        raise SettingError(f"the session secret must have at least {MIN_SECRET_LENGTH} characters")
    engine = engine if engine is not None else db.make_engine(db_url, must_exist=True)
    web = _Web(engine, minutes if minutes is not None else queue.claim_minutes_setting(), clock or utc_now,
               EvidenceService(engine, model_dir), _stats_seconds())
    routes = [
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/healthz", web.healthz),
        Route("/", web.queue_page),
        Route("/next", web.next_item, methods=["POST"]),
        Route("/bulk", web.bulk, methods=["POST"]),
        Route("/items/{review_id:int}", web.item_page),
        Route("/items/{review_id:int}/claim", web.claim, methods=["POST"]),
        Route("/items/{review_id:int}/decide", web.decide, methods=["POST"]),
        Route("/items/{review_id:int}/skip", web.skip, methods=["POST"]),
        Route("/stats", web.stats_page),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if https_only is None:
        https_only = os.environ.get(HTTPS_ENV, "") == "1"
    middleware = [Middleware(SessionMiddleware, secret_key=secret, session_cookie="moderation_session",
                             max_age=SESSION_SECONDS, same_site="strict", https_only=https_only)]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={Forbidden: _forbidden, ModerationError: _refused})
    app.state.web = web
    app.state.engine = engine
    return app


async def _forbidden(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("403 Forbidden: the form's CSRF token is missing or stale; reload the page",
                             status_code=403, headers=_security_headers())


async def _refused(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"400 {exc}", status_code=400, headers=_security_headers())


def _security_headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _bad_input(f"not a date: {value!r} (use YYYY-MM-DD)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _bad_input(message: str) -> ModerationError:
    """A filter or form value the page cannot use: answered 400 with the message."""
    return InputDataError(message)


def _parse_int(value: str | None, what: str) -> int | None:
    if not value or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise _bad_input(f"{what} must be a number, not {value!r}") from None


FILTER_KEYS = ("status", "bucket", "kind", "since", "until", "product", "reviewer")


def filter_from(params: Any) -> queue.QueueFilter:
    """A :class:`~moderation.queue.QueueFilter` from query or form fields (empty fields mean no filter)."""
    status = params.get("status", "pending")
    status = None if status in ("", "any") else status
    if status is not None and status not in queue.STATUSES:
        raise _bad_input(f"unknown status {status!r}")
    bucket = params.get("bucket") or None
    if bucket is not None and bucket not in queue.BUCKET_ORDER:
        raise _bad_input(f"unknown bucket {bucket!r}")
    kind = params.get("kind") or None
    if kind is not None and kind not in ("flagged", "audit"):
        raise _bad_input(f"unknown kind {kind!r}")
    until = _parse_date(params.get("until"))
    if until is not None and len((params.get("until") or "").strip()) == 10:
        until += timedelta(days=1)  # a date names the whole day
    return queue.QueueFilter(status=status, bucket=bucket, kind=kind, since=_parse_date(params.get("since")),
                             until=until, product=_parse_int(params.get("product"), "product"),
                             reviewer=(params.get("reviewer") or "").strip() or None)


def filter_query(params: Any) -> str:
    """The filter fields of ``params`` as a query string (to carry the filter through item pages)."""
    return urlencode({k: params.get(k) for k in FILTER_KEYS if params.get(k) not in (None, "")})


class _Web:
    """The request handlers, sharing the engine, the clock and the evidence cache."""

    def __init__(self, engine: Engine, minutes: int, clock: Callable[[], datetime], evidence: EvidenceService,
                 stats_seconds: int = STATS_SECONDS):
        self.stats_seconds = stats_seconds
        self.engine = engine
        self.minutes = minutes
        self.clock = clock
        self.evidence = evidence
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["when"] = _when
        self.templates.filters["pct"] = _pct
        #: (monotonic expiry, report, figures) of the stats page: its queries and plots take a second or two.
        self._stats: tuple[float, dict[str, Any], list[Any]] | None = None

    # ------------------------------------------------------------ plumbing

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("user", request.session.get("user"))
        context["csrf_token"] = _csrf_token(request)
        context["request"] = request
        context["buckets"] = sorted(queue.BUCKET_ORDER, key=queue.BUCKET_ORDER.get)
        context["reasons"] = queue.REASONS
        context["shortcuts"] = SHORTCUTS
        html = self.templates.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=_security_headers())

    async def form(self, request: Request) -> FormData:
        """The POSTed form, after checking its CSRF token against the session's."""
        form = await request.form()
        expected = request.session.get("csrf")
        given = form.get("csrf_token")
        if not expected or not isinstance(given, str) or not hmac.compare_digest(expected, given):
            raise Forbidden()
        return form

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    # ------------------------------------------------------------ login

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def login(self, request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return self.render(request, "login.html", next=target, error=None, name="")
        form = await self.form(request)
        name = str(form.get("name") or "").strip()
        password = str(form.get("password") or "")
        ok = bool(name and password) and await run_in_threadpool(accounts.verify, self.engine, name, password)
        if not ok:
            log.warning("failed login for %r", name[:128])
            return self.render(request, "login.html", status_code=401, next=target, name=name,
                               error="Unknown name or wrong password.")
        request.session.clear()  # a new session at login: nothing from before survives it
        request.session["user"] = name
        request.session["csrf"] = secrets.token_urlsafe(32)
        return RedirectResponse(target, status_code=303)

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------ queue

    async def queue_page(self, request: Request) -> Response:
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        params = request.query_params
        flt = filter_from(params)
        page = max(_parse_int(params.get("page"), "page") or 1, 1)
        now = self.clock()
        items, total = await run_in_threadpool(queue.queue_page, self.engine, flt, limit=PAGE_SIZE,
                                               offset=(page - 1) * PAGE_SIZE, now=now)
        message = request.session.pop("message", None)
        return self.render(request, "queue.html", items=items, total=total, page=page, page_size=PAGE_SIZE,
                           pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1), params=params,
                           filter_query=filter_query(params), statuses=queue.STATUSES, message=message, now=now)

    async def next_item(self, request: Request) -> Response:
        """Claim the first free item of the filter and open it (the queue's `n`)."""
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        form = await self.form(request)
        return await self._open_next(request, user, form, skip=_parse_int(form.get("after"), "after"))

    async def _open_next(self, request: Request, user: str, params: Any, skip: int | None = None) -> Response:
        flt = replace(filter_from(params), status="pending")
        query = filter_query(params)
        now = self.clock()
        found = await run_in_threadpool(self._claim_next, flt, user, now, skip)
        if found is None:
            request.session["message"] = "Nothing left to open in this filter."
            return RedirectResponse("/?" + query, status_code=303)
        return RedirectResponse(f"/items/{found}?{query}", status_code=303)

    def _claim_next(self, flt: queue.QueueFilter, user: str, now: datetime, skip: int | None) -> int | None:
        """The first pending item under no live claim, claimed for ``user``; a claim race lost moves on."""
        free = replace(flt, include_claimed=False)
        offset = 0
        while True:
            items, _ = queue.queue_page(self.engine, free, limit=PAGE_SIZE, offset=offset, now=now)
            if not items:
                return None
            for item in items:
                if item["review_id"] == skip:
                    continue
                try:
                    queue.claim(self.engine, item["review_id"], user, minutes=self.minutes, now=now)
                except ClaimError:
                    continue
                return int(item["review_id"])
            offset += PAGE_SIZE

    async def bulk(self, request: Request) -> Response:
        """One decision on the selected rows, or on every pending row of the filter."""
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        form = await self.form(request)
        decision = str(form.get("decision") or "")
        reason = str(form.get("reason") or "") or None
        note = str(form.get("note") or "").strip() or None
        query = filter_query(form)
        now = self.clock()
        if form.get("scope") == "filter":
            flt = replace(filter_from(form), status="pending")
            count = await run_in_threadpool(queue.decide_matching, self.engine, flt, decision, user, reason=reason,
                                            note=note, now=now, limit=BULK_LIMIT)
            request.session["message"] = f"{decision}: {count} item(s) matching the filter."
        else:
            ids = [_parse_int(v, "review id") for v in form.getlist("review_id")]
            if not ids:
                request.session["message"] = "Select rows first (x), or decide the whole filter."
                return RedirectResponse("/?" + query, status_code=303)
            try:
                count = await run_in_threadpool(queue.decide, self.engine, ids, decision, user, note=note, now=now,
                                                reason=reason)
            except ClaimError as exc:
                request.session["message"] = f"Nothing recorded: {exc}"
                return RedirectResponse("/?" + query, status_code=303)
            request.session["message"] = f"{decision}: {count} selected item(s)."
        return RedirectResponse("/?" + query, status_code=303)

    # ------------------------------------------------------------ one item

    async def item_page(self, request: Request) -> Response:
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        review_id = int(request.path_params["review_id"])
        now = self.clock()
        try:
            item = await run_in_threadpool(queue.queue_item, self.engine, review_id, now=now)
        except DecisionError as exc:
            return PlainTextResponse(f"404 {exc}", status_code=404, headers=_security_headers())
        try:
            evidence, evidence_error = await run_in_threadpool(self.evidence.for_item, item), None
        except (ModerationError, OSError, ValueError) as exc:  # the item stays decidable without its evidence
            log.warning("no evidence for review %d: %s", review_id, exc)
            evidence, evidence_error = None, str(exc)
        history = await run_in_threadpool(queue.events, self.engine, [review_id])
        mine = item["claimed_by"] == user
        message = request.session.pop("message", None)
        return self.render(request, "item.html", item=item, evidence=evidence, evidence_error=evidence_error,
                           mine=mine, history=history,
                           filter_query=filter_query(request.query_params), params=request.query_params,
                           message=message, now=now, minutes=self.minutes)

    async def claim(self, request: Request) -> Response:
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        form = await self.form(request)
        review_id = int(request.path_params["review_id"])
        try:
            await run_in_threadpool(queue.claim, self.engine, review_id, user, minutes=self.minutes, now=self.clock())
        except ClaimError as exc:
            request.session["message"] = str(exc)
        return RedirectResponse(f"/items/{review_id}?{filter_query(form)}", status_code=303)

    async def decide(self, request: Request) -> Response:
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        form = await self.form(request)
        review_id = int(request.path_params["review_id"])
        decision = str(form.get("decision") or "")
        reason = str(form.get("reason") or "") or None
        note = str(form.get("note") or "").strip() or None
        try:
            await run_in_threadpool(queue.decide, self.engine, [review_id], decision, user, note=note,
                                    now=self.clock(), reason=reason)
        except ClaimError as exc:
            request.session["message"] = str(exc)
            return RedirectResponse(f"/items/{review_id}?{filter_query(form)}", status_code=303)
        request.session["message"] = f"Review {review_id}: {decision}."
        return await self._open_next(request, user, form, skip=review_id)

    async def skip(self, request: Request) -> Response:
        user = request.session.get("user")
        if not user:
            return self.login_redirect(request)
        form = await self.form(request)
        review_id = int(request.path_params["review_id"])
        await run_in_threadpool(queue.release, self.engine, review_id, user, now=self.clock())
        return await self._open_next(request, user, form, skip=review_id)

    # ------------------------------------------------------------ stats

    async def stats_page(self, request: Request) -> Response:
        if not request.session.get("user"):
            return self.login_redirect(request)
        from moderation.web import plots

        cached = self._stats
        if cached is None or cached[0] <= time.monotonic():
            report = await run_in_threadpool(_web_stats, self.engine, self.clock())
            figures = await run_in_threadpool(plots.all_figures, report)
            cached = self._stats = (time.monotonic() + self.stats_seconds, report, figures)
        return self.render(request, "stats.html", report=cached[1], figures=cached[2],
                           stats_seconds=self.stats_seconds)


def _web_stats(engine: Engine, now: datetime) -> dict[str, Any]:
    from moderation.reporting import web_stats

    return web_stats(engine, now=now)


def _csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (the login form has one before anyone logs in)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def _safe_next(value: str | None) -> str:
    """Only a path of this site (no ``//host``, no scheme): a login link cannot send you elsewhere."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _when(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if value else ""


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


__all__ = ["create_app", "web_secret", "SECRET_ENV"]
