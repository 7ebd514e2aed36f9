"""The ops pages of the web app (issue 6, items 1 and 3 from the web): threshold versions and what-if runs.

In-process through the ASGI test client. Threshold saves are checked on SQLite
and PostgreSQL (the store is the record of truth); the web layer alone (roles,
CSRF, paths) on SQLite. What-if runs replay a small simulated portfolio written
to a temporary data directory, without the online models (speed).
"""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from detectors.config import ThresholdError, Thresholds  # noqa: E402
from pipeline import tuning  # noqa: E402
from pipeline.clock import ManualClock  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.web.app import WebSettings, create_app, ensure_user  # noqa: E402
from tests.test_web import (  # noqa: E402,F401  (cheap_password_hashing: autouse fixture)
    EVIL, NOW, PASSWORD, USERS, FakePublisher, as_user, cheap_password_hashing, csrf_of)

KEY = "credit_limit.warning_utilisation"


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def ops_store(alert_store):
    for name, role in USERS.items():
        ensure_user(alert_store, name, role, PASSWORD)
    return alert_store


@pytest.fixture
def ops_client(ops_store, data_dir):
    app = create_app(store=ops_store, settings=Settings(topic_prefix="t.", data_dir=data_dir),
                     publisher=FakePublisher(), clock=ManualClock(NOW),
                     web_settings=WebSettings(secret_key="k" * 48))
    with TestClient(app, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def sqlite_ops_store(tmp_path, _migrated_templates, request):
    import shutil

    from sqlalchemy.engine import make_url

    from sinks.store import AlertStore

    path = tmp_path / "ops.db"
    shutil.copyfile(make_url(_migrated_templates("sqlite", request)).database, path)
    store = AlertStore(f"sqlite:///{path}")
    for name, role in USERS.items():
        ensure_user(store, name, role, PASSWORD)
    yield store
    store.close()


@pytest.fixture
def client(sqlite_ops_store, data_dir):
    app = create_app(store=sqlite_ops_store, settings=Settings(topic_prefix="t.", data_dir=data_dir),
                     publisher=FakePublisher(), clock=ManualClock(NOW),
                     web_settings=WebSettings(secret_key="k" * 48))
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def save(client: TestClient, reason: str = "warn earlier", **values: str):
    page = client.get("/ops/thresholds").text
    base = re.search(r'name="base_version" value="(\d+)"', page).group(1)
    data = {"csrf_token": csrf_of(page), "base_version": base, "reason": reason}
    data.update({f"opt:{key.replace('__', '.')}": value for key, value in values.items()})
    return client.post("/ops/thresholds", data=data, follow_redirects=False)


def text_of(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def simulated_file(folder: Path, name: str = "portfolio.jsonl") -> Path:
    from pipeline.simulate import simulate_lines

    path = folder / name
    path.write_text("\n".join(simulate_lines(customers=30, days=200, seed=3, default_share=0.2)) + "\n")
    return path


def start_whatif(client: TestClient, **data: str):
    token = csrf_of(client.get("/ops/whatif").text)
    return client.post("/ops/whatif", data={"csrf_token": token, "b_kind": "edited", **data}, follow_redirects=False)


# --- who may ---------------------------------------------------------------------------------------


def test_only_ops_and_admin_reach_the_ops_pages_and_see_their_links(client, sqlite_ops_store):
    response = client.get("/ops/thresholds", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=%2Fops%2Fthresholds"
    for name in ("vera", "carl"):  # viewer, controller
        as_user(client, name)
        assert 'href="/ops/thresholds"' not in client.get("/alerts").text
        for path in ("/ops/thresholds", "/ops/whatif", "/ops/whatif/jobs/x", "/ops/whatif/jobs/x/report.html"):
            assert client.get(path).status_code == 403, (name, path)
        token = csrf_of(client.get("/alerts").text)
        refused = client.post("/ops/thresholds", data={"csrf_token": token, "base_version": "0", "reason": "x",
                                                       f"opt:{KEY}": "0.9"}, follow_redirects=False)
        assert refused.status_code == 403 and "Only ops and admin" in text_of(refused.text)
        client.cookies.clear()
    assert sqlite_ops_store.threshold_changes() == []
    for name in ("olga", "ada"):  # ops, admin
        as_user(client, name)
        inbox = client.get("/alerts").text
        assert 'href="/ops/thresholds"' in inbox and 'href="/ops/whatif"' in inbox
        assert client.get("/ops/thresholds").status_code == 200
        assert client.get("/ops/whatif").status_code == 200
        client.cookies.clear()


def test_threshold_form_without_the_csrf_token_is_refused(client, sqlite_ops_store):
    as_user(client, "olga")
    page = client.get("/ops/thresholds").text
    for token in ("", "forged"):
        response = client.post("/ops/thresholds", data={"csrf_token": token, "base_version": "0",
                                                        "reason": "x", f"opt:{KEY}": "0.9"}, follow_redirects=False)
        assert response.status_code == 403
    assert sqlite_ops_store.threshold_changes() == []
    forms = re.findall(r"<form\b.*?</form>", page, re.S)
    assert forms and all('name="csrf_token"' in form for form in forms if 'method="post"' in form)


# --- editing thresholds ---------------------------------------------------------------------------


def test_page_shows_every_option_with_value_and_allowed_range(client):
    as_user(client, "olga")
    page = client.get("/ops/thresholds").text
    assert "Built-in defaults" in text_of(page)
    row = re.search(rf'<label for="opt-{KEY}">.*?</tr>', page, re.S).group(0)
    assert 'value="1.0"' in row and "0.1 to 5.0" in row
    # every option of every detector (and [models]) is on the form
    for key in tuning._flat(Thresholds()):
        assert f'name="opt:{key}"' in page, key


def form_values(page: str) -> dict[str, str]:
    """What a browser submits for the thresholds form as shown (inputs' values, selects' selected options)."""
    values = {name: unescape(value) for name, value in
              re.findall(r'<input id="opt-[^"]+" name="(opt:[^"]+)" value="([^"]*)"', page)}
    for name, options in re.findall(r'<select id="opt-[^"]+" name="(opt:[^"]+)"[^>]*>(.*?)</select>', page, re.S):
        values[name] = re.search(r'<option value="([^"]+)" selected>', options).group(1)
    return values


def test_the_whole_form_submitted_as_shown_changes_nothing_and_one_edit_changes_one_key(client, sqlite_ops_store):
    as_user(client, "olga")
    page = client.get("/ops/thresholds").text
    values = form_values(page)
    assert len(values) == len(tuning._flat(Thresholds()))
    data = {"csrf_token": csrf_of(page), "base_version": "0", "reason": "no-op", **values}
    response = client.post("/ops/thresholds", data=data, follow_redirects=False)
    assert response.status_code == 303 and sqlite_ops_store.threshold_changes() == []
    assert "Nothing to save" in text_of(client.get("/ops/thresholds").text)
    data.update({"opt:composite.ignore": '["risk_score"]', "reason": "composite counts limit reviews"})
    assert client.post("/ops/thresholds", data=data, follow_redirects=False).status_code == 303
    assert tuning.history(sqlite_ops_store)[0]["changes"] == [
        {"key": "composite.ignore", "old": ("credit_limit", "credit_limit_review", "disputes", "payment_habit",
                                             "risk_score"), "new": ("risk_score",)}]


def test_invalid_value_is_refused_naming_the_key_and_range_and_nothing_is_saved(client, sqlite_ops_store):
    as_user(client, "olga")
    with pytest.raises(ThresholdError) as cli:  # what `creditwatch thresholds set` answers
        tuning.with_value(Thresholds(), KEY, "9")
    response = save(client, credit_limit__warning_utilisation="9")
    assert response.status_code == 400
    page = text_of(response.text)
    assert "Nothing was saved" in page
    assert str(cli.value).removeprefix("thresholds: ") in page
    assert "credit_limit.warning_utilisation: 9 is out of range (allowed: 0.1 to 5.0)" in page
    assert 'aria-invalid="true"' in response.text and 'value="9"' in response.text  # the field keeps what was typed

    not_a_number = text_of(save(client, overdue__warning_days="soon").text)
    assert re.search(r"overdue\.warning_days: .*\(allowed: 1 to 365\)", not_a_number)
    both = save(client, overdue__warning_days="45", overdue__critical_days="40")  # each in range, together not
    assert both.status_code == 400 and "warning_days must be below critical_days" in text_of(both.text)
    no_reason = save(client, reason="  ", credit_limit__warning_utilisation="0.9")
    assert no_reason.status_code == 400 and "A reason is required" in text_of(no_reason.text)
    assert sqlite_ops_store.threshold_changes() == []


def test_a_valid_change_is_a_new_version_with_who_when_old_new_and_reason(ops_client, ops_store, monkeypatch, capsys):
    as_user(ops_client, "olga")
    reason = f"warn before the limit {EVIL}"
    response = save(ops_client, reason=reason, credit_limit__warning_utilisation="0.9",
                    legal_event__court_judgment="critical", composite__enabled="false")
    assert response.status_code == 303, text_of(response.text)
    entries = tuning.history(ops_store)
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["changed_by"], entry["reason"], entry["source"]) == ("olga", reason, "web")
    assert entry["changed_at"]
    assert entry["changes"] == [
        {"key": "composite.enabled", "old": True, "new": False},
        {"key": KEY, "old": 1.0, "new": 0.9},
        {"key": "legal_event.court_judgment", "old": "warning", "new": "critical"},
    ]
    in_force = tuning.current(ops_store)
    assert in_force.number == entry["version"]
    assert in_force.thresholds.options_for("credit_limit").warning_utilisation == 0.9

    page = ops_client.get("/ops/thresholds").text
    assert f"Saved version {entry['version']}" in text_of(page)
    assert f"Version {entry['version']} in force" in text_of(page)
    history = text_of(re.search(r'<table id="threshold-history">.*?</table>', page, re.S).group(0))
    assert "olga" in history and re.search(rf"{KEY} ?: 1.0 → 0.9", history) and reason in history
    assert EVIL not in page and "&lt;script&gt;" in page  # the reason is escaped
    assert re.search(rf'id="opt-{KEY}"[^>]*value="0.9"', page)

    # the command line sees the same version (it reads the same store)
    from pipeline.cli import main

    monkeypatch.setenv("CREDITWATCH_DATABASE_URL", ops_store.url.render_as_string(hide_password=False))
    assert main(["thresholds", "history", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["changed_by"], e["reason"]) for e in listed] == [(entry["version"], "olga", reason)]

    unchanged = save(ops_client, reason="again")  # every field as it is: nothing to save, no new version
    assert unchanged.status_code == 303 and len(ops_store.threshold_changes()) == 1


def test_a_form_older_than_the_version_in_force_is_refused(client, sqlite_ops_store):
    as_user(client, "olga")
    page = client.get("/ops/thresholds").text  # rendered at the defaults
    tuning.change(sqlite_ops_store, "overdue.warning_days", "45", "ben", "from the command line meanwhile")
    response = client.post("/ops/thresholds", data={"csrf_token": csrf_of(page), "base_version": "0",
                                                    "reason": "mine", f"opt:{KEY}": "0.9"}, follow_redirects=False)
    assert response.status_code == 409 and "changed meanwhile" in text_of(response.text)
    assert [e["changed_by"] for e in tuning.history(sqlite_ops_store)] == ["ben"]


# --- what-if ---------------------------------------------------------------------------------------


def test_whatif_on_a_stored_file_shows_both_sides_and_b_can_be_applied(client, sqlite_ops_store, data_dir):
    from pipeline.whatif import compare

    simulated_file(data_dir)
    # Reviewers judged two of the alerts the replay raises: the report shows reviewer-confirmed precision.
    lines = (data_dir / "portfolio.jsonl").read_bytes().splitlines()
    left, _, _ = compare(lines, Thresholds(), Thresholds(), Settings().ledger, with_models=False)
    judged = [update for update in left.result.updates if update.change == "raised"][:2]
    sqlite_ops_store.record(judged, [], now=NOW)
    sqlite_ops_store.change_status(judged[0].alert_id, "resolved", "olga", note="paid late, then written off")
    sqlite_ops_store.change_status(judged[1].alert_id, "false_positive", "olga", note="a seasonal blip")

    as_user(client, "olga")
    page = client.get("/ops/whatif").text
    assert re.findall(r'<select id="file" name="file"[^>]*>(.*?)</select>', page, re.S)[0].count("<option") == 1
    response = start_whatif(client, file="portfolio.jsonl", b_changes="legal_event.enabled = false\n"
                                                                      "overdue.warning_days = 45")
    assert response.status_code == 303, text_of(response.text)
    job_id = response.headers["location"].rsplit("/", 1)[1]
    job = client.app.state.ops_jobs.wait(job_id, timeout=120)
    assert job.status == "done", job.error
    report = job.report
    assert report["a"]["config"] == "built-in defaults (in force)"
    assert report["b"]["config"] == "edited: legal_event.enabled = false, overdue.warning_days = 45"
    assert "legal_event" in report["a"]["by_detector"] and "legal_event" not in report["b"]["by_detector"]
    assert report["written_off_customers"] > 0

    page = client.get(f"/ops/whatif/jobs/{job_id}").text
    table = re.search(r'<table class="whatif".*?</table>', page, re.S).group(0)
    header = text_of(re.search(r"<thead>.*?</thead>", table, re.S).group(0))
    for title in ("alerts", "per cust-month", "caught", "precision", "recall", "median lead (days)",
                  "reviewer precision"):
        assert title in header
    overall = re.search(r'<tr class="total">(.*?)</tr>', table, re.S).group(1)
    cells = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", overall, re.S)]
    a, b = report["a"]["by_detector"]["(all detectors)"], report["b"]["by_detector"]["(all detectors)"]
    assert cells[:2] == [str(a["alerts"]), str(b["alerts"])]
    assert cells[4:6] == [str(a["customers_caught"]), str(b["customers_caught"])]
    assert cells[8:10] == [f"{a['recall'] * 100:.1f} %", f"{b['recall'] * 100:.1f} %"]
    assert a["reviewed"] == 2 and a["reviewer_precision"] == 0.5
    assert cells[12] == "50.0 % of 2"
    legal = re.search(r'<th scope="row">legal_event</th>(.*?)</tr>', table, re.S).group(1)
    assert [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", legal, re.S)][1] == "—"  # not in B
    assert page.count("<polyline") == 2 and 'stroke-dasharray="5 3"' in page  # A solid, B dashed
    download = client.get(f"/ops/whatif/jobs/{job_id}/report.html")
    assert download.status_code == 200 and "<svg" in download.text and "attachment" in download.headers[
        "content-disposition"]

    token = csrf_of(page)
    no_reason = client.post(f"/ops/whatif/jobs/{job_id}/apply", data={"csrf_token": token, "reason": " "})
    assert "A reason is required" in text_of(no_reason.text) and sqlite_ops_store.threshold_changes() == []
    applied = client.post(f"/ops/whatif/jobs/{job_id}/apply", data={"csrf_token": token, "reason": "fewer alerts, "
                          "same catch"}, follow_redirects=False)
    assert applied.status_code == 303 and applied.headers["location"] == "/ops/thresholds"
    entry = tuning.history(sqlite_ops_store)[0]
    assert (entry["changed_by"], entry["reason"]) == ("olga", "fewer alerts, same catch")
    assert entry["changes"] == [{"key": "legal_event.enabled", "old": True, "new": False},
                                {"key": "overdue.warning_days", "old": 60, "new": 45}]
    again = client.post(f"/ops/whatif/jobs/{job_id}/apply", data={"csrf_token": token, "reason": "twice"})
    assert len(sqlite_ops_store.threshold_changes()) == 1  # A is no longer in force: B is not applied twice
    assert "changed since this run" in text_of(again.text)


def test_whatif_against_a_stored_version_and_bad_candidates(client, sqlite_ops_store, data_dir):
    simulated_file(data_dir)
    first = tuning.change(sqlite_ops_store, "disputes.warning_share", "0.3", "ben", "fewer dispute alerts")[0]
    tuning.change(sqlite_ops_store, "disputes.warning_share", "0.2", "ben", "back")
    as_user(client, "olga")
    response = start_whatif(client, file="portfolio.jsonl", b_kind="version", b_version=str(first))
    assert response.status_code == 303
    job = client.app.state.ops_jobs.wait(response.headers["location"].rsplit("/", 1)[1], timeout=120)
    assert job.status == "done" and job.b_changes == [("disputes.warning_share", 0.2, 0.3)]
    assert job.report["b"]["config"] == f"version {first}"

    refused = start_whatif(client, file="portfolio.jsonl", b_changes=f"{KEY} = 7")
    assert refused.status_code == 400
    assert "credit_limit.warning_utilisation: 7 is out of range (allowed: 0.1 to 5.0)" in text_of(refused.text)
    hostile = start_whatif(client, file="portfolio.jsonl", b_changes=f"{EVIL} = 1\noverdue.{EVIL} = 2")
    assert hostile.status_code == 400 and EVIL not in hostile.text and "&lt;script&gt;" in hostile.text
    same = start_whatif(client, file="portfolio.jsonl", b_changes="overdue.warning_days = 60")
    assert same.status_code == 400 and "B is the same" in text_of(same.text)
    assert len(client.app.state.ops_jobs.recent()) == 1


def test_whatif_never_reads_a_file_outside_the_data_directory(client, data_dir, tmp_path):
    simulated_file(data_dir)
    (data_dir / "nested").mkdir()
    simulated_file(data_dir / "nested", "q1.jsonl")
    (data_dir / "notes.txt").write_text("not events")
    outside = simulated_file(tmp_path, "secret.jsonl")
    (data_dir / "link.jsonl").symlink_to(outside)
    as_user(client, "olga")
    page = client.get("/ops/whatif").text
    listed = re.findall(r'<option value="([^"]+)"', re.search(r'<select id="file".*?</select>', page, re.S).group(0))
    assert listed == ["nested/q1.jsonl", "portfolio.jsonl"]
    for name in ("../secret.jsonl", str(outside), "link.jsonl", "nested/../../secret.jsonl", "notes.txt",
                 "%2e%2e/secret.jsonl", ""):
        response = start_whatif(client, file=name, b_changes=f"{KEY} = 0.9")
        assert response.status_code == 400, name
        assert "Choose one of the listed event files" in text_of(response.text)
    assert client.app.state.ops_jobs.recent() == []
    assert start_whatif(client, file="nested/q1.jsonl", b_changes=f"{KEY} = 0.9").status_code == 303


def test_try_in_a_whatif_first_carries_the_edited_values_to_the_whatif_form(client, sqlite_ops_store):
    as_user(client, "olga")
    page = client.get("/ops/thresholds").text
    response = client.post("/ops/whatif/draft", data={"csrf_token": csrf_of(page), f"opt:{KEY}": "0.85",
                                                      "opt:overdue.warning_days": "60"})
    assert response.status_code == 200
    textarea = re.search(r'<textarea id="b-changes"[^>]*>(.*?)</textarea>', response.text, re.S).group(1)
    assert textarea == f"{KEY} = 0.85"
    assert sqlite_ops_store.threshold_changes() == []


def test_ops_forms_have_labels(client, data_dir):
    simulated_file(data_dir)
    as_user(client, "olga")
    response = start_whatif(client, file="portfolio.jsonl", b_changes=f"{KEY} = 0.9", models="0")
    job_id = response.headers["location"].rsplit("/", 1)[1]
    client.app.state.ops_jobs.wait(job_id, timeout=120)
    for path in ("/ops/thresholds", "/ops/whatif", f"/ops/whatif/jobs/{job_id}"):
        page = client.get(path).text
        ids = set(re.findall(r'<label for="([^"]+)"', page))
        fields = re.findall(r"<(input|select|textarea)\b([^>]*)>", page)
        assert fields, path
        for tag, attrs in fields:
            if 'type="hidden"' in attrs:
                continue
            field_id = re.search(r'id="([^"]+)"', attrs)
            assert field_id and field_id.group(1) in ids, (path, tag, attrs)


def test_a_run_happens_in_the_background_one_at_a_time_and_its_page_says_so(client, data_dir):
    import threading

    simulated_file(data_dir)
    jobs = client.app.state.ops_jobs
    release = threading.Event()
    real_run = jobs._run
    jobs._run = lambda job: (release.wait(60), real_run(job))[1]  # the replay waits until the test lets it go
    as_user(client, "olga")
    try:
        first = start_whatif(client, file="portfolio.jsonl", b_changes=f"{KEY} = 0.9")
        assert first.status_code == 303  # answered while the run is held: the request does not wait for it
        second = start_whatif(client, file="portfolio.jsonl", b_changes=f"{KEY} = 0.8")
        first_id, second_id = (r.headers["location"].rsplit("/", 1)[1] for r in (first, second))
        page = client.get(f"/ops/whatif/jobs/{second_id}").text
        assert jobs.get(second_id).status == "queued" and "status queued" in text_of(page)
        assert '<meta http-equiv="refresh"' in page and "Apply B" not in page
        jobs.max_waiting = 2
        third = start_whatif(client, file="portfolio.jsonl", b_changes=f"{KEY} = 0.7")
        assert third.status_code == 429 and "waiting already" in text_of(third.text)
    finally:
        release.set()
    assert jobs.wait(first_id, 120).status == "done" and jobs.wait(second_id, 120).status == "done"
    listing = text_of(client.get("/ops/whatif").text)
    assert listing.count("done") == 2 and "olga" in listing
