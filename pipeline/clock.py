"""Time as an explicit object, so that live runs and replays run the same code.

Live workers use :class:`SystemClock`; backtests use :class:`EventTimeClock`,
which is moved forward by the events themselves; tests use :class:`ManualClock`.
Nothing in the ledger or the detectors reads the wall clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    def __init__(self, start: datetime):
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when


class EventTimeClock:
    """Never goes backwards: an out-of-order event does not rewind time."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(1970, 1, 1, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self._now

    def observe(self, occurred_at: datetime) -> None:
        if occurred_at > self._now:
            self._now = occurred_at


class AcceleratedClock:
    """Wall time run ``speed`` times as fast from ``anchor`` (the demo: a day in 24 s at 3600×).

    ``now() = anchor + (wall now - anchor) × speed``; two processes given the
    same anchor and speed agree on the time, so the demo's simulator and its
    worker share one accelerated "now".
    """

    def __init__(self, anchor: datetime, speed: float, wall: Clock | None = None):
        if speed <= 0:
            raise ValueError(f"clock speed must be greater than 0, got {speed}")
        self.anchor = anchor
        self.speed = speed
        self.wall = wall or SystemClock()

    def now(self) -> datetime:
        return self.anchor + (self.wall.now() - self.anchor) * self.speed


def clock_from_settings(speed: float, anchor: str) -> Clock:
    if speed == 1.0 and not anchor:
        return SystemClock()
    start = datetime.fromisoformat(anchor) if anchor else datetime.now(timezone.utc)
    return AcceleratedClock(start, speed)
