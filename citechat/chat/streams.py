"""Answers being written, and listeners that follow them from anywhere.

Each answer runs as a task of its own to the end, whoever listens: a closed tab or a dropped connection only
stops that listener, and the answer is still completed and saved. A flusher writes the text streamed so far to
the database every ``FLUSH_S``, so a listener on another worker, or after a restart, can follow the answer from
the database, and a stop asked on another worker reaches the one writing it.

Listeners say where they are by the number of characters of the answer they have seen, which is the SSE ``id``
of every event: a client that reconnects with ``Last-Event-ID: n`` gets the sources again, the text after
character ``n``, then the rest live, from any worker.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import String, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from citechat.chat import models, workers
from citechat.chat.answering import IN_FLIGHT, Answering, Event, Turn, message_json, source_json
from citechat.db.statements import Statement, committed_asynchronously
from citechat.errors import CitechatError, Conflict

log = logging.getLogger(__name__)
FLUSH_S = 0.4  # partial text reaches the database at least every 500 ms, with room for the write itself
POLL_S = 0.25  # how often a listener on another worker looks at the database
ORPHAN_CHECK_S = 5.0  # how long such a listener waits for progress before checking the writer is alive
STOP_WAIT_S = 2.0  # how long a stop asked on another worker waits for the writer to save its last text


HEARTBEAT = Event("heartbeat", {})  # what a listener gets after ``HEARTBEAT_S`` without news (SSE: a comment)
HEARTBEAT_S = 15.0
# After sending text, a listener lets what the model writes in the next few milliseconds gather into one event: a
# model streaming 200 tokens a second then costs a third of the events, writes and wake-ups, which nobody can see.
# The end is never held back (it interrupts the wait).
GATHER_S = 0.015


class AnswerStream:
    """One answer being written in this process: the question, sources, text so far, and how it ended.

    Listeners wait on an ``asyncio.Event`` that each change sets and replaces: waking them costs one call per
    change, and a listener that was busy while several tokens arrived gets them as one piece."""

    def __init__(self) -> None:
        self.question: Event | None = None
        self.sources: Event | None = None
        self.text = ""
        self.end: Event | None = None
        self.ended = False
        self._changed = asyncio.Event()
        self._ending = asyncio.Event()  # set with the end (done or error) or when the answer stops

    def publish(self, event: Event) -> None:
        if event.name == "user_message":
            self.question = event
        elif event.name == "sources":
            self.sources = event
        elif event.name == "token":
            self.text += event.data["delta"]
        else:  # done | error
            self.end = event
            self._ending.set()
        self._wake()

    def finish(self) -> None:
        self.ended = True
        self._ending.set()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _gather(self) -> None:
        """Waits ``GATHER_S`` for more text, or less if the answer ends meanwhile."""
        if self._ending.is_set():
            return
        try:
            async with asyncio.timeout(GATHER_S):
                await self._ending.wait()
        except TimeoutError:
            pass

    async def follow(self, after: int | None = None) -> AsyncIterator[tuple[int, Event]]:
        """(id, event) pairs: from the question on when ``after`` is None, else what a listener that saw ``after``
        characters is missing (sources, the rest of the text), then live until the end; ``HEARTBEAT`` after
        ``HEARTBEAT_S`` without news."""
        offset, sent_question, sent_sources = after or 0, after is not None, False
        while True:
            changed = self._changed  # taken before looking, so no change between the look and the wait is missed
            news = False
            if not sent_question and self.question is not None:
                sent_question = news = True
                yield 0, self.question
            if not sent_sources and self.sources is not None:
                sent_sources = news = True
                yield offset, self.sources
            if len(self.text) > offset:
                text, news = self.text, True
                yield len(text), Event("token", {"delta": text[offset:]})
                offset = len(text)
                await self._gather()
                continue
            if self.end is not None:  # done or error: nothing follows it, so the stream closes without waiting
                yield offset, self.end  # for the answer's task to wind down
                return
            if self.ended:
                return
            if not news:
                try:
                    async with asyncio.timeout(HEARTBEAT_S):
                        await changed.wait()
                except TimeoutError:
                    yield offset, HEARTBEAT


class AnswerStreams:
    """The answer tasks of this process (created in the lifespan, closed with it)."""

    def __init__(self, answering: Answering) -> None:
        self._answering = answering
        self._sessions: async_sessionmaker[AsyncSession] = answering.sessions
        self._running: dict[uuid.UUID, tuple[Turn, AnswerStream, asyncio.Task]] = {}

    async def start(self, turn: Turn) -> AnswerStream:
        """Starts writing the answer, and returns its stream once the question is stored; a question refused after
        all (``Turn.stored``) raises here, to be the request's error, and its answer ends having written nothing."""
        stream = AnswerStream()
        task = asyncio.create_task(self._produce(turn, stream), name=f"answer-{turn.assistant_id}")
        self._running[turn.assistant_id] = (turn, stream, task)
        task.add_done_callback(lambda _: self._running.pop(turn.assistant_id, None))
        await asyncio.shield(turn.stored)
        return stream

    def follow(self, message_id: uuid.UUID, after: int | None) -> AsyncIterator[tuple[int, Event]]:
        """Follows the answer here if this process writes it, else from the database."""
        if (running := self._running.get(message_id)) is not None:
            return running[1].follow(after)
        return self._follow_stored(message_id, after or 0)

    async def stop(self, message_id: uuid.UUID) -> dict:
        """Stops the answer wherever it is being written; it keeps its text and ends ``stopped``."""
        if (running := self._running.get(message_id)) is not None:
            turn, _, task = running
            if not turn.finishing:
                turn.stop_requested = True
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            await self._stop_elsewhere(message_id)
        return await self._answering.stored_message(message_id)

    async def wait(self, message_id: uuid.UUID) -> None:
        if (running := self._running.get(message_id)) is not None:
            await asyncio.gather(running[2], return_exceptions=True)

    async def aclose(self) -> None:
        tasks = [task for _, _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _produce(self, turn: Turn, stream: AnswerStream) -> None:
        flusher = asyncio.create_task(self._flush(turn, asyncio.current_task()), name=f"flush-{turn.assistant_id}")
        try:
            async for event in self._answering.run(turn):
                stream.publish(event)
                if stream.end is not None:
                    await asyncio.sleep(0)  # listeners send the end before the answer's telemetry is recorded
        except CitechatError:  # the question was refused after all: ``start`` raised it to the request
            pass
        except asyncio.CancelledError:
            if not turn.stop_requested:
                raise  # the process is stopping
            if (message := await self._answering.stored_message(turn.assistant_id)) is not None:
                stream.publish(Event("done", message))
        finally:
            flusher.cancel()
            stream.finish()

    async def _flush(self, turn: Turn, producer: asyncio.Task) -> None:
        """Saves the text so far every ``FLUSH_S``, and notices a stop asked on another worker; from when the
        question is stored (before, its answer is not there to save, nor to be found stopped)."""
        if not await turn.was_stored():
            return
        saved = ""
        while not turn.finishing:
            await asyncio.sleep(FLUSH_S)
            text = turn.text
            try:
                if text != saved:
                    params = {"answer_id": turn.assistant_id, "text": text}
                    writing = await self._answering.statements.fetchval(_SAVE_TEXT, params)
                    saved = text
                else:
                    writing = await self._answering.statements.fetchval(_WRITING, {"answer_id": turn.assistant_id})
            except Exception as exc:  # the database is away: the answer goes on, the next flush catches up
                log.debug("flushing answer %s failed: %s", turn.assistant_id, type(exc).__name__)
                continue
            if writing is None and not turn.finishing:  # stopped elsewhere (or deleted)
                turn.stop_requested = True
                producer.cancel()
                return

    async def _stop_elsewhere(self, message_id: uuid.UUID) -> None:
        row = models.ChatMessage
        async with self._answering.autocommit.connect() as db:
            writer = (
                await db.execute(
                    update(row)
                    .where(row.id == message_id, row.status.in_(IN_FLIGHT))
                    .values(status="stopped")
                    .returning(row.worker_id)
                )
            ).first()
        if writer is None:
            raise Conflict("this answer is not being written; there is nothing to stop")
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:  # the writer saves its last text within a flush or two
            async with self._sessions() as db:
                if await db.scalar(select(row.processing_time_ms).where(row.id == message_id)) is not None:
                    return
                if await workers.is_dead(db, writer.worker_id):
                    return
            await asyncio.sleep(POLL_S / 2)

    async def _follow_stored(self, message_id: uuid.UUID, offset: int) -> AsyncIterator[tuple[int, Event]]:
        sent_sources, progress_at = False, time.monotonic()
        sent_at = progress_at
        while True:
            async with self._sessions() as db:
                message = await db.scalar(
                    select(models.ChatMessage)
                    .where(models.ChatMessage.id == message_id)
                    .options(selectinload(models.ChatMessage.sources))
                )
                if message is None:
                    return  # deleted with its session
                stalled = time.monotonic() - progress_at > ORPHAN_CHECK_S
                if message.status in IN_FLIGHT and stalled and await workers.is_dead(db, message.worker_id):
                    await workers.fail_orphan(db, message_id)
                    await db.commit()
                    continue
            if not sent_sources and (message.sources or message.status in ("streaming", "completed", "stopped")):
                sent_sources = True
                sources = sorted(message.sources, key=lambda source: source.rank or 0)
                yield offset, Event("sources", {"sources": [source_json(s) for s in sources]})
            if message.status in ("completed", "stopped"):
                yield offset, Event("done", message_json(message))
                return
            if message.status == "failed":
                details = message.error_details or {}
                error = {"detail": message.error_message, "retryable": bool(details.get("retryable", True))}
                yield offset, Event("error", {"message_id": str(message_id), **error})
                return
            if len(message.content) > offset:
                yield len(message.content), Event("token", {"delta": message.content[offset:]})
                offset, progress_at = len(message.content), time.monotonic()
                sent_at = progress_at
            elif stalled:
                progress_at = time.monotonic()
            if time.monotonic() - sent_at >= HEARTBEAT_S:
                yield offset, HEARTBEAT
                sent_at = time.monotonic()
            await asyncio.sleep(POLL_S)


# The flusher's statements, on asyncpg like the rest of the answer path (``db.statements``): the answer's text saved
# while it is in flight, or only whether it still is. Both return its id when it is.
_IN_FLIGHT_ANSWER = (
    models.ChatMessage.id == bindparam("answer_id"),
    models.ChatMessage.status.in_(IN_FLIGHT),
)
_SAVE_TEXT = Statement(  # progress: the final write repeats it
    committed_asynchronously(
        update(models.ChatMessage)
        .where(*_IN_FLIGHT_ANSWER)
        .values(content=bindparam("text", type_=String), updated_at=func.now())
        .returning(models.ChatMessage.id)
    )
)
_WRITING = Statement(select(models.ChatMessage.id).where(*_IN_FLIGHT_ANSWER))
