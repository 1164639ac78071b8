"""Chat sessions of one caller. Every lookup is scoped to the caller's user and organization, so a session
that belongs to someone else is indistinguishable from one that does not exist."""

import re
import uuid
from collections.abc import Sequence

from sqlalchemy import delete, exists, func, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from citechat.auth.service import Principal
from citechat.chat import models, schemas
from citechat.errors import NotFound
from citechat.pipeline.modes import POLICIES

NEW_SESSION_TITLE = "New Chat"

_message_count = (
    select(func.count())
    .where(models.ChatMessage.session_id == models.ChatSession.id)
    .correlate(models.ChatSession)
    .scalar_subquery()
    .label("message_count")
)


def _owned_by(principal: Principal):
    return (
        models.ChatSession.user_id == principal.user_id,
        models.ChatSession.organization_id == principal.organization_id,
    )


def to_schema(session: models.ChatSession, principal: Principal, message_count: int) -> schemas.ChatSession:
    return schemas.ChatSession(
        id=session.id,
        user_id=principal.user,
        organization_id=principal.organization,
        title=session.title,
        is_active=session.is_active,
        is_archived=session.is_archived,
        temperature=session.temperature,
        model_name=session.model_name,
        mode=session.response_mode,
        created_at=session.created_at,
        updated_at=session.updated_at,
        last_message_at=session.last_message_at,
        message_count=message_count,
    )


async def get_owned(db: AsyncSession, principal: Principal, session_id: uuid.UUID) -> models.ChatSession:
    session = await db.scalar(
        select(models.ChatSession).where(models.ChatSession.id == session_id, *_owned_by(principal))
    )
    if session is None:
        raise NotFound("chat session not found")
    return session


async def get_owned_message(db: AsyncSession, principal: Principal, message_id: uuid.UUID) -> models.ChatMessage:
    message = await db.scalar(
        select(models.ChatMessage)
        .join(models.ChatSession, models.ChatSession.id == models.ChatMessage.session_id)
        .where(models.ChatMessage.id == message_id, *_owned_by(principal))
    )
    if message is None:
        raise NotFound("message not found")
    return message


async def _with_count(db: AsyncSession, principal: Principal, *where) -> schemas.ChatSession | None:
    row = (await db.execute(select(models.ChatSession, _message_count).where(*_owned_by(principal), *where))).first()
    return to_schema(row[0], principal, row[1]) if row else None


async def _lock_caller(db: AsyncSession, principal: Principal) -> None:
    """Serialise changes to a caller's active session until the transaction ends (concurrent tabs)."""
    key = f"chat-session:{principal.user_id}:{principal.organization_id}"
    await db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


async def get_or_create_active(db: AsyncSession, principal: Principal) -> schemas.ChatSession:
    active = models.ChatSession.is_active.is_(True)
    if found := await _with_count(db, principal, active):
        return found
    await _lock_caller(db, principal)
    if found := await _with_count(db, principal, active):
        await db.commit()
        return found
    return await _create_active(db, principal)


async def start_new(db: AsyncSession, principal: Principal) -> schemas.ChatSession:
    await _lock_caller(db, principal)
    await db.execute(
        update(models.ChatSession)
        .where(*_owned_by(principal), models.ChatSession.is_active.is_(True))
        .values(is_active=False)
    )
    return await _create_active(db, principal)


async def _create_active(db: AsyncSession, principal: Principal) -> schemas.ChatSession:
    session = models.ChatSession(
        user_id=principal.user_id, organization_id=principal.organization_id, title=NEW_SESSION_TITLE
    )
    db.add(session)
    await db.commit()
    return to_schema(session, principal, 0)


async def list_sessions(
    db: AsyncSession,
    principal: Principal,
    *,
    include_archived: bool,
    limit: int,
    before: uuid.UUID | None = None,
    containing: str | None = None,
) -> list[schemas.ChatSession]:
    """Newest first; ``before`` (a session id from the previous page) continues after that session; ``containing``:
    only sessions whose title or any message holds that text, in any case (``%`` and ``_`` are themselves)."""
    query = select(models.ChatSession, _message_count).where(*_owned_by(principal))
    if not include_archived:
        query = query.where(models.ChatSession.is_archived.is_(False))
    if containing is not None:
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", containing) + "%"
        message = models.ChatMessage
        said = exists().where(message.session_id == models.ChatSession.id, message.content.ilike(pattern, escape="\\"))
        query = query.where(or_(models.ChatSession.title.ilike(pattern, escape="\\"), said))
    if before is not None:
        cursor = await get_owned(db, principal, before)
        query = query.where(
            tuple_(models.ChatSession.updated_at, models.ChatSession.id) < (cursor.updated_at, cursor.id)
        )
    query = query.order_by(models.ChatSession.updated_at.desc(), models.ChatSession.id.desc()).limit(limit)
    return [to_schema(session, principal, count) for session, count in (await db.execute(query)).all()]


async def list_messages(
    db: AsyncSession,
    principal: Principal,
    session_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None = None,
) -> Sequence[models.ChatMessage]:
    """The newest ``limit`` messages (before message ``before``, when given), oldest first, with sources."""
    await get_owned(db, principal, session_id)
    message = models.ChatMessage
    query = select(message).where(message.session_id == session_id)
    if before is not None:
        cursor = (
            await db.execute(
                select(message.created_at, message.id).where(message.id == before, message.session_id == session_id)
            )
        ).first()
        if cursor is None:
            raise NotFound("message not found in this session")
        query = query.where(tuple_(message.created_at, message.id) < tuple(cursor))
    query = (
        query.order_by(message.created_at.desc(), message.id.desc()).limit(limit).options(selectinload(message.sources))
    )
    return list(reversed((await db.scalars(query)).all()))


async def update_session(
    db: AsyncSession, principal: Principal, session_id: uuid.UUID, changes: schemas.UpdateSession
) -> schemas.ChatSession:
    """Rename, or set the default mode (and with it the session's temperature)."""
    session = await get_owned(db, principal, session_id)
    if changes.title is not None:
        session.title = changes.title
    if changes.mode is not None:
        session.response_mode = changes.mode.value
        session.temperature = POLICIES[changes.mode].temperature
    await db.commit()
    return await _with_count(db, principal, models.ChatSession.id == session_id)


async def archive(db: AsyncSession, principal: Principal, session_id: uuid.UUID) -> None:
    """Archived sessions leave the default history and are never active."""
    result = await db.execute(
        update(models.ChatSession)
        .where(models.ChatSession.id == session_id, *_owned_by(principal))
        .values(is_archived=True, is_active=False)
    )
    if result.rowcount == 0:
        raise NotFound("chat session not found")
    await db.commit()


async def delete_session(db: AsyncSession, principal: Principal, session_id: uuid.UUID) -> None:
    """Removes the session; its messages and their sources go with it (ON DELETE CASCADE)."""
    result = await db.execute(
        delete(models.ChatSession).where(models.ChatSession.id == session_id, *_owned_by(principal))
    )
    if result.rowcount == 0:
        raise NotFound("chat session not found")
    await db.commit()
