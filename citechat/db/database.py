"""The process's database: engine and session factory, opened once in the app's lifespan."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from citechat.db import statements
from citechat.db.embedded import EmbeddedPostgres
from citechat.db.migrations import upgrade_to_head
from citechat.settings import Settings


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # The same pool in autocommit, for Core statements that do their work alone: no BEGIN and COMMIT round trips
    # around each, and no ORM session to set up (answering's rare paths: an orphaned answer, a stop elsewhere).
    autocommit: AsyncEngine
    # The answer path's connections: its statements go to asyncpg directly (``db.statements`` says why).
    pool: asyncpg.Pool
    url: str


@asynccontextmanager
async def open_database(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Database]:
    """Connect to the configured PostgreSQL, or start the embedded one; apply migrations; close on exit."""
    embedded = EmbeddedPostgres(settings.data_dir) if settings.embedded_database else None
    url = await embedded.start() if embedded else settings.database_url.get_secret_value()
    # Last in, first out: the connection returned last is used next, so the pool keeps reusing the connections it
    # needs and the idle ones stay idle (first in, first out would hand out the longest-idle one every time, and
    # ``_ping_when_idle`` would ping it first: at one answer at a time, every write after the answer's last token).
    # The connections are shared out: three quarters to the answer path's asyncpg pool (a statement per step of
    # every answer), the rest kept by the engine, which may overflow by as many as the setting says (retrieval,
    # the API, ingestion, the worker lease).
    answering = max(1, settings.db_pool_size * 3 // 4)
    kept = max(1, settings.db_pool_size - answering)
    engine = create_async_engine(url, pool_size=kept, max_overflow=settings.db_pool_size, pool_use_lifo=True)
    _ping_when_idle(engine)
    pool = None
    try:
        if migrate:
            await upgrade_to_head(engine)
        pool = await statements.create_pool(_asyncpg_kwargs(engine), answering)
        yield Database(
            engine=engine,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            autocommit=engine.execution_options(isolation_level="AUTOCOMMIT"),
            pool=pool,
            url=url,
        )
    finally:
        if pool is not None:
            await pool.close()
        await engine.dispose()
        if embedded:
            await embedded.stop()


def _asyncpg_kwargs(engine: AsyncEngine) -> dict:
    """What SQLAlchemy passes ``asyncpg.connect`` for the engine's URL, without its own options."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    for own in ("prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn"):
        kwargs.pop(own, None)
    return kwargs


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
