from __future__ import annotations

from decimal import Decimal
from typing import Any, Sequence

from pydantic import Field

from detectors.base import SEVERITY_RANK, DetectionContext, Detector, DetectorOptions, Finding, Reason, register
from detectors.rules._common import dec

#: S&P / Fitch long-term scale, best first; the index is the notch.
_SP_SCALE = ["AAA", "AA+", "AA", "AA-", "A+", "A", "A-", "BBB+", "BBB", "BBB-", "BB+", "BB", "BB-",
             "B+", "B", "B-", "CCC+", "CCC", "CCC-", "CC", "C"]
_DEFAULTED = 21
_NOTCH: dict[str, int] = {rating: index for index, rating in enumerate(_SP_SCALE)}
_NOTCH.update({"D": _DEFAULTED, "SD": _DEFAULTED, "RD": _DEFAULTED, "DDD": _DEFAULTED, "DD": _DEFAULTED})
#: Moody's long-term scale mapped onto the same notches.
_MOODYS = ["Aaa", "Aa1", "Aa2", "Aa3", "A1", "A2", "A3", "Baa1", "Baa2", "Baa3", "Ba1", "Ba2", "Ba3",
           "B1", "B2", "B3", "Caa1", "Caa2", "Caa3", "Ca"]
_NOTCH_MOODYS: dict[str, int] = {rating.lower(): index for index, rating in enumerate(_MOODYS)}
_NOTCH_MOODYS["c"] = _DEFAULTED

#: BBB- / Baa3 and better is investment grade.
LAST_INVESTMENT_GRADE = _NOTCH["BBB-"]
#: B- / B3: the last step before the CCC (substantial risk) category.
HIGHLY_SPECULATIVE = _NOTCH["B-"]
#: CCC+ / Caa1 and below: default is a real possibility (D = defaulted).
DISTRESSED = _NOTCH["CCC+"]

Rating = tuple[str, str, str, str, "Decimal | None"]  # (ts, event_id, agency, rating, pd), as the ledger keeps them


def notch(rating: str) -> int | None:
    """Position of a rating on an S&P-like scale (0 = AAA, 21 = default); None for other scales.

    >>> notch("BBB-"), notch("Baa3"), notch("b-"), notch("D"), notch("4A2")
    (9, 9, 15, 21, None)
    """
    text = rating.strip()
    found = _NOTCH.get(text.upper())
    if found is not None:
        return found
    return _NOTCH_MOODYS.get(text.lower())


def same_agency(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def previous_rating(ratings: Sequence[Rating], index: int) -> Rating | None:
    """The rating the same agency gave before ``ratings[index]`` (the ledger keeps them in time order)."""
    agency = ratings[index][2]
    for earlier in reversed(ratings[:index]):
        if same_agency(earlier[2], agency):
            return earlier
    return None


def superseded(ratings: Sequence[Rating], index: int) -> bool:
    """True when the same agency has published a later rating than ``ratings[index]``."""
    return any(same_agency(later[2], ratings[index][2]) for later in ratings[index + 1:])


def describe(rating: Rating) -> str:
    pd = rating[4]
    return f"{rating[3]} (PD {_pd(pd)})" if pd is not None else rating[3]


class RatingDowngradeOptions(DetectorOptions):
    warning_notches: int = Field(2, ge=1, le=21,
                                 description="downgrade by this many notches (same agency) raises a warning; "
                                             "a smaller downgrade is noted (info)")
    critical_notches: int = Field(3, ge=1, le=21, description="downgrade by this many notches at once is critical")
    pd_warning_jump: float = Field(0.02, ge=0.001, le=1.0,
                                   description="rise of the probability of default (absolute) that raises a warning")
    pd_jump: float = Field(0.05, ge=0.001, le=1.0,
                           description="rise of the probability of default (absolute) that is critical")
    pd_warning: float = Field(0.05, ge=0.001, le=1.0,
                              description="probability of default that raises a warning when a rating reaches it")
    pd_critical: float = Field(0.10, ge=0.001, le=1.0,
                               description="probability of default that is critical when a rating reaches it")

    def check(self) -> str | None:
        if self.warning_notches > self.critical_notches:
            return "warning_notches must not be above critical_notches"
        if self.pd_warning_jump > self.pd_jump:
            return "pd_warning_jump must not be above pd_jump"
        if self.pd_warning > self.pd_critical:
            return "pd_warning must not be above pd_critical"
        return None


@register
class RatingDowngrade(Detector):
    """A credit rating got worse, compared with the same agency's previous rating.

    Ratings are compared notch by notch on the S&P scale (AAA, AA+, AA, …,
    BBB- = last investment grade, …, B-, CCC+, …, C, D; Moody's Aaa…C is
    mapped onto it). Scales we do not know (bureau scores, insurer grades)
    are compared by their probability of default (PD) instead.

    * info: downgraded by 1 notch;
    * warning: 2 notches, out of investment grade (BBB- to BB+ or lower),
      PD up by 2 points, or the rating reaches B- / a PD of 5 %;
    * critical: 3 notches at once, PD up by 5 points, or the rating reaches
      CCC+ or below (default a real possibility), D, or a PD of 10 %.

    The levels (B-, CCC+, PD 5 % / 10 %) count for a first rating from an
    agency and for a downgrade, never for a reaffirmation or an upgrade.

    >>> from pipeline.builders import register as registered, make
    >>> from detectors.testing import run_detector
    >>> def rating(day, grade, pd=None):
    ...     return make("customer.rating_changed", day, agency="S&P", rating=grade, probability_of_default=pd)
    >>> finding = run_detector(RatingDowngrade(), [registered(), rating("2026-01-02", "BBB"), rating("2026-03-01", "BB+")])[0]
    >>> finding.severity, finding.title
    ('warning', 'S&P downgraded the customer from BBB to BB+ (2 notches)')
    >>> finding.reasons[0].value, finding.reasons[0].threshold
    (2.0, 2.0)
    >>> [f.severity for f in run_detector(RatingDowngrade(), [registered(), rating("2026-01-02", "BB"), rating("2026-03-01", "CCC+")])]
    ['critical']
    """

    name = "rating_downgrade"
    episode = "event"
    triggers = frozenset({"customer.rating_changed"})
    Options = RatingDowngradeOptions
    options: RatingDowngradeOptions

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        if ctx.event is None:
            return [], memory
        ratings = ctx.ledger.profile.ratings
        index = next((i for i, r in enumerate(ratings) if r[1] == ctx.event.event_id), None)
        if index is None or superseded(ratings, index):
            return [], memory  # an old rating arriving late: the agency has said something newer since
        current = ratings[index]
        previous = previous_rating(ratings, index)
        severity, reasons = self.assess(previous, current)
        if severity is None:
            return [], memory
        agency = current[2]
        if previous is None:
            title = f"First rating from {agency}: {describe(current)}"
        else:
            before, after = notch(previous[3]), notch(current[3])
            if before is not None and after is not None and after > before:
                steps = after - before
                title = (f"{agency} downgraded the customer from {previous[3]} to {current[3]} "
                         f"({steps} notch{'es' if steps > 1 else ''})")
            elif previous[4] is not None and current[4] is not None and current[4] > previous[4]:
                title = f"{agency} rating worsened from {describe(previous)} to {describe(current)}"
            else:
                title = f"{agency} rating changed from {describe(previous)} to {describe(current)}"
        evidence = (previous[1],) if previous is not None else ()
        return [self.finding(severity, title, reasons, ctx, evidence)], memory

    def assess(self, previous: Rating | None, current: Rating) -> tuple[str | None, list[Reason]]:
        """Severity (None: nothing to report) and reasons for ``current`` after ``previous`` (same agency)."""
        opts = self.options
        severity: str | None = None
        reasons: list[Reason] = []

        def worse(level: str) -> None:
            nonlocal severity
            if severity is None or SEVERITY_RANK[level] > SEVERITY_RANK[severity]:
                severity = level

        after, pd_after = notch(current[3]), current[4]
        if previous is not None:
            before, pd_before = notch(previous[3]), previous[4]
            readable = before is not None and after is not None
            pd_known = pd_before is not None and pd_after is not None
            got_worse = False
            if readable and after > before:  # type: ignore[operator]
                got_worse = True
                steps = after - before  # type: ignore[operator]
                level = ("critical" if steps >= opts.critical_notches
                         else "warning" if steps >= opts.warning_notches else "info")
                worse(level)
                reasons.append(Reason("rating_notches",
                                      f"{current[2]} rating down {steps} notch{'es' if steps > 1 else ''} from "
                                      f"{previous[3]} to {current[3]} (warning from {opts.warning_notches}, "
                                      f"critical from {opts.critical_notches})",
                                      float(steps),
                                      float(opts.critical_notches if level == "critical" else opts.warning_notches)))
                if before <= LAST_INVESTMENT_GRADE < after:  # type: ignore[operator]
                    worse("warning")
                    reasons.append(Reason("fallen_angel",
                                          f"{current[3]} is below investment grade (BBB-); {previous[3]} was not",
                                          float(after), float(LAST_INVESTMENT_GRADE)))  # type: ignore[arg-type]
            if pd_known and pd_after > pd_before:  # type: ignore[operator]
                jump = pd_after - pd_before  # type: ignore[operator]
                if jump >= dec(opts.pd_warning_jump):
                    got_worse = True
                    critical = jump >= dec(opts.pd_jump)
                    worse("critical" if critical else "warning")
                    reasons.append(Reason("pd_jump",
                                          f"probability of default up {float(jump) * 100:.1f} points, from "
                                          f"{_pd(pd_before)} to {_pd(pd_after)} (warning from "
                                          f"{opts.pd_warning_jump * 100:g}, critical from {opts.pd_jump * 100:g} points)",
                                          float(jump), opts.pd_jump if critical else opts.pd_warning_jump))
                elif not readable:
                    got_worse = True  # a scale we cannot read: the PD tells the direction
                    worse("info")
                    reasons.append(Reason("pd_up", f"probability of default up from {_pd(pd_before)} to {_pd(pd_after)}",
                                          float(jump), opts.pd_warning_jump))
            if not readable and not pd_known:
                if previous[3].strip() == current[3].strip():
                    return None, []
                # Changed on a scale we cannot read and without PDs: worth a note, not an alarm.
                worse("info")
                reasons.append(Reason("rating_changed", f"{current[2]} rating changed from {previous[3]} to "
                                                        f"{current[3]} (scale not known, no PD to compare)"))
            if not got_worse:
                return severity, reasons
        # Levels: reached by a first rating or by a downgrade, never by a reaffirmation or an upgrade.
        if after is not None and after >= DISTRESSED:
            worse("critical")
            what = "in default" if after == _DEFAULTED else "CCC+ or below: default is a real possibility"
            reasons.append(Reason("rating_distressed", f"{current[2]} rates the customer {current[3]} ({what})",
                                  float(after), float(DISTRESSED)))
        elif after is not None and after >= HIGHLY_SPECULATIVE:
            worse("warning")
            reasons.append(Reason("rating_highly_speculative",
                                  f"{current[2]} rates the customer {current[3]}, the last step before CCC",
                                  float(after), float(HIGHLY_SPECULATIVE)))
        if pd_after is not None:
            if pd_after >= dec(opts.pd_critical):
                worse("critical")
                reasons.append(Reason("pd_level", f"probability of default {_pd(pd_after)} "
                                                  f"(critical from {_pd(opts.pd_critical)})",
                                      float(pd_after), opts.pd_critical))
            elif pd_after >= dec(opts.pd_warning):
                worse("warning")
                reasons.append(Reason("pd_level", f"probability of default {_pd(pd_after)} "
                                                  f"(warning from {_pd(opts.pd_warning)})",
                                      float(pd_after), opts.pd_warning))
        return severity, reasons


def _pd(value: Decimal | float) -> str:
    return f"{float(value) * 100:.1f}%"
