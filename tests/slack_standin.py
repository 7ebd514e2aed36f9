"""A local stand-in for Slack's Web API, enough for ``slack_sdk.WebClient``.

Slack cannot be reached from the test machines, so the Slack sink is tested
against this: a threaded ``http.server`` on 127.0.0.1 (free port) that speaks
``POST /api/chat.postMessage``, ``/api/chat.update`` and ``/api/auth.test``
with form or JSON bodies, checks ``Authorization: Bearer <token>`` and answers
the way Slack does (HTTP 200 with ``{"ok": false, "error": ...}`` for API
errors; channel *names* resolve to stable ``C…`` ids; ``ts`` strictly
increases).

Usage::

    with SlackStandIn(token="xoxb-test") as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        slack.plan(["429:2", "500", "stall:7", "ok"])   # the next four requests
        slack.fail_for(3.0, "500")                       # every request for 3 s
        ...
        slack.requests            # every request received (method, payload, ...)
        slack.parents("al_1")     # top-level messages about alert al_1
        slack.replies("al_1")     # thread replies about it

or, in a test module, ``from tests.slack_standin import slack_standin`` and
use the ``slack_standin`` fixture (a fresh server per test, closed after it).

Behaviours for :meth:`SlackStandIn.plan` / :meth:`SlackStandIn.fail_for`:

``ok``            answer normally
``429:N``         HTTP 429 with ``Retry-After: N`` (nothing posted)
``500`` … ``599`` that HTTP status with a non-JSON body, like a proxy (nothing posted)
``stall:S``       wait S seconds, then answer normally -- the message *is*
                  posted, as Slack would, even if the client gave up waiting
``drop``          close the connection without answering (nothing posted)
``stall-drop:S``  wait S seconds, then close the connection without answering
                  (nothing posted): a request lost on the way, so a client
                  that timed out can retry without making a duplicate
``error:CODE``    HTTP 200 ``{"ok": false, "error": CODE}`` (nothing posted)

Messages are tied to alerts by their ``metadata.event_payload.alert_id`` or,
failing that, by a block whose ``block_id`` starts with ``alert:``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

__all__ = ["Received", "Posted", "SlackStandIn", "slack_standin"]

STANDIN_TOKEN = "xoxb-standin-0000-not-a-real-token"


@dataclass
class Received:
    """One request as the stand-in saw it (the Authorization header is not kept)."""

    method: str  # API method, e.g. "chat.postMessage"
    payload: dict[str, Any]  # JSON body, or the form fields
    content_type: str
    authorized: bool
    at: float  # time.monotonic() when it arrived
    behaviour: str  # what the stand-in did with it: "ok", "429:2", ...


@dataclass
class Posted:
    """A message as it now stands in the stand-in's workspace."""

    channel: str  # channel id, e.g. "C1A2B3C4D5"
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    metadata: dict[str, Any] | None = None
    reply_broadcast: bool = False
    orphan: bool = False  # a reply whose thread_ts names no message (Slack accepts it, and hides it)
    edits: list[dict[str, Any]] = field(default_factory=list)  # earlier versions, oldest first
    options: dict[str, Any] = field(default_factory=dict)  # mrkdwn, parse, link_names, unfurl_*

    @property
    def alert_id(self) -> str | None:
        payload = (self.metadata or {}).get("event_payload") or {}
        if payload.get("alert_id"):
            return str(payload["alert_id"])
        for block in self.blocks or []:
            block_id = str(block.get("block_id", ""))
            if block_id.startswith("alert:"):
                return block_id.split(":", 2)[1]
        return None

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts


def channel_id(name: str) -> str:
    """Slack answers with channel ids; names map to a stable fake id, ids stay as they are."""
    bare = name.lstrip("#")
    if bare[:1] in ("C", "G", "D") and bare[1:].isalnum() and bare.isupper():
        return bare
    return "C" + hashlib.sha1(bare.encode()).hexdigest()[:10].upper()


class SlackStandIn:
    """The server. Thread-safe; start with ``start()`` or ``with``, stop with ``close()``."""

    def __init__(self, token: str = STANDIN_TOKEN, channels: list[str] | None = None):
        self.token = token
        #: channel ids that exist; None means every channel exists
        self.channels: set[str] | None = None if channels is None else {channel_id(c) for c in channels}
        self.requests: list[Received] = []
        self.messages: dict[tuple[str, str], Posted] = {}
        self._order: list[tuple[str, str]] = []
        self._plan: deque[tuple[str, str | None]] = deque()
        self._fail_until = 0.0
        self._fail_mode = "ok"
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._epoch = int(time.time())
        self._serial = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> SlackStandIn:
        standin = self

        class Handler(_Handler):
            owner = standin

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="slack-standin", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; stalled requests are woken and answered at once."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.wait_idle(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """What to give ``WebClient(base_url=...)``."""
        return f"http://127.0.0.1:{self.port}/api/"

    # -- scripting ----------------------------------------------------------

    def plan(self, behaviours: list[str], method: str | None = None) -> None:
        """Queue behaviours for the next requests (only those to ``method``, if given)."""
        with self._lock:
            for behaviour in behaviours:
                _check_behaviour(behaviour)
                self._plan.append((behaviour, method))

    def fail_for(self, seconds: float, mode: str = "500") -> None:
        """Answer every request with ``mode`` for the next ``seconds`` (a queued plan goes first)."""
        _check_behaviour(mode)
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_mode = mode

    def reset(self) -> None:
        """Forget the plan and any fail_for window (recorded traffic stays)."""
        with self._lock:
            self._plan.clear()
            self._fail_until = 0.0

    def delete_message(self, channel: str, ts: str) -> None:
        """As if someone deleted the message in Slack."""
        with self._lock:
            self.messages.pop((channel_id(channel), ts), None)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled (e.g. a stalled one has finished)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- inspection ---------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def posted(self, alert_id: str | None = None) -> list[Posted]:
        """Messages in the order they were first posted (updates change them in place)."""
        with self._lock:
            found = [self.messages[key] for key in self._order if key in self.messages]
        return [m for m in found if alert_id is None or m.alert_id == alert_id]

    def parents(self, alert_id: str | None = None) -> list[Posted]:
        return [m for m in self.posted(alert_id) if not m.is_reply]

    def replies(self, alert_id: str | None = None, thread_ts: str | None = None) -> list[Posted]:
        return [m for m in self.posted(alert_id) if m.is_reply and (thread_ts is None or m.thread_ts == thread_ts)]

    def count_messages(self, alert_id: str) -> int:
        return len(self.posted(alert_id))

    def count_parents(self, alert_id: str) -> int:
        """Unique deliveries of a new alert: should be 1 however often it was retried."""
        return len(self.parents(alert_id))

    def alert_ids(self) -> set[str]:
        return {m.alert_id for m in self.posted() if m.alert_id}

    def message(self, channel: str, ts: str) -> Posted:
        with self._lock:
            return self.messages[(channel_id(channel), ts)]

    # -- the API ------------------------------------------------------------

    def _next_behaviour(self, method: str) -> str:
        with self._lock:
            for i, (behaviour, only) in enumerate(self._plan):
                if only is None or only == method:
                    del self._plan[i]
                    return behaviour
            if time.monotonic() < self._fail_until:
                return self._fail_mode
            return "ok"

    def _api(self, method: str, payload: dict[str, Any], authorized_as: str | None) -> dict[str, Any]:
        if authorized_as is None:
            return {"ok": False, "error": "not_authed"}
        if authorized_as != self.token:
            return {"ok": False, "error": "invalid_auth"}
        if method == "auth.test":
            return {"ok": True, "url": "https://standin.slack.com/", "team": "Stand-in", "user": "creditwatch",
                    "team_id": "T0STANDIN", "user_id": "U0STANDIN", "bot_id": "B0STANDIN"}
        if method == "chat.postMessage":
            return self._post(payload)
        if method == "chat.update":
            return self._update(payload)
        return {"ok": False, "error": "unknown_method"}

    def _channel(self, payload: dict[str, Any]) -> str | None:
        raw = payload.get("channel")
        if not raw:
            return None
        cid = channel_id(str(raw))
        if self.channels is not None and cid not in self.channels:
            return None
        return cid

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not payload.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        cid = self._channel(payload)
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        blocks = _blocks(payload.get("blocks"))
        text = payload.get("text") or ""
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        with self._lock:
            self._serial += 1
            ts = f"{self._epoch}.{self._serial:06d}"
            thread_ts = payload.get("thread_ts") or None
            posted = Posted(
                channel=cid, ts=ts, text=text, blocks=blocks, thread_ts=str(thread_ts) if thread_ts else None,
                metadata=_json_field(payload.get("metadata")),
                reply_broadcast=_truthy(payload.get("reply_broadcast")),
                orphan=bool(thread_ts) and (cid, str(thread_ts)) not in self.messages,
                options={k: payload[k] for k in ("mrkdwn", "parse", "link_names", "unfurl_links", "unfurl_media")
                         if k in payload},
            )
            self.messages[(cid, ts)] = posted
            self._order.append((cid, ts))
        message = {"type": "message", "text": text, "blocks": blocks, "ts": ts, "bot_id": "B0STANDIN"}
        if posted.thread_ts:
            message["thread_ts"] = posted.thread_ts
        return {"ok": True, "channel": cid, "ts": ts, "message": message}

    def _update(self, payload: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel(payload)
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = str(payload.get("ts") or "")
        with self._lock:
            posted = self.messages.get((cid, ts))
            if posted is None:
                return {"ok": False, "error": "message_not_found"}
            posted.edits.append({"text": posted.text, "blocks": posted.blocks})
            if "text" in payload:
                posted.text = payload.get("text") or ""
            if "blocks" in payload:
                posted.blocks = _blocks(payload.get("blocks"))
            if "metadata" in payload:
                posted.metadata = _json_field(payload.get("metadata"))
            text = posted.text
            blocks = posted.blocks
        return {"ok": True, "channel": cid, "ts": ts, "text": text,
                "message": {"type": "message", "text": text, "blocks": blocks, "ts": ts}}


def _check_behaviour(behaviour: str) -> None:
    kind, _, arg = behaviour.partition(":")
    if kind in ("ok", "drop") and not arg:
        return
    if kind == "429" and (not arg or arg.isdigit()):
        return
    if kind.isdigit() and 500 <= int(kind) <= 599 and not arg:
        return
    if kind in ("stall", "stall-drop") and arg:
        float(arg)
        return
    if kind == "error" and arg:
        return
    raise ValueError(f"unknown stand-in behaviour {behaviour!r}")


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def _json_field(value: Any) -> Any:
    """Form bodies carry blocks/metadata as JSON strings; JSON bodies as structures."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _blocks(value: Any) -> list[dict[str, Any]]:
    parsed = _json_field(value)
    return parsed if isinstance(parsed, list) else []


class _Handler(BaseHTTPRequestHandler):
    owner: SlackStandIn
    protocol_version = "HTTP/1.1"
    server_version = "SlackStandIn/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access logs
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._reply(405, b"POST only", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        owner = self.owner
        with owner._idle:
            owner._in_flight += 1
        try:
            self._handle(owner)
        finally:
            with owner._idle:
                owner._in_flight -= 1
                owner._idle.notify_all()

    def _handle(self, owner: SlackStandIn) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        payload = _parse_body(raw, content_type)
        query = parse_qs(self.path.split("?", 1)[1]) if "?" in self.path else {}
        for key, values in query.items():
            payload.setdefault(key, values[-1])
        auth = self.headers.get("Authorization", "")
        token: str | None = auth[7:] if auth.startswith("Bearer ") else None
        if token is None and payload.get("token"):
            token = str(payload.pop("token"))
        payload.pop("token", None)
        method = path[len("/api/"):] if path.startswith("/api/") else path
        behaviour = owner._next_behaviour(method)
        with owner._lock:
            owner.requests.append(Received(method, payload, content_type, token == owner.token,
                                           time.monotonic(), behaviour))
        if not path.startswith("/api/"):
            self._reply(404, b"not found", "text/plain")
            return
        kind, _, arg = behaviour.partition(":")
        if kind == "stall-drop":
            owner._closing.wait(float(arg))
            kind = "drop"
        if kind == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if kind == "429":
            self._reply(429, json.dumps({"ok": False, "error": "ratelimited"}).encode(), "application/json",
                        {"Retry-After": arg or "1"})
            return
        if kind.isdigit():
            self._reply(int(kind), b"<html><body>upstream error</body></html>", "text/html")
            return
        if kind == "error":
            self._reply_json({"ok": False, "error": arg})
            return
        if kind == "stall":
            owner._closing.wait(float(arg))
        self._reply_json(owner._api(method, payload, token))

    def _reply_json(self, body: dict[str, Any]) -> None:
        self._reply(200, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) before we answered
            self.close_connection = True


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw:
        return {}
    text = raw.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            parsed = json.loads(text)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    if "multipart/form-data" in content_type:
        return _parse_multipart(raw, content_type)
    return {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}


def _parse_multipart(raw: bytes, content_type: str) -> dict[str, Any]:
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = part.get_payload(decode=True).decode("utf-8", "replace")
    return fields


@pytest.fixture
def slack_standin() -> Iterator[SlackStandIn]:
    """A fresh stand-in per test, token :data:`STANDIN_TOKEN`; closed afterwards."""
    with SlackStandIn() as standin:
        yield standin
