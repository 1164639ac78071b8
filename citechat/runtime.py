"""Everything a citechat process runs on, opened and closed in one place: the app's lifespan and the CLI's
in-process commands (``ingest``, ``reindex``, ``eval``) both use ``open_runtime``."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from llama_index.core.utils import get_tokenizer

from citechat.chat.answering import Answering
from citechat.chat.streams import AnswerStreams
from citechat.chat.workers import WorkerLease, mark_orphans_failed
from citechat.db.database import Database, open_database
from citechat.db.statements import Runner
from citechat.documents.ingestion import Ingestion
from citechat.pipeline.llms import provider_from_settings
from citechat.pipeline.local_model import local_model_server
from citechat.pipeline.prompts import PromptStore
from citechat.ratelimits.service import rate_limits_from_settings
from citechat.retrievers.base import IndexBackend
from citechat.retrievers.factory import index_from_settings
from citechat.settings import Settings
from citechat.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    database: Database
    index: IndexBackend
    ingestion: Ingestion
    answering: Answering
    streams: AnswerStreams


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, resume_ingestion: bool = True, telemetry: Telemetry = NO_TELEMETRY
) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(open_database(settings))
        statements = Runner(database.pool, telemetry.tracer)
        index = index_from_settings(settings, database.sessions, statements)
        stack.push_async_callback(index.aclose)
        ingestion = Ingestion(database.sessions, index, concurrency=settings.ingest_concurrency)
        stack.push_async_callback(ingestion.aclose)
        if resume_ingestion and (resumed := await ingestion.resume()):
            log.info("resumed indexing of %d document(s)", resumed)
        lease = WorkerLease(database.engine)
        await lease.start()
        stack.push_async_callback(lease.aclose)  # after the answers below are closed (the stack unwinds LIFO)
        async with database.sessions() as db:
            if orphans := await mark_orphans_failed(db):
                log.warning("marked %d answer(s) of stopped processes as failed (interrupted)", orphans)
        # LlamaIndex's chat memory counts history tokens with tiktoken: loaded now, not in the first answer (~200 ms).
        await asyncio.to_thread(get_tokenizer)
        local = await stack.enter_async_context(local_model_server(settings)) if settings.llm == "local" else None
        llms = provider_from_settings(settings, local_base_url=local)
        stack.push_async_callback(llms.aclose)
        answering = Answering(
            sessions=database.sessions,
            autocommit=database.autocommit,
            statements=statements,
            index=index,
            llms=llms,
            prompts=PromptStore(settings.prompts_dir),
            top_k=settings.retrieval_top_k,
            min_similarity=settings.strict_min_similarity,
            limits=rate_limits_from_settings(settings, statements),
            retrieval_timeout_s=settings.retrieval_timeout_s,
            worker_id=lease.id,
            telemetry=telemetry,
        )
        streams = AnswerStreams(answering)
        stack.push_async_callback(streams.aclose)
        yield Runtime(settings, database, index, ingestion, answering, streams)
