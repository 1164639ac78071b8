"""The chat API's JSON shapes, with the spec's field names."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class MessageStatus(StrEnum):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"


class ChatSource(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    ragie_document_id: str = Field(description="The source document's id, in either retrieval backend.")
    document_name: str
    page_number: int | None = Field(description="First page of the passage; null for formats without pages.")
    chunk_text: str | None
    relevance_score: float | None


class ChatMessage(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: uuid.UUID
    role: MessageRole
    content: str
    status: MessageStatus
    sources: list[ChatSource] = []
    error_message: str | None = None
    created_at: datetime
    tokens_total: int | None = None
    processing_time_ms: int | None = None


class ChatSession(BaseModel):
    id: uuid.UUID
    user_id: str = Field(description="The user's id as the token states it (`sub`).")
    organization_id: str = Field(description="The organization's id as the token states it.")
    title: str
    is_active: bool
    is_archived: bool
    temperature: float
    model_name: str
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime | None = None
    message_count: int = 0


class RenameSession(BaseModel):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] = Field(
        description="The session's new title (1 to 255 characters, surrounding spaces removed)."
    )
