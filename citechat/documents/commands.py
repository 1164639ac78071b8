"""Documents from the command line: ``citechat ingest`` and ``citechat documents``, in-process, through the same
service and ingestion runner as the API."""

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from citechat.auth.service import ensure_organization
from citechat.documents import models, service
from citechat.errors import CitechatError
from citechat.retrievers.base import Organization
from citechat.retrievers.local import LocalIndex
from citechat.runtime import Runtime


@dataclass
class IngestReport:
    documents: int = 0
    pages: int = 0
    chunks: int = 0
    skipped: int = 0  # identical content already indexed
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds else 0.0


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files named, and files under folders named (recursively), hidden ones left out, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


async def organization(runtime: Runtime, external_id: str) -> Organization:
    async with runtime.database.sessions() as db:
        org_id = await ensure_organization(db, external_id)
        await db.commit()
    return Organization(org_id, external_id)


async def upload(
    runtime: Runtime, org: Organization, *, filename: str, content: bytes, name: str, metadata: dict | None
) -> service.Accepted:
    """Accepts a file as the API does (same size limit, same deduplication) and submits it for indexing when new."""
    async with runtime.database.sessions() as db:
        accepted = await service.accept_upload(
            db,
            org,
            runtime.index,
            filename=filename,
            content=content,
            name=name,
            metadata=metadata,
            max_bytes=int(runtime.settings.max_upload_mb * 2**20),
        )
    if accepted.created:
        runtime.ingestion.submit(accepted.document.id)
    return accepted


async def ingest_files(
    runtime: Runtime, org: Organization, files: list[Path], on_done: Callable[[Path, models.Document | None], None]
) -> IngestReport:
    """Uploads and indexes each file, waiting for all; ``on_done`` is told of each file as it finishes."""
    report, started = IngestReport(), time.perf_counter()
    pending: dict[uuid.UUID, Path] = {}
    for path in files:
        try:
            accepted = await upload(
                runtime,
                org,
                filename=path.name,
                content=path.read_bytes(),
                name=path.name,
                metadata={"source_path": str(path)},
            )
        except CitechatError as exc:
            report.failures.append((str(path), exc.detail))
            on_done(path, None)
            continue
        if accepted.created:
            pending[accepted.document.id] = path
        else:
            report.skipped += 1
            on_done(path, accepted.document)
    for document_id, path in pending.items():
        await runtime.ingestion.wait([document_id])
        async with runtime.database.sessions() as db:
            document = await db.get(models.Document, document_id)
        if document.status == "ready":
            report.documents += 1
            report.pages += document.pages or 0
            report.chunks += document.chunks
        else:
            report.failures.append((str(path), document.error or document.status))
        on_done(path, document)
    report.seconds = time.perf_counter() - started
    return report


async def reindex(runtime: Runtime, on_done: Callable[[models.Document], None]) -> int:
    """Re-embeds every document of the local index with the configured model, from the files as uploaded."""
    if not isinstance(runtime.index, LocalIndex):
        raise CitechatError("reindexing applies to the local index; Ragie keeps its own")
    await runtime.index.adopt_model()
    async with runtime.database.sessions() as db:
        ids = list(await db.scalars(select(models.Document.id).where(models.Document.backend == "local")))
    for document_id in ids:
        await runtime.ingestion.run(document_id, again=True)
        async with runtime.database.sessions() as db:
            on_done(await db.get(models.Document, document_id))
    return len(ids)


async def list_documents(runtime: Runtime, org: Organization, limit: int) -> list[models.Document]:
    async with runtime.database.sessions() as db:
        return await service.list_documents(db, org, limit=limit)
