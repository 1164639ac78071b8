"""``/api/v1/chat/message``: ask in a session, as one JSON answer or as Server-Sent Events."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from citechat.api.dependencies import CurrentPrincipal
from citechat.api.errors import error_responses
from citechat.chat import schemas
from citechat.chat.answering import Event
from citechat.errors import CitechatError

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], responses=error_responses(401, 403, 404, 409, 503))
HEARTBEAT_S = 15.0
SessionId = Annotated[uuid.UUID, Query(description="The chat session to ask in.")]


class AnswerFailed(CitechatError):
    status_code = 502


@router.get("/models", summary="The models answers can be asked of")
async def list_models(request: Request, principal: CurrentPrincipal) -> schemas.Models:
    llms = request.app.state.answering.llms
    return schemas.Models(provider=llms.name, models=list(llms.models), default=llms.default_model)


@router.post("/message", summary="Ask, and get the completed answer")
async def send_message(
    request: Request, body: schemas.SendMessage, session_id: SessionId, principal: CurrentPrincipal
) -> schemas.ChatMessage:
    turn = await request.app.state.answering.begin(principal, session_id, body)
    async for _, event in request.app.state.streams.start(turn).follow():
        if event.name == "done":
            return schemas.ChatMessage.model_validate(event.data)
        if event.name == "error":
            raise AnswerFailed(event.data["detail"])
    raise AnswerFailed("the answer ended without a result")


@router.post(
    "/message/stream",
    summary="Ask, and stream the answer (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "user_message, sources, token*, done|error"}},
)
async def stream_message(
    request: Request, body: schemas.SendMessage, session_id: SessionId, principal: CurrentPrincipal
) -> StreamingResponse:
    turn = await request.app.state.answering.begin(principal, session_id, body)
    stream = request.app.state.streams.start(turn)  # runs to the end even if this client goes away
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_sse(stream.follow()), media_type="text/event-stream", headers=headers)


async def _sse(events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[str]:
    """Each event with its position as ``id:``, and a comment line when nothing was sent for ``HEARTBEAT_S``."""
    pending = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
            if not done:
                yield ": heartbeat\n\n"
                continue
            try:
                number, event = pending.result()
            except StopAsyncIteration:
                return
            yield f"id: {number}\nevent: {event.name}\ndata: {json.dumps(event.data)}\n\n"
            pending = asyncio.ensure_future(anext(events))
    finally:
        pending.cancel()
