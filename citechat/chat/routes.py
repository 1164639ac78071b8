"""``/api/v1/chat``: the caller's chat sessions and their history."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import StringConstraints

from citechat.api.dependencies import CurrentPrincipal, DbSession
from citechat.api.errors import error_responses
from citechat.chat import schemas, service
from citechat.db.text import Storable

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], responses=error_responses(401, 403, 503))
_owned = error_responses(404)


@router.get("/session", summary="Get or create the active session")
async def get_active_session(principal: CurrentPrincipal, db: DbSession) -> schemas.ChatSession:
    """The caller's active session in this organization; one is created when there is none."""
    return await service.get_or_create_active(db, principal)


@router.post("/session/new", summary="Start a new session")
async def create_new_session(principal: CurrentPrincipal, db: DbSession) -> schemas.ChatSession:
    """Deactivates the current active session (it stays in the history) and returns a new active one."""
    return await service.start_new(db, principal)


@router.get("/sessions", summary="List sessions, newest first", responses=_owned)
async def list_sessions(
    principal: CurrentPrincipal,
    db: DbSession,
    include_archived: bool = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    before: Annotated[uuid.UUID | None, Query(description="Continue after this session id.")] = None,
    q: Annotated[
        str | None,
        Query(description="Only sessions whose title or messages contain this text, in any case."),
        StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
        Storable,
    ] = None,
) -> list[schemas.ChatSession]:
    return await service.list_sessions(
        db, principal, include_archived=include_archived, limit=limit, before=before, containing=q
    )


@router.get("/session/{session_id}/messages", summary="A session's messages", responses=_owned)
async def get_session_messages(
    session_id: uuid.UUID,
    principal: CurrentPrincipal,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[uuid.UUID | None, Query(description="Only messages older than this one.")] = None,
) -> list[schemas.ChatMessage]:
    """The newest ``limit`` messages in chronological order, each with its sources."""
    messages = await service.list_messages(db, principal, session_id, limit=limit, before=before)
    return [schemas.ChatMessage.model_validate(message) for message in messages]


@router.patch("/session/{session_id}", summary="Rename a session or set its mode", responses=_owned)
async def update_session(
    session_id: uuid.UUID, body: schemas.UpdateSession, principal: CurrentPrincipal, db: DbSession
) -> schemas.ChatSession:
    return await service.update_session(db, principal, session_id, body)


@router.post(
    "/session/{session_id}/archive",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Archive a session",
    responses=_owned,
)
async def archive_session(session_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession) -> Response:
    await service.archive(db, principal, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/session/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a session and its messages",
    responses=_owned,
)
async def delete_session(session_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession) -> Response:
    await service.delete_session(db, principal, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
