"""Where the quotas' hits are kept: PostgreSQL by default (the app's own database, so the default set-up needs no
Redis), or any storage of the ``limits`` library (``CITECHAT_RATELIMIT_STORAGE``: Redis for several hosts, memory
for offline evaluation runs).

Both count a moving window exactly under concurrency, across processes. On PostgreSQL a row per accepted hit is
kept, with each key's count beside it (``chat_rate_limit_counts``), and one database function
(``citechat_consume_quota``, migrations 0005 and 0006) locks both keys, drops their expired hits (and takes them off
the counts), reads both windows and inserts both hits when both have room, in the same time however many hits a
window holds: a question's quota costs one round trip, on the answer path's connections (``Database.pool``,
``db.statements``), or none of its own when it is called inside the statement that admits the question
(``consumed_when``). Through ``limits`` it is the library's moving-window strategy, a round trip per step.
"""

import asyncio
from dataclasses import dataclass

import asyncpg
from limits import RateLimitItemPerDay, RateLimitItemPerHour
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from sqlalchemy import Float, Integer, String, bindparam, func, select, text

from citechat.db.statements import UNAVAILABLE, Runner, Statement, committed_asynchronously

HOUR_S, DAY_S = 3600, 86400


# Both windows read without changing them: each key's kept count less its hits that left the window and are not
# deleted yet (they are at the key's next hit), and its oldest hit still in the window.
_WINDOWS = Statement(
    text(
        "SELECT u.hits, u.oldest, o.hits, o.oldest, extract(epoch FROM clock.now)::float8"
        " FROM (SELECT clock_timestamp() AS now) AS clock,"
        " LATERAL (SELECT coalesce((SELECT hits FROM chat_rate_limit_counts WHERE key = :user_key), 0)"
        "  - (SELECT count(*) FROM chat_rate_limits"
        "     WHERE key = :user_key AND hit_at <= clock.now - make_interval(secs => :user_window)) AS hits,"
        "  extract(epoch FROM (SELECT hit_at FROM chat_rate_limits"
        "     WHERE key = :user_key AND hit_at > clock.now - make_interval(secs => :user_window)"
        "     ORDER BY hit_at LIMIT 1))::float8 AS oldest) AS u,"
        " LATERAL (SELECT coalesce((SELECT hits FROM chat_rate_limit_counts WHERE key = :org_key), 0)"
        "  - (SELECT count(*) FROM chat_rate_limits"
        "     WHERE key = :org_key AND hit_at <= clock.now - make_interval(secs => :org_window)) AS hits,"
        "  extract(epoch FROM (SELECT hit_at FROM chat_rate_limits"
        "     WHERE key = :org_key AND hit_at > clock.now - make_interval(secs => :org_window)"
        "     ORDER BY hit_at LIMIT 1))::float8 AS oldest) AS o"
    )
)


# ``citechat_consume_quota(...)`` as a table, with its parameters (``PostgresQuotaStore.parameters``) bound by name.
_CONSUMED = func.citechat_consume_quota(
    bindparam("user_key", type_=String),
    bindparam("user_limit", type_=Integer),
    bindparam("user_window", type_=Float),
    bindparam("org_key", type_=String),
    bindparam("org_limit", type_=Integer),
    bindparam("org_window", type_=Float),
).table_valued("refused", "user_hits", "user_oldest", "org_hits", "org_oldest")
_CONSUME = committed_asynchronously(select(*_CONSUMED.c))  # the question's own commit flushes its hits
_CONSUME_ALONE = Statement(_CONSUME)


def consumed_when(condition):
    """``citechat_consume_quota`` as a lateral subquery of a larger statement (``quota``: its columns, all NULL
    when it did not run), called only when ``condition`` holds. ``OFFSET 0`` keeps PostgreSQL from merging the
    subquery into the statement, where the condition would filter the function's result after calling it; kept
    apart, a condition on the outer row alone is a one-time filter, checked before the call. Its parameters are
    ``PostgresQuotaStore.parameters``'."""
    return _CONSUME.where(condition).offset(0).lateral("quota")


class QuotaStoreUnavailable(Exception):
    """The store could not be reached or failed."""


@dataclass(frozen=True)
class Window:
    hits: int
    oldest: float  # epoch seconds of the oldest hit in the window (now, when it is empty)
    limit: int


@dataclass(frozen=True)
class Windows:
    """Both windows of one user in one organization, and which quota refused a hit (None: counted, or a read)."""

    user: Window
    organization: Window
    refused: str | None = None


class PostgresQuotaStore:
    def __init__(self, statements: Runner, *, per_user_per_hour: int, per_org_per_day: int) -> None:
        """``statements``: the answer path's (``db.statements``), each committed alone: in a transaction, hits
        would be rolled back with it."""
        self._statements = statements
        self._user_limit, self._org_limit = per_user_per_hour, per_org_per_day

    async def consume(self, user_key: str, org_key: str) -> Windows:
        return self.consumed(await self._one(_CONSUME_ALONE, user_key, org_key))

    def consumed(self, row) -> Windows:
        """The windows ``citechat_consume_quota`` returned (in ``row``'s columns of those names)."""
        user, org = (
            Window(row["user_hits"], row["user_oldest"], self._user_limit),
            Window(row["org_hits"], row["org_oldest"], self._org_limit),
        )
        return Windows(user, org, row["refused"])

    async def windows(self, user_key: str, org_key: str) -> Windows:
        user_hits, user_oldest, org_hits, org_oldest, now = await self._one(_WINDOWS, user_key, org_key)
        user = Window(user_hits, user_oldest or now, self._user_limit)
        return Windows(user, Window(org_hits, org_oldest or now, self._org_limit))

    def parameters(self, user_key: str, org_key: str) -> dict:
        """The parameters of ``citechat_consume_quota`` (and of the windows' statement)."""
        params = {"user_key": user_key, "user_limit": self._user_limit, "user_window": HOUR_S}
        return params | {"org_key": org_key, "org_limit": self._org_limit, "org_window": DAY_S}

    async def _one(self, statement: Statement, user_key: str, org_key: str) -> asyncpg.Record:
        try:
            return await self._statements.fetchrow(statement, self.parameters(user_key, org_key))
        except (asyncpg.PostgresError, *UNAVAILABLE) as exc:
            raise QuotaStoreUnavailable(type(exc).__name__) from exc


class LimitsQuotaStore:
    """A storage of the ``limits`` library (``async+redis://``, ``async+memory://``...), with its moving window."""

    def __init__(self, storage, *, per_user_per_hour: int, per_org_per_day: int) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._user = RateLimitItemPerHour(per_user_per_hour)
        self._org = RateLimitItemPerDay(per_org_per_day)

    async def consume(self, user_key: str, org_key: str) -> Windows:
        """The organization's window is looked at first, so a user whose organization is out of messages does not
        spend their own; then each hit is atomic in the storage."""
        try:
            refused = None
            if not await self._limiter.test(self._org, org_key):
                refused = "organization"
            elif not await self._limiter.hit(self._user, user_key):
                refused = "user"
            elif not await self._limiter.hit(self._org, org_key):
                refused = "organization"
        except StorageError as exc:
            raise QuotaStoreUnavailable(type(exc).__name__) from exc
        windows = await self.windows(user_key, org_key)
        return Windows(windows.user, windows.organization, refused)

    async def windows(self, user_key: str, org_key: str) -> Windows:
        try:
            user, org = await asyncio.gather(self._window(self._user, user_key), self._window(self._org, org_key))
        except StorageError as exc:
            raise QuotaStoreUnavailable(type(exc).__name__) from exc
        return Windows(user, org)

    async def _window(self, item, key: str) -> Window:
        stats = await self._limiter.get_window_stats(item, key)
        return Window(item.amount - stats.remaining, stats.reset_time - item.get_expiry(), item.amount)
