"""Answering a question in a chat session: store the question, run the pipeline, stream, verify, store the answer.

``begin`` does everything that can be refused (ownership, archived session) before any byte is streamed, so those
are plain HTTP errors; ``run`` then yields the events of the answer and leaves the assistant message
``completed`` or ``failed`` (with the stage that failed), never ``pending`` or ``streaming``.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llama_index.core.llms import ChatMessage as LLMMessage
from llama_index.core.schema import MetadataMode, NodeWithScore
from llama_index.core.utils import get_tokenizer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from citechat.auth.service import Principal
from citechat.chat import models, schemas
from citechat.chat.service import NEW_SESSION_TITLE
from citechat.db.base import utcnow
from citechat.errors import CitechatError, Conflict, NotFound
from citechat.pipeline import citations, engine
from citechat.pipeline.llms import EXTRACTIVE, LLMProvider, describe_failure
from citechat.pipeline.modes import POLICIES, ResponseMode
from citechat.pipeline.prompts import PromptStore
from citechat.retrievers.base import IndexBackend, Organization
from citechat.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)
TITLE_LENGTH = 50
INTERRUPTED = "interrupted: the connection closed before the answer was complete; retry it"


@dataclass(frozen=True)
class Event:
    name: str  # user_message | sources | token | done | error
    data: dict


@dataclass
class Turn:
    """A question stored and waiting for its answer."""

    principal: Principal
    session_id: uuid.UUID
    user_message: models.ChatMessage
    assistant_id: uuid.UUID
    question: str
    mode: ResponseMode
    model: str
    history: list[LLMMessage]
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Answering:
    """What answering needs from the process (built once in the lifespan)."""

    sessions: async_sessionmaker[AsyncSession]
    index: IndexBackend
    llms: LLMProvider
    prompts: PromptStore
    top_k: int
    min_similarity: float
    telemetry: Telemetry = NO_TELEMETRY

    async def begin(self, principal: Principal, session_id: uuid.UUID, request: schemas.SendMessage) -> Turn:
        model = self.llms.choose(request.model)
        async with self.sessions() as db:
            session = await db.scalar(
                select(models.ChatSession)
                .where(
                    models.ChatSession.id == session_id,
                    models.ChatSession.user_id == principal.user_id,
                    models.ChatSession.organization_id == principal.organization_id,
                )
                .with_for_update()
            )
            if session is None:
                raise NotFound("chat session not found")
            if session.is_archived:
                raise Conflict("this chat session is archived and read-only")
            mode = ResponseMode(request.mode or session.response_mode)
            history = await _history(db, session_id, session.max_context_messages)
            question = request.question
            user = models.ChatMessage(session_id=session_id, role="user", content=question, status="completed")
            assistant = models.ChatMessage(
                session_id=session_id,
                role="assistant",
                content="",
                status="pending",
                model_used=model,
                temperature_used=POLICIES[mode].temperature,
                message_metadata={"mode": mode.value},
            )
            db.add(user)
            await db.flush()
            db.add(assistant)
            if session.title == NEW_SESSION_TITLE:
                session.title = question[:TITLE_LENGTH] + ("..." if len(question) > TITLE_LENGTH else "")
            session.last_message_at = utcnow()
            await db.commit()
            return Turn(principal, session_id, user, assistant.id, question, mode, model, history)

    def run(self, turn: Turn) -> AsyncIterator[Event]:
        return self.telemetry.observe_answer(turn, self._run(turn))  # closing it closes _run at once

    async def _run(self, turn: Turn) -> AsyncIterator[Event]:
        yield Event("user_message", _message_json(turn.user_message, []))
        stage, timings = "retrieval", {}
        try:
            prompts = self.prompts.current()
            organization = Organization(turn.principal.organization_id, turn.principal.organization)
            clock = time.perf_counter()
            generation = await engine.generate(
                question=turn.question,
                history=turn.history,
                retriever=self.index.retriever(organization, self.top_k),
                llm=(llm := self.llms.create(turn.model, POLICIES[turn.mode].temperature)),
                prompts=prompts,
                mode=turn.mode,
                min_similarity=self.min_similarity,
                telemetry=self.telemetry,
            )
            timings |= generation.timings_ms
            sources = await self._save_sources(turn, generation.sources)
            yield Event("sources", {"sources": [_source_json(s) for s in sources]})
            stage, text, first_token = "generation", "", None
            async for delta in generation.tokens:
                first_token = first_token or time.perf_counter()
                text += delta
                yield Event("token", {"delta": delta})
            timings["ttft_ms"] = int(((first_token or time.perf_counter()) - turn.started) * 1000)
            timings["generation_ms"] = _ms(clock) - timings["retrieval_ms"] - timings.get("condense_ms", 0)
            stage = "citations"
            report = citations.verify(
                text, [s.node.get_content(metadata_mode=MetadataMode.NONE) for s in generation.sources]
            )
            usage = getattr(llm, "usage", None) or {}
            message = await self._complete(turn, report, timings, prompts.version, generation.refused, usage)
            yield Event("done", message)
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (or the process is stopping): never leave the answer "streaming".
            await asyncio.shield(self._fail(turn, INTERRUPTED, {"stage": stage, "retryable": True}))
            raise
        except Exception as exc:
            detail, retryable, expected = _failure(exc)
            log.warning("answer %s failed at %s: %s", turn.assistant_id, stage, detail, exc_info=not expected)
            await self._fail(turn, detail, {"stage": stage, "retryable": retryable})
            yield Event("error", {"message_id": str(turn.assistant_id), "detail": detail, "retryable": retryable})

    async def _save_sources(self, turn: Turn, nodes: list[NodeWithScore]) -> list[models.ChatSource]:
        async with self.sessions() as db:
            rows = [_source_row(turn.assistant_id, rank, node) for rank, node in enumerate(nodes, 1)]
            db.add_all(rows)
            assistant = await db.get(models.ChatMessage, turn.assistant_id)
            assistant.status = "streaming"
            await db.commit()
            return rows

    async def _complete(
        self,
        turn: Turn,
        report: citations.CitationReport,
        timings: dict,
        prompt_version: str,
        refused: bool,
        usage: dict,
    ) -> dict:
        async with self.sessions() as db:
            assistant = await db.scalar(
                select(models.ChatMessage)
                .where(models.ChatMessage.id == turn.assistant_id)
                .options(selectinload(models.ChatMessage.sources))
            )
            checks = {check.number: check for check in report.sources}
            for source in assistant.sources:
                check = checks.get(source.rank)
                source.cited = bool(check and check.cited)
                source.support = check.support if check else None
            if usage:  # as the provider reports it
                prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            else:  # counted (tiktoken, with the encoding LlamaIndex ships): the extractive answerer has no tokens
                prompt, completion = 0, len(get_tokenizer()(report.text))
            assistant.content = report.text
            assistant.status = "completed"
            assistant.tokens_prompt, assistant.tokens_completion = prompt, completion
            assistant.tokens_total = prompt + completion
            assistant.processing_time_ms = int((time.perf_counter() - turn.started) * 1000)
            assistant.message_metadata = {
                **(assistant.message_metadata or {}),
                "timings": timings,
                "prompt_version": prompt_version,
                "extractive": self.llms.name == EXTRACTIVE,
                "refused": refused,
                "citations": {
                    "removed_markers": list(report.removed_markers),
                    "unsupported_sentences": len(report.unsupported),
                    "sentences": [
                        {"text": s.text, "sources": list(s.sources), "support": s.support, "supported": s.supported}
                        for s in report.sentences
                        if s.sources
                    ],
                },
            }
            await db.commit()
            return _message_json(assistant, sorted(assistant.sources, key=lambda s: s.rank or 0))

    async def _fail(self, turn: Turn, detail: str, details: dict) -> None:
        async with self.sessions() as db:
            assistant = await db.get(models.ChatMessage, turn.assistant_id)
            if assistant is not None:
                assistant.status, assistant.error_message, assistant.error_details = "failed", detail, details
                await db.commit()


async def _history(db: AsyncSession, session_id: uuid.UUID, limit: int) -> list[LLMMessage]:
    """The last ``limit`` completed messages, oldest first (failed answers and the new question excluded)."""
    rows = (
        await db.scalars(
            select(models.ChatMessage)
            .where(models.ChatMessage.session_id == session_id, models.ChatMessage.status == "completed")
            .order_by(models.ChatMessage.created_at.desc(), models.ChatMessage.id.desc())
            .limit(limit)
        )
    ).all()
    return [LLMMessage(role=m.role, content=m.content) for m in reversed(rows)]


def _source_row(message_id: uuid.UUID, rank: int, node: NodeWithScore) -> models.ChatSource:
    meta = node.node.metadata
    return models.ChatSource(
        id=uuid.uuid4(),
        message_id=message_id,
        ragie_document_id=meta["document_id"],
        ragie_chunk_id=meta.get("chunk_id"),
        document_name=meta.get("document_name", "document"),
        page_number=meta.get("start_page"),
        end_page=meta.get("end_page"),
        page_label=meta.get("page_label"),
        chunk_text=node.node.get_content(metadata_mode=MetadataMode.NONE),
        relevance_score=node.score,
        rank=rank,
        source_metadata={k: meta[k] for k in ("backend", "similarity") if meta.get(k) is not None},
    )


def _source_json(source: models.ChatSource) -> dict:
    return schemas.ChatSource.model_validate(source).model_dump(mode="json")


def _message_json(message: models.ChatMessage, sources: list[models.ChatSource]) -> dict:
    """The message as the API shows it (its columns, not its lazy ``sources`` relationship)."""
    columns = {column.key: getattr(message, column.key) for column in models.ChatMessage.__table__.columns}
    body = schemas.ChatMessage.model_validate(columns | {"sources": []}).model_dump(mode="json")
    return body | {"sources": [_source_json(s) for s in sources]}


def _failure(exc: Exception) -> tuple[str, bool, bool]:
    """What the user is told, whether trying again may help, and whether the failure was an expected kind (a
    typed error or a provider's); internals never reach the user, unexpected ones reach the log with a traceback."""
    if isinstance(exc, CitechatError):
        return exc.detail, bool(getattr(exc, "retryable", False)), True
    if described := describe_failure(exc):
        return *described, True
    return "the answer could not be generated", True, False


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
