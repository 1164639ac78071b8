"""The local index: chunks with embeddings and full-text vectors in PostgreSQL, searched hybrid.

Two rankings are fused (min-max normalised, then 0.4 x dense + 0.6 x lexical):

- dense: cosine similarity over pgvector's HNSW index;
- lexical: BM25. Matching uses only the query's rarest terms (document frequencies in ``lexicon``), as many as
  fit a budget of matched chunks, so the cost of a query stays bounded however large the index grows; ``ts_rank``
  picks a candidate pool from those matches and BM25 (title terms counted twice, every query term) orders it.

On BEIR SciFact this scores well above either ranking alone (README, "Retrieval quality"). Only chunks of the
organization's ``ready`` documents are read, so a document being indexed is never half visible. The ranking runs in
the database, as the function ``citechat_search`` (its SQL is in migration 0007), called once per search.
"""

import asyncio
import re
import time
import uuid
from typing import Literal

import asyncpg
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from sqlalchemy import delete, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from citechat.db.statements import Runner, Statement
from citechat.documents import models
from citechat.documents.parsing import parse
from citechat.retrievers import chunking
from citechat.retrievers.base import Documents, IndexMismatch, Ingested, IngestError, Organization, make_node
from citechat.retrievers.embeddings import Embedder

SearchMode = Literal["hybrid", "dense", "lexical"]
CANDIDATES = 100  # taken from each ranking before fusion
LEXICAL_POOL = 200  # matched by ts_rank before BM25 reorders them (at least CANDIDATES)
MATCH_TERMS = 6  # at most this many of the rarest query terms are used for matching,
MATCH_BUDGET = 2000  # and only while the chunks they match add up to no more than this
DENSE_WEIGHT = 0.4
_WORDS = re.compile(r"\w+")

# The search: one call of the database function that runs it (migration 0007, ``citechat_search``: the ranking
# above in SQL; it also refuses an index built by another model, scans HNSW deeper for an organization with a small
# share of the index, and plans each search for its organization), one round trip on the answer path's pool.
_SEARCH = Statement(
    text(
        "SELECT * FROM citechat_search(:org, :query, :vector, :model, :candidates, :dense_candidates,"
        " :lexical_candidates, :lexical_pool, :match_terms, :match_budget, :dense_weight, :top_k, :documents)"
    )
)
_OTHER_MODEL = "CC001"  # the SQLSTATE it refuses another model's index with (the recorded model in its DETAIL)

# Keeping BM25's statistics in step with the chunks (see ``_forget`` and ``ingest``).
_COUNT_IN = text("""
INSERT INTO lexicon (organization_id, lexeme, df)
SELECT :org, lexeme, count(*) FROM chunks, unnest(tsvector_to_array(search)) AS lexeme
WHERE document_id = :doc GROUP BY lexeme ORDER BY lexeme
ON CONFLICT (organization_id, lexeme) DO UPDATE SET df = lexicon.df + EXCLUDED.df;
""")
_STATS_IN = text("""
INSERT INTO index_stats (organization_id, chunks, total_length)
SELECT :org, count(*), coalesce(sum(length), 0) FROM chunks WHERE document_id = :doc
ON CONFLICT (organization_id) DO UPDATE
SET chunks = index_stats.chunks + EXCLUDED.chunks, total_length = index_stats.total_length + EXCLUDED.total_length
""")
_COUNT_OUT = text("""
UPDATE lexicon SET df = lexicon.df - gone.n
FROM (SELECT lexeme, count(*) AS n FROM chunks, unnest(tsvector_to_array(search)) AS lexeme
      WHERE document_id = :doc GROUP BY lexeme) gone
WHERE lexicon.organization_id = :org AND lexicon.lexeme = gone.lexeme
""")
_STATS_OUT = text("""
UPDATE index_stats SET chunks = index_stats.chunks - gone.n, total_length = index_stats.total_length - gone.len
FROM (SELECT count(*) AS n, coalesce(sum(length), 0) AS len FROM chunks WHERE document_id = :doc) gone
WHERE index_stats.organization_id = :org
""")
_SEARCH_VECTORS = text("""
UPDATE chunks SET search = setweight(to_tsvector('english', :name), 'A') || setweight(to_tsvector('english', text), 'B')
WHERE document_id = :doc
""")
_LOCK_ORGANIZATION = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


class LocalIndex:
    """The ``IndexBackend`` that keeps everything in citechat's own PostgreSQL."""

    name = "local"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        statements: Runner,
        embedder: Embedder,
        *,
        chunk_size: int = 200,
        chunk_overlap: int = 0,
    ) -> None:
        """``sessions`` for indexing, ``statements`` for searching (one statement each, on the answer path's pool)."""
        self._sessions, self._statements, self._embedder = sessions, statements, embedder
        self._chunk_size, self._chunk_overlap = chunk_size, chunk_overlap

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def free_search(self) -> bool:
        return self._embedder.local

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
        clock = time.perf_counter()
        parsed = await asyncio.to_thread(parse, content, content_type)
        passages = await asyncio.to_thread(
            chunking.split, parsed, chunk_size=self._chunk_size, chunk_overlap=self._chunk_overlap
        )
        if not passages:
            raise IngestError("the document contains no text")
        parsed_at = time.perf_counter()
        vectors = await self._embedder.embed([_embedding_text(name, p.text) for p in passages])
        embedded_at = time.perf_counter()
        async with self._sessions() as db, db.begin():
            await self._lock(db, organization)
            await self._forget(db, organization, document_id)
            db.add_all(
                models.Chunk(
                    document_id=document_id,
                    organization_id=organization.id,
                    chunk_index=p.index,
                    text=p.text,
                    length=len(_WORDS.findall(p.text)),
                    start_page=p.start_page,
                    end_page=p.end_page,
                    page_label=p.page_label,
                    embedding=vector,
                )
                for p, vector in zip(passages, vectors, strict=True)
            )
            await db.flush()
            keys = {"doc": document_id, "org": organization.id}
            await db.execute(_SEARCH_VECTORS, {"doc": document_id, "name": name})
            await db.execute(_COUNT_IN, keys)
            await db.execute(_STATS_IN, keys)
        timings = {
            "parse_s": parsed_at - clock,
            "embed_s": embedded_at - parsed_at,
            "store_s": time.perf_counter() - embedded_at,
        }
        return Ingested(pages=parsed.page_count, chunks=len(passages), timings=timings)

    async def delete(self, organization: Organization, document_id: uuid.UUID, external_id: str | None) -> None:
        async with self._sessions() as db, db.begin():
            await self._lock(db, organization)
            await self._forget(db, organization, document_id)

    @staticmethod
    async def _lock(db: AsyncSession, organization: Organization) -> None:
        """One writer per organization at a time, so concurrent ingests update ``lexicon`` without deadlocks."""
        await db.execute(_LOCK_ORGANIZATION, {"key": f"index:{organization.id}"})

    @staticmethod
    async def _forget(db: AsyncSession, organization: Organization, document_id: uuid.UUID) -> None:
        """Take the document's chunks out of the statistics, then out of the index."""
        keys = {"doc": document_id, "org": organization.id}
        await db.execute(_COUNT_OUT, keys)
        await db.execute(_STATS_OUT, keys)
        await db.execute(
            delete(models.Chunk).where(
                models.Chunk.document_id == document_id, models.Chunk.organization_id == organization.id
            )
        )

    def retriever(self, organization: Organization, top_k: int, documents: Documents = None) -> BaseRetriever:
        return LocalRetriever(self, organization, top_k, documents)

    async def search(
        self,
        organization: Organization,
        query: str,
        top_k: int,
        *,
        mode: SearchMode = "hybrid",
        documents: Documents = None,
    ) -> list[NodeWithScore]:
        """``mode``: ``hybrid`` (the default and what answers use), or one ranking alone, for evaluation;
        ``documents``: only these of the organization's (None: all)."""
        [vector] = await self._embedder.embed([query])
        return await self.search_vector(organization, query, vector, top_k, mode=mode, documents=documents)

    async def search_vector(
        self,
        organization: Organization,
        query: str,
        vector: list[float],
        top_k: int,
        *,
        mode: SearchMode = "hybrid",
        documents: Documents = None,
    ) -> list[NodeWithScore]:
        """``search`` with the query's embedding already computed (by the configured model: an index built by
        another is refused, by the search itself)."""
        candidates = max(CANDIDATES, top_k)
        params = {
            "query": query,
            "vector": str(vector),
            "org": organization.id,
            "model": self._embedder.model_name,
            "candidates": candidates,
            "dense_candidates": candidates if mode != "lexical" else 0,
            "lexical_candidates": candidates if mode != "dense" else 0,
            "lexical_pool": LEXICAL_POOL,
            "match_terms": MATCH_TERMS,
            "match_budget": MATCH_BUDGET,
            "dense_weight": DENSE_WEIGHT,
            "top_k": top_k,
            "documents": None if documents is None else list(documents),
        }
        try:
            rows = await self._statements.fetch(_SEARCH, params)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _OTHER_MODEL:
                self._refuse_other_model(exc.detail)
            raise
        return [_node(row) for row in rows]

    async def check_model(self) -> None:
        """Record the embedding model on first use; refuse to mix vectors from two models. Two documents indexed
        at once on a new index both find no record: the second insert yields to the first, then reads it."""
        async with self._sessions() as db, db.begin():
            recorded = await db.get(models.EmbeddingIndex, 1)
            if recorded is None:
                record = {"id": 1, "model": self._embedder.model_name, "dimensions": self._embedder.dimensions}
                await db.execute(insert(models.EmbeddingIndex).values(record).on_conflict_do_nothing())
                recorded = await db.get(models.EmbeddingIndex, 1)
            self._refuse_other_model(recorded.model)

    def _refuse_other_model(self, recorded: str | None) -> None:
        if recorded is not None and recorded != self._embedder.model_name:
            raise IndexMismatch(
                f"the document index was built with {recorded} but {self._embedder.model_name} is "
                "configured: run `citechat reindex` (or configure the original model)"
            )

    async def adopt_model(self) -> None:
        """Mark the index as built by the configured model (``citechat reindex`` calls this, then re-embeds)."""
        async with self._sessions() as db, db.begin():
            await db.execute(delete(models.EmbeddingIndex))
            db.add(models.EmbeddingIndex(id=1, model=self._embedder.model_name, dimensions=self._embedder.dimensions))

    async def aclose(self) -> None:
        if hasattr(self._embedder, "aclose"):
            await self._embedder.aclose()


class LocalRetriever(BaseRetriever):
    """One organization's view of the local index, as a LlamaIndex retriever."""

    def __init__(self, index: LocalIndex, organization: Organization, top_k: int, documents: Documents) -> None:
        super().__init__()
        self._index, self._organization, self._top_k, self._documents = index, organization, top_k, documents

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise NotImplementedError("citechat retrievers are async: call aretrieve()")

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        return await self._index.search(self._organization, query, self._top_k, documents=self._documents)


def _embedding_text(document_name: str, passage: str) -> str:
    """Passages are embedded with their document's name: questions often name the document, the page rarely does."""
    return f"{document_name}\n{passage}"


def _node(row: asyncpg.Record) -> NodeWithScore:
    return make_node(
        chunk_id=str(row["id"]),
        text=row["text"],
        score=round(row["score"], 4),
        document_id=str(row["document_id"]),
        document_name=row["document_name"],
        start_page=row["start_page"],
        end_page=row["end_page"],
        page_label=row["page_label"],
        similarity=None if row["similarity"] is None else round(row["similarity"], 4),
        backend="local",
    )
