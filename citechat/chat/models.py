"""The spec's ``chat_sessions``, ``chat_messages`` and ``chat_sources`` tables.

Columns, defaults, cascades and indexes follow ``shared/spec``; the spec's invalid ``UNIQUE ... WHERE`` table
constraint is a partial unique index here, one active session per user in each organization.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from citechat.db.base import Base, utcnow


class ChatSession(Base):
    __tablename__ = "chat_sessions"
    __table_args__ = (
        Index("idx_chat_sessions_user_updated", "user_id", text("updated_at DESC")),
        Index("idx_chat_sessions_org_updated", "organization_id", text("updated_at DESC")),
        Index(
            "idx_chat_sessions_active",
            "user_id",
            "organization_id",
            unique=True,
            postgresql_where=text("is_active = true"),
        ),
        CheckConstraint("response_mode IN ('strict', 'balanced', 'creative')", name="response_mode"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    is_archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    temperature: Mapped[float] = mapped_column(Float, default=0.1, server_default=text("0.1"))
    model_name: Mapped[str] = mapped_column(String(100), default="gpt-4o", server_default="gpt-4o")
    max_context_messages: Mapped[int] = mapped_column(Integer, default=5, server_default=text("5"))
    response_mode: Mapped[str] = mapped_column(String(20), default="strict", server_default="strict")
    session_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        CheckConstraint("status IN ('pending', 'streaming', 'completed', 'failed', 'stopped')", name="status"),
        Index("idx_chat_messages_session_created", "session_id", "created_at"),
        Index("idx_chat_messages_role", "session_id", "role"),
        # At most one answer being written per session: asking relies on it (chat.answering).
        Index(
            "idx_chat_messages_one_in_flight",
            "session_id",
            unique=True,
            postgresql_where=text("status IN ('pending', 'streaming')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("chat_sessions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="completed", server_default="completed")
    error_message: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    model_used: Mapped[str | None] = mapped_column(String(100))
    temperature_used: Mapped[float | None] = mapped_column(Float)
    tokens_prompt: Mapped[int | None] = mapped_column(Integer)
    tokens_completion: Mapped[int | None] = mapped_column(Integer)
    tokens_total: Mapped[int | None] = mapped_column(Integer)
    processing_time_ms: Mapped[int | None] = mapped_column(Integer)
    message_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    worker_id: Mapped[uuid.UUID | None] = mapped_column(doc="The process writing the answer (see chat.workers).")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )

    sources: Mapped[list["ChatSource"]] = relationship(
        order_by="ChatSource.created_at", lazy="raise", passive_deletes=True
    )


class ChatSource(Base):
    __tablename__ = "chat_sources"
    __table_args__ = (
        Index("idx_chat_sources_message", "message_id"),
        Index("idx_chat_sources_ragie_doc", "ragie_document_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("chat_messages.id", ondelete="CASCADE"))
    ragie_document_id: Mapped[str] = mapped_column(String(255))
    ragie_chunk_id: Mapped[str | None] = mapped_column(String(255))
    document_name: Mapped[str] = mapped_column(String(500))
    page_number: Mapped[int | None] = mapped_column(Integer)
    chunk_text: Mapped[str | None] = mapped_column(Text)
    relevance_score: Mapped[float | None] = mapped_column(Float)
    end_page: Mapped[int | None] = mapped_column(Integer)
    page_label: Mapped[str | None] = mapped_column(String(50))
    rank: Mapped[int | None] = mapped_column(Integer, doc="1-based: the number the answer cites it by.")
    cited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    support: Mapped[float | None] = mapped_column(Float, doc="How well the sentences citing it are supported by it.")
    source_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
