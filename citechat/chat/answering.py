"""Answering a question in a chat session: store the question, run the pipeline, stream, verify, store the answer.

``begin`` (and ``begin_retry``) does everything that can be refused (ownership, an archived session, an answer
still being written, a spent quota) before anything is stored or any byte is streamed, so those are plain HTTP
errors; then, at once, it starts preparing the answer (``Turn.generation``: retrieval, the prompt, and the model's
request as soon as the prompt is ready) and storing the question (``Turn.stored``), side by side. When a search
costs nothing but this machine's work, ``begin`` starts it even before admitting the question, while the database
checks it (``TimedRetriever.anticipate``, when ``chat.search_ahead`` finds it worth it; a refusal cancels it).
``run`` says nothing until the question is stored (a send racing another in the same session is refused there,
as an HTTP error still), then yields the events of the answer and leaves the assistant message ``completed``,
``failed`` (with the stage that failed) or ``stopped``, never ``pending`` or ``streaming``: even when the database
is briefly away, the final write is retried before it is given up.

The statements an answer sends are compiled once and run on asyncpg directly (``db.statements``: the answer path
is where SQLAlchemy's per-statement work showed, under load); the rare paths (a retry, an orphaned answer in the
way) use SQLAlchemy sessions like the rest of the API.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg
from llama_index.core.llms import ChatMessage as LLMMessage
from llama_index.core.schema import MetadataMode, NodeWithScore
from llama_index.core.utils import get_tokenizer
from sqlalchemy import (
    DateTime,
    Integer,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from citechat.auth.service import Principal
from citechat.chat import models, schemas, workers
from citechat.chat.search_ahead import SearchAhead
from citechat.chat.service import NEW_SESSION_TITLE
from citechat.db.base import utcnow
from citechat.db.statements import UNAVAILABLE, Runner, Statement
from citechat.documents import service as documents_service
from citechat.errors import CitechatError, Conflict, NotFound
from citechat.pipeline import citations, engine
from citechat.pipeline.llms import EXTRACTIVE, LLMProvider
from citechat.pipeline.modes import POLICIES, ResponseMode
from citechat.pipeline.prompts import PromptStore
from citechat.ratelimits import storage
from citechat.ratelimits.service import Quota, RateLimited, RateLimits
from citechat.retrievers.base import Documents, IndexBackend, Organization
from citechat.telemetry import NO_TELEMETRY, Telemetry
from citechat.telemetry.tracing import AnswerWatch

log = logging.getLogger(__name__)
T = TypeVar("T")
Executor = AsyncSession | AsyncConnection  # an ORM session (a retry's transaction) or an autocommit connection
# What a final write waits out and tries again: the database away (a restart takes seconds), through either driver.
_DATABASE_AWAY = (OperationalError, InterfaceError, *UNAVAILABLE)
TITLE_LENGTH = 50
IN_FLIGHT = ("pending", "streaming")
BUSY = "an answer is still being written in this session; wait for it or stop it"
FINAL_WRITE_DELAYS_S = (0.5, 1, 2, 4, 8)  # ~15 s: a database restart, not an outage
_END = object()  # the answer's last token was read
_SENTENCE_ENDS = frozenset(".!?\n")  # a token holding one may end a sentence: its claims are noted


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
    metadata: dict  # the answer's ``message_metadata`` as begun (mode, attempt); completed with timings etc.
    quota: Quota | None = None  # the tighter quota once this message was counted (or not: retrying a failure)
    # The question being stored (``begin`` starts it): done once it is, or raising why it was refused after all
    # (another send got there first, the session was archived or deleted since it was admitted).
    stored: asyncio.Future = field(default_factory=lambda: _done(None))
    # The answer being prepared (``begin`` starts it too): retrieval and the prompt, then the model asked.
    generation: asyncio.Future = field(default_factory=lambda: _done(None))
    watch: AnswerWatch | None = None  # its telemetry, from when its request was taken
    started: float = field(default_factory=time.perf_counter)  # when its request was taken (``begin`` sets it)
    text: str = ""  # streamed so far (persisted by the stream's flusher)
    sources: list[models.ChatSource] = field(default_factory=list)  # as saved, in citation order
    stop_requested: bool = False  # the user asked to stop: end "stopped", keeping the text
    finishing: bool = False  # the final write has begun: too late to stop

    async def was_stored(self) -> bool:
        """Whether the question was stored (waiting for it to be, if it is still being stored)."""
        await asyncio.wait([self.stored])
        return not self.stored.cancelled() and self.stored.exception() is None


@dataclass(frozen=True)
class Answering:
    """What answering needs from the process (built once in the lifespan).

    Asking and answering send ``statements``, each doing its work alone, in autocommit (see ``db.statements``);
    only a retry, which rewrites an answer in place, takes a transaction (``sessions``), and the rare paths use
    ``autocommit``."""

    sessions: async_sessionmaker[AsyncSession]
    autocommit: AsyncEngine
    statements: Runner
    index: IndexBackend
    llms: LLMProvider
    prompts: PromptStore
    top_k: int
    min_similarity: float
    limits: RateLimits
    retrieval_timeout_s: float | None = None
    worker_id: uuid.UUID | None = None  # the process's lease (see chat.workers); None outside a server
    telemetry: Telemetry = NO_TELEMETRY
    search_ahead: SearchAhead = field(default_factory=SearchAhead)  # which questions are searched while admitted

    async def begin(self, principal: Principal, session_id: uuid.UUID, request: schemas.SendMessage) -> Turn:
        started = time.perf_counter()
        model = self.llms.choose(request.model)
        documents = await self._scope(principal, request.document_ids)
        watch, retriever = self.telemetry.start_answer(), self._retriever(principal, documents)
        with self._admitting(principal, watch, retriever):
            if self.index.free_search and self.search_ahead.worth_it(principal.user_id, session_id):
                # Searched while it is admitted (the engine takes it unless the question is condensed first): the
                # search costs only this machine's work, and the model is asked a round trip sooner.
                self.search_ahead.track(retriever.anticipate(request.question))
                await asyncio.sleep(0)  # its embedding under way before the statement is sent: the longer of the two
            # One round trip admits the question: the session checked (refusals first, so they cost no quota), its
            # history read and, when the quotas are kept in the database, the question counted; then one stores it.
            counting = self.limits.in_statement(principal)
            params = _owner(principal, session_id) | (counting or {})
            session = await self.statements.fetchrow(_ADMIT if counting is None else _ADMIT_COUNTING, params)
            await self._admit(session)
            quota = await self._count(principal, admitted=session if counting is not None else None)
        self.search_ahead.asked(session_id)
        history = [LLMMessage(role=m["role"], content=m["content"]) for m in session["history"]]
        mode = ResponseMode(request.mode or session["response_mode"])
        asked = utcnow()
        user = models.ChatMessage(
            id=uuid.uuid4(),
            session_id=session_id,
            role="user",
            content=request.question,
            status="completed",
            created_at=asked,
            updated_at=asked,
        )
        assistant = self._new_answer(session_id, mode, model, documents, after=asked)
        title = _title(request.question) if session["title"] == NEW_SESSION_TITLE else None
        metadata, question = assistant.message_metadata, request.question
        turn = Turn(principal, session_id, user, assistant.id, question, mode, model, history, metadata, quota)
        turn.watch, turn.started = watch, started
        self._prepare(turn, retriever)
        turn.stored = asyncio.ensure_future(self._store(principal, session_id, title, [user, assistant]))
        return turn

    @contextmanager
    def _admitting(self, principal: Principal, watch: AnswerWatch, retriever: engine.TimedRetriever) -> Iterator[None]:
        """Admitting a question, inside its answer's span: a refusal (or a failure) ends the span, cancels the
        search started ahead of admission, and has the caller's next questions wait for admission before any
        search (``search_ahead``)."""
        try:
            with watch.current():
                yield
        except BaseException as exc:
            retriever.forget()
            if isinstance(exc, CitechatError):
                self.search_ahead.refused(principal.user_id)
            watch.refused(exc)
            raise

    def _retriever(self, principal: Principal, documents: Documents = None) -> engine.TimedRetriever:
        organization = Organization(principal.organization_id, principal.organization)
        inner = self.index.retriever(organization, self.top_k, documents)
        return engine.TimedRetriever(inner, self.retrieval_timeout_s, self.telemetry)

    async def _store(
        self, principal: Principal, session_id: uuid.UUID, title: str | None, rows: list[models.ChatMessage]
    ) -> None:
        """Stores the question and its pending answer, touching the session (its ``title`` when it had none)."""
        params = _owner(principal, session_id) | {"title": title, "at": rows[0].created_at}
        try:
            stored = await self.statements.fetchval(_ASK, params | _rows(models.ChatMessage.__table__, rows))
        except asyncpg.UniqueViolationError as exc:  # idx_chat_messages_one_in_flight: another send got there first
            raise Conflict(BUSY) from exc
        if stored is None:  # archived or deleted since it was admitted: say which
            found = await self.statements.fetchrow(_SESSION_ROW, _owner(principal, session_id))
            await self._admit(found)
            raise NotFound("chat session not found")

    async def begin_retry(self, principal: Principal, message_id: uuid.UUID, request: schemas.RetryMessage) -> Turn:
        """Regenerates the session's latest answer in place: same message id, same question, no new user message.

        Retrying a failed answer is free; regenerating one that completed or was stopped counts as a message."""
        started = time.perf_counter()
        model = self.llms.choose(request.model)
        watch, retriever = self.telemetry.start_answer(), self._retriever(principal)
        with self._admitting(principal, watch, retriever):
            async with self.sessions() as db:  # refusals first, so they cost no quota
                _, assistant, _ = await self._retryable(db, principal, message_id)
                free = assistant.status == "failed"
            # Asked again about the documents it was asked about, if they are all still there.
            documents = await self._scope(principal, scope_of(assistant.message_metadata or {}), again=True)
            quota = await (self.limits.tightest(principal) if free else self._count(principal))
            turn = await self._rewrite(principal, message_id, request, model, quota, documents)
        turn.watch, turn.started = watch, started
        if documents is not None:
            retriever = self._retriever(principal, documents)
        self._prepare(turn, retriever)
        return turn

    async def _rewrite(
        self,
        principal: Principal,
        message_id: uuid.UUID,
        request: schemas.RetryMessage,
        model: str,
        quota: Quota,
        documents: Documents,
    ) -> Turn:
        """The answer to retry reset in place (its sources deleted), as a turn to answer again (about
        ``documents``)."""
        async with self.sessions() as db:
            session, assistant, user = await self._retryable(db, principal, message_id)
            session_id = session.id
            mode = ResponseMode(request.mode or (assistant.message_metadata or {}).get("mode") or session.response_mode)
            history = await _history(db, session_id, session.max_context_messages, before=user.created_at)
            await db.execute(delete(models.ChatSource).where(models.ChatSource.message_id == message_id))
            fresh = self._new_answer(session_id, mode, model, documents)
            for column in ("content", "status", "model_used", "temperature_used", "worker_id"):
                setattr(assistant, column, getattr(fresh, column))
            attempt = (assistant.message_metadata or {}).get("attempt", 1) + 1
            assistant.message_metadata = fresh.message_metadata | {"attempt": attempt}
            metadata = assistant.message_metadata
            for column in ("error_message", "error_details", "processing_time_ms", "tokens_prompt"):
                setattr(assistant, column, None)
            assistant.tokens_completion = assistant.tokens_total = None
            session.last_message_at = utcnow()
            try:
                await db.commit()
            except IntegrityError as exc:  # a send committed between this retry's checks and its write
                raise Conflict(BUSY) from exc
            return Turn(principal, session_id, user, message_id, user.content, mode, model, history, metadata, quota)

    async def _count(self, principal: Principal, *, admitted: asyncpg.Record | None = None) -> Quota:
        """Counts the message, or reads how the admitting statement counted it (``admitted``: its row, when it
        counted; it does not when an orphaned answer stood in the way, marked failed since)."""
        try:
            if admitted is not None and admitted["user_hits"] is not None:
                return self.limits.consumed(admitted)
            return await self.limits.consume(principal)
        except RateLimited as refused:
            self.telemetry.metrics.rate_limited(refused.quota.scope)
            raise

    async def _retryable(
        self, db: AsyncSession, principal: Principal, message_id: uuid.UUID
    ) -> tuple[models.ChatSession, models.ChatMessage, models.ChatMessage]:
        """The session, the answer and its question, when the answer is the session's latest and may be redone."""
        session_id = await db.scalar(
            select(models.ChatMessage.session_id).where(
                models.ChatMessage.id == message_id, models.ChatMessage.role == "assistant"
            )
        )
        if session_id is None:
            raise NotFound("message not found")
        session = await self._writable_session(db, principal, session_id)
        latest = await db.scalars(
            select(models.ChatMessage)
            .where(models.ChatMessage.session_id == session_id)
            .order_by(models.ChatMessage.created_at.desc(), models.ChatMessage.id.desc())
            .limit(2)
        )
        assistant, user = [*latest, None, None][:2]
        if assistant is None or assistant.id != message_id or user is None or user.role != "user":
            raise Conflict("only the latest answer of a session can be retried")
        return session, assistant, user

    async def _writable_session(
        self, db: AsyncSession, principal: Principal, session_id: uuid.UUID
    ) -> models.ChatSession:
        """The caller's session (the ORM object), locked until commit so two retries cannot both pass the checks."""
        found = (await db.execute(_SESSION_LOCKED, _owner(principal, session_id))).first()
        await self._admit(found and found._mapping, db=db)
        return found[0]

    async def _admit(self, found, *, db: Executor | None = None) -> None:
        """Refuses a session that is not there (``found``: its row, with ``is_archived``, ``busy_id`` and
        ``busy_worker``), archived, or with an answer being written by a live process (one whose process is gone is
        marked failed: it will never finish; on ``db``, or on a connection of its own)."""
        if found is None:
            raise NotFound("chat session not found")
        if found["is_archived"]:
            raise Conflict("this chat session is archived and read-only")
        if found["busy_id"] is not None:
            if db is None:
                async with self.autocommit.connect() as db:
                    return await _clear_or_refuse(db, found["busy_id"], found["busy_worker"])
            await _clear_or_refuse(db, found["busy_id"], found["busy_worker"])

    async def _scope(
        self, principal: Principal, document_ids: Sequence[uuid.UUID] | None, *, again: bool = False
    ) -> Documents:
        """The documents a question is asked about (None: all): each must be one of the caller's organization's.
        ``again``: those of an answer being retried, which may have been deleted since (a conflict, not a bad
        request: asked about nothing, it could only be refused)."""
        if document_ids is None:
            return None
        wanted = tuple(dict.fromkeys(document_ids))
        async with self.sessions() as db:
            missing = await documents_service.not_found(db, principal.organization_id, wanted)
        if missing:
            named = ", ".join(map(str, missing))
            if again:
                raise Conflict(f"the documents this answer was asked about were deleted since: {named}; ask again")
            raise UnknownDocuments(f"document_ids: not documents of this organization (deleted?): {named}")
        return wanted

    def _new_answer(
        self,
        session_id: uuid.UUID,
        mode: ResponseMode,
        model: str,
        documents: Documents = None,
        *,
        after: datetime | None = None,
    ) -> models.ChatMessage:
        """A pending answer, with the documents it is asked about (when not all) in its metadata; ``after``: its
        question's time (the answer is a microsecond later, so it sorts after)."""
        times = {} if after is None else dict.fromkeys(("created_at", "updated_at"), after + timedelta(microseconds=1))
        return models.ChatMessage(
            id=uuid.uuid4(),
            **times,
            session_id=session_id,
            role="assistant",
            content="",
            status="pending",
            model_used=model,
            temperature_used=POLICIES[mode].temperature,
            message_metadata={"mode": mode.value}
            | ({} if documents is None else {"documents": list(map(str, documents))}),
            worker_id=self.worker_id,
        )

    def run(self, turn: Turn) -> AsyncIterator[Event]:
        return self.telemetry.observe_answer(turn.watch, self._run(turn))  # closing it closes _run at once

    def _prepare(self, turn: Turn, retriever: engine.TimedRetriever) -> None:
        """Starts preparing the answer (``Turn.generation``): from here to the model's request nothing waits on
        anything but retrieval."""
        llm = self.llms.create(turn.model, POLICIES[turn.mode].temperature)
        turn.watch.admitted(turn)
        with turn.watch.current():  # the answer's span is the parent of what preparing it does
            turn.generation = asyncio.ensure_future(self._generate(turn, llm, self.prompts.current(), retriever))

    async def _run(self, turn: Turn) -> AsyncIterator[Event]:
        stage, timings, generating = "retrieval", {}, turn.generation
        try:
            await asyncio.shield(turn.stored)
            yield Event(
                "user_message", message_json(turn.user_message, []) | {"assistant_message_id": str(turn.assistant_id)}
            )
            prepared: _Prepared = await generating
            generation, llm, prompts = prepared.generation, prepared.llm, prepared.prompts
            timings |= generation.timings_ms
            async with aclosing(generation.tokens) as tokens:
                # The model was asked as soon as the prompt was ready (``first``); the sources are saved while it
                # thinks of its first token.
                first = prepared.first
                try:
                    turn.sources = await self._save_sources(turn, generation.sources)
                    yield Event("sources", {"sources": [source_json(s) for s in turn.sources]})
                    # Their terms are found now, while the model thinks, so that checking the citations after
                    # the last token reads only the answer.
                    passages = citations.Passages([source.chunk_text for source in turn.sources])
                    claims = citations.Claims()  # and the answer's sentences' as they end
                    stage, first_token = "generation", None
                    delta = await first
                finally:
                    await _cancel(first)  # when the answer stopped before the model answered
                while delta is not _END:
                    first_token = first_token or time.perf_counter()
                    turn.text += delta
                    yield Event("token", {"delta": delta})
                    if not _SENTENCE_ENDS.isdisjoint(delta):
                        claims.note(turn.text)
                    delta = await anext(tokens, _END)
            timings["ttft_ms"] = int(((first_token or time.perf_counter()) - turn.started) * 1000)
            timings["generation_ms"] = _ms(prepared.retrieved)
            stage = "citations"
            turn.finishing = True
            report = citations.verify(turn.text, passages, claims)
            usage = getattr(llm, "usage", None) or {}
            message = await _persisting(
                lambda: self._complete(turn, report, timings, prompts.version, generation.refused, usage)
            )
            yield Event("done", message)
        except (asyncio.CancelledError, GeneratorExit):
            # Stopped by the user, or the process is stopping: never leave the answer "streaming".
            await _cancel_preparation(generating)
            await asyncio.shield(_persisting(lambda: self._interrupt(turn, stage)))
            raise
        except Exception as exc:
            if not await turn.was_stored():  # refused after all: nothing was stored, the refusal is the answer
                await _cancel_preparation(generating)
                raise
            detail, retryable, expected = _failure(exc)
            log.warning("answer %s failed at %s: %s", turn.assistant_id, stage, detail, exc_info=not expected)
            details = {"stage": stage, "retryable": retryable, "provider": self._provider(stage)}
            try:
                await _persisting(lambda: self._fail(turn, detail, details))
            except _DATABASE_AWAY:
                log.error(
                    "answer %s: the failure could not be saved; it is marked at the next start", turn.assistant_id
                )
            yield Event("error", {"message_id": str(turn.assistant_id), "detail": detail, "retryable": retryable})

    async def _generate(self, turn: Turn, llm, prompts, retriever: engine.TimedRetriever) -> "_Prepared":
        """Retrieval and the prompt, then the model's first piece asked for at once (its request sent)."""
        clock = time.perf_counter()
        generation = await engine.generate(
            question=turn.question,
            history=turn.history,
            retriever=retriever,
            llm=llm,
            prompts=prompts,
            mode=turn.mode,
            min_similarity=self.min_similarity,
            telemetry=self.telemetry,
        )
        first = asyncio.ensure_future(anext(generation.tokens, _END))
        # Generation's time counts from the passages in hand: retrieval's end, or now when it ended ahead.
        return _Prepared(generation, first, llm, prompts, retrieved=max(clock, retriever.finished))

    async def stored_message(self, message_id: uuid.UUID) -> dict | None:
        """The message as stored, in the API's shape (with its sources)."""
        async with self.sessions() as db:
            message = await db.scalar(
                select(models.ChatMessage)
                .where(models.ChatMessage.id == message_id)
                .options(selectinload(models.ChatMessage.sources))
            )
            return None if message is None else message_json(message)

    def _provider(self, stage: str) -> str:
        return self.index.name if stage == "retrieval" else self.llms.name

    async def _save_sources(self, turn: Turn, nodes: list[NodeWithScore]) -> list[models.ChatSource]:
        """Saves the sources and marks the answer ``streaming``, in one statement."""
        rows = [_source_row(turn.assistant_id, rank, node) for rank, node in enumerate(nodes, 1)]
        params = {"answer_id": turn.assistant_id, "at": utcnow()} | _rows(models.ChatSource.__table__, rows)
        await self.statements.execute(_SAVE_SOURCES, params)
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
        """Writes the answer, its citation checks and its sources' verdicts in one statement; returns it as the API
        shows it."""
        checks = {check.number: check for check in report.sources}
        for source in turn.sources:
            check = checks.get(source.rank)
            source.cited, source.support = bool(check and check.cited), check.support if check else None
        if usage:  # as the provider reports it
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        else:  # counted (tiktoken, with the encoding LlamaIndex ships): the extractive answerer has no tokens
            prompt, completion = 0, len(get_tokenizer()(report.text))
        metadata = turn.metadata | {
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
        params = {
            "answer_id": turn.assistant_id,
            "text": report.text,
            "prompt": prompt,
            "completion": completion,
            "total": prompt + completion,
            "took_ms": _ms(turn.started),
            "metadata": metadata,
            "at": utcnow(),
        }
        verdicts = _rows(models.ChatSource.__table__, turn.sources, _VERDICT_COLUMNS)
        message = await self.statements.fetchrow(_COMPLETE, params | verdicts)
        if message is None:
            raise NotFound("the answer was deleted while it was being written")
        return message_json(message, turn.sources)

    async def _fail(self, turn: Turn, detail: str, details: dict) -> None:
        """Failed, keeping what was streamed before the failure."""
        await self._end(turn, "failed", error_message=detail, error_details=details)

    async def _interrupt(self, turn: Turn, stage: str) -> None:
        if not await turn.was_stored():
            return
        if turn.stop_requested:
            await self._end(turn, "stopped")
        else:
            await self._end(
                turn, "failed", error_message=workers.INTERRUPTED, error_details={"stage": stage, "retryable": True}
            )

    async def _end(self, turn: Turn, status: str, error_message: str | None = None, error_details=None) -> None:
        params = {"answer_id": turn.assistant_id, "status": status, "text": turn.text, "took_ms": _ms(turn.started)}
        params |= {"at": utcnow(), "error": error_message, "details": error_details}
        await self.statements.execute(_END_STATEMENT, params)


class UnknownDocuments(CitechatError):
    status_code = 422


def scope_of(metadata: dict) -> Documents:
    """The documents an answer was asked about, from its metadata (None: all)."""
    documents = metadata.get("documents")
    return None if documents is None else tuple(uuid.UUID(document) for document in documents)


def _in_flight():
    """The answer in flight in the session of the enclosing query, if any: a lateral subquery (``id``,
    ``worker_id``)."""
    message = models.ChatMessage
    return (
        select(message.id, message.worker_id)
        .where(message.session_id == models.ChatSession.id, message.status.in_(IN_FLIGHT))
        .limit(1)
        .lateral("busy")
    )


def _session_query(*what, joined=()):
    """The caller's session (``what`` of it), with the answer in flight in it if any (``busy_id``,
    ``busy_worker``) and the lateral subqueries ``joined`` (which may read both), in one statement; its parameters
    are ``_owner``'s."""
    source = models.ChatSession.__table__.outerjoin(_BUSY, true())
    for lateral in joined:
        source = source.outerjoin(lateral, true())
    busy = (_BUSY.c.id.label("busy_id"), _BUSY.c.worker_id.label("busy_worker"))
    return select(*what, *busy).select_from(source).where(*_OWNED)


def _admit_statement(*, counting: bool):
    """The caller's session (``_session_query``) with its history (``history``: its last completed messages,
    as many as it keeps in context, oldest first, as JSON) and, when ``counting``, the question counted against
    the quotas (``storage.consumed_when``'s columns) if the session may be asked in now (not archived, nothing in
    flight), in one statement. Parameters: ``_owner``'s, and the quota's when counting (``RateLimits.in_statement``)."""
    session, message = models.ChatSession, models.ChatMessage
    recent = (
        select(message.role, message.content, message.created_at, message.id)
        .where(message.session_id == session.id, message.status == "completed")
        .order_by(message.created_at.desc(), message.id.desc())
        .limit(session.max_context_messages)
        .correlate(session)
        .subquery("recent")
    )
    turn = func.jsonb_build_object("role", recent.c.role, "content", recent.c.content)
    ordered = aggregate_order_by(turn, recent.c.created_at, recent.c.id)
    history = select(func.coalesce(func.jsonb_agg(ordered), literal([], JSONB)).label("messages")).lateral("history")
    columns = (*session.__table__.columns, history.c.messages.label("history"))
    if not counting:
        return _session_query(*columns, joined=[history])
    quota = storage.consumed_when(and_(session.is_archived.is_(False), _BUSY.c.id.is_(None)))
    return _session_query(*columns, *quota.c, joined=[history, quota])


def _owner(principal: Principal, session_id: uuid.UUID) -> dict:
    """The parameters of ``_OWNED``: this session, if it is the caller's."""
    return {"owned_session": session_id, "owner": principal.user_id, "owner_organization": principal.organization_id}


async def _clear_or_refuse(db: Executor, busy_id: uuid.UUID, busy_worker: uuid.UUID | None) -> None:
    """The answer in flight in a session: refused if its process is alive, else marked failed (it will never
    finish)."""
    if not await workers.is_dead(db, busy_worker):
        raise Conflict(BUSY)
    await workers.fail_orphan(db, busy_id)


def _title(question: str) -> str:
    return question[:TITLE_LENGTH] + ("..." if len(question) > TITLE_LENGTH else "")


def _ask_statement():
    """One statement: the session is touched (its title from a first question, ``last_message_at``) if it is the
    caller's and not archived, and only then are the messages (``_rows``) inserted. Returns the first message's id,
    or nothing when the session was not there to touch. Parameters: ``_owner``'s, ``title`` (None: unchanged),
    ``at``, ``rows``."""
    session = models.ChatSession
    at = bindparam("at", type_=DateTime(timezone=True))
    touched = (
        update(session)
        .where(*_OWNED, session.is_archived.is_(False))
        .values(title=func.coalesce(bindparam("title", type_=String), session.title), last_message_at=at, updated_at=at)
        .returning(session.id)
        .cte("touched")
    )
    table = models.ChatMessage.__table__
    rows = _recordset(table).where(exists(select(touched.c.id)))
    return insert(table).from_select(table.columns.keys(), rows).add_cte(touched).returning(table.c.id)


def _save_sources_statement():
    """Saves the sources (``rows``) and marks the answer (``answer_id``) ``streaming`` if still pending, at ``at``
    (set here: onupdate defaults skip CTE statements)."""
    answer, table = models.ChatMessage, models.ChatSource.__table__
    saved = insert(table).from_select(table.columns.keys(), _recordset(table)).returning(table.c.id)
    return (
        update(answer)
        .where(answer.id == bindparam("answer_id"), answer.status == "pending")
        .values(status="streaming", updated_at=bindparam("at"))
        .add_cte(saved.cte("saved_sources"))
    )


def _complete_statement():
    """The answer (``answer_id``) completed: its text, token counts, time taken and metadata, at ``at``; and each
    of its sources' verdicts (``rows``: ``cited``, ``support``). Returns the answer's row."""
    answer, table = models.ChatMessage, models.ChatSource.__table__
    checked = _recordset(table, _VERDICT_COLUMNS).subquery("checked")
    verdicts = (
        update(table)
        # By the answer's own sources first (their index): joined on id alone, the planner, expecting 100 rows from
        # the recordset, hashes it and scans every organization's sources.
        .where(table.c.message_id == bindparam("answer_id"), table.c.id == checked.c.id)
        .values(cited=checked.c.cited, support=checked.c.support)
        .returning(table.c.id)
    )
    return (
        update(answer)
        .where(answer.id == bindparam("answer_id"))
        .values(
            content=bindparam("text"),
            status="completed",
            tokens_prompt=bindparam("prompt"),
            tokens_completion=bindparam("completion"),
            tokens_total=bindparam("total"),
            processing_time_ms=bindparam("took_ms"),
            message_metadata=bindparam("metadata"),
            updated_at=bindparam("at"),
        )
        .returning(*answer.__table__.columns)
        .add_cte(verdicts.cte("verdicts"))
    )


def _end_statement():
    """The answer (``answer_id``) ended ``status`` (failed or stopped, while in flight or stopped elsewhere) with
    the text it had (``text``), the time it took (``took_ms``), and what failed (``error``, ``details``; None
    leaves them as they are), at ``at``."""
    answer = models.ChatMessage
    return (
        update(answer)
        .where(answer.id == bindparam("answer_id"), answer.status.in_((*IN_FLIGHT, "stopped")))
        .values(
            status=bindparam("status", type_=String),
            content=bindparam("text", type_=String),
            processing_time_ms=bindparam("took_ms", type_=Integer),
            error_message=func.coalesce(bindparam("error", type_=String), answer.error_message),
            error_details=func.coalesce(bindparam("details", type_=JSONB(none_as_null=True)), answer.error_details),
            updated_at=bindparam("at", type_=DateTime(timezone=True)),
        )
    )


def _recordset(table, names=None):
    """``SELECT <names> FROM jsonb_populate_recordset(NULL::<table>, :rows)``: rows of ``table`` (``names`` of its
    columns, default all) passed as one JSON parameter (``_rows``). However many rows, the statement stays one short
    text; a multi-row VALUES, or a parameter per column per row, would change with the number of rows."""
    records = func.jsonb_populate_recordset(literal_column(f"NULL::{table.name}"), bindparam("rows", type_=JSONB))
    names = names or [column.key for column in table.columns]
    found = records.table_valued(*names)
    return select(*[found.c[name] for name in names])  # by name: the table's own column order may differ


def _rows(table, objects: list, names=None) -> dict:
    """The ``rows`` parameter of ``_recordset``: each object's columns (``names`` of them, default all), as JSON."""
    names = names or [column.key for column in table.columns]
    return {"rows": [{name: _json(getattr(o, name)) for name in names} for o in objects]}


def _json(value):
    return str(value) if isinstance(value, uuid.UUID) else value.isoformat() if isinstance(value, datetime) else value


async def _persisting(write: Callable[[], Awaitable[T]]) -> T:
    """Runs a final write, again while the database is unreachable (a restart takes seconds)."""
    for delay in FINAL_WRITE_DELAYS_S:
        try:
            return await write()
        except _DATABASE_AWAY as exc:
            log.warning("database unavailable for a final write (%s); retrying in %s s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
    return await write()


async def _history(
    db: AsyncSession | AsyncConnection, session_id: uuid.UUID, limit: int, *, before: datetime
) -> list[LLMMessage]:
    """The last ``limit`` completed messages before ``before``, oldest first (a retry's history: ``begin`` reads
    a new question's in the statement that admits it)."""
    params = {"history_session": session_id, "limit": limit, "before": before}
    rows = (await db.execute(_HISTORY_BEFORE, params)).all()
    return [LLMMessage(role=m.role, content=m.content) for m in reversed(rows)]


def _history_before_statement():
    message = models.ChatMessage
    return (
        select(message.role, message.content)
        .where(
            message.session_id == bindparam("history_session"),
            message.status == "completed",
            message.created_at < bindparam("before"),
        )
        .order_by(message.created_at.desc(), message.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


def _source_row(message_id: uuid.UUID, rank: int, node: NodeWithScore) -> models.ChatSource:
    meta = node.node.metadata
    return models.ChatSource(
        id=uuid.uuid4(),
        created_at=utcnow(),
        cited=False,
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


def source_json(source: models.ChatSource) -> dict:
    return schemas.ChatSource.model_validate(source).model_dump(mode="json")


def message_json(message: models.ChatMessage | asyncpg.Record, sources: list[models.ChatSource] | None = None) -> dict:
    """The message (an ORM object, or a record of its columns) as the API shows it; ``sources`` default to the
    message's own (which must be loaded)."""
    if sources is None:
        sources = sorted(message.sources, key=lambda source: source.rank or 0)
    if isinstance(message, models.ChatMessage):
        columns = {column.key: getattr(message, column.key) for column in models.ChatMessage.__table__.columns}
    else:
        columns = dict(message)
    body = schemas.ChatMessage.model_validate(columns | {"sources": []}).model_dump(mode="json")
    return body | {"sources": [source_json(s) for s in sources]}


def _failure(exc: Exception) -> tuple[str, bool, bool]:
    """What the user is told, whether trying again may help, and whether the failure was an expected kind (a typed
    error, the model's included); internals never reach the user, unexpected ones reach the log with a traceback."""
    if isinstance(exc, CitechatError):
        return exc.detail, bool(getattr(exc, "retryable", False)), True
    return "the answer could not be generated", True, False


def _done(result) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


async def _cancel(task: asyncio.Future) -> None:
    """Cancels ``task`` if it is still running, and waits for it to end; its outcome is not wanted."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # read: a failure nobody waits for any more is not logged as lost


@dataclass(frozen=True)
class _Prepared:
    """An answer ready to stream (``Answering._generate``): its generation, the model's first piece asked for
    (``first``: its request sent), the LLM and prompts it was made with, and when it had its passages."""

    generation: engine.Generation
    first: asyncio.Future
    llm: object
    prompts: object
    retrieved: float


async def _cancel_preparation(generating: asyncio.Future) -> None:
    """Cancels an answer's preparation, and the model's request if it was sent."""
    await _cancel(generating)
    if not generating.cancelled() and generating.exception() is None and generating.result() is not None:
        prepared = generating.result()
        await _cancel(prepared.first)
        await prepared.generation.tokens.aclose()


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


# The statements answers send, built once: building one costs more CPU than sending it (270 us against 200 us for
# the session's), and SQLAlchemy caches what it compiles, not what it is given.
_OWNED = (
    models.ChatSession.id == bindparam("owned_session"),
    models.ChatSession.user_id == bindparam("owner"),
    models.ChatSession.organization_id == bindparam("owner_organization"),
)
_BUSY = _in_flight()
_SESSION_LOCKED = _session_query(models.ChatSession, models.ChatSession.is_archived).with_for_update(
    of=models.ChatSession
)
_HISTORY_BEFORE = _history_before_statement()
_VERDICT_COLUMNS = ("id", "cited", "support")  # what the final write changes of the sources
# On asyncpg (``db.statements``):
_SESSION_ROW = Statement(_session_query(*models.ChatSession.__table__.columns))
_ADMIT = Statement(_admit_statement(counting=False))
_ADMIT_COUNTING = Statement(_admit_statement(counting=True))
_ASK = Statement(_ask_statement())
_SAVE_SOURCES = Statement(_save_sources_statement())
_COMPLETE = Statement(_complete_statement())
_END_STATEMENT = Statement(_end_statement())
