"""The process's database: engine and session factory, opened once in the app's lifespan."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from citechat.db.embedded import EmbeddedPostgres
from citechat.db.migrations import upgrade_to_head
from citechat.settings import Settings


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # The same pool in autocommit, for Core statements that do their work alone: no BEGIN and COMMIT round trips
    # around each, and no ORM session to set up (answering and rate limits send a dozen per question).
    autocommit: AsyncEngine
    url: str


@asynccontextmanager
async def open_database(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Database]:
    """Connect to the configured PostgreSQL, or start the embedded one; apply migrations; close on exit."""
    embedded = EmbeddedPostgres(settings.data_dir) if settings.embedded_database else None
    url = await embedded.start() if embedded else settings.database_url.get_secret_value()
    # Last in, first out: the connection returned last is used next, so the pool keeps reusing the connections it
    # needs and the idle ones stay idle (first in, first out would hand out the longest-idle one every time, and
    # ``_ping_when_idle`` would ping it first: at one answer at a time, every write after the answer's last token).
    engine = create_async_engine(
        url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size, pool_use_lifo=True
    )
    _ping_when_idle(engine)
    try:
        if migrate:
            await upgrade_to_head(engine)
        yield Database(
            engine=engine,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            autocommit=engine.execution_options(isolation_level="AUTOCOMMIT"),
            url=url,
        )
    finally:
        await engine.dispose()
        if embedded:
            await embedded.stop()


IDLE_BEFORE_PING_S = 1.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Makes sure a pooled connection that sat idle for over a second still works before it is used (after a
    database restart it does not), and replaces it when it does not.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: an answer checks a connection out a dozen times, and
    asyncpg's ping is three round trips (BEGIN, ``;``, ROLLBACK), 9% of the server's CPU under load. A connection
    used within the last second is used as it is; if the database went away in that second, the statement fails,
    SQLAlchemy invalidates the whole pool, and the writes that must not be lost are retried (``chat.answering``).
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def returned(dbapi_connection, record) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def check(dbapi_connection, record, proxy) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < IDLE_BEFORE_PING_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:  # any failure: the pool replaces the connection and checks out again
            raise DisconnectionError(f"a pooled connection failed its ping: {type(exc).__name__}") from exc
