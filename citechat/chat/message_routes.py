"""``/api/v1/chat/message``: ask in a session (one JSON answer or Server-Sent Events), follow, stop and retry."""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from citechat.api.dependencies import CurrentPrincipal, DbSession
from citechat.api.errors import error_responses
from citechat.chat import schemas, service
from citechat.chat.answering import Event, Turn
from citechat.chat.streams import HEARTBEAT
from citechat.errors import CitechatError

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], responses=error_responses(401, 403, 404, 409, 503))
SessionId = Annotated[uuid.UUID, Query(description="The chat session to ask in.")]
_NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_EVENTS = "user_message (with assistant_message_id), sources, token*, done|error; each id = characters so far"
_SSE = {
    "response_class": StreamingResponse,
    "responses": {200: {"content": {"text/event-stream": {}}, "description": _EVENTS}} | error_responses(429),
}
_RETRY = {"description": "Same message id, same question; retrying a failed answer does not count against quotas."}


class AnswerFailed(CitechatError):
    status_code = 502


@router.get("/models", summary="The models answers can be asked of")
async def list_models(request: Request, principal: CurrentPrincipal) -> schemas.Models:
    llms = request.app.state.answering.llms
    return schemas.Models(provider=llms.name, models=list(llms.models), default=llms.default_model)


@router.post("/message", summary="Ask, and get the completed answer", responses=error_responses(429))
async def send_message(
    request: Request, response: Response, body: schemas.SendMessage, session_id: SessionId, principal: CurrentPrincipal
) -> schemas.ChatMessage:
    turn = await request.app.state.answering.begin(principal, session_id, body)
    return await _answer(request, response, turn)


@router.post("/message/stream", summary="Ask, and stream the answer (Server-Sent Events)", **_SSE)
async def stream_message(
    request: Request, body: schemas.SendMessage, session_id: SessionId, principal: CurrentPrincipal
) -> StreamingResponse:
    turn = await request.app.state.answering.begin(principal, session_id, body)
    return await _stream(request, turn)


@router.post(
    "/message/{message_id}/retry",
    summary="Regenerate a failed (or the latest) answer",
    responses=error_responses(429),
    **_RETRY,
)
async def retry_message(
    request: Request,
    response: Response,
    message_id: uuid.UUID,
    principal: CurrentPrincipal,
    body: schemas.RetryMessage | None = None,
) -> schemas.ChatMessage:
    turn = await request.app.state.answering.begin_retry(principal, message_id, body or schemas.RetryMessage())
    return await _answer(request, response, turn)


@router.post("/message/{message_id}/retry/stream", summary="Regenerate an answer, streamed", **_SSE, **_RETRY)
async def retry_message_stream(
    request: Request, message_id: uuid.UUID, principal: CurrentPrincipal, body: schemas.RetryMessage | None = None
) -> StreamingResponse:
    turn = await request.app.state.answering.begin_retry(principal, message_id, body or schemas.RetryMessage())
    return await _stream(request, turn)


@router.get("/message/{message_id}/stream", summary="Follow an answer: replay what was missed, then live", **_SSE)
async def follow_message(
    request: Request,
    message_id: uuid.UUID,
    principal: CurrentPrincipal,
    db: DbSession,
    last_event_id: Annotated[int | None, Header(ge=0, description="The last event id seen: characters seen.")] = None,
    after: Annotated[int | None, Query(ge=0, description="Like Last-Event-ID, for clients that cannot set it.")] = None,
) -> StreamingResponse:
    await service.get_owned_message(db, principal, message_id)
    await db.close()  # a long stream must not hold a database connection
    seen = last_event_id if last_event_id is not None else after
    return StreamingResponse(
        _sse(request.app.state.streams.follow(message_id, seen)), media_type="text/event-stream", headers=_NO_CACHE
    )


@router.post("/message/{message_id}/cancel", summary="Stop an answer being written; its text so far is kept")
async def cancel_message(
    request: Request, message_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession
) -> schemas.ChatMessage:
    await service.get_owned_message(db, principal, message_id)
    await db.close()
    return schemas.ChatMessage.model_validate(await request.app.state.streams.stop(message_id))


async def _answer(request: Request, response: Response, turn: Turn) -> schemas.ChatMessage:
    response.headers.update(_quota_headers(turn))
    async for _, event in (await request.app.state.streams.start(turn)).follow():
        if event.name == "done":
            return schemas.ChatMessage.model_validate(event.data)
        if event.name == "error":
            raise AnswerFailed(event.data["detail"])
    raise AnswerFailed("the answer ended without a result")


async def _stream(request: Request, turn: Turn) -> StreamingResponse:
    stream = await request.app.state.streams.start(turn)  # runs to the end even if this client goes away
    headers = _NO_CACHE | _quota_headers(turn)
    return StreamingResponse(_sse(stream.follow()), media_type="text/event-stream", headers=headers)


def _quota_headers(turn: Turn) -> dict[str, str]:
    return turn.quota.headers() if turn.quota else {}


async def _sse(events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[str]:
    """Each event with its id (characters of the answer so far); a heartbeat is a comment line."""
    async for number, event in events:
        if event is HEARTBEAT:
            yield ": heartbeat\n\n"
        else:
            yield f"id: {number}\nevent: {event.name}\ndata: {json.dumps(event.data)}\n\n"
