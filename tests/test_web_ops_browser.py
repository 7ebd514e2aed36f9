"""The ops thresholds page in a real browser (Playwright on Debian's Chromium), like ``test_web_browser.py``.

Reuses that module's browser, page, screenshot and login helpers; the app runs
over a store of its own (users only, no thresholds version yet).
Screenshots go to ``test-output/browser/``.
"""

from __future__ import annotations

import re

import pytest

from tests.test_web_browser import browser, log_in, page, shot  # noqa: F401  (fixtures used by name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Overrides ``test_web_browser.server`` for this module's ``page``: an ops-only store."""
    from argon2 import PasswordHasher

    from pipeline.clock import ManualClock
    from pipeline.config import Settings
    from pipeline.web import auth
    from pipeline.web.app import WebServer, WebSettings, create_app, ensure_user
    from sinks.store import AlertStore, upgrade_database
    from tests.test_web import NOW, PASSWORD, FakePublisher

    previous = auth.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    folder = tmp_path_factory.mktemp("ops-web")
    url = f"sqlite:///{folder / 'creditwatch.db'}"
    upgrade_database(url)
    store = AlertStore(url)
    ensure_user(store, "olga", "ops", PASSWORD)
    app = create_app(store=store, settings=Settings(topic_prefix="t.", data_dir=folder / "data"),
                     publisher=FakePublisher(), clock=ManualClock(NOW), web_settings=WebSettings(secret_key="k" * 48))
    running = WebServer(app).start()
    running.store = store  # type: ignore[attr-defined]
    yield running
    running.stop()
    store.close()
    auth.use_hasher(previous)


def test_ops_user_changes_a_threshold_with_a_reason_and_sees_the_new_version_in_history(page, server):
    from pipeline.tuning import history

    log_in(page, "olga")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Thresholds").click()
    page.wait_for_url("**/ops/thresholds")
    assert "Built-in defaults" in page.locator("#current-version").inner_text()

    field = page.get_by_label("credit_limit.warning_utilisation")
    assert field.input_value() == "1.0"
    field.fill("0.9")
    reason = page.get_by_label("Reason for the change")
    reason.fill("Warn before the limit is reached")
    shot(page, "ops-01-thresholds-edited")
    reason.focus()
    page.keyboard.press("Tab")  # from the reason to the save button: the form works from the keyboard
    page.keyboard.press("Enter")
    page.wait_for_url("**/ops/thresholds")

    assert "Saved version 1" in page.locator(".flash.ok").inner_text()
    assert "Version 1 in force" in page.locator("#current-version").inner_text()
    assert page.get_by_label("credit_limit.warning_utilisation").input_value() == "0.9"
    row = page.locator("#threshold-history tbody tr").first
    text = row.inner_text()
    assert re.search(r"credit_limit\.warning_utilisation\s*: 1\.0 → 0\.9", text), text
    assert "olga" in text and "Warn before the limit is reached" in text
    assert row.locator("ul.changes li").count() == 1  # the other ~90 fields went back unchanged
    shot(page, "ops-02-thresholds-saved")
    assert [(e["version"], e["changed_by"]) for e in history(server.store)] == [(1, "olga")]
    assert page.problems == []  # type: ignore[attr-defined]  (no console errors, no CSP violations)
