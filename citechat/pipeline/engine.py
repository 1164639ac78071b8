"""One answer: a LlamaIndex ``CondensePlusContextChatEngine`` assembled per request, streamed from the model.

The engine gets the organization's retriever, the session's recent messages as history, the chosen mode's prompt
templates and the configured LLM. Two node postprocessors shape what the model sees: ``SourceGate`` applies the
Strict mode's relevance threshold (no source left: the fixed refusal is answered and no model is called), and
``NumberSources`` puts a ``[n] document, page`` header on each passage so the answer can cite it. The extractive
answerer reads the passages themselves; having no model to rewrite a follow-up with, it searches (and weighs its
sentences against) a follow-up that refers back joined to the question asked before it.

The engine does what LlamaIndex's does up to the model call (memory, condensing, retrieval, postprocessing, the
context prompt: ``ChatEngine.context_messages``); the answer is then streamed from the LLM directly. LlamaIndex's
``astream_chat`` goes through ``CompactAndRefine``, which re-tokenizes every passage with tiktoken to repack them
and wraps each token in four more generators and two more pydantic objects, then hands it on through a queue that
a background task fills while writing the answer to a memory this request throws away. citechat's passages (top-k
chunks of a few hundred tokens) fit the context window, where repacking sends exactly these messages in one call.
The memory is a plain ``ChatMemoryBuffer``: the engine's default ``Memory`` sets up an in-memory SQLite database
(tables created through a worker thread) per engine.
"""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.chat_engine.utils import get_prefix_messages_with_context
from llama_index.core.llms import LLM, ChatMessage, MessageRole
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import ChatPromptTemplate
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import PrivateAttr

from citechat.db.text import cleaned
from citechat.pipeline.chat_completions import ChatCompletionsLLM
from citechat.pipeline.extractive import ExtractiveLLM
from citechat.pipeline.modes import POLICIES, ResponseMode
from citechat.pipeline.prompts import PromptSet
from citechat.pipeline.terms import content_terms
from citechat.retrievers.base import RetrievalUnavailable
from citechat.telemetry import NO_TELEMETRY, Telemetry


class _OnTheLoop(BaseNodePostprocessor):
    """A postprocessor cheap enough to run on the event loop: LlamaIndex runs ``_postprocess_nodes`` in a worker
    thread by default, a thread hop (and a wait for a free worker under load) per postprocessor per answer for a
    filter over a handful of passages."""

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None):
        return self._postprocess_nodes(nodes, query_bundle)


class SourceGate(_OnTheLoop):
    """Drops passages below ``min_similarity`` (dense cosine, or the backend's score where there is none)."""

    min_similarity: float | None = None

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None):
        if self.min_similarity is None:
            return nodes
        return [n for n in nodes if _relevance(n) >= self.min_similarity]


class NumberSources(_OnTheLoop):
    """Numbers the passages in order and records them (unnumbered) for saving and for the extractive answerer."""

    _kept: list[NodeWithScore] = PrivateAttr(default_factory=list)

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None):
        self._kept = list(nodes)
        return [NodeWithScore(node=TextNode(text=_numbered(i, n)), score=n.score) for i, n in enumerate(nodes, 1)]

    @property
    def kept(self) -> list[NodeWithScore]:
        return self._kept


class TimedRetriever(BaseRetriever):
    """The organization's retriever, noting when retrieval started and ended (what comes before it is condensing),
    and giving up after ``timeout_s``: a retriever that hangs must fail the answer, retryably, not hold it.

    ``anticipate`` starts a retrieval before the engine asks for it (see ``Answering.begin``): the engine takes it
    when it asks for the same query, and its time counts from when it started."""

    def __init__(
        self, inner: BaseRetriever, timeout_s: float | None = None, telemetry: Telemetry = NO_TELEMETRY
    ) -> None:
        super().__init__()
        self._inner, self._timeout_s, self._telemetry = inner, timeout_s, telemetry
        self.started = self.finished = None
        self._anticipated: tuple[str, asyncio.Future] | None = None

    def anticipate(self, query: str) -> asyncio.Future:
        """Starts retrieving ``query`` now, in a task of the current context (its span's parent is the current
        span), and returns it; asking for another query, or ``forget``, cancels it."""
        self.forget()
        task = asyncio.ensure_future(self._timed(QueryBundle(query)))
        task.add_done_callback(_retrieve_exception)
        self._anticipated = (query, task)
        return task

    def forget(self) -> None:
        """Cancels the anticipated retrieval, if any: nobody will take it (the question was refused, or will be
        condensed into another query)."""
        if self._anticipated is not None:
            self._anticipated[1].cancel()
            self._anticipated = None

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise NotImplementedError("citechat retrievers are async: call aretrieve()")

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._anticipated is not None and self._anticipated[0] == query_bundle.query_str:
            search, self._anticipated = self._anticipated[1], None
        else:
            self.forget()  # anticipated another query, or nothing
            search = self._timed(query_bundle)
        nodes, self.started, self.finished = await search
        return nodes

    async def _timed(self, query_bundle: QueryBundle) -> tuple[list[NodeWithScore], float, float]:
        """The nodes, and when retrieving them started and ended."""
        started = time.perf_counter()
        try:
            with self._telemetry.stage_span(
                "citechat.retrieve", content={"citechat.query": query_bundle.query_str}
            ) as span:
                async with asyncio.timeout(self._timeout_s):
                    nodes = await self._inner.aretrieve(query_bundle)
                span.set_attribute("citechat.retrieval.results", len(nodes))
                return nodes, started, time.perf_counter()
        except TimeoutError:
            raise RetrievalUnavailable(f"retrieval took longer than {self._timeout_s:g} s; try again") from None


def _retrieve_exception(task: asyncio.Future) -> None:
    """Marks an anticipated retrieval's failure as seen: one that nobody took is not worth a log line."""
    if not task.cancelled():
        task.exception()


class ChatEngine(CondensePlusContextChatEngine):
    """LlamaIndex's condense-plus-context engine up to the model call (see the module's docstring), with condensing
    a follow-up in a ``citechat.condense`` span: LlamaIndex has no hook around it, so this overrides the method that
    does it (unchanged since LlamaIndex 0.10); the tests check the span is there."""

    telemetry: Telemetry = NO_TELEMETRY

    async def context_messages(
        self, message: str, chat_history: list[ChatMessage]
    ) -> tuple[list[NodeWithScore], list[ChatMessage]]:
        """The passages kept for ``message``, and the messages to send the model: the system and context prompts
        with the passages, the history, then the question (as asked: the condensed form only searches)."""
        # The buffer's synchronous methods: its async ones hop to a worker thread (and, under load, wait there
        # for the GIL) to copy a list of five messages and count their tokens.
        self._memory.set(chat_history)
        history = self._memory.get(input=message)
        nodes = await self._aget_nodes(await self._acondense_question(history, message))
        prefix = get_prefix_messages_with_context(
            self._context_prompt_template, self._system_prompt or "", [], history, self._llm.metadata.system_role
        )
        # What CompactAndRefine's repacking sends when the passages fit: their texts, stripped, a blank line apart.
        context = "\n\n".join(text for n in nodes if (text := n.node.get_content(MetadataMode.LLM).strip()))
        template = ChatPromptTemplate.from_messages(
            prefix, function_mappings=self._context_prompt_template.function_mappings
        )
        return nodes, template.format_messages(context_str=context, query_str=message)

    async def _acondense_question(self, chat_history: list[ChatMessage], latest_message: str) -> str:
        if not chat_history:
            return latest_message
        with self.telemetry.stage_span("citechat.condense", content={"citechat.question": latest_message}) as span:
            if isinstance(self._llm, ExtractiveLLM):
                question = with_previous_question(chat_history, latest_message)
            else:
                question = await super()._acondense_question(chat_history, latest_message)
            self.telemetry.content(span, {"citechat.query": question})
            return question


def with_previous_question(history: list[ChatMessage], question: str) -> str:
    """A follow-up made searchable without a model: when it refers back to the conversation, the user's previous
    question, then it ("What was the bakery's revenue in 2023? And what was it the year before?"); otherwise the
    question as asked.

    Searched alone, "And what was it the year before?" found passages about other years of other documents, and
    Strict refused every follow-up; joined whatever it says, a new question in the same session ("What reduction
    did patients on the enzyme show?" after one about a lighthouse) searched the earlier topic's pages and was
    refused. A question refers back when it opens with "and", "but", "also", "so", "what about" or "how about",
    holds a personal pronoun (it, they, he, she and their forms), or has no word of its own to search for ("Where
    was that?"). "That", "this" and "there" do not count: they open or relate too many new questions ("Is there a
    policy that covers travel?")."""
    if _REFERS_BACK.search(question) is None and content_terms(question):
        return question
    previous = next((m.content for m in reversed(history) if m.role == MessageRole.USER and m.content), None)
    return f"{previous} {question}" if previous else question


_REFERS_BACK = re.compile(
    r"^\W*(?:and|but|also|so|what about|how about)\b|\b(?:it|its|they|them|their|he|him|his|she|her)\b", re.IGNORECASE
)


@dataclass
class Generation:
    """A started answer: its sources (numbered 1..n in this order), then its text as it streams."""

    sources: list[NodeWithScore]
    tokens: AsyncIterator[str]
    refused: bool = False
    timings_ms: dict[str, int] = field(default_factory=dict)  # condense (when it ran), retrieval


async def generate(
    *,
    question: str,
    history: list[ChatMessage],
    retriever: TimedRetriever,
    llm: LLM,
    prompts: PromptSet,
    mode: ResponseMode,
    min_similarity: float,
    telemetry: Telemetry = NO_TELEMETRY,
) -> Generation:
    """``retriever`` may have anticipated the question (``TimedRetriever.anticipate``): it is taken unless the
    question is condensed first (a follow-up), which cancels it."""
    policy = POLICIES[mode]
    numbering = NumberSources()
    extractive = isinstance(llm, ExtractiveLLM)
    condensing = bool(history)
    if condensing:
        retriever.forget()
    clock = time.perf_counter()
    engine = ChatEngine.from_defaults(
        retriever=retriever,
        llm=llm,
        system_prompt=prompts.system(mode),
        context_prompt=prompts.context,
        condense_prompt=prompts.condense,
        memory=ChatMemoryBuffer.from_defaults(llm=llm),
        node_postprocessors=[
            SourceGate(min_similarity=min_similarity if policy.refuses_without_relevant_source else None),
            *([_FeedPassages(llm=llm)] if extractive else []),
            numbering,
        ],
    )
    engine.telemetry = telemetry
    _, messages = await engine.context_messages(question, list(history))
    timings = {"retrieval_ms": _ms(retriever.finished - retriever.started)}
    if condensing:
        timings["condense_ms"] = _ms(retriever.started - clock)
    sources = numbering.kept
    if not sources:
        text = prompts.strict_refusal if policy.refuses_without_relevant_source else _NO_SOURCES
        return Generation(sources=[], tokens=_words(text), refused=True, timings_ms=timings)
    return Generation(sources=sources, tokens=_deltas(llm, messages), timings_ms=timings)


async def _deltas(llm: LLM, messages: list[ChatMessage]) -> AsyncIterator[str]:
    """The answer's text as the model streams it (the request is sent when the first token is asked for): as text
    from the Chat Completions client, through ``astream_chat`` from any other LLM; cleaned of what the database
    cannot store (``db.text.cleaned``), which would fail the answer's final write."""
    if isinstance(llm, ChatCompletionsLLM):
        async for delta in await llm.astream_text(messages):
            yield cleaned(delta)
        return
    async for chat in await llm.astream_chat(messages):
        if chat.delta:
            yield cleaned(chat.delta)


_NO_SOURCES = "There are no documents to answer from yet: upload some, then ask again."


class _FeedPassages(_OnTheLoop):
    """Hands the extractive answerer what was searched and the passages found (it answers from them, not from a
    prompt)."""

    llm: ExtractiveLLM

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None):
        self.llm.question = query_bundle.query_str if query_bundle is not None else ""
        self.llm.passages = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        return nodes


def _relevance(node: NodeWithScore) -> float:
    similarity = node.node.metadata.get("similarity")
    return float(similarity if similarity is not None else (node.score or 0.0))


def _numbered(number: int, node: NodeWithScore) -> str:
    meta = node.node.metadata
    where = meta.get("document_name", "document")
    if meta.get("pages"):
        where += f", page {meta['pages']}"
    return f"[{number}] {where}\n{node.node.get_content(metadata_mode=MetadataMode.NONE)}"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


async def _words(text: str) -> AsyncIterator[str]:
    for i, word in enumerate(text.split(" ")):
        yield word if i == 0 else f" {word}"
