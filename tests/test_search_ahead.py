"""Searching a question ahead of its admission: the retriever that takes an anticipated search, and the rules for
when one is worth starting (``chat.search_ahead``). The whole path, with its spans, is in ``test_telemetry``."""

import asyncio
import time
import uuid

import pytest
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import QueryBundle

from citechat.chat.search_ahead import SearchAhead
from citechat.pipeline.engine import TimedRetriever
from citechat.retrievers.embeddings import OpenAIEmbedder
from citechat.retrievers.local import LocalIndex
from citechat.retrievers.ragie import RagieIndex
from tests import samples
from tests.test_documents import ingest, org_of

QUESTION = "How far did the glacier retreat?"


class Held(BaseRetriever):
    """The organization's real retriever, each search held until ``go`` is set; says which queries were searched
    to the end and which were cancelled on the way."""

    def __init__(self, inner: BaseRetriever) -> None:
        super().__init__()
        self.inner, self.go = inner, asyncio.Event()
        self.searched: list[str] = []
        self.cancelled: list[str] = []

    def _retrieve(self, query_bundle: QueryBundle):
        raise NotImplementedError

    async def _aretrieve(self, query_bundle: QueryBundle):
        try:
            await self.go.wait()
            nodes = await self.inner.aretrieve(query_bundle)
        except asyncio.CancelledError:
            self.cancelled.append(query_bundle.query_str)
            raise
        self.searched.append(query_bundle.query_str)
        return nodes


@pytest.fixture
async def field_notes(client, app, db, identity) -> BaseRetriever:
    """The local retriever of a new organization holding the four-page "Field notes" PDF."""
    org = f"ahead-{uuid.uuid4().hex[:8]}"
    document = await ingest(client, identity(org=org), samples.pdf(samples.TOPICS), "notes.pdf", name="Field notes")
    assert document["status"] == "ready"
    return app.state.index.retriever(await org_of(db, org), 5)


async def test_an_anticipated_search_is_taken_and_timed_from_its_start(field_notes):
    held = Held(field_notes)
    retriever = TimedRetriever(held)
    before = time.perf_counter()
    retriever.anticipate(QUESTION)
    await asyncio.sleep(0.05)  # the question is being admitted meanwhile
    held.go.set()
    nodes = await retriever.aretrieve(QUESTION)

    assert [n.node.text for n in nodes] == [n.node.text for n in await field_notes.aretrieve(QUESTION)]
    assert held.searched == [QUESTION] and held.cancelled == []  # searched once, ahead
    assert before <= retriever.started < before + 0.05 <= retriever.finished  # its time counts from its start


async def test_an_anticipated_search_for_another_query_or_forgotten_is_cancelled(field_notes):
    held = Held(field_notes)
    retriever = TimedRetriever(held)
    retriever.anticipate(QUESTION)
    await asyncio.sleep(0)
    held.go.set()
    condensed = "glacier retreat distance in the field notes"
    await retriever.aretrieve(condensed)
    assert held.cancelled == [QUESTION] and held.searched == [condensed]

    held.go.clear()
    retriever.anticipate(QUESTION)
    await asyncio.sleep(0)
    retriever.forget()  # refused: nobody will take it
    await asyncio.sleep(0)
    assert held.cancelled == [QUESTION, QUESTION] and held.searched == [condensed]


def test_when_a_search_ahead_is_worth_it():
    ahead, user, session = SearchAhead(refusal_s=0.2), uuid.uuid4(), uuid.uuid4()
    assert ahead.worth_it(user, session)
    ahead.asked(session)  # the next question in it is a follow-up
    assert not ahead.worth_it(user, session)  # searched only once condensed
    other_session = uuid.uuid4()
    ahead.refused(user)
    assert not ahead.worth_it(user, other_session)
    assert ahead.worth_it(uuid.uuid4(), other_session)  # others are not held back
    time.sleep(0.25)
    assert ahead.worth_it(user, other_session)  # forgiven after a while


async def test_only_a_few_searches_ahead_at_once():
    ahead, session = SearchAhead(at_once=2), uuid.uuid4()
    searches = [asyncio.get_running_loop().create_future() for _ in range(2)]
    for search in searches:
        assert ahead.worth_it(uuid.uuid4(), session)
        ahead.track(search)
    assert not ahead.worth_it(uuid.uuid4(), session)  # a burst: the rest wait for admission
    searches[0].cancel()  # nobody took it
    await asyncio.sleep(0)
    assert ahead.worth_it(uuid.uuid4(), session)
    searches[1].set_result([])
    await asyncio.sleep(0)
    ahead.track(asyncio.get_running_loop().create_future())
    assert ahead.worth_it(uuid.uuid4(), session)  # one under way, room for another


def test_search_ahead_remembers_a_bounded_number():
    ahead = SearchAhead(capacity=3)
    users, sessions = [uuid.uuid4() for _ in range(4)], [uuid.uuid4() for _ in range(4)]
    for user, session in zip(users, sessions, strict=True):
        ahead.refused(user)
        ahead.asked(session)
    assert ahead.worth_it(users[0], sessions[0])  # the oldest were forgotten
    assert not any(ahead.worth_it(u, uuid.uuid4()) for u in users[1:])
    assert not any(ahead.worth_it(uuid.uuid4(), s) for s in sessions[1:])


async def test_only_searches_that_cost_nothing_are_made_ahead(app):
    assert app.state.index.free_search  # the local index on the offline model
    paid = LocalIndex(app.state.database.sessions, app.state.answering.statements, OpenAIEmbedder("sk-unused"))
    assert not paid.free_search  # each question's embedding a billed call
    await paid.aclose()
    assert not RagieIndex.free_search  # each retrieval a billed call


async def test_searches_ahead_cancelled_at_any_moment_leave_the_index_usable(field_notes, app, caplog):
    pool = app.state.database.pool  # the searches' connections: the answer path's asyncpg pool
    for step in range(60):  # 0 to 6 ms: before, during and after the embedding and the query
        retriever = TimedRetriever(field_notes)
        retriever.anticipate(QUESTION)
        await asyncio.sleep(step * 0.0001)
        retriever.forget()
    await asyncio.sleep(0.1)
    assert [n.node.text for n in await field_notes.aretrieve(QUESTION)]
    assert pool.get_size() > 0 and pool.get_idle_size() == pool.get_size()  # every connection taken is back
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
