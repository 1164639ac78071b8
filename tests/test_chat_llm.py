"""Answers written by a model: CITECHAT_LLM=openai-compatible against a stand-in for OpenAI's chat API
(tests/standins/openai.py, which follows OpenAI's documented wire format)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from citechat.api.app import create_app
from tests.conftest import answered_by, client_for, derive
from tests.standins.openai import OpenAIStandIn
from tests.test_chat_messages import new_conversation

API = "/api/v1/chat"
KEY = "standin-key-0123456789"


@pytest.fixture(scope="module")
def model_server() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key=KEY, models=("standin-model",)) as server:
        yield server


@pytest.fixture
async def llm_client(settings, model_server) -> AsyncIterator:
    model_server.reset()
    configured = answered_by(settings, model_server)
    async with client_for(create_app(configured)) as client:
        yield client


@pytest.fixture
async def asking(llm_client, identity):
    headers, session = await new_conversation(llm_client, identity)

    async def ask(question: str, **body) -> dict:
        response = await llm_client.post(
            f"{API}/message",
            params={"session_id": session["id"]},
            json={"question": question, **body},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        return response.json()

    return ask


def _system(request: dict) -> str:
    return "\n".join(m["content"] for m in request["messages"] if m["role"] == "system")


@pytest.mark.parametrize(
    ("mode", "temperature", "phrase"),
    [
        ("strict", 0.1, "Use only facts stated in the sources"),
        ("balanced", 0.5, "You may draw reasonable inferences"),
        ("creative", 0.9, "You may add broader context"),
    ],
)
async def test_each_mode_reaches_the_model(asking, model_server, mode, temperature, phrase):
    answer = await asking("How far did the glacier retreat?", mode=mode)
    request = model_server.answer_requests()[-1]
    assert request["temperature"] == temperature and request["model"] == "standin-model"
    system = _system(request)
    assert phrase in system
    assert "[1] Field notes, page" in system  # numbered sources, with document and page, before the rules
    assert answer["content"] == "Answer from the first source [1]."
    assert answer["model_used"] == "standin-model" and answer["temperature_used"] == temperature
    assert answer["sources"][0]["cited"] is True and answer["metadata"]["extractive"] is False
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert answer["tokens_prompt"] > 100 and answer["tokens_completion"] == 6  # as the stand-in counted them
    assert answer["tokens_total"] == answer["tokens_prompt"] + 6


async def test_invented_markers_are_removed(asking, model_server):
    model_server.queue_answers("The glacier retreated 312 metres [1]. It also grew a second glacier [7].")
    answer = await asking("How far did the glacier retreat?", mode="balanced")
    assert answer["content"] == "The glacier retreated 312 metres [1]. It also grew a second glacier."
    assert answer["metadata"]["citations"]["removed_markers"] == [7]
    assert [s["cited"] for s in answer["sources"]].count(True) == 1


async def test_what_the_database_cannot_store_is_cleaned_from_the_answer(asking, model_server):
    """A model's NUL character or half surrogate pair would fail the answer's final write: NUL is dropped, the half
    pair becomes U+FFFD, and the answer is saved."""
    model_server.queue_answers("The glacier\x00 retreated 312 metres \ud800 [1].")
    answer = await asking("How far did the glacier retreat?", mode="balanced")
    assert answer["status"] == "completed"
    assert answer["content"] == "The glacier retreated 312 metres \ufffd [1]."


async def test_memory_holds_the_last_five_messages(asking, model_server):
    questions = [f"Question number {i} about the glacier?" for i in range(1, 5)]
    for question in questions[:3]:
        await asking(question, mode="balanced")
    model_server.reset()
    answer = await asking(questions[3], mode="balanced")
    assert set(answer["metadata"]["timings"]) == {"condense_ms", "retrieval_ms", "ttft_ms", "generation_ms"}
    [condense] = model_server.condense_requests()
    final = model_server.answer_requests()[-1]
    history = [m["content"] for m in final["messages"] if m["role"] in ("user", "assistant")][:-1]
    assert len(history) == 5  # six earlier messages, the oldest of them left out
    assert questions[0] not in " ".join(history)
    assert history[1] == questions[1]
    assert final["messages"][-1]["content"] == questions[3]  # the question is not sent twice
    assert questions[2] in condense["messages"][-1]["content"]  # the follow-up was condensed with the history


async def test_provider_failure_ends_the_stream_with_an_error(llm_client, model_server, identity):
    from tests.test_chat_messages import stream_question

    headers, session = await new_conversation(llm_client, identity)
    model_server.fail_next(500, times=3, retry_after_ms=1)
    events = await stream_question(llm_client, headers, session)
    assert [name for _, name, _ in events][-1] == "error"
    error = events[-1][2]
    assert error == {
        "message_id": error["message_id"],
        "detail": "the language model failed; try again",
        "retryable": True,
    }
    messages = (await llm_client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert [(m["role"], m["status"]) for m in messages] == [("user", "completed"), ("assistant", "failed")]
    assert messages[1]["error_message"] == "the language model failed; try again"


async def test_openai_provider_and_model_choice(settings, model_server, identity):
    model_server.reset()
    openai_models = OpenAIStandIn(api_key=KEY)  # serves gpt-4o and gpt-4o-mini
    with openai_models:
        configured = derive(
            settings,
            llm="openai",
            openai_api_key=KEY,
            openai_base_url=openai_models.base_url,
            llm_models=["gpt-4o", "gpt-4o-mini"],
        )
        async with client_for(create_app(configured)) as client:
            headers, session = await new_conversation(client, identity)
            assert (await client.get(f"{API}/models", headers=headers)).json() == {
                "provider": "openai",
                "models": ["gpt-4o", "gpt-4o-mini"],
                "default": "gpt-4o",
            }
            url, params = f"{API}/message", {"session_id": session["id"]}
            default = (await client.post(url, params=params, json={"question": "glacier?"}, headers=headers)).json()
            chosen = await client.post(
                url, params=params, json={"question": "glacier?", "model": "gpt-4o-mini"}, headers=headers
            )
            assert default["model_used"] == "gpt-4o" and chosen.json()["model_used"] == "gpt-4o-mini"
            assert [r["model"] for r in openai_models.answer_requests()] == ["gpt-4o", "gpt-4o-mini"]


async def test_a_model_that_does_not_answer_times_out(settings, model_server, identity):
    model_server.reset()
    model_server.delay_s = 3
    configured = answered_by(settings, model_server, llm_timeout_s=0.3)
    async with client_for(create_app(configured)) as client:
        headers, session = await new_conversation(client, identity)
        response = await client.post(
            f"{API}/message",
            params={"session_id": session["id"]},
            json={"question": "glacier?", "mode": "balanced"},
            headers=headers,
        )
    assert response.status_code == 502
    assert response.json()["detail"] == "the language model did not answer in time; try again"


async def test_strict_refusal_calls_no_model(asking, model_server):
    model_server.reset()
    answer = await asking("Which opera did Verdi write in 1853?", mode="strict")
    assert answer["content"] == "I don't have enough information in your documents to answer that."
    assert model_server.requests == []  # not even a condense call: there was no history


async def test_an_answer_outlives_its_listener(settings, model_server, identity):
    """A closed tab: the listener leaves while the model is still writing; the answer is completed and saved."""
    from citechat.auth.service import provision
    from citechat.chat import schemas

    model_server.reset()
    model_server.stream_delay_s = 0.1  # per word: the answer takes about 0.6 s to write
    configured = answered_by(settings, model_server)
    application = create_app(configured)
    async with client_for(application) as client:
        headers, session = await new_conversation(client, identity)
        async with application.state.database.sessions() as db:
            principal = await provision(db, session["user_id"], session["organization_id"])
        question = schemas.SendMessage(question="How far did the glacier retreat?", mode="balanced")
        turn = await application.state.answering.begin(principal, uuid.UUID(session["id"]), question)
        listener = (await application.state.streams.start(turn)).follow()
        assert [(await anext(listener))[1].name for _ in range(2)] == ["user_message", "sources"]
        await listener.aclose()  # the tab closes while the answer is being written

        url = f"{API}/session/{session['id']}/messages"
        assert (await client.get(url, headers=headers)).json()[-1]["status"] == "streaming"
        await application.state.streams.wait(turn.assistant_id)
        assistant = (await client.get(url, headers=headers)).json()[-1]
    assert (assistant["status"], assistant["content"]) == ("completed", "Answer from the first source [1].")


async def test_the_model_is_asked_while_the_sources_are_saved(llm_client, model_server, identity, monkeypatch):
    """The sources are written while the model thinks of its first token, not before it is asked: saving here
    waits for the model's request, and would wait forever if the request came after it."""
    from citechat.chat.answering import Answering
    from tests.test_chat_messages import stream_question

    save = Answering._save_sources

    async def saved_once_the_model_is_asked(self, turn, nodes):
        async with asyncio.timeout(10):
            while not model_server.answer_requests():  # noqa: ASYNC110 (the stand-in serves from its own thread)
                await asyncio.sleep(0.01)
        return await save(self, turn, nodes)

    monkeypatch.setattr(Answering, "_save_sources", saved_once_the_model_is_asked)
    headers, session = await new_conversation(llm_client, identity)
    events = await stream_question(llm_client, headers, session)
    names = [name for _, name, _ in events]
    assert names[:2] == ["user_message", "sources"] and names[-1] == "done" and "token" in names
    assert names.index("sources") < names.index("token")  # the sources still come first
    assert len(model_server.answer_requests()) == 1
