"""The two quotas every question passes, as the API shows them (``Quota``, ``RateLimited``); where the hits are
counted is ``storage.py``."""

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from limits.storage import storage_from_string

from citechat.auth.service import Principal
from citechat.db.statements import Runner
from citechat.errors import CitechatError, ServiceUnavailable
from citechat.ratelimits.storage import (
    DAY_S,
    HOUR_S,
    LimitsQuotaStore,
    PostgresQuotaStore,
    QuotaStoreUnavailable,
    Window,
    Windows,
)


@dataclass(frozen=True)
class Quota:
    scope: str  # "user" or "organization"
    limit: int
    remaining: int
    reset: float  # epoch seconds: when the oldest message in the window leaves it

    @property
    def reset_at(self) -> datetime:
        return datetime.fromtimestamp(self.reset, UTC)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.remaining, 0)),
            "X-RateLimit-Reset": str(math.ceil(self.reset)),
        }


class RateLimited(CitechatError):
    status_code = 429

    def __init__(self, quota: Quota) -> None:
        window = "hour" if quota.scope == "user" else "day"
        super().__init__(
            f"{'your' if quota.scope == 'user' else 'your organization’s'} limit of {quota.limit} messages per "
            f"{window} is reached; it resets at {quota.reset_at.isoformat(timespec='seconds')}"
        )
        self.quota = quota

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.quota.reset - time.time()))


class RateLimits:
    """The two quotas every question passes: per user per rolling hour, per organization per rolling day.

    The organization's window is looked at first, so a user whose organization is out of messages does not spend
    their own; neither limit is ever exceeded, however many requests race (from any number of processes sharing
    the store)."""

    def __init__(self, store: PostgresQuotaStore | LimitsQuotaStore) -> None:
        self._store = store

    async def consume(self, principal: Principal) -> Quota:
        """Counts one message against both quotas, or raises ``RateLimited`` naming the one that is spent.

        Returns the tighter quota after the hit (for the ``X-RateLimit-*`` headers)."""
        return self._settle(await self._ask(self._store.consume, principal))

    def in_statement(self, principal: Principal) -> dict | None:
        """When the quotas are kept in the app's database: the parameters with which a statement that holds
        ``storage.consumed_when`` counts one message for ``principal`` (``consumed`` reads what it found). None
        for any other store: then ``consume``."""
        if not isinstance(self._store, PostgresQuotaStore):
            return None
        return self._store.parameters(*_keys(principal))

    def consumed(self, row) -> Quota:
        """``consume``'s answer, from the row of a statement that counted the message (``in_statement``)."""
        return self._settle(self._store.consumed(row))

    def _settle(self, windows: Windows) -> Quota:
        user, org = self._quotas(windows)
        if windows.refused is not None:
            raise RateLimited(user if windows.refused == "user" else org)
        return min((user, org), key=lambda quota: quota.remaining)

    async def tightest(self, principal: Principal) -> Quota:
        """The quota with the fewest messages left (for the ``X-RateLimit-*`` headers)."""
        return min(await self.status(principal), key=lambda quota: quota.remaining)

    async def status(self, principal: Principal) -> tuple[Quota, Quota]:
        return self._quotas(await self._ask(self._store.windows, principal))

    async def _ask(self, operation, principal: Principal) -> Windows:
        try:
            return await operation(*_keys(principal))
        except QuotaStoreUnavailable as exc:
            raise ServiceUnavailable("the rate-limit store is unavailable; try again shortly") from exc

    def _quotas(self, windows: Windows) -> tuple[Quota, Quota]:
        return self._quota("user", windows.user, HOUR_S), self._quota("organization", windows.organization, DAY_S)

    def _quota(self, scope: str, window: Window, length_s: int) -> Quota:
        return Quota(scope, window.limit, max(window.limit - window.hits, 0), window.oldest + length_s)


def _keys(principal: Principal) -> tuple[str, str]:
    return f"user/{principal.user_id}", f"organization/{principal.organization_id}"


def rate_limits_from_settings(settings, statements: Runner) -> RateLimits:
    """PostgreSQL (the app's own database, through the answer path's ``statements``) unless ``ratelimit_storage``
    names a ``limits`` storage URI."""
    limits = {"per_user_per_hour": settings.ratelimit_user_per_hour, "per_org_per_day": settings.ratelimit_org_per_day}
    if settings.ratelimit_storage:
        store = LimitsQuotaStore(storage_from_string(settings.ratelimit_storage, wrap_exceptions=True), **limits)
    else:
        store = PostgresQuotaStore(statements, **limits)
    return RateLimits(store)
