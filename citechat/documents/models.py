"""Documents, their uploaded bytes, and (for the local backend) their chunks.

A document belongs to one organization; every query on documents or chunks filters on ``organization_id``.
The uploaded bytes live in their own table so that listing documents never reads them, and so that ingestion
interrupted by a restart can resume from the database alone.
"""

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy import text as sql  # the Chunk model has a column named ``text``
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from citechat.db.base import Base, utcnow

EMBEDDING_DIMENSIONS = 384
DOCUMENT_STATUSES = ("pending", "processing", "ready", "failed")


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("organization_id", "sha256"),
        CheckConstraint(f"status IN {DOCUMENT_STATUSES}", name="status"),
        Index("ix_documents_org_created", "organization_id", text("created_at DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str | None] = mapped_column(String(255), doc="The backend's id for it (Ragie's document id).")
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    backend_status: Mapped[str | None] = mapped_column(String(50), doc="The backend's own status word, mirrored.")
    error: Mapped[str | None] = mapped_column(Text)
    pages: Mapped[int | None] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    document_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class DocumentFile(Base):
    """The bytes as uploaded; kept so ingestion can run (or resume) in the background and re-indexing can re-read."""

    __tablename__ = "document_files"

    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class Chunk(Base):
    """A passage of a document in the local index: its text, page span, embedding and full-text vector."""

    __tablename__ = "chunks"
    __table_args__ = (
        Index("ix_chunks_document_index", "document_id", "chunk_index"),
        Index("ix_chunks_organization", "organization_id"),
        Index("ix_chunks_search", "search", postgresql_using="gin"),
        Index(
            "ix_chunks_embedding",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    chunk_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start_page: Mapped[int | None] = mapped_column(Integer)
    end_page: Mapped[int | None] = mapped_column(Integer)
    page_label: Mapped[str | None] = mapped_column(
        String(50), doc="Printed label of start_page, where the PDF has one."
    )
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIMENSIONS))
    search: Mapped[Any] = mapped_column(
        TSVECTOR,
        server_default=sql("''::tsvector"),
        doc="Full-text vector: the document's name (weight A) and the passage (weight B).",
    )
    length: Mapped[int] = mapped_column(Integer, doc="Words in the passage: BM25's document length.")


class Lexicon(Base):
    """In how many of an organization's chunks each lexeme occurs: BM25's document frequency, and what picks the
    rare query terms that keep full-text matching cheap on large indexes."""

    __tablename__ = "lexicon"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    lexeme: Mapped[str] = mapped_column(Text, primary_key=True)
    df: Mapped[int] = mapped_column(Integer)


class IndexStats(Base):
    """Chunk count and total length per organization: BM25's N and average document length."""

    __tablename__ = "index_stats"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    chunks: Mapped[int] = mapped_column(BigInteger)
    total_length: Mapped[int] = mapped_column(BigInteger)


class EmbeddingIndex(Base):
    """Which embedding model built the local index (one row). Querying with another model would compare
    vectors from different spaces, so a mismatch stops retrieval until ``citechat reindex``."""

    __tablename__ = "embedding_index"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=1)
    model: Mapped[str] = mapped_column(String(100))
    dimensions: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
