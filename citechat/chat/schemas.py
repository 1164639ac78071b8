"""The chat API's JSON shapes, with the spec's field names."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, computed_field, model_validator

from citechat.db.text import Storable
from citechat.pipeline.citations import SUPPORT_THRESHOLD
from citechat.pipeline.modes import ResponseMode


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class MessageStatus(StrEnum):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"  # cancelled by the user; the partial answer is kept


class ChatSource(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    ragie_document_id: str = Field(description="The source document's id, in either retrieval backend.")
    document_name: str
    page_number: int | None = Field(description="First page of the passage; null for formats without pages.")
    chunk_text: str | None
    relevance_score: float | None
    chunk_id: str | None = Field(default=None, validation_alias=AliasChoices("ragie_chunk_id", "chunk_id"))
    end_page: int | None = None
    page_label: str | None = Field(default=None, description="The page's printed label, where the PDF has one.")
    rank: int | None = Field(default=None, description="The number the answer cites this source by: [rank].")
    cited: bool = False
    support: float | None = Field(default=None, description="0-1: how well the citing sentences match the passage.")

    @computed_field
    @property
    def supported(self) -> bool | None:
        """False flags a citation whose sentences the passage does not support."""
        return None if self.support is None else self.support >= SUPPORT_THRESHOLD


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
    model_used: str | None = None
    temperature_used: float | None = None
    tokens_prompt: int | None = None
    tokens_completion: int | None = None
    metadata: dict[str, Any] | None = Field(
        default=None,
        validation_alias=AliasChoices("message_metadata", "metadata"),
        description="Mode, timings, prompt version, citation check summary.",
    )


class ChatSession(BaseModel):
    id: uuid.UUID
    user_id: str = Field(description="The user's id as the token states it (`sub`).")
    organization_id: str = Field(description="The organization's id as the token states it.")
    title: str
    is_active: bool
    is_archived: bool
    temperature: float
    model_name: str
    mode: ResponseMode = Field(description="The session's default response mode.")
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime | None = None
    message_count: int = 0


MAX_SCOPE = 20  # documents a question may be asked about, when not all


class Models(BaseModel):
    provider: str = Field(description="extractive, openai or openai-compatible.")
    models: list[str]
    default: str


class SendMessage(BaseModel):
    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=5000), Storable]
    mode: ResponseMode | None = Field(default=None, description="Default: the session's mode.")
    model: str | None = Field(default=None, description="Default: the configured model.")
    document_ids: list[uuid.UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SCOPE,
        description="Ask about these documents only (the organization's; at most 20). Default: all of them.",
    )


class RetryMessage(BaseModel):
    mode: ResponseMode | None = Field(default=None, description="Default: the mode the answer was asked in.")
    model: str | None = Field(default=None, description="Default: the configured model.")


class UpdateSession(BaseModel):
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["title"]}, {"required": ["mode"]}]})

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), Storable] | None = (
        Field(default=None, description="The session's new title (1 to 255 characters, surrounding spaces removed).")
    )
    mode: ResponseMode | None = Field(default=None, description="The session's default response mode.")

    @model_validator(mode="after")
    def _something(self) -> "UpdateSession":
        if self.title is None and self.mode is None:
            raise ValueError("give a title, a mode, or both")
        return self
