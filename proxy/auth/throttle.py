"""Failed-login budgets per (address, user), per user and per address: decides whether a login may start."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass

from proxy.auth.prelogin import address_key

__all__ = ["AuthThrottle", "Refusal"]

LIMITS = ("address_user", "user", "address")  # the metric label of each budget


@dataclass(frozen=True, slots=True)
class Refusal:
    """A login refused before it starts: which budget is spent, and in how many seconds one frees up."""

    limit: str
    retry_after: float


class _Budgets:
    """Failure timestamps within the window, per key; bounded, least recently failed keys forgotten first."""

    def __init__(self, window: float, max_tracked: int) -> None:
        self.window = window
        self.max_tracked = max_tracked
        self.entries: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def used(self, key: Hashable, now: float) -> int:
        failures = self.entries.get(key)
        if failures is None:
            return 0
        self._expire(failures, now)
        return len(failures)

    def retry_after(self, key: Hashable, now: float) -> float:
        """Seconds until the oldest failure of `key` leaves the window (at least 1)."""
        failures = self.entries.get(key)
        return max(1.0, failures[0] + self.window - now) if failures else 1.0

    def record(self, key: Hashable, now: float, limit: int) -> None:
        self._prune(now)
        failures = self.entries.get(key)
        if failures is None:
            failures = self.entries[key] = deque()
            if len(self.entries) > self.max_tracked:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
        failures.append(now)
        while len(failures) > limit:  # older ones no longer change any decision
            failures.popleft()

    def clear(self, key: Hashable) -> None:
        self.entries.pop(key, None)

    def _expire(self, failures: deque[float], now: float) -> None:
        cutoff = now - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()

    def _prune(self, now: float) -> None:
        """Drop keys whose failures all expired (least recently failed first)."""
        cutoff = now - self.window
        while self.entries:
            key, failures = next(iter(self.entries.items()))
            if failures and failures[-1] > cutoff:
                break
            del self.entries[key]


class AuthThrottle:
    """Budgets of failed logins in a sliding window of ``window`` seconds; a login beyond one is refused.

    * (address, user): ``max_failures`` — guessing one user's password from one place;
    * user, across addresses: ``max_user_failures`` — a distributed guess at one user;
    * address, across users: ``max_address_failures`` — a password spray over many user names from one place.

    The user and address budgets, once spent, refuse only a user that has itself failed from that address
    within the window (and has not logged in from there within ``remember_success`` seconds): a user
    that has not failed where it logs in from is never refused because of others' failures —
    another tenant's user behind the same NAT or Tableau Server, junk names sprayed from its address, a guesser
    elsewhere, a restart. What is left to an attacker once they are spent is one guess per (address, user) per
    window (docs/security.md says what this bounds). Addresses count per /64 for IPv6.

    A user that logged in from an address within ``remember_success`` seconds has there an (address, user)
    budget the size of the per-user one (``max_user_failures``, 20 by default, instead of ``max_failures``):
    someone else behind the same address (a NAT, a shared Tableau Server) who types five wrong passwords under
    its name does not lock it out there; guesses from there stay bounded, by the per-user budget's size.

    A login is checked when it starts and again when its proof arrives, before the proof is looked at: logins
    started in parallel cannot outrun a budget (only the budget's worth of guesses ever get an answer), while
    parallel logins with the right password (a pool filling up) are not held back. A success clears only its
    own (address, user) failures. Unknown user names are counted like real ones, so a refusal tells nothing.
    ``unlock`` forgets a user's failures (the admin console's UNLOCK).

    Pure logic: every method takes ``now`` (seconds on any monotonic clock; time.monotonic() when omitted).
    Memory is bounded: at most ``max_tracked`` keys per budget, and ``max_known_addresses`` remembered
    successes per user (only real users succeed, so other users cannot push a user's out). One event loop only.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        max_user_failures: int = 20,
        max_address_failures: int = 100,
        max_tracked: int = 10000,
        remember_success: float = 86400.0,
        max_known_addresses: int = 16,
    ) -> None:
        if min(max_failures, max_user_failures, max_address_failures) < 1:
            raise ValueError("failure budgets must be at least 1")
        if not window > 0 or not remember_success > 0:
            raise ValueError("window and remember_success must be positive")
        if max_tracked < 1 or max_known_addresses < 1:
            raise ValueError("max_tracked and max_known_addresses must be at least 1")
        self.max_failures = max_failures
        self.max_user_failures = max_user_failures
        self.max_address_failures = max_address_failures
        self.remember_success = remember_success
        self.max_known_addresses = max_known_addresses
        self._pairs = _Budgets(window, max_tracked)
        self._users = _Budgets(window, max_tracked)
        self._addresses = _Budgets(window, max_tracked)
        self._known: dict[str, OrderedDict[str, float]] = {}  # user -> {address: last success}, oldest first
        self.max_tracked = max_tracked

    @property
    def _known_failures(self) -> int:
        """The (address, user) budget of a user known at that address: the per-user budget's size."""
        return max(self.max_failures, self.max_user_failures)

    @property
    def window(self) -> float:
        return self._pairs.window

    @window.setter
    def window(self, value: float) -> None:
        for budgets in (self._pairs, self._users, self._addresses):
            budgets.window = value

    def __len__(self) -> int:
        """Keys currently tracked, over all budgets."""
        return len(self._pairs.entries) + len(self._users.entries) + len(self._addresses.entries)

    def failures(self, address: str, user: str, now: float | None = None) -> int:
        """Failures of (address, user) within the window ending at ``now``."""
        return self._pairs.used((address_key(address), user), _now(now))

    def known(self, address: str, user: str, now: float | None = None) -> bool:
        """True when ``user`` logged in successfully from ``address`` within ``remember_success``."""
        last = self._known.get(user, {}).get(address_key(address))
        return last is not None and _now(now) - last < self.remember_success

    def admit(self, address: str, user: str, now: float | None = None) -> Refusal | None:
        """May a login of ``user`` from ``address`` start, or its proof be looked at? None, or why not."""
        now = _now(now)
        address = address_key(address)
        pair = (address, user)
        failed_here = self._pairs.used(pair, now) > 0
        known = self.known(address, user, now)
        shared = failed_here and not known  # others' failures can refuse it
        checks = (  # all three are looked at every time: the work does not depend on what is known
            (self._pairs, pair, self._known_failures if known else self.max_failures, LIMITS[0], True),
            (self._users, user, self.max_user_failures, LIMITS[1], shared),
            (self._addresses, address, self.max_address_failures, LIMITS[2], shared),
        )
        spent = [(budgets, key, name) for budgets, key, limit, name, applies in checks
                 if budgets.used(key, now) >= limit and applies]
        if spent:
            budgets, key, name = spent[0]
            return Refusal(name, budgets.retry_after(key, now))
        return None

    def failed(self, address: str, user: str, now: float | None = None) -> None:
        """A login failed (or was abandoned after the server's challenge): it counts in every budget."""
        now = _now(now)
        address = address_key(address)
        self._pairs.record((address, user), now, self._known_failures)
        self._users.record(user, now, self.max_user_failures)
        self._addresses.record(address, now, self.max_address_failures)

    def succeeded(self, address: str, user: str, now: float | None = None) -> None:
        """A login succeeded: its own (address, user) failures are cleared, the address remembered for the user."""
        now = _now(now)
        address = address_key(address)
        self._pairs.clear((address, user))
        known = self._known.setdefault(user, OrderedDict())
        known[address] = now
        known.move_to_end(address)
        while len(known) > self.max_known_addresses or now - next(iter(known.values())) >= self.remember_success:
            known.popitem(last=False)

    def unlock(self, user: str) -> int:
        """Forget every failure of ``user`` (per user and per (address, user)); returns how many keys went."""
        keys = [key for key in self._pairs.entries if key[1] == user]
        for key in keys:
            self._pairs.clear(key)
        gone = len(keys) + (user in self._users.entries)
        self._users.clear(user)
        return gone


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
