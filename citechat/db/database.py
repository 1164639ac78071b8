"""The process's database: engine and session factory, opened once in the app's lifespan."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from citechat.db.embedded import EmbeddedPostgres
from citechat.db.migrations import upgrade_to_head
from citechat.settings import Settings


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str


@asynccontextmanager
async def open_database(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Database]:
    """Connect to the configured PostgreSQL, or start the embedded one; apply migrations; close on exit."""
    embedded = EmbeddedPostgres(settings.data_dir) if settings.embedded_database else None
    url = await embedded.start() if embedded else settings.database_url.get_secret_value()
    engine = create_async_engine(
        url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size, pool_pre_ping=True
    )
    try:
        if migrate:
            await upgrade_to_head(engine)
        yield Database(engine=engine, sessions=async_sessionmaker(engine, expire_on_commit=False), url=url)
    finally:
        await engine.dispose()
        if embedded:
            await embedded.stop()
