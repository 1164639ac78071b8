"""Ingestion throughput: pages/s and chunks/s of the local index on PDFs, parse/embed/store split,
in a throwaway embedded PostgreSQL.

Documents are indexed ``ingest_concurrency`` at a time, as the ingestion runner does, so the stage times add up to
more than the wall time: one document is parsed and stored while another is embedded.
"""

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from citechat.documents import formats
from citechat.retrievers.local import LocalIndex
from citechat.runtime import open_runtime
from citechat.settings import Settings


async def run(files: list[Path]) -> dict:
    with tempfile.TemporaryDirectory(prefix="citechat-bench-") as data_dir:
        settings = Settings(_env_file=None, data_dir=Path(data_dir))
        async with open_runtime(settings, resume_ingestion=False) as runtime:
            index = runtime.index
            assert isinstance(index, LocalIndex)
            from citechat.documents.commands import organization

            org = await organization(runtime, f"bench-{uuid.uuid4().hex[:8]}")
            slots = asyncio.Semaphore(settings.ingest_concurrency)

            async def ingest(path: Path):
                async with slots:
                    content = await asyncio.to_thread(path.read_bytes)
                    document_id = await _document(runtime, org, path, content)
                    return await index.ingest(org, document_id, path.name, formats.PDF, content, None)

            started = time.perf_counter()
            results = await asyncio.gather(*(ingest(path) for path in files))
            elapsed = time.perf_counter() - started
    pages = sum(result.pages or 0 for result in results)
    chunks = sum(result.chunks for result in results)
    stages = {stage: sum(result.timings[stage] for result in results) for stage in ("parse_s", "embed_s", "store_s")}
    return {
        "documents": len(files),
        "concurrency": settings.ingest_concurrency,
        "pages": pages,
        "chunks": chunks,
        "seconds": round(elapsed, 1),
        "pages_per_s": round(pages / elapsed, 1),
        "chunks_per_s": round(chunks / elapsed, 1),
        "stages_s": {stage: round(seconds, 1) for stage, seconds in stages.items()},
    }


async def _document(runtime, org, path: Path, content: bytes) -> uuid.UUID:
    from citechat.documents import service

    async with runtime.database.sessions() as db:
        accepted = await service.accept_upload(
            db,
            org,
            runtime.index,
            filename=path.name,
            content=content,
            name=path.name,
            metadata=None,
            max_bytes=len(content) + 1,
        )
    return accepted.document.id


def markdown(report: dict) -> str:
    s = report["stages_s"]
    return (
        "| documents | pages | chunks | seconds | pages/s | chunks/s | parse s | embed s | store s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {report['documents']} | {report['pages']} | {report['chunks']} | {report['seconds']} | "
        f"{report['pages_per_s']} | {report['chunks_per_s']} | {s['parse_s']} | {s['embed_s']} | {s['store_s']} |\n"
    )
