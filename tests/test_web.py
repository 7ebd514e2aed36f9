"""The web app (issue 5), in-process through the ASGI test client, on SQLite and PostgreSQL.

Each numbered acceptance criterion has its tests here: 1 pages, 2 actions,
3 security; 4 is ``test_web_browser.py``, 6 is ``benchmarks/web_pages.py``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from html import unescape

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.alerts import AlertUpdate  # noqa: E402
from pipeline.clock import ManualClock  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.web.app import PublishError, WebSettings, create_app, ensure_user  # noqa: E402
from sinks.store import AlertStore, RiskSnapshot  # noqa: E402

NOW = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)
EVIL = "<script>alert(1)</script>"
PASSWORD = "correct horse battery"
USERS = {"vera": "viewer", "olga": "ops", "carl": "controller", "ada": "admin"}


# --- seeding, shaped like the engine's output ----------------------------------------------


def make_alert(alert_id: str, customer_id: str, name: str | None, detector: str = "credit_limit",
               severity: str = "warning", title: str | None = None, reasons: list | None = None,
               raised_at: datetime = NOW, event_ids: list | None = None, revision: int = 1) -> AlertUpdate:
    return AlertUpdate("raised", {
        "alert_id": alert_id, "customer_id": customer_id, "customer_name": name, "detector": detector,
        "severity": severity, "title": title or f"{detector} on {customer_id}",
        "reasons": reasons or [{"code": "exposure_over_limit", "message": "Exposure 52,000.00 EUR is 104% of the "
                                "credit limit 50,000.00 EUR", "value": 52000.0, "threshold": 50000.0}],
        "score": None, "raised_at": raised_at.isoformat(), "updated_at": raised_at.isoformat(),
        "event_ids": event_ids or [], "status": "open", "revision": revision, "threshold_version": 1,
    })


def make_position(customer_id: str, name: str | None, exposure: str, limit: str, risk: float | None,
                  invoices: list | None = None, currency: str = "EUR") -> dict:
    exposure_d, limit_d = Decimal(exposure), Decimal(limit)
    aging = {"current": exposure, "1-30": "0.00", "31-60": "0.00", "61-90": "0.00", "90+": "0.00"}
    overdue = Decimal(0)
    for invoice in invoices or []:
        if invoice["bucket"] != "current":
            aging[invoice["bucket"]] = str(Decimal(aging[invoice["bucket"]]) + Decimal(invoice["outstanding"]))
            aging["current"] = str(Decimal(aging["current"]) - Decimal(invoice["outstanding"]))
            overdue += Decimal(invoice["outstanding"])
    return {
        "customer_id": customer_id, "as_of": NOW.date().isoformat(), "name": name, "country": "DE",
        "industry": "wholesale", "currency": currency, "credit_limit": limit, "insured_limit": "40000.00",
        "payment_terms_days": 30, "rating": "BB", "rating_agency": "Bureau", "probability_of_default": "0.03",
        "exposure": exposure, "utilisation": str((exposure_d / limit_d).quantize(Decimal("0.0001"))),
        "aging": aging, "overdue": str(overdue), "open_invoices": invoices or [], "unapplied_cash": "0.00",
        "dso_days": "47.5", "days_beyond_terms": "12.3", "days_beyond_terms_recent": "18.9", "open_disputes": [],
        "disputed_amount": "0.00", "promises_pending": [], "promises_broken": [], "held": [],
        "totals": {}, "risk_score": risk,
    }


def invoice(invoice_id: str, outstanding: str, days_past_due: int, bucket: str) -> dict:
    return {"invoice_id": invoice_id, "issued_on": "2026-01-02", "due_on": "2026-02-01", "currency": "EUR",
            "amount": outstanding, "outstanding": outstanding, "days_past_due": days_past_due, "bucket": bucket,
            "disputed": "0.00"}


def event(event_id: str, customer_id: str, type_: str, at: datetime, **fields) -> dict:
    return {"event_id": event_id, "type": type_, "customer_id": customer_id, "occurred_at": at.isoformat(), **fields}


def seed(store: AlertStore) -> None:
    """Three customers (one named like an attack), eight alerts, positions, snapshots and events."""
    positions = {
        "C042": make_position("C042", "Acme Trading GmbH", "52000.00", "50000", 0.81,
                              [invoice("INV-1", "30000.00", 0, "current"), invoice("INV-2", "22000.00", 45, "31-60")]),
        "C007": make_position("C007", "Bolt & Nut Ltd", "10000.00", "40000", 0.12),
        "X666": make_position("X666", EVIL, "5000.00", "10000", 0.55),
    }
    snapshots = [RiskSnapshot.from_position(positions[c], NOW - timedelta(days=d), risk_score=0.5 + d / 100)
                 for c in positions for d in range(5)]
    events = [
        event("ev-reg-42", "C042", "customer.registered", NOW - timedelta(days=90), name="Acme Trading GmbH",
              country="DE", credit_limit="50000", currency="EUR", payment_terms_days=30),
        event("ev-inv-2", "C042", "invoice.issued", NOW - timedelta(days=61), invoice_id="INV-2", amount="22000.00",
              currency="EUR", issued_on="2026-01-02", due_on="2026-02-01"),
        event("ev-inv-1", "C042", "invoice.issued", NOW - timedelta(days=2), invoice_id="INV-1", amount="30000.00",
              currency="EUR", issued_on="2026-03-02", due_on="2026-04-01"),
        event("ev-evil", "X666", "customer.registered", NOW - timedelta(days=30), name=EVIL, country="DE",
              credit_limit="10000", currency="EUR", payment_terms_days=30),
    ]
    updates = [
        make_alert("al_limit42", "C042", "Acme Trading GmbH", severity="critical",
                   title="Exposure at 104% of credit limit", event_ids=["ev-inv-1", "ev-gone"]),
        make_alert("al_overdue42", "C042", "Acme Trading GmbH", detector="overdue", severity="warning",
                   title="22,000.00 EUR more than 30 days overdue", raised_at=NOW - timedelta(days=3)),
        make_alert("al_review42", "C042", "Acme Trading GmbH", detector="credit_limit_review", severity="warning",
                   title="Consider cutting the credit limit to 37,000.00 EUR (now 50,000.00 EUR)",
                   reasons=[{"code": "recommended_limit", "message": "Recommended credit limit 37,000.00 EUR instead "
                             "of 50,000.00 EUR", "value": 37000.0, "threshold": 50000.0},
                            {"code": "rating_downgrade", "message": "Rating fell from BBB to BB", "value": None,
                             "threshold": None}], raised_at=NOW - timedelta(days=1)),
        make_alert("al_info07", "C007", "Bolt & Nut Ltd", detector="payment_habit", severity="info",
                   title="Pays later than usual", raised_at=NOW - timedelta(days=5)),
        make_alert("al_evil", "X666", EVIL, detector="legal_event", severity="critical",
                   title=f"Insolvency filing {EVIL}", event_ids=["ev-evil"], raised_at=NOW - timedelta(hours=2)),
    ]
    updates += [make_alert(f"al_bulk{i:02d}", "C007", "Bolt & Nut Ltd", detector="unusual_invoice", severity="info",
                           title=f"Unusual invoice #{i}", raised_at=NOW - timedelta(days=10, minutes=i))
                for i in range(3)]
    store.record(updates, ["slack"], positions=positions, snapshots=snapshots, events=events, now=NOW)
    for name, role in USERS.items():
        ensure_user(store, name, role, PASSWORD)


class FakePublisher:
    def __init__(self, fail: bool = False):
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        if self.fail:
            raise PublishError("cannot publish to t.customers at 127.0.0.1:1: NoBrokersAvailable")
        self.sent.append((topic, key, value))


@pytest.fixture(autouse=True)
def cheap_password_hashing():
    """Argon2id with the smallest parameters: the tests check the flow, not the work factor."""
    from argon2 import PasswordHasher

    from pipeline.web import auth

    previous = auth.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    yield
    auth.use_hasher(previous)


# Tests of what the database answers take ``client`` / ``web_store`` (SQLite and PostgreSQL);
# tests of the web layer alone (sessions, CSRF, roles, escaping) take ``sqlite_client`` / ``sqlite_store``.


@pytest.fixture
def web_store(alert_store):
    with alert_store.engine.begin() as connection:  # (the shared PostgreSQL schema keeps events between tests)
        connection.exec_driver_sql("DELETE FROM customer_events")
    seed(alert_store)
    return alert_store


@pytest.fixture
def sqlite_url(tmp_path, request, _migrated_templates):
    import shutil

    from sqlalchemy.engine import make_url

    path = tmp_path / "web.db"
    shutil.copyfile(make_url(_migrated_templates("sqlite", request)).database, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_store(sqlite_url):
    store = AlertStore(sqlite_url)
    seed(store)
    yield store
    store.close()


@pytest.fixture
def publisher():
    return FakePublisher()


def _app(store: AlertStore, publisher: FakePublisher):
    return create_app(store=store, settings=Settings(topic_prefix="t."), publisher=publisher, clock=ManualClock(NOW),
                      web_settings=WebSettings(secret_key="k" * 48, page_size=3))


@pytest.fixture
def app(web_store, publisher):
    return _app(web_store, publisher)


@pytest.fixture
def client(app):
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_store, publisher):
    with TestClient(_app(sqlite_store, publisher), base_url="http://testserver") as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD, next_: str = "/alerts"):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token, "next": next_},
                       follow_redirects=False)


def as_user(client: TestClient, name: str) -> TestClient:
    response = login(client, name)
    assert response.status_code == 303, response.text
    return client


def post_form(client: TestClient, page: str, action: str, **data):
    token = csrf_of(client.get(page).text)
    return client.post(action, data={"csrf_token": token, **data}, follow_redirects=False)


def alert_ids(html: str) -> list[str]:
    return re.findall(r'href="/alerts/(al_[a-z0-9]+)"', html)


# --- 1. pages -------------------------------------------------------------------------------


def test_inbox_lists_active_alerts_worst_first_with_counts(client):
    as_user(client, "vera")
    page = client.get("/alerts?page=1").text
    assert "Alerts 1–3 of 8" in page
    assert alert_ids(page)[:2] == ["al_limit42", "al_evil"]  # critical first, newest first within
    assert re.search(r'href="/alerts\?status=active&amp;sort=severity&amp;page=2&amp;after=[\w-]+" rel="next"', page)


FILTERS = [
    ("severity=critical", {"al_evil", "al_limit42"}),
    ("detector=credit_limit_review", {"al_review42"}),
    ("detector=payment_habit&severity=info", {"al_info07"}),
    ("q=acme", {"al_limit42", "al_overdue42", "al_review42"}),
    ("q=C007&detector=payment_habit", {"al_info07"}),
    ("q=bolt+nut&severity=info&sort=oldest", {"al_info07", "al_bulk00", "al_bulk01", "al_bulk02"}),
    ("q=nobody-has-this", set()),
]


def test_inbox_filters_and_search(client):
    as_user(client, "vera")
    for query, expected in FILTERS:
        seen: set[str] = set()
        for page in (1, 2, 3):
            seen |= set(alert_ids(client.get(f"/alerts?{query}&page={page}").text))
        assert seen == expected, query


def test_inbox_filters_by_status_and_assignee(client, web_store):
    web_store.change_status("al_overdue42", "acknowledged", "olga")
    web_store.assign("al_overdue42", "olga", "olga")
    web_store.change_status("al_info07", "resolved", "olga", note="paid")
    as_user(client, "vera")
    assert alert_ids(client.get("/alerts?status=acknowledged").text) == ["al_overdue42"]
    assert alert_ids(client.get("/alerts?status=resolved").text) == ["al_info07"]
    assert alert_ids(client.get("/alerts?assignee=olga&status=all").text) == ["al_overdue42"]
    unassigned = client.get("/alerts?assignee=(unassigned)&status=all&severity=critical").text
    assert set(alert_ids(unassigned)) == {"al_evil", "al_limit42"}


def _link(html: str, rel: str) -> str | None:
    match = re.search(rf'<a href="([^"]+)" rel="{rel}"', html)
    return unescape(match.group(1)) if match else None


def test_inbox_pages_forward_and_back_by_cursor_in_every_sort(client, web_store):
    web_store.change_status("al_bulk01", "acknowledged", "olga")  # updated_at differs from raised_at now
    as_user(client, "vera")
    for sort, order in (("newest", "-raised_at"), ("oldest", "raised_at"), ("severity", "-severity"),
                        ("updated", "-updated_at"), ("customer", "customer")):
        expected = [a["alert_id"] for a in web_store.list_alerts(order=order, limit=None)]
        url, pages = f"/alerts?status=all&sort={sort}", []
        while url:
            html = client.get(url).text
            pages.append((alert_ids(html), url))
            url = _link(html, "next")
        assert [len(ids) for ids, _ in pages] == [3, 3, 2], sort
        assert [i for ids, _ in pages for i in ids] == expected, sort
        assert f"Alerts 7–8 of 8" in html and "Page 3 of 3" in html
        back = []
        while True:  # and back again with Previous
            back.insert(0, alert_ids(html))
            url = _link(html, "prev")
            if url is None:
                break
            html = client.get(url).text
        assert back == [ids for ids, _ in pages], sort
    # a page number typed in (no cursor) still works; past the end is the last page
    assert alert_ids(client.get("/alerts?status=all&sort=newest&page=2").text) == \
        [a["alert_id"] for a in web_store.list_alerts(order="-raised_at", limit=3, offset=3)]
    assert "Page 3 of 3" in client.get("/alerts?status=all&page=99").text
    assert alert_ids(client.get("/alerts?status=all&sort=newest&page=2&after=garbage").text) == \
        [a["alert_id"] for a in web_store.list_alerts(order="-raised_at", limit=3, offset=3)]


def test_customer_page_shows_position_invoices_timeline_and_chart_data(client):
    as_user(client, "vera")
    response = client.get("/customers/C042")
    assert response.status_code == 200
    page = response.text
    for text in ("Acme Trading GmbH", "52,000.00", "50,000.00", "104.0 %", "0.81", "BB", "40,000.00", "47.5",
                 "12.3", "18.9", "INV-2", "31-60", "22,000.00"):
        assert text in page, text
    # open invoices, worst aging first
    assert page.index("INV-2") < page.index("INV-1")
    # the timeline has the events and the alerts, newest first
    timeline = page[page.index('id="timeline-h"'):]
    assert "customer.registered" in timeline and "invoice.issued" in timeline
    assert "Exposure at 104% of credit limit" in timeline
    assert timeline.index("invoice.issued") < timeline.index("customer.registered")
    # chart data for Chart.js: oldest first, one point per snapshot
    data = json.loads(unescape(re.search(r'id="customer-chart-data">(.*?)</script>', page, re.S).group(1)))
    assert data["labels"] == sorted(data["labels"]) and len(data["labels"]) == 5
    assert data["exposure"][-1] == 52000.0 and data["limit"][-1] == 50000.0 and data["risk"][-1] == 0.5
    assert '<script src="/static/chart.umd.min.js">' in page
    assert client.get("/customers/NOPE").status_code == 404


def test_alert_page_shows_reasons_with_numbers_evidence_and_history(client, web_store):
    web_store.change_status("al_limit42", "acknowledged", "olga", note="calling them")
    as_user(client, "vera")
    page = client.get("/alerts/al_limit42").text
    assert "Exposure 52,000.00 EUR is 104% of the credit limit 50,000.00 EUR" in page
    assert "52,000" in page and "50,000" in page and "exposure_over_limit" in page
    evidence = page[page.index('id="evidence-h"'):page.index('id="history-h"')]
    assert "invoice.issued" in evidence and "INV-1" in evidence and "ev-inv-1" in evidence
    assert "ev-gone" in evidence  # an event id the store does not have is still named
    history = page[page.index('id="history-h"'):]
    assert "engine" in history and "raised" in history
    assert "olga" in history and "open → acknowledged" in history and "calling them" in history
    assert client.get("/alerts/al_nope").status_code == 404


def test_portfolio_page_totals_buckets_dso_alerts_and_riskiest(client):
    as_user(client, "vera")
    page = client.get("/portfolio").text
    assert "67,000.00" in page  # 52,000 + 10,000 + 5,000
    assert "3 customers" in page and "100,000.00" in page
    assert "22,000.00" in page and "32.8 %" in page  # overdue 31-60 share of all open
    data = json.loads(unescape(re.search(r'id="portfolio-chart-data">(.*?)</script>', page, re.S).group(1)))
    assert data["dso"]["values"] and set(data["dso"]["values"]) == {47.5}
    assert sum(data["alerts"]["critical"]) == 2 and sum(data["alerts"]["info"]) == 4
    risky = page[page.index('id="risky-h"'):]
    assert risky.index("C042") < risky.index("X666") < risky.index("C007")  # by risk score


def test_healthz_and_readyz(sqlite_client, tmp_path):
    assert sqlite_client.get("/healthz").text == "ok\n"
    assert sqlite_client.get("/readyz").json() == {"ready": True}
    empty = create_app(f"sqlite:///{tmp_path / 'empty.db'}", Settings(), web_settings=WebSettings(secret_key="k" * 48))
    with TestClient(empty) as other:
        assert other.get("/healthz").status_code == 200
        response = other.get("/readyz")
        assert response.status_code == 503 and "creditwatch db upgrade" in response.json()["reason"]


# --- 2. actions ------------------------------------------------------------------------------


def test_acknowledge_assign_and_resolve_land_in_history_and_the_slack_thread(client, web_store):
    as_user(client, "olga")
    page = "/alerts/al_overdue42"
    assert post_form(client, page, page + "/status", to="acknowledged").status_code == 303
    assert "Alert acknowledged." in client.get(page).text
    assert post_form(client, page, page + "/assign", assignee="carl").status_code == 303
    assert post_form(client, page, page + "/status", to="resolved", note="paid in full on 5 March").status_code == 303
    alert = web_store.get_alert("al_overdue42")
    assert alert["status"] == "resolved" and alert["assignee"] == "carl"
    changes = [(h["by"], h["change"], h["to_status"], h["to_assignee"], h["note"]) for h in alert["history"][1:]]
    assert changes == [("olga", "status", "acknowledged", None, None), ("olga", "assigned", "acknowledged", "carl", None),
                       ("olga", "status", "resolved", "carl", "paid in full on 5 March")]
    slack = [(d["kind"], d["change"]) for d in alert["deliveries"] if d["sink"] == "slack"]
    assert slack == [("alert", "raised"), ("status_change", "acknowledged"), ("status_change", "resolved")]
    history = client.get(page).text
    assert "paid in full on 5 March" in history and "acknowledged → resolved" in history


def test_resolve_and_false_positive_need_a_note(sqlite_client, sqlite_store):
    as_user(sqlite_client, "olga")
    page = "/alerts/al_info07"
    for to in ("resolved", "false_positive"):
        post_form(sqlite_client, page, page + "/status", to=to, note="   ")
        assert "a note saying why is required" in sqlite_client.get(page).text
    assert sqlite_store.get_alert("al_info07")["status"] == "open"
    post_form(sqlite_client, page, page + "/status", to="false_positive", note="known seasonal pattern")
    assert sqlite_store.get_alert("al_info07")["status"] == "false_positive"
    post_form(sqlite_client, page, page + "/status", to="acknowledged")
    assert "cannot be acknowledged" in sqlite_client.get(page).text
    assert post_form(sqlite_client, page, page + "/assign", assignee="nobody-like-this").status_code == 303
    assert "There is no user" in sqlite_client.get(page).text


def test_controller_approves_a_limit_recommendation_which_publishes_one_event(client, web_store, publisher):
    as_user(client, "carl")
    page = "/alerts/al_review42"
    assert "Approve the new limit" in client.get(page).text
    assert post_form(client, page, page + "/approve-limit", note="agreed with sales").status_code == 303
    assert "Credit limit 37,000.00 EUR approved" in client.get(page).text
    [(topic, key, value)] = publisher.sent
    assert topic == "t.customers" and key == b"C042"
    from pipeline.events import validate_event

    sent = json.loads(value)
    parsed = validate_event(sent)
    assert parsed.type == "customer.credit_limit_changed" and parsed.credit_limit == Decimal("37000.00")
    assert parsed.customer_id == "C042" and parsed.occurred_at == NOW and sent["event_id"].startswith("cw-limit-")
    alert = web_store.get_alert("al_review42")
    last = alert["history"][-1]
    assert alert["status"] == "resolved" and last["by"] == "carl"
    assert "Approved the recommended credit limit 37,000.00 EUR (was 50,000.00 EUR)" in last["note"]
    assert sent["event_id"] in last["note"] and "agreed with sales" in last["note"]
    # approving again publishes nothing more
    post_form(client, page, page + "/approve-limit")
    assert len(publisher.sent) == 1
    assert "closed already" in client.get(page).text


def test_only_controllers_and_admins_approve_limits(sqlite_client, sqlite_store, publisher):
    as_user(sqlite_client, "olga")  # ops: may work alerts, not change limits
    page = "/alerts/al_review42"
    assert "Approve the new limit" not in sqlite_client.get(page).text
    assert post_form(sqlite_client, page, page + "/approve-limit").status_code == 403
    assert post_form(sqlite_client, "/alerts/al_limit42", "/alerts/al_limit42/approve-limit").status_code == 403
    assert publisher.sent == [] and sqlite_store.get_alert("al_review42")["status"] == "open"
    sqlite_client.post("/logout", data={"csrf_token": csrf_of(sqlite_client.get("/alerts").text)})
    as_user(sqlite_client, "ada")
    assert post_form(sqlite_client, "/alerts/al_limit42", "/alerts/al_limit42/approve-limit").status_code == 400
    assert post_form(sqlite_client, page, page + "/approve-limit").status_code == 303
    assert len(publisher.sent) == 1


def test_a_failed_publish_changes_nothing(sqlite_client, sqlite_store, publisher):
    publisher.fail = True
    as_user(sqlite_client, "carl")
    page = "/alerts/al_review42"
    post_form(sqlite_client, page, page + "/approve-limit")
    assert "The new limit was not published, nothing changed" in sqlite_client.get(page).text
    assert sqlite_store.get_alert("al_review42")["status"] == "open"


@pytest.mark.broker
def test_approval_publishes_to_the_customers_topic_on_kafka(broker, unique_prefix, tmp_path):
    from kafka import KafkaConsumer, TopicPartition

    from sinks.store import upgrade_database

    url = f"sqlite:///{tmp_path / 'web.db'}"
    upgrade_database(url)
    store = AlertStore(url)
    seed(store)
    settings = Settings(broker_url=f"kafka://127.0.0.1:{broker.port}", topic_prefix=unique_prefix, partitions=2)
    app = create_app(store=store, settings=settings, web_settings=WebSettings(secret_key="k" * 48))
    with TestClient(app) as client:
        as_user(client, "carl")
        page = "/alerts/al_review42"
        post_form(client, page, page + "/approve-limit")
        assert "approved" in client.get(page).text
    app.state.ctx.publisher.close()
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{broker.port}", auto_offset_reset="earliest",
                             consumer_timeout_ms=5000, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(f"{unique_prefix}customers", p) for p in range(2)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records = list(consumer)
    finally:
        consumer.close()
    assert [(r.key, json.loads(r.value)["credit_limit"]) for r in records] == [(b"C042", "37000.00")]
    store.close()


# --- 3. security ---------------------------------------------------------------------------


def test_nothing_but_the_login_page_is_shown_without_logging_in(sqlite_client):
    checked = 0
    routes = []
    for route in sqlite_client.app.routes:  # (FastAPI keeps an included router's routes in the router)
        routes += getattr(getattr(route, "original_router", None), "routes", [route])
    for route in routes:
        path = getattr(route, "path", "")
        if path.startswith(("/login", "/logout", "/healthz", "/readyz", "/static")) or not path:
            continue
        concrete = path.replace("{alert_id}", "al_limit42").replace("{customer_id:path}", "C042")
        for method in getattr(route, "methods", ()):
            response = sqlite_client.request(method, concrete, follow_redirects=False)
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/login"), (method, path)
            checked += 1
    assert checked >= 8
    assert sqlite_client.get("/no/such/page", follow_redirects=False).headers["location"] == "/login"
    assert sqlite_client.get("/static/app.css").status_code == 200  # static assets are public
    login_page = sqlite_client.get("/alerts", follow_redirects=True)
    assert "Log in" in login_page.text and "Acme" not in login_page.text


def test_session_cookie_is_httponly_samesite_and_secure_when_configured(sqlite_client, sqlite_store):
    cookie = login(sqlite_client, "vera").headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    secure_app = create_app(store=sqlite_store, settings=Settings(),
                            web_settings=WebSettings(secret_key="k" * 48, cookie_secure=True))
    with TestClient(secure_app, base_url="https://testserver") as other:
        cookie = login(other, "vera").headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie


def test_login_failures_look_alike_and_are_throttled(sqlite_client):
    wrong = login(sqlite_client, "vera", "not the password")
    unknown = login(sqlite_client, "mallory", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong user name or password." in wrong.text and "Wrong user name or password." in unknown.text
    for _ in range(4):
        login(sqlite_client, "vera", "still wrong")
    throttled = login(sqlite_client, "vera", PASSWORD)  # even the right password, for a while
    assert throttled.status_code == 429 and "Too many failed logins" in throttled.text
    assert int(throttled.headers["retry-after"]) > 0
    assert login(sqlite_client, "olga").status_code == 303  # others behind the same address still get in


def test_login_throttle_per_user_and_per_client():
    from pipeline.web.auth import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window=60, clock=lambda: now[0], client_max_failures=5)
    for _ in range(3):
        throttle.failed("vera", "10.0.0.1")
    assert throttle.retry_after("vera", "10.0.0.2") == 60  # the name is locked from anywhere
    assert throttle.retry_after("olga", "10.0.0.1") == 0
    throttle.failed("olga", "10.0.0.1")
    throttle.failed("olga", "10.0.0.1")
    assert throttle.retry_after("emil", "10.0.0.1") == 60  # and so is a client with many failures
    now[0] += 61
    assert throttle.retry_after("vera", "10.0.0.1") == 0
    throttle.failed("vera", "10.0.0.1")
    throttle.succeeded("vera")
    assert throttle.retry_after("vera", "10.0.0.3") == 0


def test_forms_without_the_csrf_token_are_refused(sqlite_client, sqlite_store):
    as_user(sqlite_client, "olga")
    for token in ("", "forged"):
        response = sqlite_client.post("/alerts/al_limit42/status", data={"to": "acknowledged", "csrf_token": token},
                               follow_redirects=False)
        assert response.status_code == 403
    assert sqlite_store.get_alert("al_limit42")["status"] == "open"
    page = sqlite_client.get("/alerts/al_limit42").text
    forms = re.findall(r"<form\b.*?</form>", page, re.S)
    assert forms and all('name="csrf_token"' in form for form in forms if 'method="post"' in form)
    fresh = TestClient(sqlite_client.app)  # the login form needs its own session's token too
    response = fresh.post("/login", data={"name": "olga", "password": PASSWORD, "csrf_token": "x"})
    assert response.status_code == 400


def test_viewers_cannot_act(sqlite_client, sqlite_store):
    as_user(sqlite_client, "vera")
    page = sqlite_client.get("/alerts/al_limit42").text
    assert "Acknowledge" not in page and "Resolve" not in page and "cannot change it" in page
    token = csrf_of(page)
    for action, data in (("status", {"to": "acknowledged"}), ("assign", {"assignee": "vera"}),
                         ("status", {"to": "resolved", "note": "x"})):
        response = sqlite_client.post(f"/alerts/al_limit42/{action}", data={"csrf_token": token, **data},
                               follow_redirects=False)
        assert response.status_code == 403
    assert sqlite_client.post("/alerts/al_review42/approve-limit", data={"csrf_token": token}).status_code == 403
    alert = sqlite_store.get_alert("al_limit42")
    assert alert["status"] == "open" and alert["assignee"] is None and len(alert["history"]) == 1


def test_everything_from_events_is_escaped(sqlite_client):
    as_user(sqlite_client, "vera")
    for path in ("/alerts", "/alerts?q=x666", "/alerts/al_evil", "/customers/X666", "/portfolio"):
        page = sqlite_client.get(path).text
        assert EVIL not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
    response = sqlite_client.get("/customers/X666")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_login_redirects_only_to_this_site(sqlite_client):
    assert login(sqlite_client, "vera", next_="https://evil.example/").headers["location"] == "/alerts"
    sqlite_client.cookies.clear()
    assert login(sqlite_client, "vera", next_="//evil.example/x").headers["location"] == "/alerts"
    sqlite_client.cookies.clear()
    assert login(sqlite_client, "vera", next_="/customers/C042").headers["location"] == "/customers/C042"


def test_logout_ends_the_session(sqlite_client):
    as_user(sqlite_client, "vera")
    token = csrf_of(sqlite_client.get("/alerts").text)
    assert sqlite_client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert sqlite_client.get("/alerts", follow_redirects=False).headers["location"].startswith("/login")


def test_a_deleted_user_loses_the_session(sqlite_client, sqlite_store):
    as_user(sqlite_client, "vera")
    with sqlite_store.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM users WHERE name = 'vera'")
    assert sqlite_client.get("/alerts", follow_redirects=False).headers["location"].startswith("/login")


def test_users_add_command_hashes_with_argon2_and_never_echoes(sqlite_url, monkeypatch, capsys):
    import io

    from pipeline.cli import main
    from pipeline.web.auth import verify_password

    monkeypatch.setenv("CREDITWATCH_DATABASE_URL", sqlite_url)
    assert main(["users", "add", "dora", "--role", "ops", "--password", "s3cret-enough"]) == 0
    assert capsys.readouterr().out.strip() == "added user dora (ops)"
    monkeypatch.setattr("sys.stdin", io.StringIO("another-s3cret\n"))  # no terminal: the first line of stdin
    assert main(["users", "add", "emil", "--role", "viewer"]) == 0
    out, err = capsys.readouterr()
    assert "another-s3cret" not in out + err
    assert main(["users", "add", "dora", "--role", "admin", "--password", "s3cret-enough"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists already" in err
    assert main(["users", "add", "fred", "--role", "viewer", "--password", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["users", "add", "fred", "--role", "king", "--password", "s3cret-enough"])
    store = AlertStore(sqlite_url)
    try:
        dora, emil = store.get_user("dora"), store.get_user("emil")
        assert dora["role"] == "ops" and dora["password_hash"].startswith("$argon2id$")
        assert verify_password(dora["password_hash"], "s3cret-enough")
        assert verify_password(emil["password_hash"], "another-s3cret")
        assert not verify_password(emil["password_hash"], "another-s3cret\n")
        assert store.get_user("fred") is None
    finally:
        store.close()
    assert main(["users", "list"]) == 0
    listing = capsys.readouterr().out
    assert "dora" in listing and "ops" in listing and "$argon2" not in listing


def test_forms_have_labels(sqlite_client):
    as_user(sqlite_client, "olga")
    for path in ("/login", "/alerts", "/alerts/al_review42"):
        page = sqlite_client.get(path).text
        ids = set(re.findall(r'<label for="([^"]+)"', page))
        for tag, attrs in re.findall(r"<(input|select|textarea)\b([^>]*)>", page):
            if 'type="hidden"' in attrs:
                continue
            field_id = re.search(r'id="([^"]+)"', attrs)
            assert field_id and field_id.group(1) in ids, (path, tag, attrs)
