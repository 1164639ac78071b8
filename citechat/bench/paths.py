"""The three ways an answer is served in the overhead benchmark, each asked the same questions of the same paced
generator, and each able to say what its process spent (CPU, database work) around a run:

- ``Floor``: the bare FastAPI relay (``floor.py``), over HTTP.
- ``Citechat``: the real server over HTTP, as a browser calls it: bearer token, a session, ``POST
  /api/v1/chat/message/stream``; each message goes to a fresh session (made before the run), so no history is
  condensed and the generator is asked exactly once per message.
- ``Peer``: LlamaIndex alone, in this process: ``CondensePlusContextChatEngine.astream_chat`` with the same
  retriever and an ``OpenAILike`` on the same generator, no HTTP in front and no database writes.
"""

import asyncio
import time

import httpx
import psutil
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.memory import Memory
from llama_index.core.storage.chat_store.sql import DEFAULT_ASYNC_DATABASE_URI
from llama_index.llms.openai_like import OpenAILike
from sqlalchemy.ext.asyncio import create_async_engine

from citechat.bench.client import Sample, stream
from citechat.bench.generator import MODEL, new_tag
from citechat.bench.queries import QueryCounter
from citechat.bench.stack import QUESTIONS, Stack
from citechat.pipeline.engine import TimedRetriever

TOP_K = 5
MODE = "balanced"  # strict would answer a question without a relevant passage with no model call at all


def question(i: int) -> tuple[str, str]:
    """The ``i``-th question with a fresh tag the generator reads back, and that tag."""
    tag = new_tag()
    return f"{QUESTIONS[i % len(QUESTIONS)]} {tag}", tag


class Floor:
    name = "floor"

    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self._stack, self._http = stack, http

    async def prepare(self, streams: int, messages: int) -> None:
        return None

    async def send(self, i: int) -> Sample:
        text, tag = question(i)
        return await stream(
            self._http, tag, f"{self._stack.floor.url}/stream", json_body={"question": text}, headers={}
        )

    def cpu_s(self) -> float:
        return self._stack.floor.cpu_s()

    async def queries(self) -> dict[str, int]:
        return {"statements": 0, "transactions": 0}


class Citechat:
    name = "citechat"

    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self._stack, self._http = stack, http
        self._sessions: list[tuple[str, dict]] = []  # (session id, headers) per message of the coming run

    async def prepare(self, streams: int, messages: int) -> None:
        """One user per stream, and a new session for every message (made here, outside the timed run)."""
        users = [{"Authorization": f"Bearer {self._stack.token(f'bench-{streams}-{slot}')}"} for slot in range(streams)]
        sessions: list[tuple[str, dict] | None] = [None] * messages

        async def make(slot: int) -> None:
            for i in range(slot, messages, streams):
                made = await self._http.post(f"{self._stack.server.url}/api/v1/chat/session/new", headers=users[slot])
                made.raise_for_status()
                sessions[i] = (made.json()["id"], users[slot])

        await asyncio.gather(*(make(slot) for slot in range(min(streams, messages))))
        self._sessions = sessions

    async def send(self, i: int) -> Sample:
        text, tag = question(i)
        session_id, headers = self._sessions[i]
        url = f"{self._stack.server.url}/api/v1/chat/message/stream?session_id={session_id}"
        return await stream(self._http, tag, url, json_body={"question": text, "mode": MODE}, headers=headers)

    def cpu_s(self) -> float:
        return self._stack.server.cpu_s()

    async def queries(self) -> dict[str, int]:
        return (await self._http.get(f"{self._stack.server.url}/bench/queries")).json()


class Peer:
    name = "llamaindex"

    def __init__(self, stack: Stack, counter: QueryCounter) -> None:
        self._retriever = stack.runtime.index.retriever(stack.organization, TOP_K)
        self._llm = OpenAILike(
            model=MODEL,
            api_base=f"{stack.generator.url}/v1",
            api_key="unused",
            is_chat_model=True,
            context_window=8192,
            timeout=60,
        )
        self._counter = counter
        self._process = psutil.Process()

    async def prepare(self, streams: int, messages: int) -> None:
        return None

    async def send(self, i: int) -> Sample:
        text, tag = question(i)
        timed = TimedRetriever(self._retriever)
        # The memory ``from_defaults`` would make (an in-memory SQLite store), with its engine in hand to be closed
        # once the message is timed: LlamaIndex never closes it, and its connection's thread, left for the garbage
        # collector, printed "Event loop is closed" tracebacks at the end of some runs.
        store = create_async_engine(DEFAULT_ASYNC_DATABASE_URI)
        memory = Memory.from_defaults(
            chat_history=[], token_limit=self._llm.metadata.context_window - 256, async_engine=store
        )
        engine = CondensePlusContextChatEngine.from_defaults(retriever=timed, llm=self._llm, memory=memory)
        started, first = time.perf_counter(), None
        try:
            response = await engine.astream_chat(text)
            async for delta in response.async_response_gen():
                if delta and first is None:
                    first = time.perf_counter()
            total = (time.perf_counter() - started) * 1000
        except Exception as exc:  # any failure is one errored message, reported, not a crashed benchmark
            return Sample(tag, None, (time.perf_counter() - started) * 1000, error=f"{type(exc).__name__}: {exc}")
        finally:
            await store.dispose()
        ttft = None if first is None else (first - started) * 1000
        return Sample(tag, ttft, total, done={}, retrieval_ms=(timed.finished - timed.started) * 1000)

    def cpu_s(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    async def queries(self) -> dict[str, int]:
        return self._counter.snapshot()
