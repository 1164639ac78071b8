"""The documents API's JSON shapes."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DocumentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class Document(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    content_type: str
    size_bytes: int
    pages: int | None = Field(description="Physical pages; null for formats without pages.")
    chunks: int
    status: DocumentStatus
    error: str | None = Field(description="Why indexing failed, when status is `failed`.")
    backend: str = Field(description="`local` or `ragie`.")
    metadata: dict[str, Any] | None = Field(validation_alias="document_metadata")
    created_at: datetime
    updated_at: datetime
