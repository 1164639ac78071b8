"""A PostgreSQL storage for the ``limits`` library's moving window, so the default set-up needs no Redis.

``limits`` ships memory, Redis, Memcached and MongoDB storages but none on SQL. This one keeps a row per accepted
hit. ``acquire_entry`` is exact under concurrency, across processes: it takes a transaction-scoped advisory lock
on the key, counts the hits inside the window, and inserts only when there is room, all in one transaction. It
also deletes the key's hits that have left the window, so the table stays the size of the live windows. That is
one database function (migration 0005), called in one round trip: every operation here is a single statement, run
on an autocommit engine (``Database.autocommit``), with no BEGIN and COMMIT around each.
"""

from limits.aio.storage import MovingWindowSupport, Storage
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

_HIT = text("SELECT citechat_rate_limit_hit(:key, :limit, :expiry, :amount)")  # migration 0005
_WINDOW = text(
    "SELECT coalesce(extract(epoch FROM min(hit_at)), extract(epoch FROM clock_timestamp())), count(*)"
    " FROM chat_rate_limits WHERE key = :key AND hit_at > clock_timestamp() - make_interval(secs => :expiry)"
)


class PostgresStorage(Storage, MovingWindowSupport):
    STORAGE_SCHEME = None  # built from the app's engine, not from a URI

    def __init__(self, autocommit: AsyncEngine) -> None:
        """``autocommit``: an engine in autocommit (``Database.autocommit``): in a transaction, hits would be rolled
        back."""
        super().__init__()
        self._engine = autocommit

    @property
    def base_exceptions(self) -> type[Exception]:
        return DBAPIError

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        async with self._engine.connect() as db:
            return await db.scalar(_HIT, {"key": key, "limit": limit, "expiry": expiry, "amount": amount})

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(when the oldest hit in the window happened, hits in the window); (now, 0) for an empty window."""
        async with self._engine.connect() as db:
            oldest, count = (await db.execute(_WINDOW, {"key": key, "expiry": expiry})).one()
        return float(oldest), int(count)

    # The fixed-window half of the Storage interface: citechat only uses the moving window.
    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("citechat's PostgreSQL storage supports the moving window only")

    async def get(self, key: str) -> int:
        raise NotImplementedError("citechat's PostgreSQL storage supports the moving window only")

    async def get_expiry(self, key: str) -> float:
        raise NotImplementedError("citechat's PostgreSQL storage supports the moving window only")

    async def check(self) -> bool:
        async with self._engine.connect() as db:
            return await db.scalar(text("SELECT true"))

    async def reset(self) -> int | None:
        async with self._engine.connect() as db:
            return (await db.execute(text("DELETE FROM chat_rate_limits"))).rowcount

    async def clear(self, key: str) -> None:
        async with self._engine.connect() as db:
            await db.execute(text("DELETE FROM chat_rate_limits WHERE key = :key"), {"key": key})
