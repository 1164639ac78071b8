"""Answers being written in this process. Each runs as a task of its own to the end, whoever listens: a closed
tab or a dropped connection only stops that listener, and the answer is still completed and saved.

Listeners read the answer's events by position (the SSE ``id``), so one that joins late, or comes back, starts
from where it wants. At shutdown the tasks are cancelled and their answers marked interrupted.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator

from citechat.chat.answering import Answering, Event, Turn


class AnswerStream:
    """The events of one answer so far, and whether it has ended."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ended = False
        self._changed = asyncio.Condition()

    async def publish(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def end(self) -> None:
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def follow(self, after: int = 0) -> AsyncIterator[tuple[int, Event]]:
        """(position, event) from position ``after + 1`` on, live until the answer ends."""
        position = after
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda seen=position: len(self.events) > seen or self.ended)
                fresh = self.events[position:]
                ended = self.ended
            for event in fresh:
                position += 1
                yield position, event
            if ended and position >= len(self.events):
                return


class AnswerStreams:
    """The answer tasks of this process (created in the lifespan, closed with it)."""

    def __init__(self, answering: Answering) -> None:
        self._answering = answering
        self._running: dict[uuid.UUID, tuple[AnswerStream, asyncio.Task]] = {}

    def start(self, turn: Turn) -> AnswerStream:
        stream = AnswerStream()
        task = asyncio.create_task(self._produce(turn, stream), name=f"answer-{turn.assistant_id}")
        self._running[turn.assistant_id] = (stream, task)
        task.add_done_callback(lambda _: self._running.pop(turn.assistant_id, None))
        return stream

    async def wait(self, message_id: uuid.UUID) -> None:
        if (running := self._running.get(message_id)) is not None:
            await asyncio.gather(running[1], return_exceptions=True)

    async def aclose(self) -> None:
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _produce(self, turn: Turn, stream: AnswerStream) -> None:
        try:
            async for event in self._answering.run(turn):
                await stream.publish(event)
        finally:
            await asyncio.shield(stream.end())
