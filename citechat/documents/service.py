"""An organization's documents: accepting uploads, listing, deleting. Indexing itself runs in ``ingestion``."""

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from citechat.db.text import TOO_DEEP, unstorable, unstorable_json
from citechat.documents import formats, models
from citechat.errors import CitechatError, NotFound
from citechat.retrievers.base import IndexBackend, Organization


class UploadTooLarge(CitechatError):
    status_code = 413


class InvalidUpload(CitechatError):
    status_code = 422


@dataclass(frozen=True)
class Accepted:
    document: models.Document
    created: bool  # False: identical content was already uploaded (and not failed) in this organization


def parse_metadata(raw: str | None) -> dict | None:
    """The upload's ``metadata`` field: a JSON object PostgreSQL can store (``db.text.unstorable_json``)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidUpload(f"metadata is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError:  # deeper still than what unstorable_json refuses
        raise InvalidUpload(f"metadata {TOO_DEEP}") from None
    if not isinstance(value, dict):
        raise InvalidUpload("metadata must be a JSON object")
    if (why := unstorable_json(value)) is not None:
        raise InvalidUpload(f"metadata {why}")
    return value


async def accept_upload(
    db: AsyncSession,
    organization: Organization,
    backend: IndexBackend,
    *,
    filename: str,
    content: bytes,
    name: str | None,
    metadata: dict | None,
    max_bytes: int,
) -> Accepted:
    """Checks the upload, stores it as a pending document (or finds the identical one), and returns it."""
    if len(content) > max_bytes:
        raise UploadTooLarge(f"the file is {len(content) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    if not content:
        raise InvalidUpload("the file is empty")
    if (why := unstorable(filename)) is not None:
        raise InvalidUpload(f"the file name {why}")
    content_type = formats.detect(content, filename)
    digest = hashlib.sha256(content).hexdigest()
    display_name = (name or filename or "untitled").strip()[:500] or "untitled"
    inserted = await db.scalar(
        insert(models.Document)
        .values(
            organization_id=organization.id,
            name=display_name,
            content_type=content_type,
            size_bytes=len(content),
            sha256=digest,
            backend=backend.name,
            status="pending",
            document_metadata=metadata,
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "sha256"])
        .returning(models.Document.id)
    )
    if inserted is None:
        existing = await db.scalar(
            select(models.Document)
            .where(models.Document.organization_id == organization.id, models.Document.sha256 == digest)
            .with_for_update()
        )
        if existing.status != "failed":
            await db.commit()
            return Accepted(existing, created=False)
        # Uploading a failed document again is how a user retries it (the backend may have been down).
        existing.status, existing.error = "pending", None
        await db.commit()
        return Accepted(existing, created=True)
    db.add(models.DocumentFile(document_id=inserted, content=content))
    await db.commit()
    return Accepted(await db.get(models.Document, inserted), created=True)


async def get(db: AsyncSession, organization: Organization, document_id: uuid.UUID) -> models.Document:
    document = await db.scalar(
        select(models.Document).where(
            models.Document.id == document_id, models.Document.organization_id == organization.id
        )
    )
    if document is None:
        raise NotFound("document not found")
    return document


async def content(db: AsyncSession, document: models.Document) -> bytes:
    """The document's bytes as uploaded (``document`` from ``get``, so already the caller's), whatever its indexing
    status: a PDF that failed to index can still be opened."""
    found = await db.scalar(select(models.DocumentFile.content).where(models.DocumentFile.document_id == document.id))
    if found is None:  # deleted since it was found
        raise NotFound("document not found")
    return found


async def not_found(db: AsyncSession, organization_id: uuid.UUID, document_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of ``document_ids`` that are no documents of the organization (another's, deleted, made up)."""
    query = select(models.Document.id).where(
        models.Document.organization_id == organization_id, models.Document.id.in_(document_ids)
    )
    found = set(await db.scalars(query))
    return [document for document in document_ids if document not in found]


async def list_documents(
    db: AsyncSession, organization: Organization, *, limit: int, before: uuid.UUID | None = None
) -> list[models.Document]:
    """Newest first; ``before`` (a document id from the previous page) continues after it."""
    query = select(models.Document).where(models.Document.organization_id == organization.id)
    if before is not None:
        cursor = await get(db, organization, before)
        query = query.where(tuple_(models.Document.created_at, models.Document.id) < (cursor.created_at, cursor.id))
    query = query.order_by(models.Document.created_at.desc(), models.Document.id.desc()).limit(limit)
    return list(await db.scalars(query))


async def delete(db: AsyncSession, organization: Organization, backend: IndexBackend, document_id: uuid.UUID) -> None:
    """Removes the document from the index first (its chunks stop being retrievable at once), then the record."""
    document = await get(db, organization, document_id)
    await backend.delete(organization, document.id, document.external_id)
    await db.delete(document)
    await db.commit()
