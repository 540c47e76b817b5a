"""Password policy and argon2id hashing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.auth.passwords import Argon2Hasher, password_problem
from services.auth.settings import IdentitySettings
from services.kit.domain_errors import ResourceExhausted

CHEAP = IdentitySettings(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1)


@pytest.mark.parametrize(
    "password",
    ["violet-harbour-lantern-42", "Correct Horse Battery Staple", "zq8#Lm2!vR7@pT4x"],
    ids=["passphrase", "spaces", "random"],
)
def test_good_passwords_pass(password: str) -> None:
    assert password_problem(password) is None


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short-pass1", "at least 12"),
        ("x" * 257, "at most 256"),
        ("abababababab", "different characters"),
        ("1q2w3e4r5t6y", "too common"),
        ("qwertyuiop1234", "too common"),
        ("Password1234!!", "too common"),
        ("dragondragon", "too common"),
        ("iloveyou2024", "too common"),
    ],
    ids=[
        "short",
        "long",
        "few-characters",
        "keyboard-walk",
        "keyboard+digits",
        "common+digits",
        "repeated",
        "common+year",
    ],
)
def test_weak_passwords_are_refused_with_a_reason(password: str, problem: str) -> None:
    found = password_problem(password)
    assert found is not None and problem in found


def test_hash_verify_and_rehash_when_the_cost_rises() -> None:
    hasher = Argon2Hasher(CHEAP)
    hashed = hasher.hash("violet-harbour-lantern-42")
    assert hashed.startswith("$argon2id$") and "violet" not in hashed
    assert hasher.verify(hashed, "violet-harbour-lantern-42")
    assert not hasher.verify(hashed, "violet-harbour-lantern-43")
    assert not hasher.verify("not a hash", "anything")
    assert not hasher.needs_rehash(hashed)
    stronger = Argon2Hasher(
        IdentitySettings(argon2_time_cost=2, argon2_memory_kib=8192, argon2_parallelism=1)
    )
    assert stronger.needs_rehash(hashed)


def test_an_unknown_account_costs_a_full_verification_that_never_succeeds() -> None:
    hasher = Argon2Hasher(CHEAP)
    # The decoy is a real hash with the configured cost, so verifying against it takes as
    # long as verifying a real password; bench-free proof: its parameters are current.
    assert not hasher.needs_rehash(hasher._decoy)
    assert not hasher.verify(None, "decoy password that never matches")


@pytest.mark.parametrize(
    ("budget_kib", "slots"),
    [(8192, 1), (16383, 1), (16384, 2), (262144, 32)],
    ids=["one", "under-two", "two", "many"],
)
def test_concurrent_hashes_are_the_budget_over_the_memory_cost(budget_kib: int, slots: int) -> None:
    settings = IdentitySettings(
        argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1, argon2_memory_budget_kib=budget_kib
    )
    assert Argon2Hasher(settings).slots == slots


def test_beyond_its_slots_a_check_is_refused_with_a_retry_delay_not_queued() -> None:
    slow = IdentitySettings(
        argon2_time_cost=30, argon2_memory_kib=8192, argon2_parallelism=1, argon2_memory_budget_kib=8192
    )
    hasher = Argon2Hasher(slow, wait_seconds=0.01, retry_after_seconds=2.0)
    hashed = hasher.hash("violet-harbour-lantern-42")
    start_line = threading.Barrier(4)

    def check() -> str:
        start_line.wait()
        try:
            return "match" if hasher.verify(hashed, "violet-harbour-lantern-42") else "mismatch"
        except ResourceExhausted as refused:
            assert refused.reason == "CREDENTIAL_CHECKS_BUSY" and refused.retry_after_seconds == 2.0
            return "busy"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(lambda _: check(), range(4)))
    assert "match" in outcomes and "busy" in outcomes and "mismatch" not in outcomes, outcomes


@pytest.mark.parametrize(("budget_kib", "hash_slots"), [(8192, 1), (16384, 1), (24576, 1), (32768, 2)])
def test_hashes_may_hold_at_most_half_of_the_slots(budget_kib: int, hash_slots: int) -> None:
    settings = IdentitySettings(
        argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1, argon2_memory_budget_kib=budget_kib
    )
    assert Argon2Hasher(settings).hash_slots == hash_slots


def test_a_flood_of_hashes_leaves_verification_its_slots() -> None:
    """Registrations hash; logins verify. Four hashes at once on two slots: one hashes, the
    others are refused at once, and a verification still finds a slot."""
    slow = IdentitySettings(
        argon2_time_cost=30, argon2_memory_kib=8192, argon2_parallelism=1, argon2_memory_budget_kib=16384
    )
    hasher = Argon2Hasher(slow, wait_seconds=0.01)
    hashed = hasher.hash("violet-harbour-lantern-42")
    start_line = threading.Barrier(4)
    hashing = threading.Event()

    def register() -> str:
        start_line.wait()
        try:
            hasher.hash("violet-harbour-lantern-42")
        except ResourceExhausted as refused:
            assert refused.reason == "CREDENTIAL_CHECKS_BUSY" and refused.retry_after_seconds == 1.0
            return "busy"
        finally:
            hashing.set()
        return "hashed"

    with ThreadPoolExecutor(4) as pool:
        registrations = [pool.submit(register) for _ in range(4)]
        assert hashing.wait(5)
        assert hasher.verify(hashed, "violet-harbour-lantern-42")  # not CREDENTIAL_CHECKS_BUSY
        outcomes = sorted(r.result() for r in registrations)
    assert outcomes == ["busy", "busy", "busy", "hashed"], outcomes
