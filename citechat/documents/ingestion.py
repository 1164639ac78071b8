"""Indexing uploaded documents in the background, exactly once each, surviving restarts.

Each document is claimed with a PostgreSQL advisory lock held on its own connection for as long as it is
indexed: a second worker (or a resumed start-up) skips a document another process is indexing, and a crashed
process's lock dies with its connection, so the document is picked up again on the next start.
"""

import asyncio
import logging
import uuid
from collections.abc import Iterable

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from citechat.auth.models import Organization as OrganizationRow
from citechat.documents import models
from citechat.retrievers.base import IndexBackend, IngestError, Organization, RetrievalError

log = logging.getLogger(__name__)
_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


class Ingestion:
    """Runs ``backend.ingest`` for submitted documents, ``concurrency`` at a time."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], backend: IndexBackend, *, concurrency: int = 1):
        self._sessions, self._backend = sessions, backend
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[uuid.UUID, asyncio.Task] = {}

    def submit(self, document_id: uuid.UUID) -> asyncio.Task:
        if (task := self._tasks.get(document_id)) is None or task.done():
            task = self._tasks[document_id] = asyncio.create_task(self.run(document_id), name=f"ingest-{document_id}")
            task.add_done_callback(lambda _: self._tasks.pop(document_id, None))
        return task

    async def resume(self) -> int:
        """Submit every document of this backend left pending or processing (by a restart or a crash)."""
        async with self._sessions() as db:
            ids = list(
                await db.scalars(
                    select(models.Document.id).where(
                        models.Document.backend == self._backend.name,
                        models.Document.status.in_(("pending", "processing")),
                    )
                )
            )
        for document_id in ids:
            self.submit(document_id)
        return len(ids)

    async def wait(self, document_ids: Iterable[uuid.UUID] | None = None) -> None:
        tasks = (
            [self._tasks[i] for i in document_ids if i in self._tasks] if document_ids else list(self._tasks.values())
        )
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def run(self, document_id: uuid.UUID, *, again: bool = False) -> None:
        """Index the document. ``again``: also documents already ``ready`` or ``failed`` (a re-index); a ready one
        stays ready, and so retrievable, while its chunks are replaced."""
        key = f"ingest:{document_id}"
        async with self._slots, self._sessions() as lock_db:
            if not await lock_db.scalar(_LOCK, {"key": key}):
                return  # another process is indexing it
            try:
                await self._index(document_id, again=again)
            finally:
                await lock_db.execute(_UNLOCK, {"key": key})
                await lock_db.commit()

    async def _index(self, document_id: uuid.UUID, *, again: bool) -> None:
        statuses = ("pending", "processing", "ready", "failed") if again else ("pending", "processing")
        async with self._sessions() as db:
            row = (
                await db.execute(
                    select(models.Document, models.DocumentFile.content, OrganizationRow.external_id)
                    .join(models.DocumentFile, models.DocumentFile.document_id == models.Document.id)
                    .join(OrganizationRow, OrganizationRow.id == models.Document.organization_id)
                    .where(models.Document.id == document_id, models.Document.status.in_(statuses))
                )
            ).first()
            if row is None:
                return  # deleted, or finished by another process meanwhile
            document, content, org_external_id = row
            if document.status != "ready":
                document.status, document.error = "processing", None
            await db.commit()
            organization = Organization(document.organization_id, org_external_id)
            name, content_type, metadata = document.name, document.content_type, document.document_metadata
        try:
            result = await self._backend.ingest(organization, document_id, name, content_type, content, metadata)
        except (IngestError, RetrievalError) as exc:
            await self._finish(document_id, status="failed", error=exc.detail)
        except asyncio.CancelledError:
            raise  # shutting down: left "processing", resumed on the next start
        except Exception:
            unexpected = "indexing failed unexpectedly; try uploading again"
            if await self._finish(document_id, status="failed", error=unexpected):
                log.exception("indexing document %s failed", document_id)
            else:  # deleted meanwhile: its chunks had nothing to belong to
                log.info("document %s was deleted while it was being indexed", document_id)
        else:
            finished = await self._finish(
                document_id,
                status="ready",
                pages=result.pages,
                chunks=result.chunks,
                external_id=result.external_id,
                backend_status=result.backend_status,
            )
            if not finished:
                await self._remove_copy(organization, document_id, result.external_id)

    async def _remove_copy(self, organization: Organization, document_id: uuid.UUID, external_id: str | None) -> None:
        """A document deleted while a backend that keeps its own copy (Ragie) indexed it, before that copy existed
        to be deleted with it: the copy goes now, or its passages would go on answering questions."""
        try:
            await self._backend.delete(organization, document_id, external_id)
        except RetrievalError as exc:
            log.warning("document %s, deleted while indexed, is still in %s: %s", document_id, self._backend.name, exc)
        else:
            log.info("document %s was deleted while it was being indexed", document_id)

    async def _finish(self, document_id: uuid.UUID, **values) -> bool:
        """Records how indexing ended; False when the document is gone (deleted while it was indexed)."""
        async with self._sessions() as db, db.begin():
            done = await db.execute(update(models.Document).where(models.Document.id == document_id).values(**values))
            return done.rowcount == 1
