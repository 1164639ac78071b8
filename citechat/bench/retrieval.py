"""Retrieval latency against corpus size: top-5 hybrid search over 10k and 100k chunks (p50/p95), with and
without the query embedding, in a throwaway embedded PostgreSQL.

The corpus is real text (BEIR SciFact passages, embedded once with the configured model) replicated into
synthetic documents, each copy's vector nudged with small noise and renormalised, so the HNSW and GIN indexes
and the lexicon hold as many distinct rows as the size says.
"""

import json
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector
from sqlalchemy import text
from sqlalchemy.engine import make_url

from citechat.bench.report import percentile
from citechat.db.database import Database
from citechat.documents import models
from citechat.documents.commands import organization
from citechat.retrievers.base import Organization
from citechat.retrievers.local import LocalIndex
from citechat.runtime import open_runtime
from citechat.settings import Settings

CHUNKS_PER_DOCUMENT = 100
SIZES = [10_000, 100_000]


def sizes(quick: bool) -> dict:
    """``run``'s sizes: corpus sizes in chunks, distinct passages, measured queries."""
    if quick:
        return {"sizes": [500, 2000], "base_passages": 200, "queries": 20}
    return {"sizes": SIZES, "base_passages": 5000, "queries": 200}


async def run(corpus: Path, sizes: list[int], *, base_passages: int, queries: int, top_k: int = 5) -> dict:
    passages = _passages(corpus / "corpus.jsonl", base_passages)
    questions = _queries(corpus / "queries.jsonl", queries)
    with tempfile.TemporaryDirectory(prefix="citechat-bench-") as data_dir:
        async with open_runtime(Settings(_env_file=None, data_dir=Path(data_dir)), resume_ingestion=False) as runtime:
            index = runtime.index
            assert isinstance(index, LocalIndex)
            started = time.perf_counter()
            vectors = np.array(await index.embedder.embed(passages), dtype=np.float32)
            embed_rate = len(passages) / (time.perf_counter() - started)
            org = await organization(runtime, f"bench-{uuid.uuid4().hex[:8]}")
            results, loaded = [], 0
            for size in sorted(sizes):
                load_s = await load_synthetic(runtime.database, org, passages, vectors, start=loaded, stop=size)
                loaded = size
                results.append(
                    {"chunks": size, "load_s": round(load_s, 1), **await _measure(index, org, questions, top_k)}
                )
    return {
        "base_passages": len(passages),
        "embed_passages_per_s": round(embed_rate, 1),
        "top_k": top_k,
        "results": results,
    }


async def _measure(index: LocalIndex, org: Organization, questions: list[str], top_k: int) -> dict:
    """Every question once untimed, then every question timed: straight after loading, the first pass runs up
    to 2x slower (pages of the new indexes not yet cached)."""
    for question in questions:
        await index.search(org, question, top_k)
    total, sql_only = [], []
    for question in questions:
        started = time.perf_counter()
        [vector] = await index.embedder.embed([question])
        embedded = time.perf_counter()
        await index.search_vector(org, question, vector, top_k)
        done = time.perf_counter()
        total.append((done - started) * 1000)
        sql_only.append((done - embedded) * 1000)
    return {
        "queries": len(total),
        "p50_ms": round(percentile(total, 50), 2),
        "p95_ms": round(percentile(total, 95), 2),
        "p50_ms_without_embedding": round(percentile(sql_only, 50), 2),
        "p95_ms_without_embedding": round(percentile(sql_only, 95), 2),
    }


async def load_synthetic(
    database: Database, org: Organization, passages, vectors: np.ndarray, *, start: int, stop: int
) -> float:
    """Adds chunks ``start``..``stop`` (copies of the base passages) in documents of 100 chunks, then rebuilds the
    indexes and statistics the way ingestion leaves them, and writes it all out (checkpoint). Returns the seconds
    it took.

    ``documents`` is analyzed too: with the statistics of its empty table the planner expects one ready document
    and, at 10,000 chunks, ranks every chunk by exact distance instead of using the HNSW index (39 ms, not 21)."""
    started = time.perf_counter()
    rng = np.random.default_rng(start)
    engine = database.engine
    async with engine.begin() as conn:
        await conn.execute(text("DROP INDEX IF EXISTS ix_chunks_embedding"))
        documents = list(range(start // CHUNKS_PER_DOCUMENT, (stop + CHUNKS_PER_DOCUMENT - 1) // CHUNKS_PER_DOCUMENT))
        ids = {n: uuid.uuid4() for n in documents}
        await conn.execute(
            models.Document.__table__.insert(),
            [
                {
                    "id": ids[n],
                    "organization_id": org.id,
                    "name": f"Synthetic document {n}",
                    "content_type": "text/plain",
                    "size_bytes": 0,
                    "sha256": uuid.uuid4().hex,
                    "backend": "local",
                    "status": "ready",
                    "chunks": 0,
                }
                for n in documents
            ],
        )
    records = []
    for row in range(start, stop):
        base = row % len(passages)
        vector = vectors[base] + rng.normal(0, 0.03, vectors.shape[1]).astype(np.float32)
        vector /= np.linalg.norm(vector)
        record = (
            uuid.uuid4(),
            ids[row // CHUNKS_PER_DOCUMENT],
            org.id,
            row,
            passages[base],
            len(passages[base].split()),
        )
        records.append((*record, vector))
    await _copy_chunks(database.url, records)
    async with engine.begin() as conn:
        await conn.execute(
            text("""
            UPDATE chunks c SET search = setweight(to_tsvector('english', d.name), 'A')
                                      || setweight(to_tsvector('english', c.text), 'B')
            FROM documents d WHERE d.id = c.document_id AND c.search = ''::tsvector AND c.organization_id = :org
        """),
            {"org": org.id},
        )
        await conn.execute(text("DELETE FROM lexicon WHERE organization_id = :org"), {"org": org.id})
        await conn.execute(
            text("""
            INSERT INTO lexicon (organization_id, lexeme, df)
            SELECT :org, lexeme, count(*) FROM chunks, unnest(tsvector_to_array(search)) AS lexeme
            WHERE organization_id = :org GROUP BY lexeme
        """),
            {"org": org.id},
        )
        await conn.execute(
            text("""
            INSERT INTO index_stats (organization_id, chunks, total_length)
            SELECT :org, count(*), sum(length) FROM chunks WHERE organization_id = :org
            ON CONFLICT (organization_id) DO UPDATE SET chunks = EXCLUDED.chunks, total_length = EXCLUDED.total_length
        """),
            {"org": org.id},
        )
        await conn.execute(text("SET maintenance_work_mem = '512MB'"))
        for index in models.Chunk.__table__.indexes:
            if index.name == "ix_chunks_embedding":
                await conn.run_sync(lambda sync, index=index: index.create(sync))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE chunks"))
        await conn.execute(text("VACUUM ANALYZE lexicon"))
        await conn.execute(text("VACUUM ANALYZE documents"))
        await conn.execute(text("CHECKPOINT"))  # the load's writes reach the disk now, not while queries are timed
    return time.perf_counter() - started


async def _copy_chunks(url: str, records: list[tuple]) -> None:
    """Binary COPY on a connection of its own: the vector codec it needs must not reach the pool's connections."""
    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.query.get("host") or parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )
    try:
        await register_vector(conn)
        columns = ["id", "document_id", "organization_id", "chunk_index", "text", "length", "embedding"]
        await conn.copy_records_to_table("chunks", records=records, columns=columns)
    finally:
        await conn.close()


def _passages(path: Path, limit: int) -> list[str]:
    passages = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            passages.append(f"{row.get('title', '')}\n{row.get('text', '')}".strip())
            if len(passages) >= limit:
                break
    return passages


def _queries(path: Path, limit: int) -> list[str]:
    with path.open() as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(limit), strict=False)]


def markdown(report: dict) -> str:
    lines = [
        f"Top-{report['top_k']} hybrid retrieval, {report['results'][0]['queries']} queries per size "
        f"(embedding: {report['embed_passages_per_s']} passages/s).",
        "",
        "| chunks | p50 ms | p95 ms | p50 ms without embedding | p95 ms without embedding |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['chunks']:,} | {r['p50_ms']} | {r['p95_ms']} | {r['p50_ms_without_embedding']} | "
            f"{r['p95_ms_without_embedding']} |"
        )
    return "\n".join(lines) + "\n"
