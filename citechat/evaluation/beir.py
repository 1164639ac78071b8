"""Retrieval quality on a BEIR dataset folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``).

The corpus is indexed through citechat's own ingestion into an organization of its own (each corpus document one
citechat document named by its title), then every test query is run through the local index, hybrid and with each
ranking alone. Re-running reuses the index: identical documents are not indexed twice.
"""

import csv
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from citechat.documents import models, service
from citechat.evaluation.metrics import mean, mrr_at_k, ndcg_at_k, recall_at_k
from citechat.retrievers.base import Organization
from citechat.retrievers.local import LocalIndex, SearchMode
from citechat.runtime import Runtime

CORPUS_ID_KEY = "beir_id"


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class RetrievalScores:
    mode: str
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int
    p50_ms: float
    p95_ms: float


def load(folder: Path, split: str = "test") -> BeirDataset:
    corpus = {}
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            corpus[str(row["_id"])] = (row.get("title") or "", row.get("text") or "")
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (folder / "qrels" / f"{split}.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels[str(row["query-id"])][str(row["corpus-id"])] = int(row["score"])
    queries = {}
    with (folder / "queries.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = row["text"]
    return BeirDataset(folder.name, corpus, queries, dict(qrels))


async def index_corpus(
    runtime: Runtime, org: Organization, dataset: BeirDataset, on_progress: Callable[[int], None]
) -> None:
    """Each corpus document becomes a text document named by its title; its BEIR id travels in metadata."""
    max_bytes = int(runtime.settings.max_upload_mb * 2**20)
    for corpus_id, (title, body) in dataset.corpus.items():
        async with runtime.database.sessions() as db:
            accepted = await service.accept_upload(
                db,
                org,
                runtime.index,
                filename=f"{corpus_id}.txt",
                content=(body or title).encode(),
                name=title or corpus_id,
                metadata={CORPUS_ID_KEY: corpus_id},
                max_bytes=max_bytes,
            )
        if accepted.created:
            runtime.ingestion.submit(accepted.document.id).add_done_callback(lambda _: on_progress(1))
        else:
            on_progress(1)
    await runtime.ingestion.wait()


async def evaluate(
    runtime: Runtime, org: Organization, dataset: BeirDataset, modes: list[SearchMode], on_query: Callable[[], None]
) -> list[RetrievalScores]:
    index = runtime.index
    if not isinstance(index, LocalIndex):
        raise ValueError("`citechat eval beir` measures the local index: unset CITECHAT_RETRIEVER=ragie")
    async with runtime.database.sessions() as db:
        rows = await db.execute(
            select(models.Document.id, models.Document.document_metadata).where(
                models.Document.organization_id == org.id
            )
        )
        corpus_ids = {str(doc_id): (meta or {}).get(CORPUS_ID_KEY) for doc_id, meta in rows}
    results = []
    for mode in modes:
        ndcg, recall, mrr, latencies = [], [], [], []
        for query_id, query in dataset.queries.items():
            started = time.perf_counter()
            nodes = await index.search(org, query, top_k=200, mode=mode)
            latencies.append((time.perf_counter() - started) * 1000)
            ranked = _documents_in_order(corpus_ids[n.node.metadata["document_id"]] for n in nodes)
            relevant = dataset.qrels[query_id]
            ndcg.append(ndcg_at_k(ranked, relevant, 10))
            recall.append(recall_at_k(ranked, relevant, 100))
            mrr.append(mrr_at_k(ranked, relevant, 10))
            on_query()
        latencies.sort()
        results.append(
            RetrievalScores(
                mode=mode,
                ndcg_at_10=mean(ndcg),
                recall_at_100=mean(recall),
                mrr_at_10=mean(mrr),
                queries=len(ndcg),
                p50_ms=latencies[len(latencies) // 2],
                p95_ms=latencies[int(len(latencies) * 0.95)],
            )
        )
    return results


def _documents_in_order(corpus_ids) -> list[str]:
    """A document ranks where its best passage ranks."""
    seen: dict[str, None] = {}
    for corpus_id in corpus_ids:
        seen.setdefault(corpus_id, None)
    return list(seen)
