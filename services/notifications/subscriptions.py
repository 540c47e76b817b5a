"""Push subscriptions, the use cases behind their RPCs: register, read, list, remove.

A subscription is one browser's: its endpoint (the push service's URL) is unique, so
registering an endpoint again renews its keys, and registering one another user had, with its
keys (the same browser, now signed in as someone else), moves it to the caller: a browser pushes
to whoever subscribed on it last. Knowing an endpoint without its auth secret takes nothing.
Its keys must be usable (`push_keys.key_problems`) and its endpoint must pass the address
policy webhooks pass, at registration and again at every push. A user has at most
MAX_PUSH_SUBSCRIPTIONS; their stale ones (expired, or made for a replaced VAPID key) are
removed when they register another. Where no VAPID key is configured, nothing can be registered.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from services.kit.domain_errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.notifications.domain import (
    AddressPolicy,
    OwnerCheck,
    PushSubscription,
    Repository,
    Transactions,
    owned_page,
    utcnow,
)
from services.notifications.push_keys import key_problems, origin

__all__ = ["CONFIG_NAME", "MAX_PUSH_SUBSCRIPTIONS", "PushSubscriptions", "expiration_ms"]

MAX_PUSH_SUBSCRIPTIONS = 20
CONFIG_NAME = "pushConfig"
_FIELD = "push_subscription"
_LATEST_EXPIRY_MS = 253402300799999
"""9999-12-31T23:59:59.999Z: later is no date a browser gives."""
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def expiration_ms(subscription: PushSubscription) -> int | None:
    """Its expiry as the browser gave it: milliseconds since the Unix epoch."""
    if subscription.expire_time is None:
        return None
    return (subscription.expire_time - _EPOCH) // dt.timedelta(milliseconds=1)


class _Collision(Exception):
    """A concurrent registration of the same endpoint won."""


@dataclass
class PushSubscriptions:
    transactions: Transactions
    address_policy: AddressPolicy
    application_server_key: str
    """The VAPID public key browsers subscribe with; "" where pushes are not configured."""
    clock: Callable[[], dt.datetime] = utcnow

    def config(self, name: str = CONFIG_NAME) -> str:
        """The application server key (GetPushConfig of `name`, the singleton's name)."""
        if name != CONFIG_NAME:
            raise InvalidArgument(
                "NAME_INVALID",
                "name must be pushConfig, got {name!r}",
                violations=[FieldViolation("name", "must be pushConfig")],
                name=name[:100],
            )
        if not self.application_server_key:
            raise FailedPrecondition("PUSH_NOT_CONFIGURED", "this deployment sends no pushes")
        return self.application_server_key

    def create(
        self, owner: str, endpoint: str, p256dh: str, auth: str, expiration_ms: int | None
    ) -> PushSubscription:
        self.config()
        self._check(endpoint, p256dh, auth, expiration_ms)
        expire_time = None if expiration_ms is None else _EPOCH + dt.timedelta(milliseconds=expiration_ms)
        for _ in range(3):
            try:
                return self._register(owner, endpoint, p256dh, auth, expire_time)
            except _Collision:
                continue  # read again: it is there now
        raise Aborted("PUSH_SUBSCRIPTION_CONFLICT", "the endpoint is being registered concurrently; retry")

    def _register(
        self, owner: str, endpoint: str, p256dh: str, auth: str, expire_time: dt.datetime | None
    ) -> PushSubscription:
        now, server_key = self.clock(), self.application_server_key
        with self.transactions() as repo:
            found = repo.push_subscription_at(endpoint)
            if found is not None and found.owner == owner:
                renewed = replace(
                    found, p256dh=p256dh, auth=auth, expire_time=expire_time, server_key=server_key
                )
                repo.renew_push_subscription(renewed)
                return renewed
            if found is not None:  # another user's, on this browser before: the caller's now
                if not hmac.compare_digest(found.auth.encode(), auth.encode()):
                    raise PermissionDenied(
                        "PUSH_ENDPOINT_TAKEN",
                        "the endpoint is another user's; subscribe again in the browser",
                    )
                self._remove(repo, found.id, now)
            for stale in repo.push_subscriptions_of(owner):
                if not stale.usable(now, server_key):
                    self._remove(repo, stale.id, now)
            if not repo.reserve_push_slot(owner, MAX_PUSH_SUBSCRIPTIONS):
                raise ResourceExhausted(
                    "PUSH_SUBSCRIPTION_LIMIT",
                    "a user may have at most {limit} push subscriptions",
                    limit=MAX_PUSH_SUBSCRIPTIONS,
                )
            made = PushSubscription(
                f"ps-{secrets.token_hex(8)}", owner, endpoint, p256dh, auth, expire_time, now, server_key
            )
            if not repo.add_push_subscription(made):
                raise _Collision
            return made

    def _check(self, endpoint: str, p256dh: str, auth: str, expiration_ms: int | None) -> None:
        violations: list[FieldViolation] = []
        problem = (
            "is required"
            if not endpoint
            else "must be at most 2048 characters"
            if len(endpoint) > 2048
            else self.address_policy(endpoint)
            or (None if origin(endpoint) else "must name its host by name or IPv4 address")
        )
        if problem:
            violations.append(FieldViolation(f"{_FIELD}.endpoint", problem))
        violations += key_problems(p256dh, auth, field=f"{_FIELD}.keys")
        if expiration_ms is not None and not 0 < expiration_ms <= _LATEST_EXPIRY_MS:
            violations.append(
                FieldViolation(f"{_FIELD}.expiration_time", "must be milliseconds since the Unix epoch")
            )
        elif expiration_ms is not None and expiration_ms <= self.clock().timestamp() * 1000:
            violations.append(FieldViolation(f"{_FIELD}.expiration_time", "must be in the future"))
        if violations:
            raise InvalidArgument(
                "PUSH_SUBSCRIPTION_INVALID", "the push subscription is invalid", violations=violations
            )

    def get(self, subscription_id: str, check_owner: OwnerCheck) -> PushSubscription:
        with self.transactions() as repo:
            found = repo.push_subscription(subscription_id)
        check_owner(found.owner if found else "", f"pushSubscriptions/{subscription_id}")
        if found is None:
            raise NotFound(
                "PUSH_SUBSCRIPTION_NOT_FOUND",
                "pushSubscriptions/{push_subscription} does not exist",
                push_subscription=subscription_id,
            )
        return found

    def list(self, owner: str | None, size: int, token: str) -> tuple[list[PushSubscription], str]:
        """`owner`'s subscriptions, or everyone's for None; newest first."""
        return owned_page(
            self.transactions, lambda repo, *page: repo.list_push_subscriptions(*page), owner, size, token
        )

    def delete(self, subscription_id: str, check_owner: OwnerCheck) -> None:
        found = self.get(subscription_id, check_owner)
        with self.transactions() as repo:
            self._remove(repo, found.id, self.clock())

    @staticmethod
    def _remove(repo: Repository, subscription_id: str, now: dt.datetime) -> None:
        owner = repo.delete_push_subscription(subscription_id, now)
        if owner is not None:
            repo.release_push_slot(owner)
