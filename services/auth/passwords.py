"""Passwords: the registration policy and argon2id hashing.

Policy (NIST SP 800-63B style: length and a blocklist, no composition rules): 12 to 256
characters, at least 5 different characters, and not a common password — neither one from
the shipped list (``common-passwords.txt.gz``, about 19,000 entries), nor one of them
followed by digits or punctuation (``password1234``), nor one of them repeated
(``qwertyqwerty``).

Hashes are argon2id (argon2-cffi). The cost parameters come from settings; a hash made with
weaker parameters is replaced at the next successful login (`Argon2Hasher.needs_rehash`).
Each hash or verification holds ``argon2_memory_kib`` of memory while it runs, so a process
runs at most ``argon2_memory_budget_kib // argon2_memory_kib`` at once; a call that finds
them all taken waits briefly, then is refused with `ResourceExhausted` (a retry delay).
Hashing (a registration, a new client secret, a rehash at login) may hold at most half of
those slots (at least one) and never waits for that share, so a flood of registrations
cannot take the slots that logins verify with: with two slots or more, at least half are
always left to verification.
"""

from __future__ import annotations

import gzip
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.auth.settings import IdentitySettings
from services.kit.domain_errors import ResourceExhausted

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "Argon2Hasher", "password_problem"]

MIN_LENGTH = 12
MAX_LENGTH = 256
_MIN_DISTINCT = 5
_LIST = Path(__file__).with_name("common-passwords.txt.gz")
_TRAILING = string.digits + string.punctuation + " "


@cache
def _common() -> frozenset[str]:
    with gzip.open(_LIST, "rt", encoding="utf-8") as lines:
        return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def password_problem(password: str) -> str | None:
    """Why `password` is refused, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if len(set(password)) < _MIN_DISTINCT:
        return f"must contain at least {_MIN_DISTINCT} different characters"
    lowered = password.lower()
    common = _common()
    stem = lowered.rstrip(_TRAILING)
    if lowered in common or (len(stem) >= 4 and stem in common) or _repeats_common(lowered, common):
        return "is too common; choose a longer, less predictable passphrase"
    return None


def _repeats_common(password: str, common: frozenset[str]) -> bool:
    for times in range(2, len(password) // 4 + 1):
        if len(password) % times == 0:
            unit = password[: len(password) // times]
            if unit * times == password and unit in common:
                return True
    return False


class Argon2Hasher:
    """argon2id with the cost parameters of `settings`, at most `slots` at once.

    `wait_seconds` is how long a call waits for a free slot before `ResourceExhausted`;
    `retry_after_seconds` is the delay that refusal suggests. At most `hash_slots` of the
    slots hash at once; a hash finding that share taken is refused at once.
    """

    def __init__(
        self, settings: IdentitySettings, *, wait_seconds: float = 0.5, retry_after_seconds: float = 1.0
    ) -> None:
        self.slots = max(1, settings.argon2_memory_budget_kib // settings.argon2_memory_kib)
        self.hash_slots = max(1, self.slots // 2)
        self._free = threading.BoundedSemaphore(self.slots)
        self._hashing = threading.BoundedSemaphore(self.hash_slots)
        self._wait = wait_seconds
        self._retry_after = retry_after_seconds
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        # Verified against when an account does not exist, so an unknown email costs the
        # same time as a wrong password.
        self._decoy = self._hasher.hash("decoy password that never matches")

    @contextmanager
    def _slot(self, slots: threading.Semaphore, wait: float) -> Iterator[None]:
        if not slots.acquire(timeout=wait):
            raise ResourceExhausted(
                "CREDENTIAL_CHECKS_BUSY",
                "too many password checks at once; try again in {seconds} seconds",
                retry_after_seconds=self._retry_after,
                seconds=int(self._retry_after + 0.999),
            )
        try:
            yield
        finally:
            slots.release()

    def hash(self, secret: str) -> str:
        # Its share first, without waiting: past it, a flood of registrations is answered at
        # once (with a retry delay) instead of holding server threads in a queue.
        with self._slot(self._hashing, 0.0), self._slot(self._free, self._wait):
            return self._hasher.hash(secret)

    def verify(self, hashed: str | None, secret: str) -> bool:
        """Whether `secret` matches `hashed`; with `hashed` None or empty (an account made by
        signing in elsewhere has no password), spends the same time and says no."""
        try:
            with self._slot(self._free, self._wait):
                return self._hasher.verify(hashed or self._decoy, secret) and bool(hashed)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        return self._hasher.check_needs_rehash(hashed)
