"""The Slack sink against a local stand-in of Slack's Web API (tests/slack_standin.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.alerts import AlertUpdate
from sinks.base import SINKS, SinkError, deliver_safely
from sinks.slack import HTTP_LOGGER_NAME, ZWSP, SlackSink, mrkdwn_escape, parse_channels
from tests.slack_standin import STANDIN_TOKEN, SlackStandIn, channel_id, slack_standin  # noqa: F401 - fixture

DEFAULT = "#credit-alerts"
CRITICAL = "#credit-critical"
REVIEW = "http://127.0.0.1:8000/alerts/{alert_id}"


@dataclass
class Delivery:
    """The shape sinks.outbox hands a sink (built here until the outbox lands)."""

    alert: dict[str, Any]
    change: str
    revision: int = 1
    kind: str = "alert"
    refs: dict[str, Any] = field(default_factory=dict)
    from_status: str | None = None
    to_status: str | None = None
    by: str | None = None
    note: str | None = None


def make_alert(alert_id: str = "al_0001", severity: str = "warning", revision: int = 1, **extra: Any) -> dict[str, Any]:
    alert = {
        "alert_id": alert_id,
        "customer_id": "C042",
        "customer_name": "Acme Trading GmbH",
        "detector": "credit_limit",
        "severity": severity,
        "title": "Exposure at 104% of credit limit",
        "reasons": [
            {"code": "exposure_over_limit", "message": "Open exposure is above the credit limit",
             "value": 52000.0, "threshold": 50000.0},
            {"code": "days_past_due", "message": "Oldest invoice is overdue", "value": 61.0, "threshold": 45.0},
        ],
        "score": 0.81,
        "raised_at": "2026-03-04T09:12:00+00:00",
        "event_ids": ["ev-1"],
        "status": "open",
        "revision": revision,
    }
    alert.update(extra)
    return alert


def ref(channel: str, ts: str) -> dict[str, str]:
    """What deliver returns: ``channel``/``ts`` for sinks.store, the same as ``slack_*`` for readers of alerts."""
    return {"channel": channel, "ts": ts, "slack_channel": channel, "slack_ts": ts}


def make_sink(standin: SlackStandIn, token: str = STANDIN_TOKEN, **options: Any) -> SlackSink:
    options.setdefault("timeout", 2)
    options.setdefault("retries", 2)
    options.setdefault("backoff", 0.05)
    return SlackSink(token, {"default": DEFAULT, "critical": CRITICAL}, base_url=standin.base_url,
                     review_url=REVIEW, **options)


def texts(node: Any, kind: str | None = None) -> list[str]:
    """Every text object's text (of one type, if given) anywhere in a block tree."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("type") in ("plain_text", "mrkdwn") and isinstance(node.get("text"), str):
            if kind is None or node["type"] == kind:
                found.append(node["text"])
        for value in node.values():
            found += texts(value, kind)
    elif isinstance(node, list):
        for value in node:
            found += texts(value, kind)
    return found


# -- content and routing ------------------------------------------------------------------


def test_new_alert_is_one_block_kit_message_with_severity_customer_reasons_score_and_review_link(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(AlertUpdate("raised", make_alert()))

    [parent] = slack_standin.parents("al_0001")
    assert refs == ref(channel_id(DEFAULT), parent.ts)
    header = parent.blocks[0]
    assert header["type"] == "header"
    assert header["text"] == {"type": "plain_text", "text": "\N{LARGE ORANGE CIRCLE} Warning: Exposure at 104% of credit limit",
                              "emoji": False}
    shown = texts(parent.blocks, "plain_text")
    assert "Customer: Acme Trading GmbH" in shown
    assert "Customer ID: C042" in shown
    assert "Severity: \N{LARGE ORANGE CIRCLE} Warning" in shown
    assert "Score: 0.81" in shown
    assert "\N{BULLET} Open exposure is above the credit limit (value 52,000, threshold 50,000)" in shown
    assert "\N{BULLET} Oldest invoice is overdue (value 61, threshold 45)" in shown
    [button] = [e for b in parent.blocks if b["type"] == "actions" for e in b["elements"]]
    assert button["url"] == "http://127.0.0.1:8000/alerts/al_0001"
    assert parent.metadata["event_payload"]["alert_id"] == "al_0001"
    assert "Warning credit alert: Exposure at 104% of credit limit" in parent.text  # notification fallback


def test_alerts_are_routed_to_the_channel_of_their_severity(slack_standin):
    sink = make_sink(slack_standin)
    for aid, severity in (("al_i", "info"), ("al_w", "warning"), ("al_c", "critical")):
        sink.deliver(AlertUpdate("raised", make_alert(aid, severity)))

    assert [m.channel for m in slack_standin.parents("al_i")] == [channel_id(DEFAULT)]
    assert [m.channel for m in slack_standin.parents("al_w")] == [channel_id(DEFAULT)]
    assert [m.channel for m in slack_standin.parents("al_c")] == [channel_id(CRITICAL)]


def test_channels_need_a_default_and_parse_from_the_setting():
    assert parse_channels("#credit-alerts") == {"default": "#credit-alerts"}
    assert parse_channels("critical=#cc, #all") == {"critical": "#cc", "default": "#all"}
    with pytest.raises(ValueError, match="default"):
        SlackSink("xoxb-1", {"critical": "#cc"})
    with pytest.raises(ValueError, match="unknown severities"):
        SlackSink("xoxb-1", {"default": "#a", "urgent": "#b"})
    assert SINKS["slack"] is SlackSink


# -- the thread ------------------------------------------------------------------------


def test_escalation_updates_the_parent_then_replies_in_its_thread(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(AlertUpdate("raised", make_alert(severity="info")))
    again = sink.deliver(Delivery(make_alert(severity="warning", revision=2), "escalated", 2, refs=refs))

    assert again == refs
    [parent] = slack_standin.parents("al_0001")
    assert len(parent.edits) == 1
    assert parent.blocks[0]["text"]["text"].startswith("\N{LARGE ORANGE CIRCLE} Warning:")
    [reply] = slack_standin.replies("al_0001")
    assert (reply.channel, reply.thread_ts) == (refs["slack_channel"], refs["slack_ts"])
    assert reply.reply_broadcast
    assert "Escalated to \N{LARGE ORANGE CIRCLE} Warning (revision 2)" in texts(reply.blocks)[0]
    # the idempotent update goes first, the post last: a retry after a failure duplicates nothing
    assert [r.method for r in slack_standin.requests][1:] == ["chat.update", "chat.postMessage"]


def test_escalation_to_a_severity_routed_elsewhere_continues_in_that_channel(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(AlertUpdate("raised", make_alert(severity="warning")))
    moved = sink.deliver(Delivery(make_alert(severity="critical", revision=2), "escalated", 2, refs=refs))

    old, new = slack_standin.parents("al_0001")
    assert (old.channel, new.channel) == (channel_id(DEFAULT), channel_id(CRITICAL))
    assert moved == ref(new.channel, new.ts)
    assert any("continued in #credit-critical" in t for t in texts(old.blocks))
    assert new.blocks[0]["text"]["text"].startswith("\N{LARGE RED CIRCLE} Critical:")


def test_escalation_after_a_restart_stays_in_the_thread_when_the_route_is_unchanged(slack_standin):
    refs = make_sink(slack_standin).deliver(AlertUpdate("raised", make_alert(severity="info")))
    fresh = make_sink(slack_standin)  # a new process: has not learned which id "#credit-alerts" is
    assert fresh.deliver(Delivery(make_alert(severity="warning", revision=2), "escalated", 2, refs=refs)) == refs
    assert len(slack_standin.parents("al_0001")) == 1 and len(slack_standin.replies("al_0001")) == 1


def test_escalation_without_a_stored_parent_posts_a_new_parent(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(Delivery(make_alert(severity="warning", revision=2), "escalated", 2, refs={}))

    [parent] = slack_standin.parents("al_0001")
    assert refs == ref(parent.channel, parent.ts)
    assert slack_standin.replies("al_0001") == []


def test_escalation_of_a_deleted_parent_posts_a_new_parent_instead_of_an_invisible_reply(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(AlertUpdate("raised", make_alert(severity="info")))
    slack_standin.delete_message(refs["slack_channel"], refs["slack_ts"])
    again = sink.deliver(Delivery(make_alert(severity="warning", revision=2), "escalated", 2, refs=refs))

    [parent] = slack_standin.parents("al_0001")
    assert again == ref(parent.channel, parent.ts) != refs
    assert slack_standin.replies("al_0001") == []


def test_status_change_shows_on_the_parent_and_replies_who_and_why(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(AlertUpdate("raised", make_alert()))
    back = sink.deliver(Delivery(make_alert(status="resolved"), "status_change", 1, kind="status", refs=refs,
                                 from_status="open", to_status="resolved", by="alice", note="Paid in full on 3 May"))

    assert back == refs
    [parent] = slack_standin.parents("al_0001")
    assert "Status: \N{WHITE HEAVY CHECK MARK} Resolved (by alice)" in texts(parent.blocks)
    [reply] = slack_standin.replies("al_0001")
    assert reply.thread_ts == refs["slack_ts"] and not reply.reply_broadcast
    assert texts(reply.blocks) == ["\N{WHITE HEAVY CHECK MARK} Resolved by alice (was Open)", "Note: Paid in full on 3 May"]


def test_outbox_deliveries_thread_under_the_newest_parent_and_carry_the_status_change(slack_standin):
    outbox = pytest.importorskip("sinks.outbox")
    sink = make_sink(slack_standin)
    first = sink.send(outbox.Delivery(1, "slack", "alert", "raised", make_alert(severity="warning"), 1))
    moved = sink.send(outbox.Delivery(2, "slack", "alert", "escalated", make_alert(severity="critical", revision=2), 2,
                                      refs=(first,)))
    entry = {"at": "2026-03-05T10:00:00+00:00", "by": "alice", "change": "status", "from_status": "open",
             "to_status": "acknowledged", "revision": 2, "note": "Calling their CFO"}
    back = sink.send(outbox.Delivery(3, "slack", "status_change", "acknowledged",
                                     make_alert(severity="critical", revision=2, status="acknowledged"), 2,
                                     refs=(first, moved), status_change=entry))

    assert back == moved != first
    [reply] = slack_standin.replies("al_0001")
    assert (reply.channel, reply.thread_ts) == (moved["channel"], moved["ts"]) == (channel_id(CRITICAL), moved["ts"])
    assert texts(reply.blocks) == ["\N{EYES} Acknowledged by alice (was Open)", "Note: Calling their CFO"]


def test_redelivered_new_alert_with_stored_refs_refreshes_the_parent_and_posts_nothing(slack_standin):
    sink = make_sink(slack_standin)
    refs = sink.deliver(AlertUpdate("raised", make_alert()))
    assert sink.deliver(Delivery(make_alert(), "raised", 1, refs=refs)) == refs

    assert slack_standin.count_messages("al_0001") == 1
    assert [r.method for r in slack_standin.requests] == ["chat.postMessage", "chat.update"]


# -- failures ------------------------------------------------------------------------


def test_rate_limit_is_retried_only_after_retry_after(slack_standin):
    sink = make_sink(slack_standin)
    slack_standin.plan(["429:2"])
    started = time.monotonic()
    refs = sink.deliver(AlertUpdate("raised", make_alert()))

    first, second = slack_standin.calls("chat.postMessage")
    assert (first.behaviour, second.behaviour) == ("429:2", "ok")
    assert second.at - first.at >= 2.0  # waited as told, no tight loop
    assert time.monotonic() - started < 4.5
    assert refs is not None and slack_standin.count_parents("al_0001") == 1


def test_rate_limit_left_after_the_in_call_retries_carries_retry_after(slack_standin):
    sink = make_sink(slack_standin, retries=0)
    slack_standin.plan(["429:7"])
    with pytest.raises(SinkError) as caught:
        sink.deliver(AlertUpdate("raised", make_alert()))
    assert caught.value.retry_after == 7 and not caught.value.permanent


def test_long_retry_after_is_handed_to_the_caller_not_slept_through(slack_standin):
    sink = make_sink(slack_standin, max_rate_limit_wait=5)
    slack_standin.plan(["429:30"])
    started = time.monotonic()
    with pytest.raises(SinkError) as caught:
        sink.deliver(AlertUpdate("raised", make_alert()))
    assert caught.value.retry_after == 30
    assert time.monotonic() - started < 1.0
    assert len(slack_standin.requests) == 1


def test_server_error_is_retried_within_the_call(slack_standin):
    sink = make_sink(slack_standin)
    slack_standin.plan(["500", "503"])
    refs = sink.deliver(AlertUpdate("raised", make_alert()))

    assert [r.behaviour for r in slack_standin.requests] == ["500", "503", "ok"]
    assert refs is not None and slack_standin.count_parents("al_0001") == 1


def test_server_errors_beyond_the_retries_are_a_retryable_sink_error(slack_standin):
    sink = make_sink(slack_standin, retries=1)
    slack_standin.fail_for(30, "502")
    with pytest.raises(SinkError) as caught:
        sink.deliver(AlertUpdate("raised", make_alert()))
    assert not caught.value.permanent and caught.value.retry_after is None
    assert len(slack_standin.requests) == 2


def test_dropped_connection_is_retried(slack_standin):
    sink = make_sink(slack_standin)
    slack_standin.plan(["drop"])
    assert sink.deliver(AlertUpdate("raised", make_alert())) is not None
    assert [r.behaviour for r in slack_standin.requests] == ["drop", "ok"]


def test_stall_past_the_timeout_is_retried_and_may_post_twice(slack_standin):
    sink = make_sink(slack_standin, timeout=0.5, retries=1)
    slack_standin.plan(["stall:2"])
    started = time.monotonic()
    refs = sink.deliver(AlertUpdate("raised", make_alert()))

    assert time.monotonic() - started < 1.8  # one timeout, a short backoff, one quick answer
    assert refs is not None
    # Slack had the first request too: a timed-out post is at-least-once, never silently lost.
    assert slack_standin.wait_idle(timeout=5)
    assert slack_standin.count_parents("al_0001") == 2


def test_stall_on_every_attempt_fails_with_a_retryable_sink_error_within_a_bound(slack_standin):
    sink = make_sink(slack_standin, timeout=0.5, retries=1)
    slack_standin.plan(["stall:3", "stall:3"])
    started = time.monotonic()
    with pytest.raises(SinkError, match="no answer within 0.5s") as caught:
        sink.deliver(AlertUpdate("raised", make_alert()))
    assert time.monotonic() - started < 2.5  # two 0.5 s timeouts and a backoff, not the 3 s stalls
    assert not caught.value.permanent


def test_invalid_token_is_a_permanent_sink_error_without_retries(slack_standin):
    sink = make_sink(slack_standin, token="xoxb-wrong")
    with pytest.raises(SinkError, match="invalid_auth") as caught:
        sink.deliver(AlertUpdate("raised", make_alert()))
    assert caught.value.permanent
    assert len(slack_standin.requests) == 1 and slack_standin.posted() == []
    with pytest.raises(SinkError) as on_check:
        sink.verify()
    assert on_check.value.permanent


def test_unknown_channel_is_a_permanent_sink_error():
    with SlackStandIn(channels=[CRITICAL]) as standin:
        with pytest.raises(SinkError, match="channel_not_found") as caught:
            make_sink(standin).deliver(AlertUpdate("raised", make_alert(severity="warning")))
    assert caught.value.permanent


def test_dispatcher_records_a_failed_slack_delivery_instead_of_raising(slack_standin):
    sink = make_sink(slack_standin, retries=0)
    slack_standin.plan(["500"])
    outcome = deliver_safely(sink, AlertUpdate("raised", make_alert()))
    assert not outcome.ok and outcome.sink == "slack" and "HTTP 500" in outcome.error


# -- escaping ------------------------------------------------------------------------

EVIL = "Acme <!channel> <!here> <@U123> <#C1> *bold* _it_ ~s~ `code` <http://x|y> & @everyone"


def test_event_text_cannot_ping_link_or_format(slack_standin):
    sink = make_sink(slack_standin)
    evil_reason = {"code": "x", "message": f"Reason {EVIL}", "value": 1.0, "threshold": 0.5}
    alert = make_alert(customer_name=EVIL, title=f"Title {EVIL}", reasons=[evil_reason])
    refs = sink.deliver(AlertUpdate("raised", alert))
    escalated = dict(alert, severity="critical", revision=2)
    moved = sink.deliver(Delivery(escalated, "escalated", 2, refs=refs))  # update old parent, post new one
    sink.deliver(Delivery(escalated, "status_change", 2, refs=moved, to_status="acknowledged", by=EVIL, note=EVIL))

    posts = [r.payload for r in slack_standin.requests if r.method in ("chat.postMessage", "chat.update")]
    assert len(posts) == 5
    for payload in posts:
        assert texts(payload["blocks"], "mrkdwn") == []  # event text only ever in plain_text
        mrkdwn = [payload["text"]]  # the fallback is the one place Slack would parse
        for text in mrkdwn:
            for trigger in ("<!", "<@", "<#", "<http", "@everyone", "*bold*", "_it_", "~s~", "`code`"):
                assert trigger not in text
        assert payload.get("mrkdwn") in (False, None) and payload["parse"] == "none"
        assert payload["link_names"] is False
    parent = posts[0]
    assert f"Customer: {EVIL}" in texts(parent["blocks"], "plain_text")  # shown literally
    assert all(t["emoji"] is False for t in _text_objects(parent["blocks"]))
    reply = slack_standin.replies("al_0001")[-1]
    assert f"Note: {EVIL}" in texts(reply.blocks, "plain_text")


def test_mrkdwn_escape_neutralises_every_control_sequence():
    escaped = mrkdwn_escape(EVIL)
    assert "<" not in escaped and ">" not in escaped
    assert "&lt;!channel&gt;" in escaped and "&amp;" in escaped
    for char in "*_~`":
        assert escaped.count(char) == escaped.count(f"{ZWSP}{char}{ZWSP}")
    assert escaped.replace(ZWSP, "").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == EVIL


def _text_objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") in ("plain_text", "mrkdwn"):
            found.append(node)
        for value in node.values():
            found += _text_objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _text_objects(value)
    return found


# -- the token -----------------------------------------------------------------------


def test_token_is_never_in_repr_errors_or_debug_logs(slack_standin, caplog):
    caplog.set_level(logging.DEBUG)  # root, and so everything that propagates
    logging.getLogger("slack_sdk").setLevel(logging.DEBUG)
    try:
        sink = make_sink(slack_standin, retries=1)
        assert STANDIN_TOKEN not in repr(sink) and STANDIN_TOKEN not in str(sink)
        slack_standin.fail_for(30, "500")
        with pytest.raises(SinkError) as caught:
            sink.deliver(AlertUpdate("raised", make_alert()))
        slack_standin.reset()
        assert sink.deliver(AlertUpdate("raised", make_alert("al_ok"))) is not None
    finally:
        logging.getLogger("slack_sdk").setLevel(logging.NOTSET)
    assert STANDIN_TOKEN not in str(caught.value)
    assert caplog.records, "the failing call should have logged something"
    assert STANDIN_TOKEN not in caplog.text
    assert not [r for r in caplog.records if r.name == HTTP_LOGGER_NAME and r.levelno < logging.INFO]


def test_token_is_redacted_even_when_someone_turns_on_slack_request_dumps(slack_standin, caplog):
    http_log = logging.getLogger(HTTP_LOGGER_NAME)
    caplog.set_level(logging.DEBUG)
    http_log.setLevel(logging.DEBUG)
    try:
        sink = make_sink(slack_standin, retries=0)
        sink.deliver(AlertUpdate("raised", make_alert()))
        slack_standin.plan(["500"])
        with pytest.raises(SinkError):
            sink.deliver(AlertUpdate("raised", make_alert("al_2")))
        http_log.debug("a careless line with the token %s", STANDIN_TOKEN)
    finally:
        http_log.setLevel(logging.INFO)
    assert any("Sending a request" in r.getMessage() for r in caplog.records)  # the dumps did happen
    assert STANDIN_TOKEN not in caplog.text
    assert "a careless line with the token xoxb-***" in caplog.text


# -- the stand-in itself ---------------------------------------------------------------


def test_standin_checks_the_bearer_token_and_reads_form_bodies(slack_standin):
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    good = WebClient(token=STANDIN_TOKEN, base_url=slack_standin.base_url, retry_handlers=[])
    assert good.auth_test()["team_id"] == "T0STANDIN"
    assert good.api_call("chat.postMessage", data={"channel": "#x", "text": "hi"})["ok"]  # multipart form
    assert good.api_call("chat.postMessage", params={"channel": "#x", "text": "yo"})["ok"]  # urlencoded
    with pytest.raises(SlackApiError) as caught:
        WebClient(token="xoxb-nope", base_url=slack_standin.base_url, retry_handlers=[]).auth_test()
    assert caught.value.response["error"] == "invalid_auth"
    assert [m.text for m in slack_standin.posted()] == ["hi", "yo"]
    assert [r.authorized for r in slack_standin.requests] == [True, True, True, False]


def test_standin_plans_per_method_and_fails_for_a_while(slack_standin):
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    client = WebClient(token=STANDIN_TOKEN, base_url=slack_standin.base_url, retry_handlers=[])
    slack_standin.plan(["error:ratelimited"], method="chat.update")
    assert client.auth_test()["ok"]
    posted = client.chat_postMessage(channel="#x", text="a")
    with pytest.raises(SlackApiError):
        client.chat_update(channel=posted["channel"], ts=posted["ts"], text="b")
    slack_standin.fail_for(0.3, "503")
    with pytest.raises(SlackApiError) as caught:
        client.auth_test()
    assert caught.value.response.status_code == 503
    time.sleep(0.35)
    assert client.auth_test()["ok"]
    assert client.chat_update(channel=posted["channel"], ts=posted["ts"], text="b")["ok"]
    with pytest.raises(ValueError):
        slack_standin.plan(["teapot"])
