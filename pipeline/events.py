"""Input events (CONTRACT §2), validated once at the edge.

Everything behind :func:`parse_event` can trust its input: money is an exact
``Decimal`` with at most two places, dates and timestamps were parsed strictly,
codes are known. Anything else becomes :class:`InvalidEvent` with one readable
reason, which the worker puts on the dead-letter topic and ``ingest`` reports
with the line number.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from pipeline.codes import COUNTRIES, CURRENCIES

#: Larger messages are rejected before parsing: no ERP event needs more, and a
#: runaway producer must not make a worker allocate without bound.
MAX_EVENT_BYTES = 64 * 1024

CENT = Decimal("0.01")
_MONEY_LIMIT = Decimal("1e15")
_MONEY_TEXT = re.compile(r"-?\d{1,16}(\.\d{1,2})?")
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP_TEXT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


class InvalidEvent(ValueError):
    """An input that is not a valid event; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- field types -----------------------------------------------------------


def _to_money(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string, not a boolean")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        # Only reached from Python callers; the edge parses JSON numbers
        # straight to Decimal. repr() is the shortest exact round-trip text.
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        if not _MONEY_TEXT.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a decimal amount like 1234.50")
        amount = Decimal(value)
    else:
        raise ValueError("must be a number or a decimal string")
    try:
        if not amount.is_finite() or abs(amount) >= _MONEY_LIMIT:
            raise ValueError("is not a finite amount below 10^15")
        quantized = amount.quantize(CENT)
    except InvalidOperation:
        raise ValueError("is not a finite amount below 10^15") from None
    if quantized != amount:
        raise ValueError(f"{amount} has more than 2 decimal places")
    return quantized


def _positive(amount: Decimal) -> Decimal:
    if amount <= 0:
        raise ValueError(f"must be greater than 0, got {amount}")
    return amount


def _not_negative(amount: Decimal) -> Decimal:
    if amount < 0:
        raise ValueError(f"must not be negative, got {amount}")
    return amount


def _to_date(value: Any) -> date:
    if not isinstance(value, str) or not _DATE_TEXT.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a calendar date") from None


def _to_timestamp(value: Any) -> datetime:
    if not isinstance(value, str) or not _TIMESTAMP_TEXT.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset, like 2026-03-04T09:12:00+00:00")
    try:
        return datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid timestamp") from None


def _to_currency(value: Any) -> str:
    if not isinstance(value, str) or value not in CURRENCIES:
        shown = value[:12] if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{shown!r} is not an ISO 4217 currency code")
    return value


def _to_country(value: Any) -> str:
    if not isinstance(value, str) or value not in COUNTRIES:
        shown = value[:12] if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{shown!r} is not an ISO 3166 alpha-2 country code")
    return value


def _to_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


def _to_probability(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise ValueError("must be a number between 0 and 1")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError("must be a number between 0 and 1") from None
    if not number.is_finite() or not 0 <= number <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return number


_MONEY_SCHEMA = {
    "anyOf": [
        {"type": "number", "multipleOf": 0.01},
        {"type": "string", "pattern": r"^-?\d{1,16}(\.\d{1,2})?$"},
    ],
    "description": "exact amount with at most 2 decimals",
}

Money = Annotated[Decimal, BeforeValidator(_to_money), WithJsonSchema(_MONEY_SCHEMA)]
PositiveMoney = Annotated[
    Decimal,
    BeforeValidator(_to_money),
    AfterValidator(_positive),
    WithJsonSchema({**_MONEY_SCHEMA, "description": "exact amount > 0, at most 2 decimals"}),
]
NonNegativeMoney = Annotated[
    Decimal,
    BeforeValidator(_to_money),
    AfterValidator(_not_negative),
    WithJsonSchema({**_MONEY_SCHEMA, "description": "exact amount >= 0, at most 2 decimals"}),
]
IsoDate = Annotated[
    date,
    BeforeValidator(_to_date),
    WithJsonSchema({"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}),
]
Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
Currency = Annotated[
    str, BeforeValidator(_to_currency), WithJsonSchema({"type": "string", "enum": sorted(CURRENCIES)})
]
Country = Annotated[
    str, BeforeValidator(_to_country), WithJsonSchema({"type": "string", "enum": sorted(COUNTRIES)})
]
Text = Annotated[str, BeforeValidator(_to_text), WithJsonSchema({"type": "string"})]
ShortText = Annotated[
    str, BeforeValidator(_to_text), Field(min_length=1, max_length=128), WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 128})
]
CustomerId = Annotated[
    str, BeforeValidator(_to_text), Field(min_length=1, max_length=64), WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64})
]
TermsDays = Annotated[
    int, BeforeValidator(_to_int), Field(ge=0, le=3650), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 3650})
]
Probability = Annotated[
    Decimal, BeforeValidator(_to_probability), WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1})
]


# --- events ----------------------------------------------------------------


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: ShortText
    type: str
    customer_id: CustomerId
    occurred_at: Timestamp
    schema_version: Annotated[int, BeforeValidator(_to_int), Field(ge=1)] = 1
    source: Text | None = None

    @property
    def topic_kind(self) -> str:
        """``invoices``, ``payments`` or ``customers``: the input topic it belongs on."""
        return TOPIC_KIND_BY_PREFIX[self.type.split(".", 1)[0]]


class InvoiceIssued(Event):
    type: Literal["invoice.issued"]
    invoice_id: ShortText
    amount: PositiveMoney
    currency: Currency
    issued_on: IsoDate
    due_on: IsoDate

    @model_validator(mode="after")
    def _due_not_before_issue(self) -> InvoiceIssued:
        if self.due_on < self.issued_on:
            raise ValueError(f"due_on {self.due_on} is before issued_on {self.issued_on}")
        return self


class InvoiceAdjusted(Event):
    type: Literal["invoice.adjusted"]
    invoice_id: ShortText
    amount_delta: Money
    reason: Text | None = None

    @model_validator(mode="after")
    def _delta_not_zero(self) -> InvoiceAdjusted:
        if self.amount_delta == 0:
            raise ValueError("amount_delta must not be 0")
        return self


class InvoiceDisputed(Event):
    type: Literal["invoice.disputed"]
    invoice_id: ShortText
    amount: PositiveMoney | None = None
    reason: Text | None = None


class InvoiceDisputeResolved(Event):
    type: Literal["invoice.dispute_resolved"]
    invoice_id: ShortText
    credited_amount: NonNegativeMoney


class InvoiceWrittenOff(Event):
    type: Literal["invoice.written_off"]
    invoice_id: ShortText
    amount: PositiveMoney


class PaymentReceived(Event):
    type: Literal["payment.received"]
    payment_id: ShortText
    amount: PositiveMoney
    currency: Currency
    received_on: IsoDate
    invoice_id: ShortText | None = None


class PaymentReversed(Event):
    type: Literal["payment.reversed"]
    payment_id: ShortText
    reason: Text | None = None


class PaymentPromised(Event):
    type: Literal["payment.promised"]
    invoice_id: ShortText | None = None
    amount: PositiveMoney
    promised_on: IsoDate


class CustomerRegistered(Event):
    type: Literal["customer.registered"]
    name: Annotated[str, BeforeValidator(_to_text), Field(min_length=1, max_length=200)]
    country: Country
    industry: Text | None = None
    credit_limit: NonNegativeMoney
    currency: Currency
    payment_terms_days: TermsDays


class CreditLimitChanged(Event):
    type: Literal["customer.credit_limit_changed"]
    credit_limit: NonNegativeMoney


class TermsChanged(Event):
    type: Literal["customer.terms_changed"]
    payment_terms_days: TermsDays


class RatingChanged(Event):
    type: Literal["customer.rating_changed"]
    agency: ShortText
    rating: Annotated[str, BeforeValidator(_to_text), Field(min_length=1, max_length=16)]
    probability_of_default: Probability | None = None


class InsuranceLimitChanged(Event):
    type: Literal["customer.insurance_limit_changed"]
    insured_limit: NonNegativeMoney


class BankDetailsChanged(Event):
    type: Literal["customer.bank_details_changed"]


class OwnershipChanged(Event):
    type: Literal["customer.ownership_changed"]
    description: Text | None = None


class LegalEvent(Event):
    type: Literal["customer.legal_event"]
    kind: Literal["insolvency_filing", "court_judgment", "liquidation", "other"]
    description: Text | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in (
        InvoiceIssued,
        InvoiceAdjusted,
        InvoiceDisputed,
        InvoiceDisputeResolved,
        InvoiceWrittenOff,
        PaymentReceived,
        PaymentReversed,
        PaymentPromised,
        CustomerRegistered,
        CreditLimitChanged,
        TermsChanged,
        RatingChanged,
        InsuranceLimitChanged,
        BankDetailsChanged,
        OwnershipChanged,
        LegalEvent,
    )
}

TOPIC_KIND_BY_PREFIX = {"invoice": "invoices", "payment": "payments", "customer": "customers"}

AnyEvent = Annotated[Union[tuple(EVENT_TYPES.values())], Field(discriminator="type")]  # type: ignore[valid-type]
_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)


# --- the edge ----------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise InvalidEvent(f"not valid JSON: {name} is not a number")


#: ``json.loads(..., parse_float=Decimal, parse_constant=_reject_constant)`` builds a decoder per
#: call; this one is built once (decoders keep no state between documents).
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _loads(raw: bytes | str) -> Any:
    """``json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)``, step for step."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        text = raw
    else:
        if not isinstance(raw, (bytes, bytearray)):
            raise TypeError(f"the JSON object must be str, bytes or bytearray, not {raw.__class__.__name__}")
        # json.detect_encoding answers "utf-8" for anything starting with "{" and a non-zero byte.
        encoding = "utf-8" if raw[:1] == b"{" and raw[1:2] != b"\x00" else json.detect_encoding(raw)
        text = raw.decode(encoding, "surrogatepass")
    return _DECODER.decode(text)


def decode_json(raw: bytes | str) -> Any:
    """JSON with numbers as exact Decimals; raises InvalidEvent on bad input."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message of {len(raw)} bytes is larger than the {MAX_EVENT_BYTES}-byte limit")
    try:
        return _loads(raw)
    except InvalidEvent:
        raise
    except UnicodeDecodeError:
        raise InvalidEvent("not valid JSON: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidEvent(f"not valid JSON: {first_line}") from None


def validate_event(obj: Any) -> Event:
    """Validate a decoded JSON value as an event; raises InvalidEvent."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {_json_kind(obj)}")
    kind = obj.get("type")
    if kind is None:
        raise InvalidEvent("field 'type' is required")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        shown = kind[:40] if isinstance(kind, str) else _json_kind(kind)
        raise InvalidEvent(f"field 'type': unknown event type {shown!r}")
    try:
        return EVENT_TYPES[kind].model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None
    except RecursionError:
        raise InvalidEvent("event is nested too deeply") from None


def parse_event(raw: bytes | str) -> Event:
    """Bytes or text of one JSON event → a validated event, or InvalidEvent."""
    return validate_event(decode_json(raw))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, Decimal, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _reason(exc: ValidationError) -> str:
    """The first error of a ValidationError, as one line a producer can act on."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    error = errors[0]
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if error["type"] == "missing":
        text = f"field '{location}' is required"
    elif location:
        text = f"field '{location}': {message}"
    else:
        text = message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per event type, for upstream producers."""
    schemas = {}
    for name, cls in EVENT_TYPES.items():
        schema = cls.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = name
        schema["properties"]["type"] = {"const": name}
        schemas[name] = schema
    return schemas
