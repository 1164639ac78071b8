"""``/api/v1/documents``: the organization's documents."""

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile, status
from fastapi.responses import JSONResponse

from citechat.api.dependencies import CurrentPrincipal, DbSession, get_settings
from citechat.api.errors import ErrorBody, error_responses
from citechat.db.text import Storable
from citechat.documents import formats, schemas, service
from citechat.documents.models import Document
from citechat.retrievers.base import Organization
from citechat.settings import Settings

router = APIRouter(prefix="/api/v1/documents", tags=["documents"], responses=error_responses(401, 403, 503))


async def _organization(principal: CurrentPrincipal) -> Organization:
    return Organization(principal.organization_id, principal.organization)


CurrentOrganization = Annotated[Organization, Depends(_organization)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Upload a document",
    responses={
        200: {"model": schemas.Document, "description": "Identical content was already uploaded: that document."},
        413: {"model": ErrorBody, "description": "Larger than CITECHAT_MAX_UPLOAD_MB."},
        415: {"model": ErrorBody, "description": "Not PDF, DOCX, Markdown, plain text or HTML."},
    },
)
async def upload_document(
    request: Request,
    organization: CurrentOrganization,
    db: DbSession,
    settings: Annotated[Settings, Depends(get_settings)],
    file: Annotated[UploadFile, File(description="PDF, DOCX, Markdown, plain text or HTML.")],
    name: Annotated[
        str | None, Form(max_length=500, description="Display name (default: the file name)."), Storable
    ] = None,
    metadata: Annotated[str | None, Form(description="A JSON object stored with the document.")] = None,
) -> schemas.Document:
    """Stores the file and indexes it in the background: poll the document until `ready` or `failed`."""
    max_bytes = int(settings.max_upload_mb * 2**20)
    content = await file.read(max_bytes + 1)
    accepted = await service.accept_upload(
        db,
        organization,
        request.app.state.index,
        filename=file.filename or "",
        content=content,
        name=name,
        metadata=service.parse_metadata(metadata),
        max_bytes=max_bytes,
    )
    body = schemas.Document.model_validate(accepted.document)
    if not accepted.created:
        return JSONResponse(body.model_dump(mode="json"), status_code=status.HTTP_200_OK)
    request.app.state.ingestion.submit(accepted.document.id)
    return body


@router.get("", summary="List documents, newest first", responses=error_responses(404))
async def list_documents(
    organization: CurrentOrganization,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[uuid.UUID | None, Query(description="Continue after this document id.")] = None,
) -> list[schemas.Document]:
    documents = await service.list_documents(db, organization, limit=limit, before=before)
    return [schemas.Document.model_validate(d) for d in documents]


@router.get("/{document_id}", summary="One document", responses=error_responses(404))
async def get_document(document_id: uuid.UUID, organization: CurrentOrganization, db: DbSession) -> schemas.Document:
    return schemas.Document.model_validate(await service.get(db, organization, document_id))


@router.get(
    "/{document_id}/file",
    summary="The document's file, as uploaded",
    response_class=Response,
    responses={
        200: {
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in formats.SUPPORTED},
            "description": "The bytes as uploaded, with their content type. PDF, Markdown and plain text are sent"
            " `inline` (a PDF opens at a cited page with `#page=N`), HTML and DOCX as an `attachment`.",
        },
        304: {"description": "`If-None-Match` named the current `ETag`: the copy the client has is this file."},
    }
    | error_responses(404),
)
async def get_document_file(
    document_id: uuid.UUID,
    organization: CurrentOrganization,
    db: DbSession,
    if_none_match: Annotated[str | None, Header(description="An `ETag` from an earlier download.")] = None,
) -> Response:
    """What a citation's page is checked against: the original, not the text citechat read from it."""
    document = await service.get(db, organization, document_id)
    headers = {"ETag": f'"{document.sha256}"', "Cache-Control": "private, no-cache"}
    if if_none_match and _matches(if_none_match, document.sha256):  # the bytes are not even read
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    disposition = "inline" if document.content_type in formats.SHOWN_INLINE else "attachment"
    headers |= {"Content-Disposition": f"{disposition}; {_filename(document)}", "X-Content-Type-Options": "nosniff"}
    content = await service.content(db, document)
    return Response(content, media_type=document.content_type, headers=headers)  # text: charset=utf-8 added


def _matches(if_none_match: str, sha256: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or f'"{sha256}"' in tags


def _filename(document: Document) -> str:
    """``Content-Disposition``'s file name: the document's name with its format's extension, in ASCII for old
    clients and in full as RFC 6266's ``filename*``."""
    extension = formats.EXTENSIONS.get(document.content_type, "")
    name = document.name if document.name.lower().endswith(extension) else document.name + extension
    ascii_name = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    return f"filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.delete(
    "/{document_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a document",
    responses=error_responses(404),
)
async def delete_document(
    request: Request, document_id: uuid.UUID, organization: CurrentOrganization, db: DbSession
) -> Response:
    """Its chunks leave the index at once: no later retrieval returns them."""
    await service.delete(db, organization, request.app.state.index, document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
