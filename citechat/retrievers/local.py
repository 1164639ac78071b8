"""The local index: chunks with embeddings and full-text vectors in PostgreSQL, searched hybrid.

Retrieval fuses two rankings with reciprocal rank fusion: cosine similarity over pgvector's HNSW index, and
PostgreSQL full-text search (any query term may match; ranked with ``ts_rank_cd``). Only chunks of the
organization's ``ready`` documents are ever read, so a document being indexed is never half visible.
"""

import asyncio
import uuid
from typing import Literal

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from citechat.documents import models
from citechat.documents.parsing import parse
from citechat.retrievers import chunking
from citechat.retrievers.base import IndexMismatch, Ingested, IngestError, Organization, make_node
from citechat.retrievers.embeddings import Embedder

SearchMode = Literal["hybrid", "dense", "lexical"]
RRF_K = 60
CANDIDATES = 50  # taken from each ranking before fusion

_HYBRID = text("""
WITH query AS (
    SELECT replace(plainto_tsquery('english', :query)::text, ' & ', ' | ')::tsquery AS terms
), dense AS (
    SELECT c.id, row_number() OVER (ORDER BY c.embedding <=> CAST(:vector AS vector)) AS rank,
           1 - (c.embedding <=> CAST(:vector AS vector)) AS similarity
    FROM chunks c JOIN documents d ON d.id = c.document_id AND d.status = 'ready'
    WHERE c.organization_id = :org
    ORDER BY c.embedding <=> CAST(:vector AS vector)
    LIMIT :dense_candidates
), lexical AS (
    SELECT c.id, row_number() OVER (ORDER BY ts_rank_cd(c.search, query.terms, 1) DESC) AS rank
    FROM chunks c JOIN documents d ON d.id = c.document_id AND d.status = 'ready', query
    WHERE c.organization_id = :org AND c.search @@ query.terms
    ORDER BY ts_rank_cd(c.search, query.terms, 1) DESC
    LIMIT :lexical_candidates
), fused AS (
    SELECT id, sum(1.0 / (:rrf_k + rank)) AS score
    FROM (SELECT id, rank FROM dense UNION ALL SELECT id, rank FROM lexical) ranked
    GROUP BY id
)
SELECT c.id, c.document_id, c.text, c.start_page, c.end_page, c.page_label, d.name AS document_name,
       fused.score, dense.similarity, dense.rank AS dense_rank, lexical.rank AS lexical_rank
FROM fused
JOIN chunks c ON c.id = fused.id
JOIN documents d ON d.id = c.document_id
LEFT JOIN dense ON dense.id = fused.id
LEFT JOIN lexical ON lexical.id = fused.id
ORDER BY fused.score DESC, c.id
LIMIT :top_k
""")


class LocalIndex:
    """The ``IndexBackend`` that keeps everything in citechat's own PostgreSQL."""

    name = "local"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        *,
        chunk_size: int = 200,
        chunk_overlap: int = 30,
    ) -> None:
        self._sessions, self._embedder = sessions, embedder
        self._chunk_size, self._chunk_overlap = chunk_size, chunk_overlap

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    async def ingest(
        self,
        organization: Organization,
        document_id: uuid.UUID,
        name: str,
        content_type: str,
        content: bytes,
        metadata: dict | None,
    ) -> Ingested:
        await self.check_model()
        parsed = await asyncio.to_thread(parse, content, content_type)
        passages = await asyncio.to_thread(
            chunking.split, parsed, chunk_size=self._chunk_size, chunk_overlap=self._chunk_overlap
        )
        if not passages:
            raise IngestError("the document contains no text")
        vectors = await self._embedder.embed([_embedding_text(name, p.text) for p in passages])
        async with self._sessions() as db, db.begin():
            await db.execute(delete(models.Chunk).where(models.Chunk.document_id == document_id))
            db.add_all(
                models.Chunk(
                    document_id=document_id,
                    organization_id=organization.id,
                    chunk_index=p.index,
                    text=p.text,
                    start_page=p.start_page,
                    end_page=p.end_page,
                    page_label=p.page_label,
                    embedding=vector,
                )
                for p, vector in zip(passages, vectors, strict=True)
            )
        return Ingested(pages=parsed.page_count, chunks=len(passages))

    async def delete(self, organization: Organization, document_id: uuid.UUID, external_id: str | None) -> None:
        async with self._sessions() as db, db.begin():
            await db.execute(
                delete(models.Chunk).where(
                    models.Chunk.document_id == document_id, models.Chunk.organization_id == organization.id
                )
            )

    def retriever(self, organization: Organization, top_k: int) -> BaseRetriever:
        return LocalRetriever(self, organization, top_k)

    async def search(
        self, organization: Organization, query: str, top_k: int, *, mode: SearchMode = "hybrid"
    ) -> list[NodeWithScore]:
        """``mode``: ``hybrid`` (the default and what answers use), or one ranking alone, for evaluation."""
        await self.check_model()
        [vector] = await self._embedder.embed([query])
        candidates = max(CANDIDATES, top_k)
        params = {
            "query": query,
            "vector": str(vector),
            "org": organization.id,
            "dense_candidates": candidates if mode != "lexical" else 0,
            "lexical_candidates": candidates if mode != "dense" else 0,
            "rrf_k": RRF_K,
            "top_k": top_k,
        }
        async with self._sessions() as db, db.begin():
            await db.execute(text("SET LOCAL hnsw.ef_search = 100"))
            rows = (await db.execute(_HYBRID, params)).mappings().all()
        return [_node(row) for row in rows]

    async def check_model(self) -> None:
        """Record the embedding model on first use; refuse to mix vectors from two models."""
        async with self._sessions() as db, db.begin():
            recorded = await db.get(models.EmbeddingIndex, 1)
            if recorded is None:
                db.add(
                    models.EmbeddingIndex(id=1, model=self._embedder.model_name, dimensions=self._embedder.dimensions)
                )
            elif recorded.model != self._embedder.model_name:
                raise IndexMismatch(
                    f"the document index was built with {recorded.model} but {self._embedder.model_name} is "
                    "configured: run `citechat reindex` (or configure the original model)"
                )

    async def adopt_model(self) -> None:
        """Mark the index as built by the configured model (``citechat reindex`` calls this once it re-embedded)."""
        async with self._sessions() as db, db.begin():
            await db.execute(delete(models.EmbeddingIndex))
            db.add(models.EmbeddingIndex(id=1, model=self._embedder.model_name, dimensions=self._embedder.dimensions))

    async def aclose(self) -> None:
        if hasattr(self._embedder, "aclose"):
            await self._embedder.aclose()


class LocalRetriever(BaseRetriever):
    """One organization's view of the local index, as a LlamaIndex retriever."""

    def __init__(self, index: LocalIndex, organization: Organization, top_k: int) -> None:
        super().__init__()
        self._index, self._organization, self._top_k = index, organization, top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise NotImplementedError("citechat retrievers are async: call aretrieve()")

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await self._index.search(self._organization, query_bundle.query_str, self._top_k)


def _embedding_text(document_name: str, passage: str) -> str:
    """Passages are embedded with their document's name: questions often name the document, the page rarely does."""
    return f"{document_name}\n{passage}"


def _node(row) -> NodeWithScore:
    return make_node(
        chunk_id=str(row.id),
        text=row.text,
        score=float(row.score),
        document_id=str(row.document_id),
        document_name=row.document_name,
        start_page=row.start_page,
        end_page=row.end_page,
        page_label=row.page_label,
        similarity=None if row.similarity is None else round(float(row.similarity), 4),
        backend="local",
    )
