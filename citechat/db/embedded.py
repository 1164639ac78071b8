"""An embedded PostgreSQL (with pgvector) for set-up-free local runs, from the ``pgserver`` package.

pgserver keeps one server per data directory and counts the processes using it, so several workers of one
``citechat serve`` share a server and the last one to leave stops it.
"""

import asyncio
import contextlib
import logging
import warnings
from pathlib import Path

import asyncpg

DATABASE_NAME = "citechat"
log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server whose files live under ``data_dir/pgdata``."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pgdata").resolve()
        self._server = None

    async def start(self) -> str:
        """Start (or join) the server, make sure the ``citechat`` database exists, and return its URL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.to_thread(_get_server, self.pgdata)
        socket_dir = self._server.get_postmaster_info().socket_dir
        await _ensure_database(socket_dir)
        log.info("embedded PostgreSQL ready in %s", self.pgdata)
        return f"postgresql+asyncpg://postgres@/{DATABASE_NAME}?host={socket_dir}"

    async def stop(self) -> None:
        """Leave the server; pgserver stops it when this was the last process using it."""
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)
            self._server = None


def _get_server(pgdata: Path):
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR, pgserver keeps its inter-process lock under /tmp, and warns that it does.
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver.get_server(pgdata, cleanup_mode="stop")


async def _ensure_database(socket_dir: Path) -> None:
    conn = await asyncpg.connect(host=str(socket_dir), user="postgres", database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # another worker made it first
                await conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    finally:
        await conn.close()
