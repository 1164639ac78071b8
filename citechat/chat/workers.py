"""Which process is writing which answer, so that answers of a dead process are found and marked, and no others.

Each process takes a session-level advisory lock on its own worker id and holds it on a dedicated connection for
its whole life; answers it writes carry that id. PostgreSQL releases the lock the moment the process's connection
dies (a crash, a kill, a lost host), so "is the lock free?" is an exact liveness test that needs no heartbeat
table and no clock. The keeper re-takes the lock if the database restarts under a live process.
"""

import asyncio
import contextlib
import logging
import uuid

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from citechat.chat import models

log = logging.getLogger(__name__)
KEEP_S = 5.0
INTERRUPTED = "interrupted: the service stopped before the answer was complete; retry it"
_KEY = "hashtextextended('citechat-worker:' || CAST(:worker AS text), 0)"
_HOLD = text(f"SELECT pg_advisory_lock({_KEY})")
_DEAD = text(f"SELECT CASE WHEN pg_try_advisory_lock({_KEY}) THEN pg_advisory_unlock({_KEY}) ELSE false END")
_IN_FLIGHT_WORKERS = text("SELECT DISTINCT worker_id FROM chat_messages WHERE status IN ('pending', 'streaming')")
ORPHANED = {"stage": "generation", "retryable": True, "reason": "the process writing it ended"}


class WorkerLease:
    def __init__(self, engine: AsyncEngine) -> None:
        self.id = uuid.uuid4()
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._keeper: asyncio.Task | None = None

    async def start(self) -> None:
        await self._take()
        self._keeper = asyncio.create_task(self._keep(), name="worker-lease")

    async def aclose(self) -> None:
        if self._keeper:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self._drop()

    async def _take(self) -> None:
        connection = await self._engine.connect()
        await connection.execute(_HOLD, {"worker": str(self.id)})
        await connection.commit()
        self._connection = connection

    async def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(KEEP_S)
            try:
                await self._connection.execute(text("SELECT 1"))
                await self._connection.commit()
            except Exception:
                await self._drop()
                try:
                    await self._take()
                    log.info("worker lease re-taken after losing the database connection")
                except Exception:
                    log.warning("worker lease lost: the database is unreachable; retrying in %.0f s", KEEP_S)


async def is_dead(db: AsyncSession | AsyncConnection, worker_id: uuid.UUID | None) -> bool:
    return worker_id is None or bool(await db.scalar(_DEAD, {"worker": str(worker_id)}))


async def mark_orphans_failed(db: AsyncSession) -> int:
    """Marks answers left pending or streaming by processes that are gone as failed (interrupted, retryable)."""
    workers = list(await db.scalars(_IN_FLIGHT_WORKERS))
    dead = [worker for worker in workers if await is_dead(db, worker)]
    if not dead:
        return 0
    owner = models.ChatMessage.worker_id
    orphaned = owner.in_([worker for worker in dead if worker is not None])
    if None in dead:
        orphaned = orphaned | owner.is_(None)
    result = await db.execute(
        update(models.ChatMessage)
        .where(models.ChatMessage.status.in_(("pending", "streaming")), orphaned)
        .values(status="failed", error_message=INTERRUPTED, error_details=ORPHANED)
    )
    await db.commit()
    return result.rowcount


async def fail_orphan(db: AsyncSession | AsyncConnection, message_id: uuid.UUID) -> None:
    """Marks one answer whose writer is gone as failed (interrupted, retryable); the caller commits."""
    await db.execute(
        update(models.ChatMessage)
        .where(models.ChatMessage.id == message_id, models.ChatMessage.status.in_(("pending", "streaming")))
        .values(status="failed", error_message=INTERRUPTED, error_details=ORPHANED)
    )
