"""Alerts to Slack: one Block Kit message per alert, its story told in the thread.

A new alert becomes a *parent* message in the channel its severity routes to;
:meth:`SlackSink.deliver` (alias ``send``, the outbox's ``RichSink`` method)
returns the reference of the alert's *current* parent -- ``channel`` and ``ts``,
repeated as ``slack_channel``/``slack_ts`` -- for the outbox to store. Later
deliveries about the same alert come back with those refs (the newest one
wins) and

* escalate / reopen: the parent is rewritten (``chat.update``) to show the new
  severity, then a reply is posted in its thread (broadcast to the channel).
  If the new severity routes to another channel, the old parent is rewritten to
  say so and a new parent is posted there instead (its refs are returned);
* status change (acknowledged, resolved, false positive): the parent is
  rewritten to show the status, then a reply says who did it and why;
* no refs (the parent was never posted, or failed for good) or the parent was
  deleted: a new parent is posted, showing the alert as it now stands.

Each delivery makes at most one call that is not idempotent (a post), and
makes it last: a delivery that failed part-way can be retried without
duplicating anything -- except when the post itself timed out after Slack had
received it, which no Slack API can tell us (at-least-once).

Text from events (customer names, titles, reasons, notes) only ever goes into
``plain_text`` objects, which Slack never parses for mentions, links or
formatting. The one mrkdwn field, the notification fallback ``text``, is
escaped (``&``, ``<``, ``>``), has its formatting characters fenced with
zero-width spaces, and is sent with ``mrkdwn=false``, ``parse="none"``,
``link_names=false``.

Failures become :class:`SinkError`: ``retry_after`` from a 429's
``Retry-After``, ``permanent=True`` for what no retry can fix (bad token,
missing channel or scope, rejected payload). ``slack_sdk`` retries a few times
inside one call (rate limit, 5xx, timeouts and dropped connections); the
outbox retries across calls with backoff.

The token lives only in the ``WebClient``: ``repr(sink)`` hides it, and the
client logs through ``creditwatch.sinks.slack.http``, which is set to INFO
(``slack_sdk`` dumps requests and responses at DEBUG) and redacts the token
should anyone turn DEBUG on anyway.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import RemoteDisconnected
from typing import Any, ClassVar
from urllib.error import URLError
from urllib.parse import quote, urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    HttpRequest,
    HttpResponse,
    Jitter,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from detectors.base import SEVERITY_RANK
from sinks.base import SinkError, register_sink

log = logging.getLogger("creditwatch.sinks.slack")

SEVERITIES = tuple(sorted(SEVERITY_RANK, key=SEVERITY_RANK.__getitem__))  # info, warning, critical
SEVERITY_EMOJI = {"info": "\N{LARGE BLUE CIRCLE}", "warning": "\N{LARGE ORANGE CIRCLE}",
                  "critical": "\N{LARGE RED CIRCLE}"}
STATUS_WORDS = {"open": "Open", "acknowledged": "Acknowledged", "resolved": "Resolved",
                "false_positive": "False positive"}
STATUS_EMOJI = {"open": "\N{BELL}", "acknowledged": "\N{EYES}", "resolved": "\N{WHITE HEAVY CHECK MARK}",
                "false_positive": "\N{NO ENTRY SIGN}"}

#: Slack errors that no retry can fix.
PERMANENT_ERRORS = frozenset({
    "not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "no_permission",
    "missing_scope", "not_allowed_token_type", "org_login_required", "ekm_access_denied",
    "team_access_not_granted", "two_factor_setup_required", "access_denied", "method_deprecated",
    "deprecated_endpoint", "channel_not_found", "is_archived", "not_in_channel", "restricted_action",
    "restricted_action_read_only_channel", "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel", "cannot_reply_to_message", "as_user_not_supported",
    "msg_too_long", "no_text", "too_many_attachments", "invalid_blocks", "invalid_blocks_format",
    "invalid_arguments", "invalid_arg_name", "invalid_array_arg", "invalid_charset", "invalid_form_data",
    "invalid_post_type", "missing_post_type", "invalid_metadata_format", "invalid_metadata_schema",
    "metadata_too_large", "metadata_must_be_sent_from_app", "invalid_json", "json_not_object",
    "unknown_method", "app_missing_action_url",
})
#: chat.update errors meaning the parent message is gone (post a new one).
PARENT_GONE = frozenset({"message_not_found", "thread_not_found", "channel_not_found", "is_archived",
                         "not_in_channel"})
#: chat.update errors meaning the parent exists but can no longer be edited (just reply).
PARENT_FROZEN = frozenset({"cant_update_message", "edit_window_closed"})

# -- logging: never the token, never slack_sdk's DEBUG dumps unless someone asks --------

HTTP_LOGGER_NAME = "creditwatch.sinks.slack.http"


class _Redactor(logging.Filter):
    """Replaces every known token in a record's message with ``xoxb-***``."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "xoxb-***")
                record.msg, record.args = message, None
        return True


_REDACTOR = _Redactor()
_http_log = logging.getLogger(HTTP_LOGGER_NAME)
if _http_log.level == logging.NOTSET:
    # slack_sdk logs whole requests and responses when its logger's *own* level
    # is <= DEBUG, which NOTSET (0) is. Pin it so that root DEBUG does not switch it on.
    _http_log.setLevel(logging.INFO)
_http_log.addFilter(_REDACTOR)


# -- retries inside one call -----------------------------------------------------------

class _SmallJitter(Jitter):
    """Up to +25 %: spreads retries without slack_sdk's default extra second."""

    def recalculate(self, duration: float) -> float:
        return duration * (1 + random.random() / 4)


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) and value else value
            try:
                seconds = float(raw)
            except (TypeError, ValueError):
                return None
            return max(seconds, 0.0)
    return None


class _RateLimitHandler(RateLimitErrorRetryHandler):
    """Honours Retry-After inside the call only when the wait is short; a long one goes back to the outbox."""

    def __init__(self, max_retry_count: int, max_wait: float):
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(self, *, state: RetryState, request: HttpRequest, response: HttpResponse | None = None,
                   error: Exception | None = None) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = _retry_after(response.headers)
        return (wait if wait is not None else 1.0) <= self.max_wait

    def prepare_for_next_attempt(self, *, state: RetryState, request: HttpRequest,
                                 response: HttpResponse | None = None, error: Exception | None = None) -> None:
        if response is None:  # pragma: no cover - _can_retry needs a response
            raise error  # type: ignore[misc]
        state.next_attempt_requested = True
        wait = _retry_after(response.headers)
        time.sleep((1.0 if wait is None else wait) + random.random() / 4)
        state.increment_current_attempt()


class _ServerErrorHandler(ServerErrorRetryHandler):
    """Also retries 502 and 504, which proxies in front of Slack answer."""

    def _can_retry(self, *, state: RetryState, request: HttpRequest, response: HttpResponse | None = None,
                   error: Exception | None = None) -> bool:
        return response is not None and response.status_code in (500, 502, 503, 504)


def retry_handlers(retries: int, backoff: float = 0.25, max_rate_limit_wait: float = 10.0) -> list[RetryHandler]:
    """slack_sdk's three handlers, sharing one budget of ``retries`` extra attempts per call."""
    interval = BackoffRetryIntervalCalculator(backoff_factor=backoff, jitter=_SmallJitter())
    return [
        _RateLimitHandler(retries, max_rate_limit_wait),
        _ServerErrorHandler(max_retry_count=retries, interval_calculator=interval),
        ConnectionErrorRetryHandler(
            max_retry_count=retries,
            interval_calculator=interval,
            # read timeouts surface as TimeoutError, not URLError: retry those too
            error_types=[URLError, ConnectionError, RemoteDisconnected, TimeoutError, socket.timeout],
        ),
    ]


# -- text: event-derived strings never reach a parser ----------------------------------

ZWSP = "\u200b"
_FENCED = {c: f"{ZWSP}{c}{ZWSP}" for c in "*_~`"}
_FENCED.update({"&": "&amp;", "<": "&lt;", ">": "&gt;", "@": f"@{ZWSP}"})
_MRKDWN_TABLE = str.maketrans(_FENCED)


def mrkdwn_escape(text: Any) -> str:
    """Text for a mrkdwn field that shows literally: no mention, link or formatting can survive.

    ``&``, ``<``, ``>`` become entities (so ``<!channel>``, ``<@U1>``, ``<http://x|y>`` are
    inert), ``*_~``\\` are fenced by zero-width spaces on both sides (so they can neither
    open nor close a span), and ``@`` is followed by one (so ``@here`` is no keyword).
    """
    return str(text).translate(_MRKDWN_TABLE)


def plain(text: Any, limit: int = 3000) -> dict[str, Any]:
    """A plain_text object: never parsed for mentions, links, markup or ``:emoji:`` codes."""
    value = str(text) if text is not None else ""
    return {"type": "plain_text", "text": _clip(value or " ", limit), "emoji": False}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def number(value: Any) -> str:
    """52000.0 → ``52,000``; 1234.5 → ``1,234.50``; 0.8123 → ``0.812``."""
    if value is None:
        return "n/a"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if abs(x) >= 1:
        return f"{x:,.2f}"
    return f"{x:.3g}"


def severity_label(severity: str) -> str:
    return f"{SEVERITY_EMOJI.get(severity, chr(0x26AA))} {severity.replace('_', ' ').capitalize()}"


def status_label(status: str) -> str:
    return f"{STATUS_EMOJI.get(status, '')} {STATUS_WORDS.get(status, status.replace('_', ' ').capitalize())}".strip()


# -- what the outbox hands us ----------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    alert: dict[str, Any]
    change: str
    revision: int
    refs: dict[str, Any]
    from_status: str | None = None
    to_status: str | None = None
    by: str | None = None
    note: str | None = None

    @property
    def alert_id(self) -> str:
        return str(self.alert["alert_id"])

    @property
    def severity(self) -> str:
        return str(self.alert.get("severity") or "info")

    @property
    def status(self) -> str:
        return str(self.to_status or self.alert.get("status") or "open")

    @property
    def parent(self) -> tuple[str, str] | None:
        channel, ts = self.refs.get("slack_channel"), self.refs.get("slack_ts")
        return (str(channel), str(ts)) if channel and ts else None


def _job(delivery: Any) -> _Job:
    """What to do, from a ``sinks.outbox.Delivery``, a Delivery-like object, or a bare AlertUpdate.

    ``sinks.outbox.Delivery``: ``kind`` is ``alert`` (``change`` raised | escalated |
    reopened) or ``status_change`` (``change`` is the new status, ``status_change``
    the history entry: by, from_status, to_status, note); ``refs`` is the tuple of
    references this sink returned before, oldest first. Delivery-like objects may
    instead carry ``change="status_change"``, ``from_status``/``to_status``/``by``/
    ``note`` attributes and ``refs`` as one dict. An AlertUpdate is a new alert.
    """
    alert = getattr(delivery, "alert", None)
    if not isinstance(alert, Mapping) or "alert_id" not in alert:
        raise SinkError(f"slack: cannot deliver {type(delivery).__name__}: no alert with an alert_id", permanent=True)
    kind = getattr(delivery, "kind", None)
    change = str(getattr(delivery, "change", None) or "raised")
    entry = getattr(delivery, "status_change", None)
    entry = entry if isinstance(entry, Mapping) else {}
    to_status = getattr(delivery, "to_status", None) or entry.get("to_status")
    if kind == "status_change" or change == "status_change":
        to_status = to_status or (change if change != "status_change" else None) or alert.get("status")
        change = "status_change"
    revision = getattr(delivery, "revision", None) or alert.get("revision") or 1
    return _Job(
        alert=dict(alert),
        change=change,
        revision=int(revision),
        refs=_current_parent(getattr(delivery, "refs", None)),
        from_status=getattr(delivery, "from_status", None) or entry.get("from_status"),
        to_status=to_status,
        by=getattr(delivery, "by", None) or entry.get("by"),
        note=getattr(delivery, "note", None) or entry.get("note"),
    )


def _current_parent(refs: Any) -> dict[str, str]:
    """The parent message to thread under: the newest reference naming one (each delivery returns the current parent)."""
    candidates = [refs] if isinstance(refs, Mapping) else list(refs or ())
    for ref in reversed(candidates):
        if not isinstance(ref, Mapping):
            continue
        channel = ref.get("slack_channel") or ref.get("channel")
        ts = ref.get("slack_ts") or ref.get("ts")
        if channel and ts:
            return {"slack_channel": str(channel), "slack_ts": str(ts)}
    return {}


# -- the sink ------------------------------------------------------------------------

class _ParentGone(Exception):
    pass


@register_sink
class SlackSink:
    """Posts alerts to Slack; see the module docstring for the message lifecycle.

    ``channels`` maps severities (``info``, ``warning``, ``critical``) to channels
    (ids such as ``C0123ABCD`` or names such as ``#credit-alerts``) with a
    ``default`` for the rest; a plain string is one channel for everything.
    ``review_url`` is a template such as ``http://host:8000/alerts/{alert_id}``.
    ``retries`` extra attempts per call (shared by rate limits, 5xx and
    timeouts); Retry-After waits longer than ``max_rate_limit_wait`` are not
    slept through but returned as ``SinkError.retry_after``.
    """

    name: ClassVar[str] = "slack"
    required_options: ClassVar[tuple[str, ...]] = ("token", "channels")

    def __init__(
        self,
        token: str,
        channels: Mapping[str, str] | str,
        base_url: str | None = None,
        review_url: str | None = None,
        timeout: float = 5,
        retries: int = 2,
        *,
        backoff: float = 0.25,
        max_rate_limit_wait: float = 10.0,
        broadcast_escalations: bool = True,
        proxy: str | None = None,
    ):
        if not token or not isinstance(token, str):
            raise ValueError("SlackSink: a bot token is required (CREDITWATCH_SLACK_BOT_TOKEN)")
        self.channels = _check_channels(channels)
        self.base_url = base_url or WebClient.BASE_URL
        self.review_url = review_url
        self.timeout = timeout
        self.retries = retries
        self.broadcast_escalations = broadcast_escalations
        _REDACTOR.secrets.add(token)
        self._client = WebClient(
            token=token,
            base_url=self.base_url,
            timeout=timeout,  # type: ignore[arg-type] - urllib takes floats
            proxy=proxy,
            logger=_http_log,
            retry_handlers=retry_handlers(retries, backoff, max_rate_limit_wait),
        )
        if proxy is None and _is_loopback(self.base_url):
            self._client.proxy = None  # an HTTP(S)_PROXY from the environment must not catch 127.0.0.1
        #: configured channel → the id Slack answered with (learned as we post)
        self._channel_ids: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> SlackSink:
        """From ``pipeline.config.Settings``: ``slack_bot_token`` and ``slack_channel`` (see :func:`parse_channels`)."""
        options.setdefault("base_url", getattr(settings, "slack_base_url", "") or None)
        options.setdefault("review_url", getattr(settings, "review_url", None))
        return cls(settings.slack_bot_token, parse_channels(settings.slack_channel or "#credit-alerts"), **options)

    def __repr__(self) -> str:
        return (f"SlackSink(channels={self.channels!r}, base_url={self.base_url!r}, "
                f"review_url={self.review_url!r}, timeout={self.timeout!r}, retries={self.retries!r}, token='***')")

    __str__ = __repr__

    # -- public --------------------------------------------------------------

    def channel_for(self, severity: str) -> str:
        return self.channels.get(severity) or self.channels["default"]

    def verify(self) -> dict[str, Any]:
        """``auth.test``: who the token is, or SinkError (permanent when the token is bad)."""
        response = self._call("auth.test", self._client.auth_test)
        return {key: response.get(key) for key in ("team", "team_id", "user", "user_id", "bot_id")}

    def deliver(self, delivery: Any) -> dict[str, str] | None:
        """Deliver one alert update; returns the refs to store, or raises SinkError.

        Takes a ``sinks.outbox.Delivery`` (or anything shaped like one) or a bare
        ``AlertUpdate``; see :func:`_job`.
        """
        job = _job(delivery)
        route = self.channel_for(job.severity)
        parent = job.parent
        if parent is None:
            return self._post_parent(job, route)
        try:
            if job.change == "raised":
                # already posted (a redelivery): make the parent current, post nothing
                self._update_parent(job, parent)
                return _refs(parent)
            if job.change in ("escalated", "reopened") and self._moves(parent[0], job.severity, route):
                self._update_parent(job, parent, moved_to=route)
                return self._post_parent(job, route)
            self._update_parent(job, parent)
        except _ParentGone:
            log.info("slack parent of %s is gone; posting a new one", job.alert_id)
            return self._post_parent(job, route)
        self._post_reply(job, parent)
        return _refs(parent)

    #: ``sinks.outbox.RichSink``: the outbox calls ``send`` with the whole Delivery (status changes included)
    send = deliver

    # -- steps ---------------------------------------------------------------

    def _post_parent(self, job: _Job, channel: str) -> dict[str, str]:
        response = self._call(
            "chat.postMessage", self._client.chat_postMessage,
            channel=channel, text=self._fallback(job), blocks=self._parent_blocks(job),
            metadata=self._metadata(job), **_INERT,
        )
        posted = (str(response["channel"]), str(response["ts"]))
        self._channel_ids[channel] = posted[0]
        return _refs(posted)

    def _update_parent(self, job: _Job, parent: tuple[str, str], moved_to: str | None = None) -> None:
        try:
            self._call(
                "chat.update", self._client.chat_update,
                channel=parent[0], ts=parent[1], text=self._fallback(job),
                blocks=self._parent_blocks(job, moved_to=moved_to), metadata=self._metadata(job),
                parse="none", link_names=False,
            )
        except SinkError as problem:
            code = getattr(problem, "slack_error", None)
            if code in PARENT_GONE:
                raise _ParentGone from None
            if code in PARENT_FROZEN:
                log.info("slack parent of %s cannot be edited (%s); replying only", job.alert_id, code)
                return
            raise

    def _post_reply(self, job: _Job, parent: tuple[str, str]) -> None:
        broadcast = self.broadcast_escalations and job.change in ("escalated", "reopened")
        self._call(
            "chat.postMessage", self._client.chat_postMessage,
            channel=parent[0], thread_ts=parent[1], reply_broadcast=broadcast or None,
            text=self._reply_fallback(job), blocks=self._reply_blocks(job), metadata=self._metadata(job), **_INERT,
        )

    def _moves(self, parent_channel: str, severity: str, route: str) -> bool:
        """Does an escalation to ``severity`` belong in another channel than the parent's?"""
        known = self._channel_ids.get(route) or (route if _looks_like_id(route) else None)
        if known is not None:
            return known != parent_channel
        # A channel name we have not posted to since start-up: decide from the routes.
        # The parent was posted at a lower severity (escalations and reopens only go up);
        # if the new route is one of those lower routes, the parent may well be there already.
        lower = {self.channel_for(s) for s in SEVERITIES if SEVERITY_RANK[s] < SEVERITY_RANK.get(severity, 0)}
        return bool(lower) and route not in lower

    # -- calling Slack -------------------------------------------------------

    def _call(self, method: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except SlackApiError as problem:
            raise _api_error(method, problem) from None
        except (TimeoutError, socket.timeout):
            raise SinkError(f"slack {method}: no answer within {self.timeout}s") from None
        except (URLError, ConnectionError, RemoteDisconnected, OSError) as problem:
            reason = getattr(problem, "reason", None) or problem
            raise SinkError(f"slack {method}: cannot reach Slack ({type(reason).__name__}: {reason})") from None
        except SlackClientError as problem:  # e.g. SlackRequestError: we built a bad request
            raise SinkError(f"slack {method}: {type(problem).__name__}: {problem}", permanent=True) from None
        except Exception as problem:  # noqa: BLE001 - a sink turns every failure into SinkError
            raise SinkError(f"slack {method}: {type(problem).__name__}: {problem}") from None

    # -- message content -----------------------------------------------------

    def _review_link(self, job: _Job) -> str | None:
        if not self.review_url:
            return None
        return self.review_url.format(alert_id=quote(job.alert_id, safe=""),
                                      customer_id=quote(str(job.alert.get("customer_id", "")), safe=""))

    def _metadata(self, job: _Job) -> dict[str, Any]:
        return {"event_type": "creditwatch_alert",
                "event_payload": {"alert_id": job.alert_id, "revision": job.revision, "change": job.change,
                                  "severity": job.severity, "status": job.status}}

    def _parent_blocks(self, job: _Job, moved_to: str | None = None) -> list[dict[str, Any]]:
        alert, aid = job.alert, job.alert_id
        fields = []
        if alert.get("customer_name"):
            fields.append(plain(f"Customer: {alert['customer_name']}", 2000))
        fields.append(plain(f"Customer ID: {alert.get('customer_id', '?')}", 2000))
        fields.append(plain(f"Severity: {severity_label(job.severity)}", 2000))
        status = status_label(job.status)
        if job.to_status and job.by:
            status += f" (by {job.by})"
        fields.append(plain(f"Status: {status}", 2000))
        if alert.get("score") is not None:
            fields.append(plain(f"Score: {number(alert['score'])}", 2000))
        if alert.get("detector"):
            fields.append(plain(f"Detector: {alert['detector']}", 2000))
        blocks: list[dict[str, Any]] = [
            {"type": "header", "block_id": f"alert:{aid}:header",
             "text": plain(_one_line(f"{severity_label(job.severity)}: {alert.get('title') or 'Credit alert'}"), 150)},
            {"type": "section", "block_id": f"alert:{aid}:facts", "fields": fields},
        ]
        blocks += self._reason_blocks(job)
        if moved_to is not None:
            blocks.append({"type": "context", "block_id": f"alert:{aid}:moved", "elements": [plain(
                f"{_change_line(job)} — continued in {moved_to}")]})
        elif job.change in ("escalated", "reopened"):
            blocks.append({"type": "context", "block_id": f"alert:{aid}:change",
                           "elements": [plain(_change_line(job))]})
        link = self._review_link(job)
        if link:
            blocks.append({"type": "actions", "block_id": f"alert:{aid}:actions", "elements": [{
                "type": "button", "action_id": "creditwatch_review", "text": plain("Review alert", 75),
                "url": link, **({"style": "danger"} if job.severity == "critical" else {}),
            }]})
        blocks.append({"type": "context", "block_id": f"alert:{aid}:ids", "elements": [plain(
            f"Alert {aid} · revision {job.revision} · raised {alert.get('raised_at', '?')}")]})
        return blocks

    def _reason_blocks(self, job: _Job, limit: int = 10) -> list[dict[str, Any]]:
        reasons = [r for r in job.alert.get("reasons") or [] if isinstance(r, Mapping)]
        blocks = []
        for i, reason in enumerate(reasons[:limit]):
            line = f"\N{BULLET} {reason.get('message') or reason.get('code') or 'reason'}"
            numbers = []
            if reason.get("value") is not None:
                numbers.append(f"value {number(reason['value'])}")
            if reason.get("threshold") is not None:
                numbers.append(f"threshold {number(reason['threshold'])}")
            if numbers:
                line += f" ({', '.join(numbers)})"
            blocks.append({"type": "section", "block_id": f"alert:{job.alert_id}:reason:{i}", "text": plain(line)})
        if len(reasons) > limit:
            blocks.append({"type": "context", "block_id": f"alert:{job.alert_id}:more",
                           "elements": [plain(f"and {len(reasons) - limit} more reasons")]})
        return blocks

    def _reply_blocks(self, job: _Job) -> list[dict[str, Any]]:
        aid = job.alert_id
        if job.change in ("escalated", "reopened"):
            blocks = [{"type": "section", "block_id": f"alert:{aid}:reply",
                       "text": plain(f"{_change_line(job)}: {job.alert.get('title') or ''}")}]
            blocks += self._reason_blocks(job)
        elif job.change == "status_change" or job.to_status:
            line = f"{status_label(job.status)}"
            if job.by:
                line += f" by {job.by}"
            if job.from_status:
                line += f" (was {STATUS_WORDS.get(job.from_status, job.from_status)})"
            blocks = [{"type": "section", "block_id": f"alert:{aid}:reply", "text": plain(line)}]
            if job.note:
                blocks.append({"type": "section", "block_id": f"alert:{aid}:note", "text": plain(f"Note: {job.note}")})
        else:
            blocks = [{"type": "section", "block_id": f"alert:{aid}:reply",
                       "text": plain(f"Updated ({job.change}), revision {job.revision}")}]
        return blocks

    def _fallback(self, job: _Job) -> str:
        alert = job.alert
        who = alert.get("customer_name") or alert.get("customer_id", "?")
        text = (f"{severity_label(job.severity)} credit alert: {_one_line(alert.get('title') or '')} "
                f"({_one_line(who)}, {alert.get('customer_id', '?')}) [{STATUS_WORDS.get(job.status, job.status)}]")
        return mrkdwn_escape(_clip(text, 3000))

    def _reply_fallback(self, job: _Job) -> str:
        if job.change in ("escalated", "reopened"):
            text = f"{_change_line(job)}: {_one_line(job.alert.get('title') or '')}"
        else:
            text = f"{status_label(job.status)}" + (f" by {job.by}" if job.by else "")
        return mrkdwn_escape(_clip(text, 3000))


#: post options that stop Slack from turning anything in ``text`` into a mention, link or markup
_INERT: dict[str, Any] = {"mrkdwn": False, "parse": "none", "link_names": False,
                          "unfurl_links": False, "unfurl_media": False}


def _change_line(job: _Job) -> str:
    verb = {"escalated": "\N{UPWARDS BLACK ARROW} Escalated to", "reopened": "\N{ANTICLOCKWISE OPEN CIRCLE ARROW} Reopened at"}
    return f"{verb.get(job.change, 'Now')} {severity_label(job.severity)} (revision {job.revision})"


def _refs(posted: tuple[str, str]) -> dict[str, str]:
    """The reference to store. ``channel``/``ts`` is what ``sinks.store`` copies onto the alert;
    ``slack_channel``/``slack_ts`` the same under the names the alert itself uses."""
    return {"channel": posted[0], "ts": posted[1], "slack_channel": posted[0], "slack_ts": posted[1]}


def _api_error(method: str, problem: SlackApiError) -> SinkError:
    response = problem.response
    status = getattr(response, "status_code", None)
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, Mapping) else None
    if status == 429:
        wait = _retry_after(getattr(response, "headers", None))
        error = SinkError(f"slack {method}: rate limited (retry after {wait}s)", retry_after=wait)
    elif status is not None and status >= 500:
        error = SinkError(f"slack {method}: HTTP {status} from Slack")
    elif code in PERMANENT_ERRORS or (status is not None and 400 <= status < 500 and status != 408):
        error = SinkError(f"slack {method}: {code or 'rejected'} (HTTP {status})", permanent=True)
    else:
        error = SinkError(f"slack {method}: {code or 'failed'} (HTTP {status})")
    error.slack_error = code  # type: ignore[attr-defined]
    return error


def _check_channels(channels: Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(channels, str):
        channels = {"default": channels}
    routes = {str(k).strip().lower(): str(v).strip() for k, v in dict(channels).items() if v and str(v).strip()}
    unknown = set(routes) - {"default", *SEVERITIES}
    if unknown:
        raise ValueError(f"SlackSink: unknown severities in channels: {', '.join(sorted(unknown))} "
                         f"(use default, {', '.join(SEVERITIES)})")
    if "default" not in routes:
        if not all(s in routes for s in SEVERITIES):
            raise ValueError("SlackSink: channels needs a 'default' channel, or one for each of "
                             f"{', '.join(SEVERITIES)}")
        routes["default"] = routes["warning"]
    return routes


def parse_channels(spec: str) -> dict[str, str]:
    """``#credit-alerts`` or ``critical=#credit-critical,#credit-alerts`` → a channels mapping."""
    routes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if sep:
            routes[key.strip().lower()] = value.strip()
        else:
            routes["default"] = item
    if not routes:
        raise ValueError("SlackSink: no Slack channel configured (CREDITWATCH_SLACK_CHANNEL)")
    return _check_channels(routes)


def _looks_like_id(channel: str) -> bool:
    """``C0123ABCD`` (public), ``G…`` (private), ``D…`` (DM): what Slack answers with."""
    return len(channel) >= 9 and channel[0] in "CGD" and channel.isalnum() and channel.isupper()


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")
