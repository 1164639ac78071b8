"""The local index: chunks with embeddings and full-text vectors in PostgreSQL, searched hybrid.

Two rankings are fused (min-max normalised, then 0.4 x dense + 0.6 x lexical):

- dense: cosine similarity over pgvector's HNSW index;
- lexical: BM25. Matching uses only the query's rarest terms (document frequencies in ``lexicon``), as many as
  fit a budget of matched chunks, so the cost of a query stays bounded however large the index grows; ``ts_rank``
  picks a candidate pool from those matches and BM25 (title terms counted twice, every query term) orders it.

On BEIR SciFact this scores well above either ranking alone (README, "Retrieval quality"). Only chunks of the
organization's ``ready`` documents are read, so a document being indexed is never half visible.
"""

import asyncio
import re
import time
import uuid
from typing import Literal

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from sqlalchemy import delete, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from citechat.documents import models
from citechat.documents.parsing import parse
from citechat.retrievers import chunking
from citechat.retrievers.base import IndexMismatch, Ingested, IngestError, Organization, make_node
from citechat.retrievers.embeddings import Embedder

SearchMode = Literal["hybrid", "dense", "lexical"]
CANDIDATES = 100  # taken from each ranking before fusion
LEXICAL_POOL = 200  # matched by ts_rank before BM25 reorders them (at least CANDIDATES)
MATCH_TERMS = 6  # at most this many of the rarest query terms are used for matching,
MATCH_BUDGET = 2000  # and only while the chunks they match add up to no more than this
DENSE_WEIGHT = 0.4
_WORDS = re.compile(r"\w+")

_HYBRID = text("""
WITH stats AS (
    SELECT chunks::float8 AS n, greatest(total_length::float8 / greatest(chunks, 1), 1) AS avgdl
    FROM index_stats WHERE organization_id = :org
), terms AS (
    SELECT l.lexeme, l.df, ln(1 + (stats.n - l.df + 0.5) / (l.df + 0.5)) AS idf
    FROM lexicon l, stats
    WHERE l.organization_id = :org AND l.df > 0
      AND l.lexeme = ANY(tsvector_to_array(to_tsvector('english', :query)))
), rarest AS (
    SELECT lexeme, sum(df) OVER (ORDER BY df, lexeme) AS matches, row_number() OVER (ORDER BY df, lexeme) AS n
    FROM terms
), matching AS (  -- the rarest terms whose matches fit the budget (at least one term)
    SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS q
    FROM rarest WHERE n = 1 OR (matches <= :match_budget AND n <= :match_terms)
), pool AS (
    SELECT c.id, c.search, c.length
    FROM chunks c JOIN documents d ON d.id = c.document_id AND d.status = 'ready', matching
    WHERE c.organization_id = :org AND c.search @@ matching.q
    ORDER BY ts_rank(c.search, matching.q, 1) DESC
    LIMIT :lexical_pool
), lexical AS (
    SELECT pool.id, sum(
        terms.idf * tf * (1.2 + 1) / (tf + 1.2 * (0.25 + 0.75 * pool.length / stats.avgdl))
    ) AS score
    FROM pool
    CROSS JOIN LATERAL (
        SELECT u.lexeme, (cardinality(u.positions) + cardinality(array_positions(u.weights, 'A')))::float8 AS tf
        FROM unnest(pool.search) u
    ) counted
    JOIN terms ON terms.lexeme = counted.lexeme, stats
    GROUP BY pool.id
    ORDER BY score DESC
    LIMIT :lexical_candidates
), dense AS (
    SELECT c.id, 1 - (c.embedding <=> CAST(:vector AS vector)) AS score
    FROM chunks c JOIN documents d ON d.id = c.document_id AND d.status = 'ready'
    WHERE c.organization_id = :org
    ORDER BY c.embedding <=> CAST(:vector AS vector)
    LIMIT :dense_candidates
), dense_scaled AS (  -- min-max to [0, 1]; a ranking whose scores are all equal scales to 1
    SELECT id, score AS similarity,
           coalesce((score - min(score) OVER ()) / nullif(max(score) OVER () - min(score) OVER (), 0), 1) AS s
    FROM dense
), lexical_scaled AS (
    SELECT id, coalesce((score - min(score) OVER ()) / nullif(max(score) OVER () - min(score) OVER (), 0), 1) AS s
    FROM lexical
), fused AS (
    SELECT id, dense_scaled.similarity,
           :dense_weight * coalesce(dense_scaled.s, 0) + (1 - :dense_weight) * coalesce(lexical_scaled.s, 0) AS score
    FROM dense_scaled FULL JOIN lexical_scaled USING (id)
)
SELECT c.id, c.document_id, c.text, c.start_page, c.end_page, c.page_label, d.name AS document_name,
       fused.score, fused.similarity
FROM fused
JOIN chunks c ON c.id = fused.id
JOIN documents d ON d.id = c.document_id
ORDER BY score DESC, c.id
LIMIT :top_k
""")

# The model that built the index (refused if it is not the configured one), and, for the search's transaction
# only, how deep the dense ranking's HNSW scan goes and how the search is planned.
# The index holds every organization's chunks and pgvector (0.6) filters the scan's nearest ``ef_search`` by
# organization afterwards, so an organization with a fifth of the chunks got ~20 of its 100 candidates: the scan
# goes deeper in proportion to how small the organization's share is (a quarter more, for the spread; at most
# pgvector's 1,000). Small organizations are ranked exactly (the planner reads their chunks through the
# organization index), provided each search is planned for its organization: a prepared statement's generic plan,
# chosen after five runs on a connection, would not know whose chunks it reads.
_SEARCH_SETTINGS = text("""
SELECT (SELECT model FROM embedding_index WHERE id = 1) AS model,
       set_config('hnsw.ef_search', (
           CASE WHEN own.chunks >= total.chunks THEN :candidates
                ELSE least(1000, ceil(1.25 * :candidates * total.chunks / greatest(own.chunks, 1))) END
       )::int::text, true),
       set_config('plan_cache_mode', 'force_custom_plan', true)
FROM (SELECT greatest(coalesce(sum(chunks), 0), 1) AS chunks FROM index_stats) AS total,
     (SELECT coalesce(max(chunks), 0) AS chunks FROM index_stats WHERE organization_id = :org) AS own
""")

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
        embedder: Embedder,
        *,
        chunk_size: int = 200,
        chunk_overlap: int = 0,
    ) -> None:
        self._sessions, self._embedder = sessions, embedder
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

    def retriever(self, organization: Organization, top_k: int) -> BaseRetriever:
        return LocalRetriever(self, organization, top_k)

    async def search(
        self, organization: Organization, query: str, top_k: int, *, mode: SearchMode = "hybrid"
    ) -> list[NodeWithScore]:
        """``mode``: ``hybrid`` (the default and what answers use), or one ranking alone, for evaluation."""
        [vector] = await self._embedder.embed([query])
        return await self.search_vector(organization, query, vector, top_k, mode=mode)

    async def search_vector(
        self, organization: Organization, query: str, vector: list[float], top_k: int, *, mode: SearchMode = "hybrid"
    ) -> list[NodeWithScore]:
        """``search`` with the query's embedding already computed (by the configured model: an index built by
        another is refused, in the search's own transaction)."""
        candidates = max(CANDIDATES, top_k)
        params = {
            "query": query,
            "vector": str(vector),
            "org": organization.id,
            "dense_candidates": candidates if mode != "lexical" else 0,
            "lexical_candidates": candidates if mode != "dense" else 0,
            "lexical_pool": LEXICAL_POOL,
            "match_terms": MATCH_TERMS,
            "match_budget": MATCH_BUDGET,
            "dense_weight": DENSE_WEIGHT,
            "top_k": top_k,
        }
        async with self._sessions() as db, db.begin():
            settings = {"org": organization.id, "candidates": candidates}
            self._refuse_other_model(await db.scalar(_SEARCH_SETTINGS, settings))
            rows = (await db.execute(_HYBRID, params)).all()
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
        score=round(float(row.score), 4),
        document_id=str(row.document_id),
        document_name=row.document_name,
        start_page=row.start_page,
        end_page=row.end_page,
        page_label=row.page_label,
        similarity=None if row.similarity is None else round(float(row.similarity), 4),
        backend="local",
    )
