"""Read-only queries the web pages need beyond the store's own API.

They run on the store's engine and session (so errors become
:class:`sinks.store.StoreUnavailable` / ``SchemaOutdated`` like every store
call) and never write. Aggregates are computed by the database, so a page
costs a few indexed queries however large the portfolio is.
"""

from __future__ import annotations

import base64
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable, Mapping

from sqlalchemy import Date, Integer, String, and_, any_, bindparam, cast, func, literal_column, or_, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from pipeline.ledger import AGING_BUCKETS
from sinks.store import (
    ORDERS,
    Alert,
    AlertHistory,
    AlertStore,
    CustomerEventRow,
    CustomerPositionRow,
    SEVERITIES,
    SQLITE_SEARCH_FTS,
    RiskSnapshotRow,
    UTCDateTime,
    fts_phrases,
)

CENT = Decimal("0.01")


def _day(store: AlertStore, column: Any) -> Any:
    return func.date(column) if store.dialect == "sqlite" else cast(column, Date)


def _as_day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def events_by_id(store: AlertStore, event_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The stored events among ``event_ids``, oldest first (ids the store never saw are left out)."""
    ids = list(dict.fromkeys(event_ids))[:500]
    if not ids:
        return []
    with store._session() as session:
        rows = session.execute(select(CustomerEventRow).where(CustomerEventRow.event_id.in_(ids))
                               .order_by(CustomerEventRow.occurred_at, CustomerEventRow.id)).scalars()
        return [{"event_id": r.event_id, "customer_id": r.customer_id, "type": r.type,
                 "occurred_at": _iso(r.occurred_at), "summary": r.summary or {}} for r in rows]


def find_customers(store: AlertStore, text: str, limit: int = 2000) -> list[str] | None:
    """Customers whose name or id contains every word of ``text``; None if more than ``limit`` do.

    Reads the ``(name, customer_id)`` index of ``customer_positions`` only, so
    the inbox can then take the alerts of those customers by ``customer_id``
    instead of scanning every alert's text.
    """
    with store._session() as session:
        return _find_customers(session, text, limit)


def _find_customers(session: Session, text: str, limit: int) -> list[str] | None:
    words = text.lower().split()
    if not words:
        return []
    haystack = func.coalesce(CustomerPositionRow.name, literal_column("''")) + literal_column("' '") \
        + CustomerPositionRow.customer_id
    if session.get_bind().dialect.name != "sqlite":  # (SQLite's LIKE ignores ASCII case, as far as its lower() goes)
        # Written as migration 0006's trigram index on PostgreSQL has it (literals, not parameters), so it is used.
        haystack = func.lower(haystack)
    query = select(CustomerPositionRow.customer_id)
    for word in words:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(haystack.like(f"%{escaped}%", escape="\\"))
    found = list(session.execute(query.limit(limit + 1)).scalars())
    return None if len(found) > limit else found


def _sort_keys(order: str) -> list[tuple[Any, bool]]:
    """The store's ``ORDERS[order]`` as (expression, descending) pairs; the last one is the unique ``id``."""
    from sqlalchemy.sql import operators

    return [(term.element, term.modifier is operators.desc_op) for term in ORDERS[order]]


def encode_cursor(values: list[Any]) -> str:
    """A page boundary: the sort-key values of its row, as URL-safe text."""
    values = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(token: str, order: str) -> list[Any] | None:
    """The sort-key values a cursor holds, or None if it is not one of ours for this order."""
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError):
        return None
    keys = _sort_keys(order)
    if not isinstance(values, list) or len(values) != len(keys):
        return None
    decoded = []
    for (column, _), value in zip(keys, values):
        python_type = column.type.python_type if not isinstance(column.type, UTCDateTime) else datetime
        try:
            if python_type is datetime:
                value = datetime.fromisoformat(value)
            elif python_type is int:
                value = int(value)
            elif python_type is float:
                value = float(value)
            elif not isinstance(value, str):
                return None
        except (TypeError, ValueError):
            return None
        decoded.append(value)
    return decoded


def _beyond(order: str, values: list[Any], forward: bool) -> Any:
    """Rows after (``forward``) or before the row with these sort-key values, in ``order``."""
    keys = _sort_keys(order)
    alternatives = []
    for i, (column, descending) in enumerate(keys):
        later = (column < values[i]) if descending == forward else (column > values[i])
        alternatives.append(and_(*[keys[j][0] == values[j] for j in range(i)], later))
    first, descending = keys[0]
    # The same rows, led by a range on the first key alone, which an index on it can seek to (an OR
    # of the alternatives by itself makes SQLite read every row past the cursor and sort them).
    bound = (first <= values[0]) if descending == forward else (first >= values[0])
    return and_(bound, or_(*alternatives))


#: A count stops past this many alerts (the inbox shows "10,000+"): counting costs at most this many
#: index entries however large the store, and a page deeper than this counts only as far as it.
COUNT_LIMIT = 10_000


def count_alerts(store: AlertStore, filters: Mapping[str, Any], limit: int = COUNT_LIMIT) -> int:
    """How many alerts match ``filters`` (as :func:`alerts_page` takes them), up to ``limit``:
    ``limit + 1`` means "more than ``limit``".

    Selects nothing but a constant, so the database counts from an index alone where one covers the
    filters (PostgreSQL: an index-only scan) and stops at ``limit + 1`` rows.
    """
    with store._session() as session:
        return _count(session, store, filters, limit)


def _count(session: Session, store: AlertStore, filters: Mapping[str, Any], limit: int) -> int:
    matching = _filtered(store, select(literal_column("1")), filters).limit(limit + 1).subquery()
    return int(session.execute(select(func.count()).select_from(matching)).scalar_one())


#: Up to this many customers a search names go into the statement one by one (``IN (?, ?, …)``); more
#: go as one parameter (a PostgreSQL array, a JSON list on SQLite): hundreds of parameters cost more
#: to render, send and plan than the query costs to run.
INLINE_CUSTOMERS = 50


def _filtered(store: AlertStore, query: Any, filters: Mapping[str, Any]) -> Any:
    customers = filters.get("customer")
    many = customers is not None and not isinstance(customers, str) and len(customers) > INLINE_CUSTOMERS
    query = store._filtered(query.select_from(Alert), filters.get("status"), filters.get("severity"),
                            filters.get("detector"), filters.get("assignee"), None if many else customers,
                            filters.get("search"))
    if many:
        query = query.where(_one_of(store, Alert.customer_id, [str(value) for value in customers], String))
    ids = filters.get("ids")
    if ids is not None:
        query = query.where(_one_of(store, Alert.id, list(ids), Integer) if len(ids) > INLINE_CUSTOMERS
                            else Alert.id.in_(list(ids)))
    return query


def _one_of(store: AlertStore, column: Any, values: list[Any], kind: Any) -> Any:
    """``column IN values`` with the values as one parameter."""
    if store.dialect == "postgresql":
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(kind)))
    listed = func.json_each(json.dumps(values)).table_valued("value")
    return column.in_(select(listed.c.value))


def _text_matches(session: Session, search: str, limit: int) -> list[int] | None:
    """The ids of the alerts whose text holds every word of ``search``; None if more than ``limit`` do.

    A LIKE '%word%' reads every alert its trigrams point to (PostgreSQL: pg_trgm; SQLite: the FTS5
    table of migration 0007; every alert, for words shorter than three characters; many, for words
    made of common trigrams): read them once, not once
    to count and again, row by row in the page's order, to find a page (which reads every row when
    few match). When many match, counting stops early and the page's first rows come soon: None.
    """
    words = search.lower().split()
    if not words:
        return None
    params: dict[str, Any] = {
        f"w{i}": "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        for i, word in enumerate(words)
    }
    where = " AND ".join(f"search_text LIKE :{name} ESCAPE '\\'" for name in params)
    if session.get_bind().dialect.name != "sqlite":
        statement = f"SELECT id FROM alerts WHERE {where} LIMIT :limit"
    elif (match := fts_phrases(words)) is not None:
        # SQLite: the candidates from the trigram index (migration 0007) on the words of 3+ characters,
        # then the LIKEs on those rows only: the index folds the case of every letter, LIKE that of ASCII
        # letters only, so it may find more, and the LIKEs keep exactly what they alone would.
        params["match"] = match
        statement = (f"SELECT id FROM alerts WHERE id IN (SELECT rowid FROM {SQLITE_SEARCH_FTS} "
                     f"WHERE {SQLITE_SEARCH_FTS} MATCH :match) AND {where} LIMIT :limit")
    else:  # (only words too short for trigrams: from the search_text index, which SQLite would not choose
        # by itself: fewer pages than the rows)
        statement = f"SELECT id FROM alerts INDEXED BY ix_alerts_search_text_trgm WHERE {where} LIMIT :limit"
    found = list(session.execute(sql_text(statement), {**params, "limit": limit + 1}).scalars())
    return None if len(found) > limit else found


#: What an inbox row shows (and sorts by): every column but the large ones (reasons, evidence ids,
#: feedback, the search text), which the inbox never shows.
_LARGE_COLUMNS = frozenset({"reasons", "event_ids", "feedback", "search_text"})


def _inbox_columns() -> list[Any]:
    return [column for column in Alert.__table__.columns if column.key not in _LARGE_COLUMNS]


@dataclass
class AlertPage:
    alerts: list[dict[str, Any]]  # alert_json()'s fields but the large ones (_LARGE_COLUMNS)
    first_cursor: str | None
    last_cursor: str | None
    has_more: bool  # another page after this one (in the direction of the order)


def alerts_page(
    store: AlertStore, filters: Mapping[str, Any], order: str, limit: int,
    after: str | None = None, before: str | None = None, offset: int = 0,
) -> AlertPage:
    """One inbox page by keyset ("seek") pagination: the page after/before a cursor costs an index
    lookup however deep it is; without a (valid) cursor, ``offset`` rows are skipped instead.

    Two steps in one statement: the ids of the page are found first (sort keys and filters only, so
    an index can answer it and skipping ``offset`` rows reads index entries, not rows), then only
    those rows are read, without the columns the inbox does not show.
    """
    with store._session() as session:
        return _page(session, store, filters, order, limit, after, before, offset)


def _page(
    session: Session, store: AlertStore, filters: Mapping[str, Any], order: str, limit: int,
    after: str | None, before: str | None, offset: int,
) -> AlertPage:
    keys = _sort_keys(order)
    ids = _filtered(store, select(Alert.id), filters)
    backward = False
    if after and (values := decode_cursor(after, order)) is not None:
        ids = ids.where(_beyond(order, values, True)).order_by(*ORDERS[order])
    elif before and (values := decode_cursor(before, order)) is not None:
        backward = True
        ids = ids.where(_beyond(order, values, False)).order_by(
            *[column.asc() if descending else column.desc() for column, descending in keys])
    else:
        ids = ids.order_by(*ORDERS[order]).offset(offset)
    columns = _inbox_columns()
    sort_values = [column.label(f"sort_{i}") for i, (column, _) in enumerate(keys)]
    query = select(*columns, *sort_values).where(Alert.id.in_(ids.limit(limit + 1))).order_by(*ORDERS[order])
    rows = list(session.execute(query))
    more = len(rows) > limit
    # (before a cursor the database took the rows nearest to it: the last ones in the order)
    rows = rows[-limit:] if backward else rows[:limit]
    alerts = []
    for row in rows:
        alert = {column.key: value for column, value in zip(columns, row)}
        for moment in ("raised_at", "updated_at", "stored_at"):
            alert[moment] = _iso(alert.get(moment))
        alerts.append(alert)
    width = len(columns)
    return AlertPage(
        alerts=alerts,
        first_cursor=encode_cursor(list(rows[0][width:])) if rows else None,
        last_cursor=encode_cursor(list(rows[-1][width:])) if rows else None,
        has_more=True if backward else more,
    )


@dataclass
class Inbox:
    page: AlertPage
    number: int  # the page shown (the one asked for, within 1..pages)
    pages: int
    total: int  # alerts matching, counted as far as ``number + 1`` pages (at least COUNT_LIMIT)
    exact: bool  # False: there are more than ``total``


def inbox_page(
    store: AlertStore, filters: Mapping[str, Any], order: str, size: int, page: int = 1,
    after: str | None = None, before: str | None = None, text: str | None = None,
) -> Inbox:
    """The inbox's page ``page`` of ``size`` alerts: three or four statements on one connection.

    ``text``: a search for customers by name or id first (:func:`find_customers`), whose alerts
    are then taken by ``customer_id``; too many (or none: a customer without a stored position)
    → ``filters["search"]``, the alerts' own text, instead. Previous/Next carry a cursor (the
    first/last row's sort keys), so a deep page costs what page 1 does; a page number alone (typed
    in) skips index entries instead. The count stops at the page after this one, at least
    :data:`COUNT_LIMIT` alerts: "10,000+".
    """
    filters = dict(filters)
    with store._session() as session:
        if text:
            customers = _find_customers(session, text, 2000)
            if customers:
                filters.update(customer=customers, search=None)
        if filters.get("search") and (matches := _text_matches(session, filters["search"], COUNT_LIMIT)) is not None:
            filters.update(ids=matches, search=None)
        counted = max(COUNT_LIMIT, (min(max(page, 1), 10**9) + 1) * size)
        total = _count(session, store, filters, counted)
        exact = total <= counted
        total = min(total, counted)
        pages = max(1, math.ceil(total / size))
        page = min(max(page, 1), pages)
        cursor = {"after": after, "before": before} if page > 1 else {"after": None, "before": None}
        result = _page(session, store, filters, order, size, **cursor, offset=(page - 1) * size)
    return Inbox(page=result, number=page, pages=pages, total=total, exact=exact)


def customer_alert_history(store: AlertStore, customer_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """Every change to the customer's alerts (raised, escalated, acknowledged, …), newest first."""
    query = (
        select(AlertHistory, Alert.title, Alert.severity, Alert.detector)
        .join(Alert, Alert.alert_id == AlertHistory.alert_id)
        .where(Alert.customer_id == customer_id)
        .order_by(AlertHistory.at.desc(), AlertHistory.id.desc())
        .limit(limit)
    )
    with store._session() as session:
        return [
            {"alert_id": h.alert_id, "at": _iso(h.at), "by": h.by, "change": h.change, "from_status": h.from_status,
             "to_status": h.to_status, "from_assignee": h.from_assignee, "to_assignee": h.to_assignee,
             "note": h.note, "revision": h.revision, "title": title, "severity": severity, "detector": detector}
            for h, title, severity, detector in session.execute(query)
        ]


@dataclass
class Portfolio:
    base_currency: str
    customers: int = 0
    exposure: Decimal = Decimal(0)
    credit_limit: Decimal = Decimal(0)
    overdue: Decimal = Decimal(0)
    aging: dict[str, Decimal] = field(default_factory=dict)
    unconverted: list[str] = field(default_factory=list)  # currencies without an FX rate (left out)
    dso_trend: list[tuple[str, float]] = field(default_factory=list)
    alerts_per_day: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    riskiest: list[dict[str, Any]] = field(default_factory=list)
    open_alerts: dict[str, int] = field(default_factory=dict)

    @property
    def utilisation(self) -> Decimal | None:
        return (self.exposure / self.credit_limit) if self.credit_limit else None

    def aging_share(self) -> list[tuple[str, Decimal, Decimal | None]]:
        total = sum(self.aging.values(), Decimal(0))
        return [(bucket, amount, (amount / total) if total else None) for bucket, amount in self.aging.items()]


def portfolio(
    store: AlertStore, base_currency: str, fx_rates: Mapping[str, Decimal], today: date,
    days: int = 90, riskiest: int = 15,
) -> Portfolio:
    """Totals in the base currency, aging, DSO trend, alerts per day and the riskiest customers.

    The trends cover the ``days`` up to ``today`` or, if the data ends earlier
    (a replayed history), up to the last day with alerts or snapshots.
    """
    result = Portfolio(base_currency=base_currency, aging={bucket: Decimal(0) for bucket in AGING_BUCKETS})
    pos = CustomerPositionRow
    bucket_sums = [func.sum(pos.position[("aging", bucket)].as_float()) for bucket in AGING_BUCKETS]
    snap_day = _day(store, RiskSnapshotRow.taken_at)
    alert_day = _day(store, Alert.raised_at)
    with store._session() as session:
        latest = [session.execute(select(func.max(column))).scalar() for column in (Alert.raised_at,
                                                                                    RiskSnapshotRow.taken_at)]
        latest_day = max((moment.date() for moment in latest if moment is not None), default=today)
        today = min(today, latest_day)
        since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), tzinfo=timezone.utc)
        totals = session.execute(
            select(pos.currency, func.count(), func.sum(pos.exposure), func.sum(pos.credit_limit),
                   func.sum(pos.overdue), *bucket_sums).group_by(pos.currency)
        ).all()
        dso = session.execute(
            select(snap_day, func.sum(RiskSnapshotRow.dso_days * RiskSnapshotRow.exposure),
                   func.sum(RiskSnapshotRow.exposure))
            .where(RiskSnapshotRow.taken_at >= since, RiskSnapshotRow.dso_days.is_not(None),
                   RiskSnapshotRow.exposure > 0)
            .group_by(snap_day).order_by(snap_day)
        ).all()
        per_day = session.execute(
            select(alert_day, Alert.severity, func.count()).where(Alert.raised_at >= since)
            .group_by(alert_day, Alert.severity)
        ).all()
        open_alerts = session.execute(  # (severity_rank: answered from the inbox index alone)
            select(Alert.severity_rank, func.count()).where(Alert.status.in_(("open", "acknowledged")))
            .group_by(Alert.severity_rank)
        ).all()
        top = session.execute(
            select(pos.customer_id, pos.name, pos.currency, pos.exposure, pos.credit_limit, pos.utilisation,
                   pos.overdue, pos.rating, pos.risk_score)
            .where(pos.risk_score.is_not(None)).order_by(pos.risk_score.desc(), pos.customer_id).limit(riskiest)
        ).all()
    for currency, count, exposure, limit, overdue, *buckets in totals:
        result.customers += count
        rate = fx_rates.get(currency or base_currency)
        if rate is None:
            result.unconverted.append(str(currency))
            continue
        rate = Decimal(rate)
        result.exposure += Decimal(exposure or 0) * rate
        result.credit_limit += Decimal(limit or 0) * rate
        result.overdue += Decimal(overdue or 0) * rate
        for bucket, amount in zip(AGING_BUCKETS, buckets):
            result.aging[bucket] += Decimal(str(amount or 0)) * rate
    result.exposure, result.credit_limit, result.overdue = (
        value.quantize(CENT) for value in (result.exposure, result.credit_limit, result.overdue))
    result.aging = {bucket: amount.quantize(CENT) for bucket, amount in result.aging.items()}
    result.dso_trend = [(_as_day(day).isoformat(), round(float(weighted / exposure), 1))
                        for day, weighted, exposure in dso if exposure]
    counts: dict[date, dict[str, int]] = defaultdict(dict)
    for day, severity, count in per_day:
        counts[_as_day(day)][severity] = int(count)
    first = today - timedelta(days=days - 1)
    result.alerts_per_day = [((first + timedelta(days=i)).isoformat(), counts.get(first + timedelta(days=i), {}))
                             for i in range(days)]
    result.open_alerts = {SEVERITIES[rank]: int(count) for rank, count in open_alerts}
    result.riskiest = [
        {"customer_id": c, "name": n, "currency": cur, "exposure": e, "credit_limit": lim, "utilisation": u,
         "overdue": o, "rating": r, "risk_score": s}
        for c, n, cur, e, lim, u, o, r, s in top
    ]
    return result
