"""The two quotas every question passes: per user per rolling hour, per organization per rolling day.

The organization's window is looked at first, so a user whose organization is out of messages does not spend
their own; then the user's hit and the organization's hit are each atomic in the storage, so neither limit is
ever exceeded, however many requests race (from any number of processes sharing the storage).
"""

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from limits import RateLimitItemPerDay, RateLimitItemPerHour
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from sqlalchemy.ext.asyncio import AsyncEngine

from citechat.auth.service import Principal
from citechat.errors import CitechatError, ServiceUnavailable
from citechat.ratelimits.storage import PostgresStorage


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
    def __init__(self, storage, *, per_user_per_hour: int, per_org_per_day: int) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._user = RateLimitItemPerHour(per_user_per_hour)
        self._org = RateLimitItemPerDay(per_org_per_day)

    async def consume(self, principal: Principal) -> Quota:
        """Counts one message against both quotas, or raises ``RateLimited`` naming the one that is spent.

        Returns the tighter quota after the hit (for the ``X-RateLimit-*`` headers)."""
        user, org = _ids(principal)
        try:
            if not await self._limiter.test(self._org, *org):
                raise RateLimited(await self._quota("organization", self._org, org))
            if not await self._limiter.hit(self._user, *user):
                raise RateLimited(await self._quota("user", self._user, user))
            if not await self._limiter.hit(self._org, *org):
                raise RateLimited(await self._quota("organization", self._org, org))
        except StorageError as exc:
            raise ServiceUnavailable("the rate-limit store is unavailable; try again shortly") from exc
        return await self.tightest(principal)

    async def tightest(self, principal: Principal) -> Quota:
        """The quota with the fewest messages left (for the ``X-RateLimit-*`` headers)."""
        return min(await self.status(principal), key=lambda quota: quota.remaining)

    async def status(self, principal: Principal) -> tuple[Quota, Quota]:
        user, org = _ids(principal)
        try:
            # Read at once (two statements in parallel, not one after the other: this is on every question's path).
            user_quota, org_quota = await asyncio.gather(
                self._quota("user", self._user, user), self._quota("organization", self._org, org)
            )
            return user_quota, org_quota
        except StorageError as exc:
            raise ServiceUnavailable("the rate-limit store is unavailable; try again shortly") from exc

    async def _quota(self, scope: str, item, ids: tuple[str, ...]) -> Quota:
        stats = await self._limiter.get_window_stats(item, *ids)
        return Quota(scope, item.amount, max(stats.remaining, 0), stats.reset_time)


def rate_limits_from_settings(settings, autocommit: AsyncEngine) -> RateLimits:
    """PostgreSQL (the app's own database, through its ``autocommit`` engine) unless ``ratelimit_storage`` names a
    ``limits`` storage URI."""
    if settings.ratelimit_storage:
        storage = storage_from_string(settings.ratelimit_storage, wrap_exceptions=True)
    else:
        storage = PostgresStorage(autocommit)
    return RateLimits(
        storage, per_user_per_hour=settings.ratelimit_user_per_hour, per_org_per_day=settings.ratelimit_org_per_day
    )


def _ids(principal: Principal) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("user", str(principal.user_id)), ("organization", str(principal.organization_id))
