"""One conformance test over every registered sink: deliver, fail as SinkError, never raise into the stream."""

from __future__ import annotations

import io

import pytest

import sinks  # noqa: F401 - registers every sink
from pipeline.alerts import AlertUpdate
from sinks.base import SINKS, Dispatcher, SinkError, deliver_safely
from tests.slack_standin import STANDIN_TOKEN, SlackStandIn


def _update(revision: int = 1) -> AlertUpdate:
    return AlertUpdate("raised", {
        "alert_id": "al_conformance", "customer_id": "C9", "customer_name": "Conformance <!channel> Ltd",
        "detector": "credit_limit", "severity": "warning", "title": "Exposure at 104% of credit limit",
        "reasons": [{"code": "exposure_over_limit", "message": "Exposure 52,000 of 50,000", "value": 52000.0,
                     "threshold": 50000.0}],
        "score": None, "raised_at": "2026-03-04T09:12:00+00:00", "updated_at": "2026-03-04T09:12:00+00:00",
        "event_ids": ["e1"], "status": "open", "revision": revision, "threshold_version": None,
    })


class _Closed(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("stream closed")


def working_and_failing(name: str, broker, standin):
    """A sink that can deliver, and one whose far side is broken (None if it cannot fail)."""
    if name == "memory":
        from sinks.base import MemorySink
        return MemorySink(), None
    if name == "log":
        from sinks.base import LogSink
        return LogSink(), None
    if name == "console":
        from sinks.base import ConsoleSink
        return ConsoleSink(io.StringIO()), ConsoleSink(_Closed())
    if name == "kafka":
        from sinks.kafka import KafkaAlertSink
        return (KafkaAlertSink(broker.bootstrap, "conformance.alerts"),
                KafkaAlertSink("127.0.0.1:1", "conformance.alerts", timeout_s=2))
    if name == "slack":
        from sinks.slack import SlackSink
        return (SlackSink(STANDIN_TOKEN, "#alerts", base_url=standin.base_url, retries=0),
                SlackSink("xoxb-wrong", "#alerts", base_url=standin.base_url, retries=0))
    raise AssertionError(f"sink {name!r} has no conformance set-up: add it here")


@pytest.fixture(scope="module")
def standin():
    with SlackStandIn() as server:
        yield server


@pytest.mark.parametrize("name", sorted(SINKS))
def test_every_sink_delivers_fails_only_with_sink_error_and_never_raises_through_the_dispatcher(name, broker, standin):
    working, failing = working_and_failing(name, broker, standin)
    assert working.name == name
    working.deliver(_update())
    outcome = deliver_safely(working, _update(revision=2))
    assert outcome.ok, outcome.error
    if failing is None:
        return
    with pytest.raises(SinkError):
        failing.deliver(_update())
    outcomes = Dispatcher([failing, working]).dispatch(_update(revision=3))
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].error and outcomes[0].sink == name
    close = getattr(failing, "close", None)
    if close:
        close()
