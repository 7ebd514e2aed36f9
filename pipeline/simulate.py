"""A simulated receivables portfolio with known outcomes (``creditwatch simulate``).

Generates the events of CONTRACT §2 for ``customers`` customers over ``days``
days from ``start``: registration, invoices with seasonality, payments by each
customer's habit, credit notes, disputes and their resolution, promises to
pay, bounced payments, rating reviews, credit-insurance and limit changes,
bank and ownership changes. A share of the customers (``default_share``)
deteriorates over months and ends with its open invoices written off — the
``invoice.written_off`` events are the ground truth an early-warning system
is judged against (:func:`ground_truth`, :func:`evaluate`).

Deterministic: everything is drawn from ``random.Random(seed)`` (one
sub-generator per customer, seeded from it in order), nothing reads the wall
clock, so one seed gives byte-identical output.

What the portfolio looks like (each customer draws its own parameters)::

    customer   country (EU / UK / US / CH / Nordics / PL) → currency (mostly the home
               currency; some invoiced partly in a second one), industry (yearly
               peak), terms 30/45/60/90, typical invoice size (lognormal across the
               portfolio), invoices per month, credit limit sized to the volume,
               payment habit, payment-run weekday, cash-on-account share
    invoices   a Poisson process on business days, thinned by a month-end cycle and
               the industry's yearly peak; amounts lognormal around the customer's size
    payments   due date + habit (early / on time / a few days late / slow) + noise +
               a rare long tail; some without invoice_id (cash on account, settled
               oldest first — emitted only where the ledger's rule pays exactly the
               invoice meant); occasional partial payments and bounces
    fates      healthy; healthy with a temporary rough patch that recovers; or
               defaulting: from an onset months before the write-off day the
               customer pays later and later, disputes (and the disputes get
               rejected), makes promises it breaks, bounces payments, is
               downgraded, loses insurance cover, sometimes changes bank or owners
               and then places an unusually large order, may file for insolvency,
               stops paying, and on the write-off day every open invoice is
               written off

Healthy customers carry the same kinds of signals at lower rates (chronic slow
payers, one-off late payments, disputes, broken promises, one- and two-notch
downgrades, insurance cuts, bank and ownership changes — a few followed by a
big legitimate order), so that precision is not free. Legal events happen only
to defaulting customers.

Defaulting customers come in two kinds: *gradual* (onset 4–10 months before the
write-off, payments stop 1.5–5 months before it) and *sudden* (onset 2–4
months before, payments stop 1–2 months before). A good early-warning system can
warn the gradual ones well over 45 days ahead; the sudden ones are hard.

Consistency with the ledger (``pipeline.ledger``): every event validates, no
event is held (no payment before its invoice, no reversal before its payment),
credits never exceed what is open, and a payment without ``invoice_id`` is only
emitted when every invoice the ledger would settle before it (by due date, issue
date, id) is already closed — so the ledger settles exactly the invoice meant,
at every point in time, and the written-off amounts close each invoice to zero.

Live mode for the demo: :func:`live_stream` simulates ``history_days`` before
the clock's "now" plus ``horizon_days`` after it, yields the history at once
(a quick replay of the recent past) and then each later event when the clock
reaches its ``occurred_at`` (``speed`` simulated seconds per real second).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO

from pipeline.config import DEFAULT_FX_RATES

DEFAULT_START = date(2025, 1, 1)
DEFAULT_SHARE = 0.05

# --- event kinds (compact records: (ts, customer index, seq, kind, *fields)) ------------------

(ISSUED, ADJUSTED, DISPUTED, RESOLVED, WRITTEN_OFF, PAID, REVERSED, PROMISED,
 REGISTERED, LIMIT, TERMS, RATING, INSURANCE, BANK, OWNER, LEGAL) = range(16)

_TYPE = {
    ISSUED: "invoice.issued", ADJUSTED: "invoice.adjusted", DISPUTED: "invoice.disputed",
    RESOLVED: "invoice.dispute_resolved", WRITTEN_OFF: "invoice.written_off",
    PAID: "payment.received", REVERSED: "payment.reversed", PROMISED: "payment.promised",
    REGISTERED: "customer.registered", LIMIT: "customer.credit_limit_changed",
    TERMS: "customer.terms_changed", RATING: "customer.rating_changed",
    INSURANCE: "customer.insurance_limit_changed", BANK: "customer.bank_details_changed",
    OWNER: "customer.ownership_changed", LEGAL: "customer.legal_event",
}
_SOURCE = {
    ISSUED: "erp", ADJUSTED: "erp", DISPUTED: "erp", RESOLVED: "erp", WRITTEN_OFF: "erp",
    PAID: "bank-feed", REVERSED: "bank-feed", PROMISED: "collections",
    REGISTERED: "erp", LIMIT: "erp", TERMS: "erp", RATING: "bureau", INSURANCE: "insurer",
    BANK: "erp", OWNER: "registry", LEGAL: "registry",
}

#: Seconds of the day in which each kind happens (bank statements early, write-offs last).
_HOURS = {
    REGISTERED: (0 * 3600, 1 * 3600), RATING: (5 * 3600, 6 * 3600), INSURANCE: (6 * 3600, 7 * 3600),
    PAID: (7 * 3600, 8 * 3600), LEGAL: (8 * 3600, 9 * 3600), BANK: (9 * 3600, 10 * 3600),
    OWNER: (9 * 3600, 10 * 3600), LIMIT: (10 * 3600, 11 * 3600), TERMS: (10 * 3600, 11 * 3600),
    ISSUED: (11 * 3600, 13 * 3600), ADJUSTED: (13 * 3600, 14 * 3600), DISPUTED: (14 * 3600, 15 * 3600),
    RESOLVED: (15 * 3600, 16 * 3600), PROMISED: (16 * 3600, 17 * 3600), REVERSED: (17 * 3600, 18 * 3600),
    WRITTEN_OFF: (19 * 3600, 20 * 3600),
}

# --- the portfolio's vocabulary -----------------------------------------------------------------

#: country, home currency, weight, legal forms
_COUNTRIES: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("DE", "EUR", 16, ("GmbH", "AG", "GmbH & Co. KG", "KG")),
    ("FR", "EUR", 10, ("SAS", "SA", "SARL")),
    ("NL", "EUR", 7, ("B.V.", "N.V.")),
    ("IT", "EUR", 7, ("S.p.A.", "S.r.l.")),
    ("ES", "EUR", 6, ("S.A.", "S.L.")),
    ("BE", "EUR", 3, ("NV", "SA", "BV")),
    ("AT", "EUR", 3, ("GmbH", "AG")),
    ("IE", "EUR", 2, ("Ltd", "DAC")),
    ("FI", "EUR", 2, ("Oy", "Oyj")),
    ("PT", "EUR", 1, ("Lda", "S.A.")),
    ("GB", "GBP", 12, ("Ltd", "plc", "LLP")),
    ("US", "USD", 12, ("Inc.", "LLC", "Corp.")),
    ("CH", "CHF", 5, ("AG", "SA", "GmbH")),
    ("SE", "SEK", 4, ("AB",)),
    ("NO", "NOK", 3, ("AS", "ASA")),
    ("DK", "DKK", 3, ("A/S", "ApS")),
    ("PL", "PLN", 4, ("Sp. z o.o.", "S.A.")),
)
_COUNTRY_WEIGHTS = [c[2] for c in _COUNTRIES]

#: industry: (yearly peak day of year, yearly amplitude, default propensity, name nouns)
_INDUSTRIES: dict[str, tuple[int, float, float, tuple[str, ...]]] = {
    "manufacturing": (75, 0.10, 1.0, ("Industries", "Manufacturing", "Metalworks", "Components")),
    "wholesale": (290, 0.20, 1.0, ("Wholesale", "Distribution", "Supply", "Trading")),
    "retail": (320, 0.40, 1.3, ("Retail", "Stores", "Markets", "Outlets")),
    "construction": (170, 0.35, 1.5, ("Construction", "Building", "Contractors", "Structures")),
    "logistics": (315, 0.20, 1.2, ("Logistics", "Freight", "Transport", "Shipping")),
    "food": (345, 0.15, 0.9, ("Foods", "Dairy", "Provisions", "Bakeries")),
    "hospitality": (195, 0.40, 1.6, ("Hotels", "Hospitality", "Catering", "Leisure")),
    "automotive": (100, 0.15, 1.1, ("Automotive", "Motors", "Autoparts", "Mobility")),
    "chemicals": (130, 0.10, 0.8, ("Chemicals", "Coatings", "Polymers", "Labs")),
    "electronics": (280, 0.25, 0.9, ("Electronics", "Systems", "Devices", "Circuits")),
    "textiles": (250, 0.30, 1.3, ("Textiles", "Apparel", "Fabrics", "Fashion")),
    "pharma": (20, 0.05, 0.5, ("Pharma", "Life Sciences", "Medical", "Health")),
    "agriculture": (255, 0.45, 1.1, ("Agri", "Farms", "Seeds", "Growers")),
    "energy": (15, 0.30, 0.7, ("Energy", "Power", "Solar", "Utilities")),
    "it_services": (75, 0.05, 0.8, ("Software", "Digital", "IT Services", "Networks")),
}
_INDUSTRY_NAMES = list(_INDUSTRIES)
_INDUSTRY_WEIGHTS = [14, 12, 9, 8, 9, 8, 5, 6, 5, 6, 4, 3, 4, 3, 4]

_NAME_WORDS = (
    "Atlas", "Nordic", "Alpine", "Baltic", "Vega", "Orion", "Silverline", "Bluewater", "Greenfield", "Harbor",
    "Summit", "Granite", "Crescent", "Polar", "Meridian", "Delta", "Falcon", "Linden", "Oakridge", "Cedar",
    "Aurora", "Helix", "Nova", "Pioneer", "Beacon", "Keystone", "Riverside", "Westbrook", "Eastgate",
    "Highland", "Lakeside", "Sunrise", "Ironwood", "Copperfield", "Amber", "Coral", "Saffron", "Rhine",
    "Danube", "Fjord", "Tatra", "Iberia", "Lumen", "Vertex", "Zenith", "Stellar", "Triton", "Boreal",
    "Sterling", "Evergreen", "Northwind", "Solano", "Marina", "Castello", "Montana", "Vista", "Sierra",
    "Carpathia", "Adriatic", "Lagoon", "Pinnacle", "Horizon", "Kestrel", "Osprey", "Albion", "Hanse",
)
_NAME_STEMS = ("Nord", "Sud", "West", "Ost", "Wald", "Lund", "Holm", "Stein", "Feld", "Bach", "Brook", "Mar",
               "Val", "Mont", "Sol", "Star", "Elm", "Ash")
_NAME_ENDINGS = ("hafen", "tech", "vik", "gaard", "berg", "land", "port", "line", "mark", "dale", "ford",
                 "wood", "field", "haven")
_SURNAMES = (
    "Berger", "Lang", "Moreau", "Bianchi", "Jansen", "Novak", "Keller", "Schmidt", "Dubois", "Rossi",
    "Garcia", "Olsen", "Nilsson", "Virtanen", "Murphy", "Walsh", "Hughes", "Carter", "Fischer", "Weber",
    "Lambert", "Ferrari", "Martins", "Kowalski", "Nowak", "Hansen", "Lindqvist", "Brennan", "Sauer", "Roth",
)

# --- ratings ------------------------------------------------------------------------------------

_SP = ("AAA", "AA+", "AA", "AA-", "A+", "A", "A-", "BBB+", "BBB", "BBB-", "BB+", "BB", "BB-",
       "B+", "B", "B-", "CCC+", "CCC", "CCC-", "CC", "C", "D")
_MOODYS = ("Aaa", "Aa1", "Aa2", "Aa3", "A1", "A2", "A3", "Baa1", "Baa2", "Baa3", "Ba1", "Ba2", "Ba3",
           "B1", "B2", "B3", "Caa1", "Caa2", "Caa3", "Ca", "C", "C")
#: One-year probability of default by notch (0 = AAA … 21 = D), roughly historical corporate rates.
_PD = (0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0007, 0.0009, 0.0013, 0.002, 0.003, 0.005, 0.008, 0.012,
       0.02, 0.035, 0.055, 0.10, 0.16, 0.24, 0.35, 0.50, 1.0)
_WORST = len(_SP) - 1
_DACH = frozenset({"DE", "AT", "CH", "PL"})

_DISPUTE_REASONS = ("damaged goods", "short delivery", "price discrepancy", "wrong item", "late delivery",
                    "quality complaint", "missing proof of delivery", "duplicate invoice")
_STALL_REASONS = ("quality complaint", "missing proof of delivery", "price discrepancy", "contract terms")
_CREDIT_REASONS = ("price correction", "returned goods", "volume rebate", "damaged in transit", "quantity correction")
_SURCHARGE_REASONS = ("freight surcharge", "express delivery", "packaging charge")
_REVERSAL_REASONS = ("bounced", "bounced", "insufficient funds", "returned by bank", "chargeback")
_OWNERSHIP = ("Acquired by a holding company", "Management buy-out", "Majority stake sold to a private equity fund",
              "Merged with a competitor", "Founder sold the business", "New majority shareholder")

HEALTHY, ROUGH, DEFAULT = "healthy", "rough", "default"


# --- calendar -------------------------------------------------------------------------------------


class _Calendar:
    """Day index (0 = start) → ISO text, weekday, day of year, day of month; cached."""

    def __init__(self, start: date, days: int):
        self.start = start
        self.ordinal = start.toordinal()
        span = days + 400
        self.iso = [date.fromordinal(self.ordinal + d).isoformat() for d in range(span)]
        self.weekday = [(self.ordinal + d) % 7 for d in range(span)]  # 0 = Sunday … 6 = Saturday (ordinal 1 = Monday)
        self.doy = [date.fromordinal(self.ordinal + d).timetuple().tm_yday for d in range(span)]
        self.dom = [date.fromordinal(self.ordinal + d).day for d in range(span)]

    def text(self, day: int) -> str:
        if 0 <= day < len(self.iso):
            return self.iso[day]
        return date.fromordinal(self.ordinal + day).isoformat()

    def weekday_of(self, day: int) -> int:
        return self.weekday[day] if 0 <= day < len(self.weekday) else (self.ordinal + day) % 7

    def business(self, day: int) -> bool:
        return self.weekday_of(day) not in (0, 6)

    def next_business(self, day: int) -> int:
        while not self.business(day):
            day += 1
        return day


# --- money ------------------------------------------------------------------------------------------


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _nice_limit(value: float) -> int:
    """Round an amount up to a number a credit committee would write (40,000; 8,500; 200,000)."""
    if value <= 1000:
        return 1000
    step = 5 * 10 ** (int(math.log10(value)) - 1)
    return int(math.ceil(value / step) * step)


_ENCODER = json.JSONEncoder(ensure_ascii=False)
_QUOTED: dict[str, str] = {}


def _quote(text: str) -> str:
    """JSON string literal of ``text``; the vocabulary of reasons and agencies is cached."""
    quoted = _QUOTED.get(text)
    if quoted is None:
        quoted = _ENCODER.encode(text)
        if len(_QUOTED) < 4096:
            _QUOTED[text] = quoted
    return quoted


def to_line(event: Mapping[str, Any]) -> str:
    """One event as its JSONL line (without the newline)."""
    return _ENCODER.encode(event)


# --- customers --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Customer:
    index: int
    customer_id: str
    name: str
    country: str
    currency: str
    industry: str
    terms: int
    rate: float  # invoices per calendar day, on average (they fall on business days)
    size_eur: float  # median invoice amount in EUR
    sigma: float  # lognormal spread of invoice amounts
    peak_doy: int
    year_amp: float
    month_amp: float
    growth: float  # log volume change per year
    habit_mean: float  # days late on average (negative: pays early)
    habit_sd: float
    run_weekday: int | None  # pays only on this weekday (payment run), if set
    on_account: float  # share of payments sent without invoice_id
    dispute_rate: float
    second_currency: str | None
    second_share: float
    limit: int  # credit limit, whole units of the customer currency
    rated: bool
    fate: str = HEALTHY
    # defaulting customers
    write_off: int = -1
    onset: int = -1
    stop_pay: int = -1
    stop_ship: int = -1
    curve: float = 1.0
    depth: float = 0.0
    sudden: bool = False
    # rough patch: (start, peak, end, amplitude)
    rough: tuple[int, int, int, float] | None = None

    def stress(self, day: int) -> float:
        """0 (business as usual) … 1 (about to be written off) on ``day``."""
        if self.fate == DEFAULT:
            if day <= self.onset:
                return 0.0
            if day >= self.write_off:
                return 1.0
            return ((day - self.onset) / (self.write_off - self.onset)) ** self.curve
        if self.rough is not None:
            a, peak, b, amp = self.rough
            if a < day < b:
                return amp * ((day - a) / (peak - a) if day <= peak else (b - day) / (b - peak))
        return 0.0


def _company_name(rng: random.Random, industry: str, forms: tuple[str, ...], taken: set[str]) -> str:
    nouns = _INDUSTRIES[industry][3]
    for attempt in range(8):
        style = rng.random()
        if style < 0.45:
            base = f"{rng.choice(_NAME_WORDS)} {rng.choice(nouns)}"
        elif style < 0.75:
            base = f"{rng.choice(_NAME_STEMS)}{rng.choice(_NAME_ENDINGS)} {rng.choice(nouns)}"
        else:
            first, second = rng.sample(_SURNAMES, 2)
            base = f"{first} & {second}"
        name = f"{base} {rng.choice(forms)}"
        if attempt >= 6:
            name = f"{base} {rng.choice(_NAME_WORDS)} {rng.choice(forms)}"
        if name not in taken:
            taken.add(name)
            return name
    name = f"{name} ({len(taken)})"
    taken.add(name)
    return name


def _new_customer(rng: random.Random, index: int, width: int, taken: set[str]) -> _Customer:
    country, home, _, forms = rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0]
    industry = rng.choices(_INDUSTRY_NAMES, _INDUSTRY_WEIGHTS)[0]
    peak_doy, year_amp, _, _ = _INDUSTRIES[industry]
    currency = home
    if rng.random() < 0.08:
        currency = "USD" if home == "EUR" else "EUR"
    second_currency, second_share = None, 0.0
    if rng.random() < 0.12:
        second_currency = rng.choice(("USD", "GBP")) if currency == "EUR" else "EUR"
        second_share = rng.uniform(0.1, 0.4)
    habit = rng.random()
    if habit < 0.15:  # early payers (skonto culture)
        habit_mean, habit_sd = -rng.uniform(3, 12), rng.uniform(1, 3)
    elif habit < 0.55:  # on time
        habit_mean, habit_sd = rng.uniform(-1, 2), rng.uniform(1, 3)
    elif habit < 0.88:  # chronically a few days late
        habit_mean, habit_sd = rng.uniform(3, 12), rng.uniform(2, 5)
    else:  # slow payers
        habit_mean, habit_sd = rng.uniform(12, 25), rng.uniform(3, 6)
    terms = rng.choices((30, 45, 60, 90), (50, 20, 22, 8))[0]
    rate = min(rng.lognormvariate(math.log(1.5 / 30.4), 0.8), 1.0)  # invoices a day; median 1.5 a month
    size_eur = min(max(rng.lognormvariate(math.log(4000), 1.0), 150.0), 400_000.0)
    sigma = rng.uniform(0.3, 0.8)
    fx = float(DEFAULT_FX_RATES[currency])
    # Exposure ≈ the invoices of the last (terms + habit) days: a compound Poisson sum. The limit covers
    # its seasonal peak plus 2.5 standard deviations, with some headroom (a few customers get a tight one).
    open_invoices = rate * (terms + max(habit_mean, 0) + 3) * (1 + year_amp) * 1.2
    size = size_eur / fx
    peak_exposure = open_invoices * size * math.exp(sigma * sigma / 2) + 2.5 * math.sqrt(open_invoices) * size * math.exp(sigma * sigma)
    headroom = rng.uniform(0.6, 0.85) if rng.random() < 0.08 else rng.uniform(1.0, 1.4)
    return _Customer(
        index=index,
        customer_id=f"C{index + 1:0{width}d}",
        name=_company_name(rng, industry, forms, taken),
        country=country,
        currency=currency,
        industry=industry,
        terms=terms,
        rate=rate,
        size_eur=size_eur,
        sigma=sigma,
        peak_doy=(peak_doy + rng.randint(-20, 20)) % 365,
        year_amp=year_amp * rng.uniform(0.6, 1.4),
        month_amp=rng.uniform(0.0, 0.5),
        growth=rng.gauss(0.03, 0.12),
        habit_mean=habit_mean,
        habit_sd=habit_sd,
        run_weekday=rng.choice((2, 4, 5)) if rng.random() < 0.35 else None,
        on_account=rng.uniform(0.3, 1.0) if rng.random() < 0.35 else 0.0,
        dispute_rate=rng.uniform(0.003, 0.025),
        second_currency=second_currency,
        second_share=second_share,
        limit=_nice_limit(peak_exposure * headroom),
        rated=rng.random() < 0.85,
    )


def _assign_fates(rng: random.Random, customers: list[_Customer], days: int, default_share: float) -> None:
    """Exactly ``round(N × default_share)`` defaulters (riskier industries and small customers likelier)."""
    count = round(len(customers) * default_share)
    keys = []
    for c in customers:
        weight = _INDUSTRIES[c.industry][2] * (1.5 if c.size_eur * c.rate < 150 else 1.0)
        keys.append((rng.random() ** (1.0 / weight), c.index))
    keys.sort(reverse=True)
    defaulting = {index for _, index in keys[:count]}
    for c in customers:
        if c.index in defaulting:
            c.fate = DEFAULT
            lo = min(days - 1, max(int(days * 0.45), 1))
            c.write_off = rng.randint(lo, days - 1)
            c.sudden = rng.random() < 0.25
            if c.sudden:
                lead, gap = rng.uniform(60, 110), rng.uniform(30, 60)
                c.depth, c.curve = rng.uniform(40, 90), rng.uniform(0.8, 1.2)
            else:
                lead, gap = rng.uniform(120, 300), rng.uniform(45, 150)
                c.depth, c.curve = rng.uniform(30, 80), rng.uniform(1.0, 1.8)
            lead = min(lead, c.write_off * 0.85)
            gap = min(gap, lead * 0.6)
            c.onset = c.write_off - int(lead)
            c.stop_pay = c.write_off - int(gap)
            c.stop_ship = min(c.write_off - 5, c.stop_pay + int(rng.uniform(0, 45)))
        elif rng.random() < 0.06 and days >= 120:
            length = rng.randint(60, 150)
            a = rng.randint(0, max(days - length, 1))
            c.fate = ROUGH
            c.rough = (a, a + int(length * rng.uniform(0.3, 0.7)), a + length, rng.uniform(0.35, 1.0))
            c.depth = rng.uniform(15, 40)


# --- one customer's life ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Invoice:
    invoice_id: str
    issued: int
    due: int
    cents: int
    currency: str
    close: float = math.inf  # day the invoice reaches zero for good (cash, credit or write-off)
    final_payment: int | None = None  # index in the customer's records of the closing payment, if it may go on account
    final_day: int = -1  # the day of that payment
    open_cents: int = 0  # what is still open at the write-off day


class _Life:
    """Plans and emits one customer's events; ``records`` holds compact tuples."""

    def __init__(self, c: _Customer, rng: random.Random, cal: _Calendar, days: int):
        self.c = c
        self.rng = rng
        self.cal = cal
        self.days = days
        self.records: list[tuple] = []
        self.invoices: list[_Invoice] = []
        self.n_invoice = 0
        self.n_payment = 0
        self.terms_at: list[tuple[int, int]] = [(0, c.terms)]
        self.prefix = c.customer_id[1:]
        self.large_orders: list[tuple[int, float]] = []
        # A defaulting customer's invoices see no event after the write-off day, and no cash from stop_pay on.
        self.until = c.write_off if c.fate == DEFAULT else 1 << 30
        self.cash_until = c.stop_pay if c.fate == DEFAULT else 1 << 30

    # -- emit ----------------------------------------------------------------------------------------

    def emit(self, day: int, kind: int, *fields: Any) -> int:
        """Record an event on ``day`` (dropped outside the window); returns its index or -1."""
        if day < 0 or day >= self.days or (day > self.until and kind != WRITTEN_OFF):
            return -1
        lo, hi = _HOURS[kind]
        ts = day * 86400 + lo + self.rng.randrange(hi - lo)
        self.records.append((ts, self.c.index, len(self.records), kind, *fields))
        return len(self.records) - 1

    def pay_day(self, day: int) -> int:
        """The next day this customer's bank actually sends money."""
        run = self.c.run_weekday
        if run is None:
            return self.cal.next_business(day)
        return day + (run - self.cal.weekday_of(day)) % 7

    def terms_on(self, day: int) -> int:
        terms = self.terms_at[0][1]
        for since, value in self.terms_at:
            if since <= day:
                terms = value
        return terms

    # -- the whole life ------------------------------------------------------------------------------

    def run(self) -> None:
        c = self.c
        self.customer_events()
        for day, cents, currency in self.order_days():
            self.invoice(day, cents, currency)
        if c.fate == DEFAULT:
            self.write_offs()
        self.cash_on_account()

    def order_days(self) -> list[tuple[int, int, str]]:
        """Invoice days and amounts: a thinned Poisson process on business days."""
        c, rng, cal = self.c, self.rng, self.cal
        end = min(self.days, c.stop_ship + 1) if c.fate == DEFAULT else self.days
        lam_max = c.rate * 1.4 * (1 + c.month_amp) * (1 + c.year_amp) * math.exp(max(c.growth, 0) * self.days / 365)
        orders: list[tuple[int, int, str]] = []
        t = 0.0
        two_pi = 2 * math.pi
        while True:
            t += rng.expovariate(lam_max)
            day = int(t)
            if day >= end:
                break
            if not cal.business(day):
                continue
            lam = (c.rate * 1.4
                   * (1 + c.month_amp * math.cos(two_pi * (cal.dom[day] - 28) / 30.4))
                   * (1 + c.year_amp * math.cos(two_pi * (cal.doy[day] - c.peak_doy) / 365.25))
                   * math.exp(c.growth * day / 365))
            s = c.stress(day)
            if s:
                lam *= 1 - 0.4 * s  # fewer orders as the customer runs into trouble (or the supplier holds them)
            if rng.random() * lam_max > lam:
                continue
            orders.append((day, *self.amount(1.0)))
        for day, factor in self.large_orders:
            orders.append((day, *self.amount(factor)))
        orders.sort()
        return orders

    def amount(self, factor: float) -> tuple[int, str]:
        c, rng = self.c, self.rng
        currency = c.second_currency if c.second_currency and rng.random() < c.second_share else c.currency
        eur = c.size_eur * factor * rng.lognormvariate(0.0, c.sigma)
        cents = int(round(eur / float(DEFAULT_FX_RATES[currency]) * 100))
        return max(cents, 5000), currency

    # -- customer master data and outside signals ---------------------------------------------------------

    def customer_events(self) -> None:
        c, rng, days = self.c, self.rng, self.days
        self.emit(0, REGISTERED, c.name, c.country, c.industry, c.limit, c.currency, c.terms)
        self.ratings()
        self.insurance(self.limits())
        years = days / 365
        # Terms lengthened for a few good customers (commercial negotiation).
        if c.fate == HEALTHY and rng.random() < 0.04 * years and c.terms < 90:
            day = rng.randint(30, max(31, days - 1))
            longer = c.terms + (15 if c.terms < 60 else 30)
            self.terms_at.append((day, longer))
            self.emit(day, TERMS, longer)
        # Bank and ownership changes: routine for healthy customers, an omen for defaulting ones.
        for kind, healthy_rate, default_p in ((BANK, 0.05, 0.35), (OWNER, 0.025, 0.2)):
            if c.fate == DEFAULT:
                if rng.random() < default_p:
                    lo, hi = c.onset, max(c.onset + 1, c.stop_pay - 25)
                    day = rng.randint(lo, hi)
                    self.change(kind, day)
                    if rng.random() < 0.6:  # the bust-out: a new account or owner, then a big order
                        self.large_orders.append((day + rng.randint(5, 30), rng.uniform(4.0, 8.0)))
            elif rng.random() < healthy_rate * years * (2.0 if c.fate == ROUGH else 1.0):
                day = rng.randint(1, max(2, days - 1))
                self.change(kind, day)
                if rng.random() < 0.12:  # a legitimate expansion order after a takeover
                    self.large_orders.append((day + rng.randint(5, 40), rng.uniform(3.0, 5.0)))
        if c.fate == DEFAULT:
            self.legal()
        self.large_orders = [(self.cal.next_business(day), f) for day, f in self.large_orders
                             if day < (c.stop_ship if c.fate == DEFAULT else days)]

    def change(self, kind: int, day: int) -> None:
        if kind == BANK:
            self.emit(day, BANK)
        else:
            self.emit(day, OWNER, self.rng.choice(_OWNERSHIP))

    def legal(self) -> None:
        c, rng = self.c, self.rng
        w = c.write_off
        if rng.random() < 0.3:
            self.emit(w - rng.randint(30, 110), LEGAL, "court_judgment",
                      "Judgment for payment obtained by another creditor")
        if rng.random() < 0.45:
            filing = w - rng.randint(7, 60)
            self.emit(filing, LEGAL, "insolvency_filing", "Insolvency application filed at the local court")
            if rng.random() < 0.2:
                self.emit(min(w - 1, filing + rng.randint(3, 30)), LEGAL, "liquidation",
                          "Liquidator appointed")

    def ratings(self) -> None:
        c, rng, days = self.c, self.rng, self.days
        if not c.rated:
            return
        volume = c.size_eur * c.rate * 30.4
        if volume > 60_000 and rng.random() < 0.7:
            agency = rng.choice(("S&P", "Moody's", "Fitch"))
        else:
            agency = "Creditreform" if c.country in _DACH else "Creditsafe"
        mean = 11.0 if c.fate == DEFAULT else 9.5
        notch = min(max(round(rng.gauss(mean, 2.0)), 3), 15)
        moves: list[tuple[int, int]] = [(rng.randint(0, 20), 0)]  # (day, notches worse)
        day = moves[0][0]
        while True:  # yearly reviews
            day += rng.randint(300, 420)
            if day >= days:
                break
            r = rng.random()
            step = 0 if r < 0.68 else 1 if r < 0.80 else -1 if r < 0.95 else 2 if r < 0.98 else -2
            moves.append((day, step))
        if c.fate == DEFAULT and rng.random() < 0.85:
            span = c.write_off - c.onset
            for level, lag, (lo, hi) in ((0.3, 30, (1, 2)), (0.6, 20, (1, 3)), (0.88, 10, (2, 4))):
                if rng.random() < 0.8:
                    when = c.onset + int(span * level ** (1 / c.curve)) + rng.randint(0, lag)
                    moves.append((min(when, c.write_off - 1), rng.randint(lo, hi)))
        elif c.rough is not None and rng.random() < 0.5:
            a, peak, b, amp = c.rough
            moves.append((peak + rng.randint(-10, 20), rng.choice((1, 1, 2))))
            if rng.random() < 0.6:
                moves.append((b + rng.randint(20, 90), -1))
        moves.sort()
        for day, step in moves:
            notch = min(max(notch + step, 0), _WORST - 1)
            if c.fate == DEFAULT and day >= c.write_off - 1 and rng.random() < 0.5:
                notch = _WORST
            pd = min(_PD[notch] * rng.uniform(0.85, 1.15), 1.0)
            self.emit(day, RATING, agency, _rating_text(agency, notch, pd), round(max(pd, 0.0001), 4))

    def insurance(self, limit_raises: list[tuple[int, int]]) -> None:
        c, rng, days = self.c, self.rng, self.days
        if rng.random() > 0.55:
            return
        share = rng.choices((1.0, 0.75, 0.5), (0.8, 0.15, 0.05))[0]
        insured = _nice_limit(c.limit * share) if share < 1 else c.limit
        self.emit(rng.randint(0, 10), INSURANCE, insured)
        for day, limit in limit_raises:  # the supplier asks for more cover; mostly granted
            if rng.random() < 0.7:
                self.emit(day + rng.randint(1, 30), INSURANCE, _nice_limit(limit * share) if share < 1 else limit)
        day = 0
        while True:  # the insurer's own reviews
            day += rng.randint(200, 400)
            if day >= days:
                break
            r = rng.random()
            if r < 0.03:
                self.emit(day, INSURANCE, _nice_limit(insured * rng.uniform(0.5, 0.75)))
            elif r < 0.035:
                self.emit(day, INSURANCE, 0)
        if c.fate == DEFAULT:
            span = c.write_off - c.onset
            if rng.random() < 0.7:
                self.emit(c.onset + int(span * rng.uniform(0.35, 0.6)), INSURANCE, _nice_limit(insured * 0.5))
            if rng.random() < 0.6:
                self.emit(c.onset + int(span * rng.uniform(0.65, 0.9)), INSURANCE, 0)
        elif c.rough is not None and rng.random() < 0.25:
            a, peak, b, amp = c.rough
            self.emit(peak + rng.randint(0, 20), INSURANCE, _nice_limit(insured * rng.uniform(0.5, 0.7)))
            if rng.random() < 0.5:
                self.emit(b + rng.randint(30, 120), INSURANCE, insured)

    def limits(self) -> list[tuple[int, int]]:
        """The supplier's limit reviews; returns the raises (day, new limit) for the insurer to follow."""
        c, rng, days = self.c, self.rng, self.days
        limit = c.limit
        raises: list[tuple[int, int]] = []
        day = 0
        while True:  # yearly reviews
            day += rng.randint(330, 400)
            if day >= days:
                break
            if c.growth > 0.05 and rng.random() < 0.5:
                limit = _nice_limit(limit * (1 + c.growth) * rng.uniform(1.05, 1.3))
                self.emit(day, LIMIT, limit)
                raises.append((day, limit))
            elif rng.random() < 0.04:
                limit = _nice_limit(limit * 0.75)
                self.emit(day, LIMIT, limit)
        if c.fate == DEFAULT and rng.random() < 0.4:
            self.emit(c.onset + int((c.write_off - c.onset) * rng.uniform(0.6, 0.9)), LIMIT,
                      _nice_limit(limit * 0.5))
        return raises

    # -- one invoice from issue to its last event ----------------------------------------------------------

    def invoice(self, day: int, cents: int, currency: str) -> None:
        c, rng, cal = self.c, self.rng, self.cal
        self.n_invoice += 1
        inv = _Invoice(f"INV-{self.prefix}-{self.n_invoice:05d}", day, day + self.terms_on(day), cents, currency)
        self.invoices.append(inv)
        self.emit(day, ISSUED, inv.invoice_id, cents, currency, day, inv.due)
        defaulting = c.fate == DEFAULT
        until, cash_until = self.until, self.cash_until
        s_issue = c.stress(day)
        net = cents
        # Credit note or surcharge soon after the invoice.
        r = rng.random()
        if r < 0.036:
            credit = r < 0.03
            when = day + rng.randint(2, 20)
            delta = -max(int(net * rng.uniform(0.02, 0.25)), 100) if credit else max(int(net * rng.uniform(0.01, 0.05)), 100)
            if when < until:
                net += delta
                self.emit(when, ADJUSTED, inv.invoice_id, delta, rng.choice(_CREDIT_REASONS if credit else _SURCHARGE_REASONS))
        # When the customer would pay it, by habit and by how much trouble it is in.
        s_due = c.stress(inv.due)
        delay = c.habit_mean + rng.gauss(0.0, c.habit_sd) + s_due * c.depth * rng.uniform(0.7, 1.3)
        if rng.random() < 0.015:
            delay += rng.uniform(10, 45)  # the invoice got lost, the approver was on holiday
        if cal.dom[min(inv.due, len(cal.dom) - 1)] > 15 and cal.doy[min(inv.due, len(cal.doy) - 1)] > 350:
            delay += rng.uniform(0, 7)  # year-end
        pay: int | None = self.pay_day(max(inv.due + int(round(delay)), day + 1))
        # Disputes: more of them, and mostly rejected, as a customer buys time.
        credited = 0
        settled_from = day + 1  # cash and promises only after this (a dispute's resolution)
        resolved = -1
        if rng.random() < c.dispute_rate + 0.25 * s_issue and day + 3 < until:
            dday = min(day + rng.randint(3, 25), until - 1)
            full = rng.random() < 0.5
            disputed = net if full else max(int(net * rng.uniform(0.1, 0.6)), 100)
            stalling = defaulting and rng.random() < 0.3 + 0.6 * s_issue
            self.emit(dday, DISPUTED, inv.invoice_id, None if full else disputed,
                      rng.choice(_STALL_REASONS if stalling else _DISPUTE_REASONS))
            rday = dday + rng.randint(7, 50)
            if stalling and rng.random() < 0.5:
                rday = 1 << 30  # never resolved before the end
            if rday < until and rday < self.days:
                outcome = rng.random()
                if stalling or outcome < 0.35:
                    credited = 0
                elif outcome < 0.75:
                    credited = disputed
                else:
                    credited = max(int(disputed * rng.uniform(0.3, 0.8)), 1)
                self.emit(rday, RESOLVED, inv.invoice_id, credited)
                net -= credited
                resolved = rday
                if net == 0:
                    inv.close = rday
                    return
                settled_from = rday + 1
                pay = max(pay, self.pay_day(rday + rng.randint(1, 12)))
            else:
                pay = None
        # Collection call and a promise to pay, for invoices running well over their due date.
        if (pay is None or pay > inv.due + 15) and rng.random() < 0.3 + 0.6 * s_due:
            made = max(inv.due + rng.randint(7, 20), settled_from)
            s_made = c.stress(made)
            promises = 2 if defaulting and rng.random() < s_made else 1
            for _ in range(promises):
                if made >= until or (pay is not None and made >= pay - 1):
                    break
                promised = made + rng.randint(3, 14)
                keep = rng.random() < 0.88 - 0.8 * s_made
                if keep and promised < cash_until:
                    pay = rng.randint(made + 1, promised)
                    if not cal.business(pay):
                        pay = cal.next_business(pay)
                        promised = max(promised, pay)
                    self.emit(made, PROMISED, inv.invoice_id if rng.random() < 0.8 else None, net, promised)
                    break
                if pay is not None and pay <= promised:
                    promised = pay - 1 - rng.randint(0, 2)
                    if promised <= made:
                        break
                self.emit(made, PROMISED, inv.invoice_id if rng.random() < 0.8 else None, net, promised)
                made = promised + rng.randint(3, 10)
        if pay is not None and pay >= cash_until:
            pay = None  # stopped paying
        # Cash: sometimes a part first, now and then a bounce.
        paid = 0
        last_cash = resolved
        if pay is not None or defaulting:
            p_partial = 0.03 + 0.3 * s_due
            if rng.random() < p_partial and net >= 20000:
                part = int(net * rng.uniform(0.2, 0.7))
                pday = self.pay_day(max(day + 1, (pay if pay is not None else inv.due + 20) - rng.randint(7, 30)))
                if pday < cash_until and (pay is None or pday < pay):
                    kept = self.payment(inv, pday, part, final=False)
                    if kept is not None:
                        paid += part
                        last_cash = max(last_cash, kept)
        if pay is not None:
            kept = self.payment(inv, pay, net - paid, final=True)
            if kept is not None:
                paid = net
                inv.close = max(last_cash, kept) if kept < self.days else math.inf
        inv.open_cents = net - paid

    def payment(self, inv: _Invoice, day: int, cents: int, final: bool) -> int | None:
        """A payment (and its bounce and replacement, if any); the day the money that stays came, or None."""
        c, rng = self.c, self.rng
        s = c.stress(day)
        p_bounce = 0.001 + (0.02 * s if c.fate == ROUGH else 0.10 * s if c.fate == DEFAULT else 0.0)
        if rng.random() < p_bounce:
            back = day + rng.randint(2, 7)
            if back < self.cash_until:
                self.n_payment += 1
                self.emit(day, PAID, f"PAY-{self.prefix}-{self.n_payment:05d}", cents, inv.currency, day, inv.invoice_id)
                self.emit(back, REVERSED, f"PAY-{self.prefix}-{self.n_payment:05d}", rng.choice(_REVERSAL_REASONS))
                day = self.pay_day(back + rng.randint(3, 20))
                if day >= self.cash_until:
                    return None
        self.n_payment += 1
        index = self.emit(day, PAID, f"PAY-{self.prefix}-{self.n_payment:05d}", cents, inv.currency, day, inv.invoice_id)
        if final and index >= 0:
            inv.final_payment, inv.final_day = index, day
        return day

    # -- the end ---------------------------------------------------------------------------------------

    def write_offs(self) -> None:
        c, w = self.c, self.c.write_off
        owed = [inv for inv in self.invoices if inv.close > w and inv.open_cents > 0]
        if not owed:
            # Everything was paid: one last order, then silence.
            day = self.cal.next_business(max(0, min(c.stop_ship, w - 5)))
            day = day if day <= w else w
            cents, currency = self.amount(1.0)
            self.n_invoice += 1
            inv = _Invoice(f"INV-{self.prefix}-{self.n_invoice:05d}", day, day + self.terms_on(day), cents, currency,
                           open_cents=cents)
            self.invoices.append(inv)
            self.emit(day, ISSUED, inv.invoice_id, cents, currency, day, inv.due)
            owed = [inv]
        for inv in owed:
            self.emit(w, WRITTEN_OFF, inv.invoice_id, inv.open_cents)
            inv.close = w

    def cash_on_account(self) -> None:
        """Drop invoice_id from closing payments where the ledger's oldest-first rule pays the same invoice.

        The ledger settles cash on account against the open invoices in the
        order (due date, issue date, id). A closing payment may go without
        invoice_id when every invoice before its own in that order was closed
        for good before the payment's day (so at that moment, and ever after,
        its own invoice is the oldest open one) and no other such payment
        arrives the same day.
        """
        c, rng = self.c, self.rng
        if c.on_account <= 0:
            return
        ordered = sorted(self.invoices, key=lambda inv: (inv.due, inv.issued, inv.invoice_id))
        closed_before = -math.inf  # latest close of every invoice the ledger would settle first
        used_days: set[int] = set()
        for inv in ordered:
            index, day = inv.final_payment, inv.final_day
            if index is not None and closed_before < day and day not in used_days and rng.random() < c.on_account:
                record = self.records[index]
                self.records[index] = record[:-1] + (None,)
                used_days.add(day)
            closed_before = max(closed_before, inv.close)


def _rating_text(agency: str, notch: int, pd: float) -> str:
    if agency in ("S&P", "Fitch"):
        return _SP[notch]
    if agency == "Moody's":
        return _MOODYS[notch]
    if agency == "Creditreform":  # index 100 (best) … 499, 600 = insolvent
        return "600" if notch == _WORST else str(min(max(round(230 + 100 * math.log10(pd / 0.01)), 100), 499))
    return "0" if notch == _WORST else str(min(max(round(60 - 25 * math.log10(pd / 0.01)), 1), 100))  # Creditsafe 1–100


# --- the portfolio ----------------------------------------------------------------------------------


def _check(customers: int, days: int, default_share: float) -> None:
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not 0.0 <= default_share <= 1.0:
        raise ValueError(f"default_share must be between 0 and 1, got {default_share}")


def _generate(customers: int, days: int, seed: int, start: date,
              default_share: float) -> tuple[list[_Customer], list[tuple], _Calendar]:
    _check(customers, days, default_share)
    rng = random.Random(seed)
    cal = _Calendar(start, days)
    width = max(4, len(str(customers)))
    taken: set[str] = set()
    portfolio = [_new_customer(rng, index, width, taken) for index in range(customers)]
    _assign_fates(rng, portfolio, days, default_share)
    records: list[tuple] = []
    for c in portfolio:
        life = _Life(c, random.Random(rng.getrandbits(64)), cal, days)
        life.run()
        records.extend(life.records)
    records.sort()  # (ts, customer index, seq): time order, causal order within a customer
    return portfolio, records, cal


class _Formatter:
    def __init__(self, portfolio: list[_Customer], seed: int, cal: _Calendar, count: int):
        self.ids = [c.customer_id for c in portfolio]
        self.seed = seed
        self.cal = cal
        self.width = max(7, len(str(count)))  # fixed width: event_id order is time order

    def timestamp(self, ts: int) -> str:
        day, sec = divmod(ts, 86400)
        hour, rest = divmod(sec, 3600)
        minute, second = divmod(rest, 60)
        return f"{self.cal.text(day)}T{hour:02d}:{minute:02d}:{second:02d}+00:00"

    def event(self, n: int, record: tuple) -> dict[str, Any]:
        ts, index, _, kind, *f = record
        text = self.cal.text
        body: dict[str, Any] = {
            "event_id": f"sim-{self.seed}-{n:0{self.width}d}",
            "type": _TYPE[kind],
            "customer_id": self.ids[index],
            "occurred_at": self.timestamp(ts),
        }
        if kind == ISSUED:
            body.update(invoice_id=f[0], amount=_money(f[1]), currency=f[2], issued_on=text(f[3]), due_on=text(f[4]))
        elif kind == PAID:
            body.update(payment_id=f[0], amount=_money(f[1]), currency=f[2], received_on=text(f[3]))
            if f[4] is not None:
                body["invoice_id"] = f[4]
        elif kind == ADJUSTED:
            body.update(invoice_id=f[0], amount_delta=_money(f[1]), reason=f[2])
        elif kind == DISPUTED:
            body["invoice_id"] = f[0]
            if f[1] is not None:
                body["amount"] = _money(f[1])
            body["reason"] = f[2]
        elif kind == RESOLVED:
            body.update(invoice_id=f[0], credited_amount=_money(f[1]))
        elif kind == WRITTEN_OFF:
            body.update(invoice_id=f[0], amount=_money(f[1]))
        elif kind == REVERSED:
            body.update(payment_id=f[0], reason=f[1])
        elif kind == PROMISED:
            if f[0] is not None:
                body["invoice_id"] = f[0]
            body.update(amount=_money(f[1]), promised_on=text(f[2]))
        elif kind == REGISTERED:
            body.update(name=f[0], country=f[1], industry=f[2], credit_limit=f[3], currency=f[4], payment_terms_days=f[5])
        elif kind == LIMIT:
            body["credit_limit"] = f[0]
        elif kind == TERMS:
            body["payment_terms_days"] = f[0]
        elif kind == RATING:
            body.update(agency=f[0], rating=f[1], probability_of_default=f[2])
        elif kind == INSURANCE:
            body["insured_limit"] = f[0]
        elif kind == OWNER:
            body["description"] = f[0]
        elif kind == LEGAL:
            body.update(kind=f[0], description=f[1])
        body["source"] = _SOURCE[kind]
        return body

    def line(self, n: int, record: tuple) -> str:
        """The same event as :meth:`event`, straight to its JSON text (``to_line(event(...))``), faster."""
        ts, index, _, kind, *f = record
        text = self.cal.text
        head = (f'{{"event_id": "sim-{self.seed}-{n:0{self.width}d}", "type": "{_TYPE[kind]}", '
                f'"customer_id": "{self.ids[index]}", "occurred_at": "{self.timestamp(ts)}"')
        if kind == ISSUED:
            body = (f'"invoice_id": "{f[0]}", "amount": "{_money(f[1])}", "currency": "{f[2]}", '
                    f'"issued_on": "{text(f[3])}", "due_on": "{text(f[4])}"')
        elif kind == PAID:
            body = (f'"payment_id": "{f[0]}", "amount": "{_money(f[1])}", "currency": "{f[2]}", '
                    f'"received_on": "{text(f[3])}"')
            if f[4] is not None:
                body += f', "invoice_id": "{f[4]}"'
        elif kind == ADJUSTED:
            body = f'"invoice_id": "{f[0]}", "amount_delta": "{_money(f[1])}", "reason": {_quote(f[2])}'
        elif kind == DISPUTED:
            amount = f', "amount": "{_money(f[1])}"' if f[1] is not None else ""
            body = f'"invoice_id": "{f[0]}"{amount}, "reason": {_quote(f[2])}'
        elif kind == RESOLVED:
            body = f'"invoice_id": "{f[0]}", "credited_amount": "{_money(f[1])}"'
        elif kind == WRITTEN_OFF:
            body = f'"invoice_id": "{f[0]}", "amount": "{_money(f[1])}"'
        elif kind == REVERSED:
            body = f'"payment_id": "{f[0]}", "reason": {_quote(f[1])}'
        elif kind == PROMISED:
            invoice = f'"invoice_id": "{f[0]}", ' if f[0] is not None else ""
            body = f'{invoice}"amount": "{_money(f[1])}", "promised_on": "{text(f[2])}"'
        elif kind == REGISTERED:
            body = (f'"name": {_quote(f[0])}, "country": "{f[1]}", "industry": "{f[2]}", "credit_limit": {f[3]}, '
                    f'"currency": "{f[4]}", "payment_terms_days": {f[5]}')
        elif kind == LIMIT:
            body = f'"credit_limit": {f[0]}'
        elif kind == TERMS:
            body = f'"payment_terms_days": {f[0]}'
        elif kind == RATING:
            body = f'"agency": {_quote(f[0])}, "rating": {_quote(f[1])}, "probability_of_default": {f[2]!r}'
        elif kind == INSURANCE:
            body = f'"insured_limit": {f[0]}'
        elif kind == OWNER:
            body = f'"description": {_quote(f[0])}'
        elif kind == LEGAL:
            body = f'"kind": "{f[0]}", "description": {_quote(f[1])}'
        else:
            body = ""
        return f'{head}, {body}, "source": "{_SOURCE[kind]}"}}' if body else f'{head}, "source": "{_SOURCE[kind]}"}}'


# --- public API -------------------------------------------------------------------------------------


def simulate(
    customers: int,
    days: int,
    seed: int,
    start: date = DEFAULT_START,
    default_share: float = DEFAULT_SHARE,
) -> Iterator[dict[str, Any]]:
    """The portfolio's events as JSON-ready dicts, sorted by ``occurred_at`` then ``event_id``.

    Covers ``start`` (00:00 UTC) up to, not including, ``start + days``.
    ``round(customers × default_share)`` customers are written off inside
    the window. Raises ValueError for impossible arguments.

    >>> events = list(simulate(customers=20, days=400, seed=7, default_share=0.1))
    >>> events[0]["type"], events[0]["occurred_at"][:10]
    ('customer.registered', '2025-01-01')
    >>> len(ground_truth(events))
    2
    >>> events == list(simulate(customers=20, days=400, seed=7, default_share=0.1))
    True
    """
    portfolio, records, cal = _generate(customers, days, seed, start, default_share)
    formatter = _Formatter(portfolio, seed, cal, len(records))
    for n, record in enumerate(records, start=1):
        yield formatter.event(n, record)


def simulate_lines(
    customers: int,
    days: int,
    seed: int,
    start: date = DEFAULT_START,
    default_share: float = DEFAULT_SHARE,
) -> Iterator[str]:
    """The same events as :func:`simulate`, as JSONL lines (``to_line(event)``, no newline), faster."""
    portfolio, records, cal = _generate(customers, days, seed, start, default_share)
    formatter = _Formatter(portfolio, seed, cal, len(records))
    for n, record in enumerate(records, start=1):
        yield formatter.line(n, record)


def write_jsonl(events: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Write events one per line; returns how many."""
    count = 0
    write = out.write
    for event in events:
        write(to_line(event))
        write("\n")
        count += 1
    return count


def _field(event: Any, name: str) -> Any:
    return event[name] if isinstance(event, Mapping) else getattr(event, name)


def _utc_day(occurred_at: Any) -> date:
    when = occurred_at if isinstance(occurred_at, datetime) else datetime.fromisoformat(str(occurred_at))
    return when.astimezone(timezone.utc).date()


def ground_truth(events: Iterable[Any]) -> dict[str, date]:
    """customer_id → the (UTC) day of its first write-off, from dicts or validated events."""
    truth: dict[str, date] = {}
    for event in events:
        if _field(event, "type") != "invoice.written_off":
            continue
        customer_id = _field(event, "customer_id")
        day = _utc_day(_field(event, "occurred_at"))
        if customer_id not in truth or day < truth[customer_id]:
            truth[customer_id] = day
    return dict(sorted(truth.items()))


@dataclass
class Evaluation:
    """Customer-level quality of alerts against the written-off customers."""

    defaulted: int
    flagged: int  # customers with a warning/critical alert (before their write-off, for defaulted ones)
    caught: int  # defaulted customers warned before their write-off
    lead_days: list[int] = field(default_factory=list)  # per caught customer: write-off day − first warning day
    false_positives: dict[str, int] = field(default_factory=dict)  # detector → healthy customers it flagged

    @property
    def recall(self) -> float | None:
        return self.caught / self.defaulted if self.defaulted else None

    @property
    def precision(self) -> float | None:
        return self.caught / self.flagged if self.flagged else None

    @property
    def median_lead_days(self) -> float | None:
        if not self.lead_days:
            return None
        ordered = sorted(self.lead_days)
        middle = len(ordered) // 2
        return float(ordered[middle]) if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def to_json(self) -> dict[str, Any]:
        return {
            "defaulted": self.defaulted, "flagged": self.flagged, "caught": self.caught,
            "recall": self.recall, "precision": self.precision, "median_lead_days": self.median_lead_days,
            "false_positives_by_detector": dict(sorted(self.false_positives.items(), key=lambda kv: -kv[1])),
        }


def evaluate(alerts: Iterable[Mapping[str, Any]], truth: Mapping[str, date],
             severities: frozenset[str] = frozenset({"warning", "critical"})) -> Evaluation:
    """Recall, lead time and precision of alerts at customer level.

    ``alerts`` are alert revisions (``BacktestResult.updates``' alerts give the
    exact day each severity was reached; the latest revisions of
    ``backtest --json`` give a conservative, later day). A revision counts from
    its ``updated_at`` (or ``raised_at``). A written-off customer counts as
    caught when a revision of one of ``severities`` came before its write-off day.
    """
    first: dict[str, date] = {}
    healthy_detectors: dict[str, set[str]] = {}
    for alert in alerts:
        if alert.get("severity") not in severities:
            continue
        customer_id = alert["customer_id"]
        day = _utc_day(alert.get("updated_at") or alert["raised_at"])
        write_off = truth.get(customer_id)
        if write_off is not None and day >= write_off:
            continue
        if customer_id not in first or day < first[customer_id]:
            first[customer_id] = day
        if write_off is None:
            healthy_detectors.setdefault(alert["detector"], set()).add(customer_id)
    caught = [customer_id for customer_id in first if customer_id in truth]
    return Evaluation(
        defaulted=len(truth),
        flagged=len(first),
        caught=len(caught),
        lead_days=sorted((truth[customer_id] - first[customer_id]).days for customer_id in caught),
        false_positives={name: len(ids) for name, ids in healthy_detectors.items()},
    )


def publish(lines: Iterable[str], settings: Any) -> Any:
    """Publish JSONL lines to the input topics with ``streams.ingest`` (its producer, its checks).

    Writes them to a temporary file first and returns the ``IngestReport``;
    raises ``streams.ingest.BrokerUnavailable`` when the broker is not there.
    """
    import tempfile
    from pathlib import Path

    from streams.ingest import ingest_file

    with tempfile.TemporaryDirectory(prefix="creditwatch-simulate-") as folder:
        path = Path(folder) / "events.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(line)
                out.write("\n")
        return ingest_file(path, settings)


# --- live mode for the demo ---------------------------------------------------------------------------


def live_stream(
    customers: int,
    seed: int,
    clock: Any,
    speed: float = 1.0,
    history_days: int = 90,
    horizon_days: int = 365,
    default_share: float = DEFAULT_SHARE,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """The portfolio around the clock's "now": the recent past at once, then in (simulated) real time.

    Simulates ``history_days`` before the clock's current day plus
    ``horizon_days`` after it (``simulate(start=today - history_days)``).
    Events up to now are yielded immediately — a fast replay that gives the
    system a history — and every later event when simulated time reaches its
    ``occurred_at``, where simulated time runs ``speed`` times as fast as the
    clock (``speed=1``: real time; ``speed=86400``: a day per second).
    Events keep their simulated timestamps. ``clock`` is anything with a
    ``now()`` returning an aware datetime (``pipeline.clock.SystemClock`` live,
    ``ManualClock`` in tests); ``sleep`` waits real seconds. The stream ends
    after the horizon.
    """
    if speed <= 0:
        raise ValueError(f"speed must be greater than 0, got {speed}")
    began = clock.now()
    start = began.astimezone(timezone.utc).date() - timedelta(days=history_days)
    for event in simulate(customers, history_days + horizon_days, seed, start=start, default_share=default_share):
        when = datetime.fromisoformat(event["occurred_at"])
        while True:
            simulated_now = began + (clock.now() - began) * speed
            wait = (when - simulated_now).total_seconds() / speed
            if wait <= 0:
                break
            sleep(min(wait, 1.0))
        yield event
