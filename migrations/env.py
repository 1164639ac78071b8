"""Alembic environment.

The app passes its own connection (``config.attributes["connection"]``). Run by hand (``uv run alembic ...``), it
opens the database the app would use, starting the embedded server when ``CITECHAT_DATABASE_URL`` is unset.
"""

import asyncio

from alembic import context
from sqlalchemy import Connection

from citechat.db.base import all_tables

target_metadata = all_tables()


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_server_default=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    from citechat.db.database import open_database
    from citechat.settings import Settings

    async with open_database(Settings(), migrate=False) as database, database.engine.begin() as connection:
        await connection.run_sync(run_with)


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
elif context.is_offline_mode():
    raise SystemExit("citechat migrations run online only: `citechat db upgrade`.")
else:
    asyncio.run(run_standalone())
