"""The web app: alert inbox, alert and customer pages, portfolio, and the actions on alerts.

Server-rendered (FastAPI + Jinja2, autoescaped), no JavaScript build step: the
only script is Chart.js (vendored UMD build, MIT, ``static/``) for the charts,
fed by JSON data blocks, so a strict Content-Security-Policy holds. The SQL
store is the record of truth; every page reads it, every action goes through
its validated workflow (``AlertStore.change_status`` / ``assign``), which also
enqueues the change to the alert's Slack thread.

Security: every page but ``/login`` (and ``/static``, ``/healthz``,
``/readyz``) needs a session; sessions are signed cookies (HttpOnly,
SameSite=Lax, ``Secure`` when ``CREDITWATCH_WEB_COOKIE_SECURE=1``); every form
carries the session's CSRF token; viewers read, ``ops``/``controller``/``admin``
act, and only ``controller``/``admin`` approve a credit-limit recommendation —
which publishes ``customer.credit_limit_changed`` to ``{prefix}customers``; the
system itself never changes a limit.

Entry points: :func:`create_app` (an ASGI app on a store URL), :func:`run_server`
(blocking, for ``creditwatch serve``) and :class:`WebServer` (in a thread, for
the demo and the browser tests); :func:`ensure_user` seeds a user.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from pipeline.clock import Clock, SystemClock
from pipeline.config import ConfigError, Settings
from pipeline.web import auth
from pipeline.web import queries

log = logging.getLogger("creditwatch.web")

HERE = Path(__file__).parent
STATUSES = ("open", "acknowledged", "resolved", "false_positive")
SEVERITIES = ("info", "warning", "critical")
STATUS_FILTERS = {"active": ["open", "acknowledged"], "open": ["open"], "acknowledged": ["acknowledged"],
                  "resolved": ["resolved"], "false_positive": ["false_positive"], "all": None}
SORTS = {"severity": "-severity", "newest": "-raised_at", "oldest": "raised_at", "updated": "-updated_at",
         "customer": "customer"}
UNASSIGNED = "(unassigned)"
PUBLIC_PATHS = ("/login", "/healthz", "/readyz", "/static/")
SESSION_COOKIE = "creditwatch_session"
RECOMMENDATION_DETECTOR = "credit_limit_review"


# --- settings -------------------------------------------------------------------


@dataclass(frozen=True)
class WebSettings:
    """The web app's own settings (``CREDITWATCH_WEB_*``)."""

    #: Signs session cookies. Empty: a random key per process (sessions end on restart).
    secret_key: str = field(default="", repr=False)
    #: Send the session cookie over HTTPS only (set it when served behind TLS).
    cookie_secure: bool = False
    session_max_age_s: int = 8 * 3600
    page_size: int = 50
    login_max_failures: int = 5
    login_window_s: float = 300.0
    #: The portfolio summary is recomputed (in the background) when older than this.
    portfolio_ttl_s: float = 60.0


def load_web_settings(env: Mapping[str, str] | None = None) -> WebSettings:
    env = os.environ if env is None else env
    secure = env.get("CREDITWATCH_WEB_COOKIE_SECURE", "0").strip().lower()
    if secure not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"CREDITWATCH_WEB_COOKIE_SECURE={secure!r} is not 0 or 1")
    hours = env.get("CREDITWATCH_WEB_SESSION_HOURS", "8").strip() or "8"
    try:
        max_age = int(float(hours) * 3600)
    except ValueError:
        raise ConfigError(f"CREDITWATCH_WEB_SESSION_HOURS={hours!r} is not a number") from None
    if not 60 <= max_age <= 30 * 24 * 3600:
        raise ConfigError("CREDITWATCH_WEB_SESSION_HOURS is out of range (1 minute to 30 days)")
    return WebSettings(secret_key=env.get("CREDITWATCH_WEB_SECRET", ""), cookie_secure=secure in ("1", "true", "yes"),
                       session_max_age_s=max_age)


# --- publishing approved limits --------------------------------------------------


class PublishError(Exception):
    """The event could not be published; one line."""


class Publisher(Protocol):
    def publish(self, topic: str, key: bytes, value: bytes) -> None: ...


class KafkaPublisher:
    """Publishes one event at a time with kafka-python, waiting for the broker's acknowledgement."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer: Any = None
        self._lock = threading.Lock()

    def _ensure(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            from streams.admin import ensure_topics

            # Never let a first publish auto-create the topic with the broker's default partitions.
            ensure_topics(self.settings.bootstrap_servers,
                          {topic: self.settings.partitions for topic in self.settings.input_topics})
            self._producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, acks="all", retries=3,
                                           max_block_ms=10_000, request_timeout_ms=10_000)
        return self._producer

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        from kafka.errors import KafkaError

        with self._lock:
            try:
                self._ensure().send(topic, key=key, value=value).get(timeout=15)
            except (KafkaError, OSError) as problem:
                raise PublishError(f"cannot publish to {topic} at {self.settings.bootstrap_servers}: "
                                   f"{' '.join(str(problem).split())}") from None

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


def credit_limit_event(customer_id: str, credit_limit: Decimal, now: datetime, approved_by: str,
                       alert_id: str) -> dict[str, Any]:
    """``customer.credit_limit_changed`` (CONTRACT §2) for an approved recommendation, validated."""
    from pipeline.events import validate_event

    event = {
        "event_id": f"cw-limit-{uuid.uuid4().hex}",
        "type": "customer.credit_limit_changed",
        "customer_id": customer_id,
        "occurred_at": now.astimezone(timezone.utc).isoformat(),
        "schema_version": 1,
        "source": "creditwatch-web",
        "credit_limit": format(credit_limit.quantize(Decimal("0.01")), "f"),
        "approved_by": approved_by,
        "alert_id": alert_id,
    }
    validate_event(event)  # raises InvalidEvent if we ever build a bad one
    return event


def recommended_limit(alert: Mapping[str, Any]) -> Decimal | None:
    """The recommended limit of a ``credit_limit_review`` alert (its first reason), else None."""
    if alert.get("detector") != RECOMMENDATION_DETECTOR or not alert.get("reasons"):
        return None
    first = alert["reasons"][0]
    if first.get("code") != "recommended_limit" or first.get("value") is None:
        return None
    try:
        value = Decimal(str(first["value"]))
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


# --- formatting (Jinja filters) -----------------------------------------------------


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def fmt_money(value: Any, currency: str | None = None) -> str:
    number = _decimal(value)
    if number is None:
        return "–"
    text = f"{number.quantize(Decimal('0.01')):,.2f}"
    return f"{text} {currency}" if currency else text


def fmt_number(value: Any, digits: int = 1) -> str:
    number = _decimal(value)
    if number is None:
        return "–"
    return f"{number:,.{digits}f}"


def fmt_pct(value: Any, digits: int = 1) -> str:
    number = _decimal(value)
    if number is None:
        return "–"
    return f"{number * 100:,.{digits}f} %"


def fmt_score(value: Any) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return "–"


def fmt_when(value: Any) -> str:
    if not value:
        return "–"
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if moment.tzinfo is not None else "")


def fmt_day(value: Any) -> str:
    return str(value)[:10] if value else "–"


def fmt_label(value: Any) -> str:
    return str(value or "").replace("_", " ")


def fmt_reason_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value or math.isinf(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.4g}"
    return str(value)


# --- the app --------------------------------------------------------------------------


class LoginRequired(Exception):
    pass


class PortfolioCache:
    """The portfolio summary, recomputed at most every ``ttl`` seconds, never while a user waits for it.

    Aggregating a whole book (every position, 90 days of snapshots and
    alerts) is the one page that cannot be an index lookup; a summary a
    minute old is as good. The first request computes it; after ``ttl`` the
    stale summary is served while one background thread refreshes it.
    """

    def __init__(self, compute: Callable[[], Any], ttl: float = 60.0, clock: Callable[[], float] | None = None):
        import time

        self.compute = compute
        self.ttl = ttl
        self.clock = clock or time.monotonic
        self._value: Any = None
        self._computed_at: datetime | None = None
        self._stamp = 0.0
        self._lock = threading.Lock()
        self._refreshing = False

    def _refresh(self) -> None:
        try:
            value = self.compute()
            with self._lock:
                self._value, self._computed_at, self._stamp = value, datetime.now(timezone.utc), self.clock()
        except Exception:  # noqa: BLE001 - keep serving the old summary; the next request tries again
            log.exception("portfolio refresh failed")
        finally:
            self._refreshing = False

    def get(self) -> tuple[Any, datetime | None]:
        with self._lock:
            value, computed_at, age = self._value, self._computed_at, self.clock() - self._stamp
            stale = value is not None and age >= self.ttl and not self._refreshing
            if stale:
                self._refreshing = True
        if value is None:
            value = self.compute()  # the first time: compute while the user waits
            with self._lock:
                self._value, self._computed_at, self._stamp = value, datetime.now(timezone.utc), self.clock()
                computed_at = self._computed_at
        elif stale:
            threading.Thread(target=self._refresh, name="portfolio-refresh", daemon=True).start()
        return value, computed_at


@dataclass
class WebContext:
    store: Any
    settings: Settings
    web: WebSettings
    publisher: Publisher | None
    clock: Clock
    throttle: auth.LoginThrottle
    templates: Jinja2Templates
    portfolio: PortfolioCache
    approve_lock: threading.Lock = field(default_factory=threading.Lock)


@functools.cache
def _templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                      autoescape=select_autoescape(enabled_extensions=("html",), default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=fmt_money, number=fmt_number, pct=fmt_pct, score=fmt_score, when=fmt_when,
                       day=fmt_day, label=fmt_label, reason_value=fmt_reason_value)
    return Jinja2Templates(env=env)


def _security_headers(response: Response) -> None:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no ``//``) may be redirected to after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/alerts"
    return target


def create_app(
    store_url: str | None = None,
    settings: Settings | None = None,
    *,
    web_settings: WebSettings | None = None,
    store: Any = None,
    publisher: Publisher | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The ASGI app on the store at ``store_url`` (or an open ``store``).

    ``publisher`` defaults to kafka-python against ``settings.broker_url``
    (connected on the first approval only).
    """
    from sinks.store import AlertStore

    settings = settings or Settings()
    web = web_settings or load_web_settings()
    if store is None:
        store = AlertStore(store_url or settings.resolved_database_url)
    clock = clock or SystemClock()
    ledger = settings.ledger
    ctx = WebContext(
        store=store, settings=settings, web=web,
        publisher=publisher if publisher is not None else KafkaPublisher(settings),
        clock=clock,
        throttle=auth.LoginThrottle(web.login_max_failures, web.login_window_s,
                                    client_max_failures=web.login_max_failures * 4),
        templates=_templates(),
        portfolio=PortfolioCache(lambda: queries.portfolio(store, ledger.base_currency, ledger.fx_rates,
                                                           clock.now().date()), ttl=web.portfolio_ttl_s),
    )
    app = FastAPI(title="creditwatch", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.add_middleware(
        SessionMiddleware, secret_key=web.secret_key or secrets.token_urlsafe(48), session_cookie=SESSION_COOKIE,
        max_age=web.session_max_age_s, same_site="lax", https_only=web.cookie_secure,
    )

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response = await call_next(request)
        _security_headers(response)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _add_handlers(app, ctx)
    _add_public_routes(app, ctx)
    _add_pages(app, ctx)
    from pipeline.web.ops import add_ops_pages  # (imports this module: registered last)

    add_ops_pages(app, ctx)
    return app


# --- request helpers ---------------------------------------------------------------


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = auth.new_csrf_token()
    return token


def _flash(request: Request, kind: str, message: str) -> None:
    request.session.setdefault("flash", [])
    request.session["flash"] = [*request.session["flash"], [kind, message]][-5:]


def _render(ctx: WebContext, request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    flashes = request.session.pop("flash", []) if "flash" in request.session else []
    context = {
        "request": request, "user": user, "csrf_token": _csrf(request), "flashes": flashes,
        "can_act": auth.can_act(user["role"]) if user else False,
        "can_approve": auth.can_approve(user["role"]) if user else False,
        **values,
    }
    return ctx.templates.TemplateResponse(request, template, context, status_code=status_code)


def current_user(request: Request) -> dict[str, Any]:
    """The logged-in user (name, role), or LoginRequired (→ a redirect to /login)."""
    ctx: WebContext = request.app.state.ctx
    name = request.session.get("user")
    if not name:
        raise LoginRequired()
    user = ctx.store.get_user(name)
    if user is None:  # deleted since: the session is void
        request.session.clear()
        raise LoginRequired()
    request.state.user = {"name": user["name"], "role": user["role"]}
    return request.state.user


async def check_csrf(request: Request) -> None:
    form = await request.form()
    if not auth.same_token(request.session.get("csrf"), str(form.get("csrf_token") or "")):
        raise HTTPException(status_code=403, detail="The form has expired or did not come from this site. "
                                                    "Reload the page and try again.")


def require_actor(user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
    if not auth.can_act(user["role"]):
        raise HTTPException(status_code=403, detail=f"A {user['role']} can look but not change alerts.")
    return user


def require_approver(user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
    if not auth.can_approve(user["role"]):
        raise HTTPException(status_code=403,
                            detail="Only a controller or an admin may approve a credit-limit recommendation.")
    return user


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _add_handlers(app: FastAPI, ctx: WebContext) -> None:
    from sinks.store import SchemaOutdated, StoreUnavailable

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/alerts"
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405) and not request.session.get("user"):
            return RedirectResponse("/login", status_code=303)  # nothing but the login page without a session
        titles = {403: "Not allowed", 404: "Not found", 405: "Not allowed", 400: "Bad request"}
        return _render(ctx, request, "error.html", status_code=exc.status_code,
                       title=titles.get(exc.status_code, "Error"),
                       message=exc.detail if isinstance(exc.detail, str) else "")

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> Response:
        log.error("store unavailable: %s", exc)
        return _render(ctx, request, "error.html", status_code=503, title="Database unavailable",
                       message="The alert store cannot be reached right now. Try again in a moment.")

    @app.exception_handler(SchemaOutdated)
    async def schema_outdated(request: Request, exc: SchemaOutdated) -> Response:
        return _render(ctx, request, "error.html", status_code=503, title="Database schema outdated",
                       message=str(exc))


# --- public routes: login, logout, health ---------------------------------------------


def _add_public_routes(app: FastAPI, ctx: WebContext) -> None:
    from sinks.store import StoreError, check_schema_current

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        try:
            check_schema_current(ctx.store.url)
        except StoreError as problem:
            return JSONResponse({"ready": False, "reason": str(problem)}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/alerts") -> Response:
        if request.session.get("user"):
            return RedirectResponse(_safe_next(next), status_code=303)
        return _render(ctx, request, "login.html", next=_safe_next(next), name="", error=None)

    @app.post("/login", response_class=HTMLResponse)
    def login(request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/alerts"),
              csrf_token: str = Form("")) -> Response:
        target = _safe_next(next)
        name = name.strip()[:auth.MAX_NAME_LENGTH]
        if not auth.same_token(request.session.get("csrf"), csrf_token):
            return _render(ctx, request, "login.html", status_code=400, next=target, name=name,
                           error="The login form expired. Please try again.")
        client = _client(request)
        wait = ctx.throttle.retry_after(name, client)
        if wait > 0:
            response = _render(ctx, request, "login.html", status_code=429, next=target, name=name,
                               error=f"Too many failed logins. Try again in {math.ceil(wait / 60)} minute(s).")
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        user = ctx.store.get_user(name) if name else None
        if not auth.verify_password(user["password_hash"] if user else None, password):
            ctx.throttle.failed(name, client)
            log.info("failed login for %r from %s", name, client)
            return _render(ctx, request, "login.html", status_code=401, next=target, name=name,
                           error="Wrong user name or password.")
        ctx.throttle.succeeded(name)
        request.session.clear()  # a fresh session (and CSRF token) on every login
        request.session.update({"user": user["name"], "csrf": auth.new_csrf_token()})
        return RedirectResponse(target, status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        form = await request.form()
        if request.session.get("user") and not auth.same_token(request.session.get("csrf"),
                                                               str(form.get("csrf_token") or "")):
            raise HTTPException(status_code=403, detail="The form has expired. Reload the page and try again.")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)


# --- pages --------------------------------------------------------------------------


def _detectors() -> list[str]:
    import detectors.rules  # noqa: F401  (registers the rule detectors)
    from detectors.base import REGISTRY

    return sorted(REGISTRY)


def _query(params: Mapping[str, Any], **changes: Any) -> str:
    merged = {key: value for key, value in {**params, **changes}.items() if value not in (None, "")}
    return "?" + urlencode(merged) if merged else ""


def _add_pages(app: FastAPI, ctx: WebContext) -> None:
    from fastapi import APIRouter

    from sinks.store import AlertNotFound, TransitionRefused

    pages = APIRouter(dependencies=[Depends(current_user)])
    detector_names = _detectors()

    @pages.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/alerts", status_code=303)

    @pages.get("/alerts", response_class=HTMLResponse)
    def inbox(request: Request, status: str = "active", severity: str = "", detector: str = "",
              assignee: str = "", q: str = "", sort: str = "severity", page: int = 1, after: str = "",
              before: str = "") -> Response:
        status = status if status in STATUS_FILTERS else "active"
        severity = severity if severity in SEVERITIES else ""
        detector = detector if detector in detector_names else ""
        sort = sort if sort in SORTS else "severity"
        assignee = assignee.strip()[:64]
        q = q.strip()[:200]
        filters = {
            "status": STATUS_FILTERS[status], "severity": severity or None, "detector": detector or None,
            "assignee": ("" if assignee == UNASSIGNED else assignee) if assignee else None, "search": q or None,
        }
        # One transaction: customers named by the search (their alerts then come by customer_id), a count
        # that stops past the next page ("10,000+"), the page by cursor (Previous/Next) or by number.
        size = ctx.web.page_size
        found = queries.inbox_page(ctx.store, filters, SORTS[sort], size, page, after=after[:400] or None,
                                   before=before[:400] or None, text=q)
        result, page, pages_total, total, exact = found.page, found.number, found.pages, found.total, found.exact
        params = {"status": status, "severity": severity, "detector": detector, "assignee": assignee, "q": q,
                  "sort": sort}
        has_next = result.has_more and (page < pages_total or not exact)
        return _render(
            ctx, request, "inbox.html", alerts=result.alerts, total=total, exact=exact, page=page, pages=pages_total,
            params=params, statuses=list(STATUS_FILTERS), severities=SEVERITIES, detectors=detector_names,
            sorts=list(SORTS), unassigned=UNASSIGNED, users=_user_names(ctx),
            prev_url=(_query(params, page=page - 1, before=result.first_cursor) if page > 2 else _query(params))
            if page > 1 else None,
            next_url=_query(params, page=page + 1, after=result.last_cursor) if has_next else None,
            first_item=(page - 1) * size + 1 if total else 0, last_item=min(page * size, total),
        )

    @pages.get("/alerts/{alert_id}", response_class=HTMLResponse)
    def alert_page(request: Request, alert_id: str) -> Response:
        alert = ctx.store.get_alert(alert_id)
        if alert is None:
            raise HTTPException(status_code=404, detail=f"There is no alert {alert_id}.")
        evidence = queries.events_by_id(ctx.store, alert.get("event_ids") or [])
        found = {event["event_id"] for event in evidence}
        missing = [event_id for event_id in alert.get("event_ids") or [] if event_id not in found]
        position = ctx.store.get_position(alert["customer_id"])
        slack = [d for d in alert["deliveries"] if d["sink"] == "slack"]
        return _render(ctx, request, "alert.html", alert=alert, evidence=evidence, missing_events=missing,
                       position=position, recommended=recommended_limit(alert), users=_user_names(ctx),
                       slack=slack, final=alert["status"] in ("resolved", "false_positive"))

    @pages.post("/alerts/{alert_id}/status", dependencies=[Depends(check_csrf)])
    def change_status(request: Request, alert_id: str, to: str = Form(...), note: str = Form(""),
                      user: dict[str, Any] = Depends(require_actor)) -> Response:
        if to not in STATUSES:
            raise HTTPException(status_code=400, detail=f"Unknown status {to!r}.")
        try:
            ctx.store.change_status(alert_id, to, user["name"], note=note[:4000] or None)
        except AlertNotFound:
            raise HTTPException(status_code=404, detail=f"There is no alert {alert_id}.") from None
        except TransitionRefused as problem:
            _flash(request, "error", str(problem))
        else:
            _flash(request, "ok", {"open": "Alert reopened.", "acknowledged": "Alert acknowledged.",
                                   "resolved": "Alert resolved.",
                                   "false_positive": "Alert marked a false positive."}[to])
        return RedirectResponse(f"/alerts/{alert_id}", status_code=303)

    @pages.post("/alerts/{alert_id}/assign", dependencies=[Depends(check_csrf)])
    def assign(request: Request, alert_id: str, assignee: str = Form(""), note: str = Form(""),
               user: dict[str, Any] = Depends(require_actor)) -> Response:
        assignee = assignee.strip()
        if assignee and ctx.store.get_user(assignee) is None:
            _flash(request, "error", f"There is no user {assignee!r} to assign the alert to.")
            return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
        try:
            alert = ctx.store.assign(alert_id, assignee or None, user["name"], note=note[:4000] or None)
        except AlertNotFound:
            raise HTTPException(status_code=404, detail=f"There is no alert {alert_id}.") from None
        except TransitionRefused as problem:
            _flash(request, "error", str(problem))
        else:
            _flash(request, "ok", f"Assigned to {alert['assignee']}." if alert["assignee"] else "Unassigned.")
        return RedirectResponse(f"/alerts/{alert_id}", status_code=303)

    @pages.post("/alerts/{alert_id}/approve-limit", dependencies=[Depends(check_csrf)])
    def approve_limit(request: Request, alert_id: str, note: str = Form(""),
                      user: dict[str, Any] = Depends(require_approver)) -> Response:
        with ctx.approve_lock:  # one approval at a time: a double click publishes once
            alert = ctx.store.get_alert(alert_id)
            if alert is None:
                raise HTTPException(status_code=404, detail=f"There is no alert {alert_id}.")
            limit = recommended_limit(alert)
            if limit is None:
                raise HTTPException(status_code=400, detail="This alert is not a credit-limit recommendation.")
            if alert["status"] in ("resolved", "false_positive"):
                _flash(request, "error", "This recommendation is closed already; reopen it to approve it.")
                return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
            now = ctx.clock.now()
            event = credit_limit_event(alert["customer_id"], limit, now, user["name"], alert_id)
            position = ctx.store.get_position(alert["customer_id"]) or {}
            currency = position.get("currency")
            previous = alert["reasons"][0].get("threshold")
            try:
                assert ctx.publisher is not None
                ctx.publisher.publish(ctx.settings.topic("customers"), alert["customer_id"].encode(),
                                      json.dumps(event).encode())
            except PublishError as problem:
                log.error("approval of %s not published: %s", alert_id, problem)
                _flash(request, "error", f"The new limit was not published, nothing changed: {problem}")
                return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
            text = (f"Approved the recommended credit limit {fmt_money(limit, currency)}"
                    + (f" (was {fmt_money(previous, currency)})" if previous is not None else "")
                    + f"; published customer.credit_limit_changed {event['event_id']}.")
            if note.strip():
                text += f" Note: {note.strip()[:3000]}"
            try:
                ctx.store.change_status(alert_id, "resolved", user["name"], note=text, now=now)
            except TransitionRefused as problem:  # closed meanwhile by someone else: the limit is published
                log.warning("approval of %s published (%s) but not recorded: %s", alert_id, event["event_id"],
                            problem)
                _flash(request, "error", f"The limit was published ({event['event_id']}) but the alert could not "
                                         f"be closed: {problem}")
                return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
        log.info("credit limit of %s approved by %s: %s (%s)", alert["customer_id"], user["name"], limit,
                 event["event_id"])
        _flash(request, "ok", f"Credit limit {fmt_money(limit, currency)} approved and sent to the ERP.")
        return RedirectResponse(f"/alerts/{alert_id}", status_code=303)

    @pages.get("/customers/{customer_id:path}", response_class=HTMLResponse)
    def customer_page(request: Request, customer_id: str) -> Response:
        with ctx.store.reading():  # the page's queries in one transaction (one round trip to begin and end)
            position = ctx.store.get_position(customer_id)
            alerts = ctx.store.list_alerts(customer=customer_id, order="-raised_at", limit=100)
            if position is None and not alerts:
                raise HTTPException(status_code=404, detail=f"There is no customer {customer_id} in the store.")
            history = ctx.store.customer_history(customer_id, limit=365)
            events = ctx.store.customer_events(customer_id, limit=200)
            changes = queries.customer_alert_history(ctx.store, customer_id, limit=200)
        timeline = [{"at": e["occurred_at"], "kind": "event", "item": e} for e in events]
        timeline += [{"at": c["at"], "kind": "alert", "item": c} for c in changes]
        timeline.sort(key=lambda entry: entry["at"] or "", reverse=True)
        risk_score = position.get("risk_score") if position else None
        if risk_score is None and history:
            risk_score = history[-1].get("risk_score")
        chart = {
            "labels": [h["taken_at"][:10] for h in history],
            "exposure": [_float(h["exposure"]) for h in history],
            "limit": [_float(h["credit_limit"]) for h in history],
            "risk": [h["risk_score"] for h in history],
            "currency": (position or {}).get("currency") or ctx.settings.ledger.base_currency,
        }
        name = (position or {}).get("name") or next((a["customer_name"] for a in alerts if a["customer_name"]), None)
        invoices = sorted((position or {}).get("open_invoices") or [], key=lambda i: -(i.get("days_past_due") or 0))
        return _render(ctx, request, "customer.html", customer_id=customer_id, name=name, position=position,
                       alerts=alerts, history=history, timeline=timeline[:300], chart=chart, risk_score=risk_score,
                       invoices=invoices, aging_buckets=("current", "1-30", "31-60", "61-90", "90+"))

    @pages.get("/portfolio", response_class=HTMLResponse)
    def portfolio_page(request: Request) -> Response:
        data, computed_at = ctx.portfolio.get()
        chart = {
            "dso": {"labels": [d for d, _ in data.dso_trend], "values": [v for _, v in data.dso_trend]},
            "alerts": {"labels": [d for d, _ in data.alerts_per_day],
                       **{s: [c.get(s, 0) for _, c in data.alerts_per_day] for s in SEVERITIES}},
            "aging": {"labels": list(data.aging), "values": [float(v) for v in data.aging.values()]},
        }
        return _render(ctx, request, "portfolio.html", data=data, chart=chart, computed_at=computed_at)

    app.include_router(pages)


def _float(value: Any) -> float | None:
    number = _decimal(value)
    return float(number) if number is not None else None


def _user_names(ctx: WebContext) -> list[str]:
    return [user["name"] for user in ctx.store.list_users()]


# --- users and serving ------------------------------------------------------------------


def ensure_user(store: Any, name: str, role: str, password: str) -> bool:
    """Create the user if there is none by that name (for the demo and tests); True if created."""
    if store.get_user(name) is not None:
        return False
    auth.check_new_user(name, role, password)
    store.add_user(name, auth.hash_password(password), role)
    return True


def run_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000, *,
               web_settings: WebSettings | None = None, store_url: str | None = None,
               log_level: str = "info") -> None:
    """Serve the app until interrupted (``creditwatch serve``)."""
    import uvicorn

    app = create_app(store_url or settings.resolved_database_url, settings, web_settings=web_settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)


class WebServer:
    """The app served by uvicorn in a background thread (the demo, browser tests).

    >>> server = WebServer(app, port=0).start()   # doctest: +SKIP
    >>> server.url                                  # doctest: +SKIP
    'http://127.0.0.1:54321'
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app = app
        self.host = host
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                                     lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> WebServer:
        import time

        self.thread = threading.Thread(target=self.server.run, name="creditwatch-web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not start on {self.url}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]  # the one bound when port=0
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
