"""The bytes of a customer's record in the changelog: a compact, versioned codec.

The worker writes one record per customer per batch to its Table's changelog
(``pipeline.engine.encode_record``), so the record is both stored (state size
per customer, BENCHMARKS.md) and encoded on the hot path. The first byte says
how the rest is written:

``{`` (0x7B)
    the original format: the JSON of ``{"l": state_to_dict(ledger), "r":
    risk.to_json()}``. Still decoded, so that a worker upgraded in place reads
    the changelog its predecessor wrote.
0x01
    layout 1 (below) as compact JSON, compressed by zstd (level 1, checksum)
    with preset dictionary 1 (``pipeline/codec_dict.py``).

Layout 1 holds the same facts as ``state_to_dict`` without the repetition that
makes it large: positional columns instead of one object per invoice and
payment; timestamps as epoch seconds, each the difference from the one before
it in its column; dates as day numbers relative to a date next to them (issued
or received on the event's day, due after the terms); the customer's currency
omitted; an event id remembered in ``seen`` written once and referred to by
its position there, a payment's invoice by its position among the invoices;
empty corrections and default profile and lifetime fields omitted. Money is
the Decimal's text (exact, exponent included). A value that fits no shortcut
(a timestamp that is not canonical UTC text, an unknown invoice) is written as
it is, so every state round-trips exactly: equal facts, the same order of
invoices, payments and seen ids. The risk part (alert book, detector memory,
model state) is the JSON its owner gives (``RiskState.to_json``).

``W`` (0x57)
    a wake-up header in front of a record in any of the formats above: three
    unsigned 4-byte big-endian numbers, the day (ordinal) the record was
    written, the first day after it on which time alone can change the
    customer's alerts (``RiskEngine.next_wake``; 0 for none) and a key of what
    that day was computed with (``streams.runtime.wake_key``), then the record.
    The worker writes it (``with_wake``) so that after a rebalance it can
    rebuild its wake-up schedule from the table without decoding every record
    (``wake_of``); ``decode`` skips it.

A released format byte and dictionary never change meaning: a new layout or
dictionary gets a new format byte, and every released one stays decodable
(``tests/test_codec.py`` pins the dictionaries' digests and decodes records
written by each format).
"""

from __future__ import annotations

import json
import struct
import threading
from collections import deque
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Callable

import orjson
import zstandard

from pipeline.codec_dict import dictionary_bytes
from pipeline.ledger import (
    CustomerState,
    Invoice,
    Lifetime,
    Payment,
    Profile,
    Promise,
    state_from_dict,
)

LEGACY_JSON = 0x7B  # "{"
FORMAT_V1 = 0x01
CURRENT = FORMAT_V1
WAKE_HEADER = 0x57  # "W"
_WAKE = struct.Struct(">BIII")

#: format byte -> (layout, preset dictionary id)
FORMATS: dict[int, tuple[int, int]] = {FORMAT_V1: (1, 1)}
LEVEL = 1  # zstd; with the dictionary, level 1 is as small as level 3 here and the fastest

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_PROFILE_FIELDS: tuple[str, ...] = Profile.__slots__  # type: ignore[attr-defined]
_LIFETIME_FIELDS: tuple[str, ...] = Lifetime.__slots__  # type: ignore[attr-defined]
_PROFILE_DEFAULTS = {name: getattr(Profile(), name) for name in _PROFILE_FIELDS}
_LIFETIME_DEFAULTS = {name: getattr(Lifetime(), name) for name in _LIFETIME_FIELDS}


class CodecError(ValueError):
    """Bytes that are not a customer record this version can read."""


# --- scalars -------------------------------------------------------------------


_TS_SEEN: dict[str, int | None] = {}  # text -> _ts(text): a record's stamps are converted again at every write
_TS_SEEN_MAX = 1 << 17


def _ts(text: str) -> int | None:
    """Epoch seconds for canonical UTC ISO text ("2025-05-26T09:00:00+00:00"), else None (remembered)."""
    found = _TS_SEEN.get(text, _TS_SEEN)
    if found is not _TS_SEEN:
        return found  # type: ignore[return-value]
    if len(_TS_SEEN) >= _TS_SEEN_MAX:
        _TS_SEEN.clear()
    found = _TS_SEEN[text] = _ts_parse(text)
    return found


def _ts_parse(text: str) -> int | None:
    """Epoch seconds for canonical UTC ISO text ("2025-05-26T09:00:00+00:00"), else None.

    The separators pin the layout (no week dates, no decimal commas), the
    parser checks the digits and ranges, so ``_ts_text`` gives the text back.
    """
    if (len(text) != 25 or text[19:] != "+00:00" or text[10] != "T" or text[4] != "-" or text[7] != "-"
            or text[13] != ":" or text[16] != ":" or text[11:13] == "24"):
        return None
    try:
        delta = datetime.fromisoformat(text) - _EPOCH
    except ValueError:
        return None
    return delta.days * 86400 + delta.seconds


_DAY_TEXT: dict[int, str] = {}  # day number -> "YYYY-MM-DD"; one entry per distinct day, so bounded in practice
_HOUR_MINUTE = [f"T{hour:02d}:{minute:02d}:" for hour in range(24) for minute in range(60)]
_SECOND = [f"{second:02d}+00:00" for second in range(60)]


def _ts_text(seconds: int) -> str:
    days, second_of_day = divmod(seconds, 86400)
    day = _DAY_TEXT.get(days)
    if day is None:
        day = _DAY_TEXT[days] = date.fromordinal(days + _EPOCH_DAY).isoformat()
        if len(_DAY_TEXT) > 100_000:
            _DAY_TEXT.clear()
    minute, second = divmod(second_of_day, 60)
    return day + _HOUR_MINUTE[minute] + _SECOND[second]


class _NonFinite(float):
    """A NaN or infinite float of a ledger fact: orjson would write it as null, so it refuses this type and
    the standard encoder (which writes NaN and Infinity, as ``json.loads`` reads them back) takes over."""


def _pack(value: Any) -> Any:
    """Any fact value as JSON: tuples as arrays; Decimal, date, list and dict tagged in an object."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return value
    if kind is float:
        return value if value - value == 0.0 else _NonFinite(value)  # x - x is NaN for NaN and ±inf
    if kind is tuple:
        return [_pack(item) for item in value]
    if kind is Decimal:
        return {"d": str(value)}
    if kind is date:
        return {"t": value.toordinal()}
    if kind is list:
        return {"l": [_pack(item) for item in value]}
    if kind is dict:
        return {"o": [[key, _pack(item)] for key, item in value.items()]}
    raise CodecError(f"cannot encode a {kind.__name__} in a customer record")


def _unpack(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return tuple(_unpack(item) for item in value)
    if kind is dict:
        if "d" in value:
            return Decimal(value["d"])
        if "t" in value:
            return date.fromordinal(value["t"])
        if "l" in value:
            return [_unpack(item) for item in value["l"]]
        if "o" in value:
            return {key: _unpack(item) for key, item in value["o"]}
        raise CodecError(f"unknown tag in a customer record: {sorted(value)}")
    return value


def _is_default(value: Any, default: Any) -> bool:
    # Decimal("0.00") == Decimal(0) but is written differently: keep it.
    return type(value) is type(default) and value == default and str(value) == str(default)


# --- layout 1 ------------------------------------------------------------------


def _opening_columns(openings: list[Any], ref: Callable[[str], int | str], base: str) -> list[list[Any]]:
    """The columns of a kind's opening facts (invoice issues, payment receipts), each
    ``(timestamp, event id, amount, currency, day, …)``: timestamps as seconds since the previous one, days
    as days after the timestamp's (a timestamp that is not canonical UTC text stays text, with its day
    number), event ids as indexes into ``seen``, the base currency as 0. ``_openings`` reads them back."""
    ts_col: list[int | str] = []
    eid_col: list[int | str] = []
    amount_col: list[str] = []
    currency_col: list[int | str] = []
    day_col: list[int] = []
    last = 0
    for ts, eid, amount, currency, day, _ in openings:
        seconds = _ts(ts)
        if seconds is None:
            ts_col.append(ts)
            day_col.append(day.toordinal())
        else:
            ts_col.append(seconds - last)
            last = seconds
            day_col.append(day.toordinal() - _EPOCH_DAY - seconds // 86400)
        eid_col.append(ref(eid))
        amount_col.append(str(amount))
        currency_col.append(0 if currency == base else currency)
    return [ts_col, eid_col, amount_col, currency_col, day_col]


def _openings(ts_col: list[Any], eid_col: list[Any], amount_col: list[str], currency_col: list[Any],
              day_col: list[int], eid_of: Callable[[Any], str], base: str) -> list[tuple[str, str, Decimal, str, date]]:
    """``(timestamp, event id, amount, currency, day)`` of each opening fact: the reverse of ``_opening_columns``."""
    openings = []
    last = 0
    for ts, eid, amount, currency, day in zip(ts_col, eid_col, amount_col, currency_col, day_col):
        if type(ts) is int:
            last += ts
            ts = _ts_text(last)
            on = date.fromordinal(day + _EPOCH_DAY + last // 86400)
        else:
            on = date.fromordinal(day)
        openings.append((ts, eid_of(eid), Decimal(amount), base if currency == 0 else currency, on))
    return openings


def _layout(state: CustomerState, risk: Any) -> list[Any]:
    profile = state.profile
    base = profile.currency
    seen = list(state.seen)
    where = {eid: n for n, eid in enumerate(seen)}

    def ref(eid: str) -> int | str:
        n = where.get(eid)
        return eid if n is None else n

    def facts(items: dict[str, Any]) -> list[Any]:
        return [[ref(eid), _pack(value)] for eid, value in items.items()]

    profile_out = {}
    for name in _PROFILE_FIELDS:
        value = getattr(profile, name)
        if not _is_default(value, _PROFILE_DEFAULTS[name]):
            profile_out[name] = _pack(value)
    lifetime = state.lifetime
    lifetime_out = {}
    for name in _LIFETIME_FIELDS:
        value = getattr(lifetime, name)
        if not _is_default(value, _LIFETIME_DEFAULTS[name]):
            lifetime_out[name] = _pack(value)

    # invoices: one column per field of the issue; corrections sparse
    inv_ids: list[str] = []
    issues: list[Any] = []
    inv_due: list[int] = []
    unissued: list[int] = []
    corrections: list[Any] = []
    for n, (iid, inv) in enumerate(state.invoices.items()):
        inv_ids.append(iid)
        issue = inv.issue
        if issue is None:
            unissued.append(n)
        else:
            issues.append(issue)
            issued_on, due_on = issue[4], issue[5]
            inv_due.append(due_on.toordinal() - issued_on.toordinal())
        if inv.adjustments or inv.write_offs or inv.disputes or inv.resolutions:
            corrections.append([n, facts(inv.adjustments), facts(inv.write_offs), facts(inv.disputes),
                                facts(inv.resolutions)])
    invoice_index = {iid: n for n, iid in enumerate(inv_ids)}

    pay_ids: list[str] = []
    receipts: list[Any] = []
    pay_inv: list[int | str | None] = []
    unreceived: list[int] = []
    reversals: list[Any] = []
    for n, (pid, payment) in enumerate(state.payments.items()):
        pay_ids.append(pid)
        receipt = payment.receipt
        if receipt is None:
            unreceived.append(n)
        else:
            receipts.append(receipt)
            invoice_id = receipt[5]
            if invoice_id is None:
                pay_inv.append(None)
            else:
                index = invoice_index.get(invoice_id)
                pay_inv.append(invoice_id if index is None else index)
        if payment.reversal is not None:
            ts, eid, reason = payment.reversal
            reversals.append([n, ts, ref(eid), reason])

    promises = [[ref(eid), _pack(p.made_on), _pack(p.promised_on), _pack(p.amount), p.invoice_id]
                for eid, p in state.promises.items()]
    return [
        state.customer_id,
        profile_out,
        lifetime_out,
        [inv_ids, *_opening_columns(issues, ref, base), inv_due, unissued, corrections],
        [pay_ids, *_opening_columns(receipts, ref, base), pay_inv, unreceived, reversals],
        promises,
        state.watermark,
        state.events_applied,
        seen,
        risk,
    ]


def _state(data: list[Any]) -> tuple[CustomerState, Any]:
    (customer_id, profile_in, lifetime_in, invoices_in, payments_in, promises_in, watermark, events_applied, seen,
     risk) = data
    profile = Profile(**{name: _unpack(value) for name, value in profile_in.items()})
    base = profile.currency
    lifetime = Lifetime(**{name: _unpack(value) for name, value in lifetime_in.items()})

    def eid_of(packed: int | str) -> str:
        return seen[packed] if type(packed) is int else packed  # type: ignore[return-value]

    def facts(items: list[Any]) -> dict[str, Any]:
        return {eid_of(eid): _unpack(value) for eid, value in items}

    inv_ids, inv_ts, inv_eid, inv_amount, inv_cur, inv_on, inv_due, unissued, corrections = invoices_in
    invoices: dict[str, Invoice] = {}
    skip = set(unissued)
    issues = iter(zip(_openings(inv_ts, inv_eid, inv_amount, inv_cur, inv_on, eid_of, base), inv_due))
    for n, iid in enumerate(inv_ids):
        if n in skip:
            invoices[iid] = Invoice(iid)
            continue
        (ts, eid, amount, currency, issued_on), due_days = next(issues)
        invoices[iid] = Invoice(iid, issue=(ts, eid, amount, currency, issued_on,
                                            date.fromordinal(issued_on.toordinal() + due_days)))
    for n, adjustments, write_offs, disputes, resolutions in corrections:
        invoice = invoices[inv_ids[n]]
        invoice.adjustments = facts(adjustments)
        invoice.write_offs = facts(write_offs)
        invoice.disputes = facts(disputes)
        invoice.resolutions = facts(resolutions)

    pay_ids, pay_ts, pay_eid, pay_amount, pay_cur, pay_on, pay_inv, unreceived, reversals = payments_in
    payments: dict[str, Payment] = {}
    skip = set(unreceived)
    receipts = iter(zip(_openings(pay_ts, pay_eid, pay_amount, pay_cur, pay_on, eid_of, base), pay_inv))
    for n, pid in enumerate(pay_ids):
        if n in skip:
            payments[pid] = Payment(pid)
            continue
        (ts, eid, amount, currency, received_on), invoice_id = next(receipts)
        if type(invoice_id) is int:
            invoice_id = inv_ids[invoice_id]
        payments[pid] = Payment(pid, receipt=(ts, eid, amount, currency, received_on, invoice_id))
    for n, ts, eid, reason in reversals:
        payments[pay_ids[n]].reversal = (ts, eid_of(eid), reason)

    promises = {}
    for eid, made_on, promised_on, amount, invoice_id in promises_in:
        eid = eid_of(eid)
        promises[eid] = Promise(eid, _unpack(made_on), _unpack(promised_on), _unpack(amount), invoice_id)
    state = CustomerState(
        customer_id=customer_id,
        profile=profile,
        invoices=invoices,
        payments=payments,
        promises=promises,
        lifetime=lifetime,
        watermark=watermark,
        seen=deque(seen),
        events_applied=events_applied,
    )
    return state, risk


# --- bytes ---------------------------------------------------------------------


class _Codecs(threading.local):
    """One zstd compressor and decompressor per format and thread (they are not thread-safe)."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressors: dict[int, zstandard.ZstdDecompressor] = {}

    def compressor(self, fmt: int) -> zstandard.ZstdCompressor:
        found = self.compressors.get(fmt)
        if found is None:
            found = self.compressors[fmt] = zstandard.ZstdCompressor(
                level=LEVEL, dict_data=_dictionary(FORMATS[fmt][1]), write_checksum=True)
        return found

    def decompressor(self, fmt: int) -> zstandard.ZstdDecompressor:
        found = self.decompressors.get(fmt)
        if found is None:
            found = self.decompressors[fmt] = zstandard.ZstdDecompressor(dict_data=_dictionary(FORMATS[fmt][1]))
        return found


_CODECS = _Codecs()
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_ORJSON = orjson.dumps
_DICTIONARIES: dict[int, zstandard.ZstdCompressionDict] = {}


def _dictionary(number: int) -> zstandard.ZstdCompressionDict:
    found = _DICTIONARIES.get(number)
    if found is None:
        found = _DICTIONARIES[number] = zstandard.ZstdCompressionDict(dictionary_bytes(number))
    return found


def layout_json(state: CustomerState, risk: Any) -> bytes:
    """Layout 1 as JSON text, before compression (also for benchmarks and dictionary training).

    The ledger's part is written by orjson (ten times as fast as the standard
    encoder, and the same text for what a ledger holds: strings, integers,
    null, and floats only inside ``_pack``). What orjson would not write
    exactly, it refuses: an integer beyond 64 bits (it raises) or a
    non-finite float (``_NonFinite``); the standard encoder writes those.
    The risk part (alert book, detector memory, model state) holds floats
    from many owners, and orjson would write a NaN or an infinity among them
    as null. So orjson's text of it is kept only when reading it back gives
    a value equal to the risk part, which a NaN or infinity (read back as
    None) never is; otherwise (also for tuples, non-text keys or integers
    beyond 64 bits) the standard encoder writes it. Writing, reading back
    and comparing cost a third of the standard encoder's time.
    """
    parts = _layout(state, risk)
    risk_json = _risk_json(parts.pop())
    try:
        ledger_json = _ORJSON(parts)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        ledger_json = _JSON(parts).encode()
    return ledger_json[:-1] + b"," + risk_json + b"]"


def _risk_json(risk: Any) -> bytes:
    try:
        text = _ORJSON(risk)
    except TypeError:  # an integer beyond 64 bits, a key that is not text
        return _JSON(risk).encode()
    return text if orjson.loads(text) == risk else _JSON(risk).encode()


def encode(state: CustomerState, risk: Any, fmt: int = CURRENT) -> bytes:
    """A record's bytes: the format byte, then the compressed layout."""
    if fmt not in FORMATS:
        raise CodecError(f"unknown customer record format 0x{fmt:02x}")
    return bytes((fmt,)) + _CODECS.compressor(fmt).compress(layout_json(state, risk))


def with_wake(raw: bytes, written_on: int, wake_on: int, key: int) -> bytes:
    """A record's bytes behind a wake-up header: the day (ordinal) it is written on, its next wake-up day or 0,
    and the key of what that day was computed with (an unsigned 32-bit number)."""
    if raw and raw[0] == WAKE_HEADER:
        raw = raw[_WAKE.size:]
    return _WAKE.pack(WAKE_HEADER, written_on, wake_on, key) + raw


def wake_of(raw: bytes) -> tuple[int, int, int] | None:
    """(written on, wake-up day or 0, key) from a record's wake-up header, days as ordinals; None without one."""
    if len(raw) > _WAKE.size and raw[0] == WAKE_HEADER:
        _, written_on, wake_on, key = _WAKE.unpack_from(raw)
        return written_on, wake_on, key
    return None


def decode(raw: bytes) -> tuple[CustomerState, Any]:
    """The ledger state and the risk part's JSON from a record's bytes, in any format this version knows."""
    if raw and raw[0] == WAKE_HEADER:
        raw = raw[_WAKE.size:]
    if not raw:
        raise CodecError("empty customer record")
    head = raw[0]
    if head == LEGACY_JSON:
        data = json.loads(raw)
        return state_from_dict(data["l"]), data["r"]
    if head not in FORMATS:
        names = ", ".join(f"0x{code:02x}" for code in sorted({LEGACY_JSON, *FORMATS}))
        raise CodecError(f"unknown customer record format 0x{head:02x} (this version reads {names}); "
                         "was it written by a newer creditwatch?")
    try:
        text = _CODECS.decompressor(head).decompress(raw[1:])
    except zstandard.ZstdError as error:
        raise CodecError(f"corrupt customer record (format 0x{head:02x}): {error}") from None
    return _state(json.loads(text))


__all__ = ["CURRENT", "CodecError", "FORMATS", "LEGACY_JSON", "WAKE_HEADER", "decode", "encode", "layout_json",
           "wake_of", "with_wake"]
