"""Users, passwords, roles, CSRF tokens and login throttling for the web app.

Passwords are hashed with Argon2id (``argon2-cffi``'s defaults, RFC 9106 low
memory profile). A failed login costs the same whether or not the user exists
(an unknown name is verified against a dummy hash), and repeated failures for
one name or from one client are refused for a while (:class:`LoginThrottle`).

Roles, weakest first::

    viewer       reads everything, changes nothing
    ops          + acknowledges, assigns, resolves, marks false positives
    controller   + approves credit-limit recommendations
    admin        everything
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from sinks.store import ROLES  # noqa: E402  (one list of roles: the users table checks it too)
#: Roles that may work alerts (acknowledge, assign, resolve, mark false positive, reopen).
ACT_ROLES = frozenset({"controller", "ops", "admin"})
#: Roles that may approve a credit-limit recommendation (which changes the limit upstream).
APPROVE_ROLES = frozenset({"controller", "admin"})

MIN_PASSWORD_LENGTH = 8
MAX_NAME_LENGTH = 64

_hasher = PasswordHasher()
_dummy_hash: str | None = None


def use_hasher(hasher: PasswordHasher) -> PasswordHasher:
    """Hash new passwords with ``hasher`` (tests use cheap parameters); returns the previous one."""
    global _hasher, _dummy_hash
    previous, _hasher, _dummy_hash = _hasher, hasher, None
    return previous


def _dummy() -> str:
    """A hash with the current parameters, to verify unknown users against (as slow as a real check)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; with no hash (unknown user) it takes as long and is False."""
    try:
        return _hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


def check_new_user(name: str, role: str, password: str) -> None:
    """Raise ValueError (one line) for a name, role or password that cannot be used."""
    if not name or len(name) > MAX_NAME_LENGTH or name != name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"a user name is 1 to {MAX_NAME_LENGTH} characters without spaces")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def can_act(role: str | None) -> bool:
    return role in ACT_ROLES


def can_approve(role: str | None) -> bool:
    return role in APPROVE_ROLES


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass
class LoginThrottle:
    """At most ``max_failures`` failed logins per user name in ``window`` seconds, and
    ``client_max_failures`` per client address (higher: many users may share a proxy's address).

    In memory, per process: enough for one web process; a fleet behind a load
    balancer would keep this in the database or at the proxy.
    """

    max_failures: int = 5
    window: float = 300.0
    clock: object = time.monotonic
    client_max_failures: int = 20
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _keys(self, name: str, client: str) -> tuple[str, str]:
        return (f"user:{name.lower()}", f"client:{client}")

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, name: str, client: str) -> float:
        """Seconds until another attempt is allowed (0 = now)."""
        now = self.clock()  # type: ignore[operator]
        wait = 0.0
        with self._lock:
            for key, limit in zip(self._keys(name, client), (self.max_failures, self.client_max_failures)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    wait = max(wait, times[-limit] + self.window - now)
        return wait

    def failed(self, name: str, client: str) -> None:
        now = self.clock()  # type: ignore[operator]
        with self._lock:
            for key in self._keys(name, client):
                self._failures.setdefault(key, deque()).append(now)
                if len(self._failures[key]) > self.client_max_failures:
                    self._failures[key].popleft()

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{name.lower()}", None)
