"""Faults injected against the real stack (API, embedded PostgreSQL, the OpenAI and Ragie stand-ins), and what is
stored afterwards: no answer left pending or streaming, partial text kept, every failure retryable from the API."""

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from citechat.api.app import create_app
from citechat.db.embedded import EmbeddedPostgres
from tests.conftest import answered_by, client_for, derive
from tests.standins.openai import OpenAIStandIn
from tests.standins.server import BackgroundServer
from tests.test_chat_messages import new_conversation, parse_sse, stream_question

API = "/api/v1/chat"
KEY = "standin-key-0123456789"
ANSWER = " ".join(f"word{i}" for i in range(1, 31)) + " [1]."  # 31 words: ~1.5 s at 0.05 s a word


@pytest.fixture(scope="module")
def model_server() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key=KEY, models=("standin-model",)) as server:
        yield server


@asynccontextmanager
async def live(configured) -> AsyncIterator[httpx.AsyncClient]:
    """citechat under uvicorn on 127.0.0.1 (real HTTP, so streams arrive as they are written), and a client."""
    server = BackgroundServer(create_app(configured), name="citechat", start_timeout_s=60, lifespan="on")
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def served(settings, model_server) -> AsyncIterator[httpx.AsyncClient]:
    """A live citechat answering through the stand-in, which writes ``ANSWER`` a word every 50 ms."""
    model_server.reset()
    model_server.answer_fn = lambda body: ANSWER if "Standalone question" not in json.dumps(body) else "glacier?"
    model_server.stream_delay_s = 0.05
    async with live(answered_by(settings, model_server)) as client:
        yield client


async def messages_of(client, headers, session) -> list[dict]:
    return (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()


async def start_streaming(client, headers, session, question="How far did the glacier retreat?"):
    """Sends a question over SSE and returns the open response with its event reader, after ``user_message``."""
    request = client.build_request(
        "POST",
        f"{API}/message/stream",
        params={"session_id": session["id"]},
        json={"question": question, "mode": "balanced"},
        headers=headers,
    )
    response = await client.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    return response, sse_events(response)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[int, str, dict]]:
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if not block.startswith(":"):
                yield parse_sse(block)[0]


async def test_partial_text_is_saved_while_streaming_and_a_reconnect_resumes(served, identity):
    client = served
    headers, session = await new_conversation(client, identity)
    response, events = await start_streaming(client, headers, session)
    _, name, user = await anext(events)
    assert name == "user_message"
    message_id = user["assistant_message_id"]
    seen, text = 0, ""
    async for number, name, data in events:
        if name == "token":
            text += data["delta"]
            seen = number
        if len(text.split()) >= 8:
            break
    await response.aclose()  # the connection drops mid-answer

    await asyncio.sleep(0.6)  # longer than a flush interval (250 ms)
    stored = (await messages_of(client, headers, session))[-1]
    assert stored["status"] == "streaming" and stored["id"] == message_id
    assert len(stored["content"]) > len(text) and stored["content"].startswith(text)  # persisted, and still going

    resumed = await client.get(f"{API}/message/{message_id}/stream", headers=headers | {"Last-Event-ID": str(seen)})
    replay = parse_sse(resumed.text)
    assert replay[0][1] == "sources" and replay[-1][1] == "done"
    rest = "".join(data["delta"] for _, name, data in replay if name == "token")
    assert text + rest == ANSWER == replay[-1][2]["content"]
    assert replay[-1][2]["status"] == "completed"


async def test_another_worker_follows_and_stops_the_answer(served, settings, model_server, identity):
    """A second app on the same database is another worker: it follows the answer from the database, and a stop
    asked there reaches the worker writing it, which keeps the text so far."""
    client = served
    headers, session = await new_conversation(client, identity)
    _response, events = await start_streaming(client, headers, session)
    message_id = (await anext(events))[2]["assistant_message_id"]

    async with live(answered_by(settings, model_server)) as other:
        follower = await other.send(
            other.build_request("GET", f"{API}/message/{message_id}/stream", headers=headers), stream=True
        )
        followed = sse_events(follower)
        assert (await anext(followed))[1] == "sources"
        while (await anext(followed))[1] != "token":
            pass
        stopped = await other.post(f"{API}/message/{message_id}/cancel", headers=headers)
        assert stopped.status_code == 200, stopped.text
        ending = [name async for _, name, _ in followed]
        assert ending[-1] == "done"
        again = await other.post(f"{API}/message/{message_id}/cancel", headers=headers)
        assert again.status_code == 409
    rest = [(name, data) async for _, name, data in events]
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "stopped"
    stored = (await messages_of(client, headers, session))[-1]
    assert stored["status"] == "stopped" and 0 < len(stored["content"]) < len(ANSWER)
    assert ANSWER.startswith(stored["content"])


async def test_stop_on_the_same_worker_keeps_the_partial_answer(served, identity):
    client = served
    headers, session = await new_conversation(client, identity)
    _response, events = await start_streaming(client, headers, session)
    message_id = (await anext(events))[2]["assistant_message_id"]
    while (await anext(events))[1] != "token":
        pass
    stopped = (await client.post(f"{API}/message/{message_id}/cancel", headers=headers)).json()
    assert stopped["status"] == "stopped" and ANSWER.startswith(stopped["content"]) and stopped["content"]
    assert [name async for _, name, _ in events][-1] == "done"
    assert (await messages_of(client, headers, session))[-1]["status"] == "stopped"


async def test_one_answer_at_a_time_per_session(served, identity):
    client = served
    headers, session = await new_conversation(client, identity)
    _response, events = await start_streaming(client, headers, session)
    await anext(events)
    second = await client.post(
        f"{API}/message", params={"session_id": session["id"]}, json={"question": "and?"}, headers=headers
    )
    assert second.status_code == 409 and "still being written" in second.json()["detail"]
    assert [name async for _, name, _ in events][-1] == "done"
    assert [m["role"] for m in await messages_of(client, headers, session)] == ["user", "assistant"]


async def test_racing_sends_in_one_session_store_one_question(served, identity):
    """Sends that all pass the first check at once: the database lets one answer be written, the rest get 409 and
    store nothing (idx_chat_messages_one_in_flight)."""
    client = served
    headers, session = await new_conversation(client, identity)
    url, params = f"{API}/message", {"session_id": session["id"]}
    # Questions the document answers, so the one admitted is written by the model (~1.5 s): a question it does not
    # answer is refused at once, and a send arriving after that finds the session free (and is answered, rightly).
    questions = [f"How far did the glacier retreat ({i})?" for i in range(8)]
    asks = [
        client.post(url, params=params, json={"question": q, "mode": "balanced"}, headers=headers) for q in questions
    ]
    sent = await asyncio.gather(*asks)
    codes = sorted(response.status_code for response in sent)
    assert codes == [200] + [409] * 7, codes  # all eight arrive while the first answer is still being written
    stored = await messages_of(client, headers, session)
    assert len(stored) == 2  # the accepted question and its answer, nothing else
    assert all(m["status"] == "completed" for m in stored)


async def test_llm_error_mid_stream_is_saved_failed_and_retried_in_place(served, model_server, identity, db):
    client = served
    headers, session = await new_conversation(client, identity)
    model_server.stream_error_after = 5  # words, 50 ms apart, then OpenAI's error event
    events = await stream_question(client, headers, session)
    assert [name for _, name, _ in events][-1] == "error" and events[-1][2]["retryable"] is True
    assert events[-1][2]["detail"] == "the language model failed mid-answer; try again"
    failed = (await messages_of(client, headers, session))[-1]
    assert failed["status"] == "failed" and failed["content"].startswith("word1 word2")  # what came is kept
    details = await db.scalar(text("SELECT error_details FROM chat_messages WHERE id = :id"), {"id": failed["id"]})
    assert details == {"stage": "generation", "retryable": True, "provider": "openai-compatible"}

    model_server.stream_error_after = None
    quota_before = (await client.get(f"{API}/limits", headers=headers)).json()["user"]["remaining"]
    retried = await client.post(f"{API}/message/{failed['id']}/retry", headers=headers)
    assert retried.status_code == 200, retried.text
    assert retried.headers["X-RateLimit-Remaining"] == str(quota_before)  # shown, not spent
    answer = retried.json()
    assert (answer["id"], answer["status"], answer["content"]) == (failed["id"], "completed", ANSWER)
    assert answer["error_message"] is None and answer["metadata"]["attempt"] == 2
    assert [m["role"] for m in await messages_of(client, headers, session)] == ["user", "assistant"]
    assert (await client.get(f"{API}/limits", headers=headers)).json()["user"]["remaining"] == quota_before

    regenerated = await client.post(
        f"{API}/message/{failed['id']}/retry/stream", json={"mode": "creative"}, headers=headers
    )
    events = parse_sse(regenerated.text)
    assert events[0][1] == "user_message" and events[0][2]["content"] == "How far did the glacier retreat?"
    assert events[-1][1] == "done" and events[-1][2]["metadata"]["mode"] == "creative"
    assert regenerated.headers["X-RateLimit-Remaining"] == str(quota_before - 1)  # regenerating counts


async def test_only_the_latest_answer_can_be_retried(served, identity):
    client = served
    headers, session = await new_conversation(client, identity)
    params = {"session_id": session["id"]}
    first = (await client.post(f"{API}/message", params=params, json={"question": "a?"}, headers=headers)).json()
    await client.post(f"{API}/message", params=params, json={"question": "b?"}, headers=headers)
    older = await client.post(f"{API}/message/{first['id']}/retry", headers=headers)
    assert older.status_code == 409 and "latest" in older.json()["detail"]
    stranger = await client.post(f"{API}/message/{first['id']}/retry", headers=identity())
    assert stranger.status_code == 404
    assert (await client.post(f"{API}/message/{uuid.uuid4()}/cancel", headers=headers)).status_code == 404
    bad = await client.post(f"{API}/message/{first['id']}/retry", json={"mode": "loud"}, headers=headers)
    assert bad.status_code == 422
    await client.post(f"{API}/session/{session['id']}/archive", headers=headers)
    archived = await client.post(f"{API}/message/{first['id']}/retry", headers=headers)
    assert archived.status_code == 409 and "archived" in archived.json()["detail"]


async def test_transient_provider_errors_are_retried(served, model_server, identity):
    client = served
    headers, session = await new_conversation(client, identity)
    model_server.stream_delay_s = 0
    model_server.fail_next(503, times=1, retry_after_ms=1)
    model_server.fail_next(429, times=1, retry_after_ms=1)
    answer = await client.post(
        f"{API}/message",
        params={"session_id": session["id"]},
        json={"question": "glacier?", "mode": "balanced"},
        headers=headers,
    )
    assert answer.status_code == 200 and answer.json()["content"] == ANSWER


async def test_retrieval_timeout_fails_retryably(settings, identity):
    from tests.standins.ragie import RagieStandIn

    with RagieStandIn(api_key="ragie-key-0123456789") as ragie:
        configured = derive(
            settings,
            retriever="ragie",
            ragie_api_key="ragie-key-0123456789",
            ragie_base_url=ragie.url,
            retrieval_timeout_s=1.0,  # the retry's search must fit too, on a busy machine (0.3 s did not, once)
        )
        async with client_for(create_app(configured)) as client:
            headers = identity()
            session = (await client.get(f"{API}/session", headers=headers)).json()
            ragie.delay_s = 3
            response = await client.post(
                f"{API}/message/stream", params={"session_id": session["id"]}, json={"question": "x?"}, headers=headers
            )
            events = parse_sse(response.text)
            assert events[-1][1] == "error" and "longer than 1 s" in events[-1][2]["detail"]
            assert events[-1][2]["retryable"] is True
            stored = (await messages_of(client, headers, session))[-1]
            assert stored["status"] == "failed"
            ragie.delay_s = 0
            retried = await client.post(f"{API}/message/{stored['id']}/retry", headers=headers)
            assert retried.status_code == 200 and retried.json()["status"] == "completed"


async def test_answers_of_a_dead_process_are_marked_at_start_up(settings, identity):
    """A crash leaves rows ``streaming``; the next start marks those of dead processes failed, and no others."""
    application = create_app(settings)
    async with client_for(application) as client:
        headers = identity()
        sessions = [(await client.post(f"{API}/session/new", headers=headers)).json() for _ in range(2)]
        alive_worker = application.state.answering.worker_id  # this app stays alive throughout
        async with application.state.database.sessions() as db:
            for session, worker in zip(sessions, (uuid.uuid4(), alive_worker), strict=True):
                await db.execute(
                    text(
                        "INSERT INTO chat_messages (session_id, role, content, status, worker_id)"
                        " VALUES (:s, 'assistant', 'half an ans', 'streaming', :w)"
                    ),
                    {"s": session["id"], "w": worker},
                )
            await db.commit()
        async with client_for(create_app(settings)):  # another process starts
            pass
        rows = [row for session in sessions for row in await messages_of(client, headers, session)]
    statuses = sorted((m["status"], m["content"]) for m in rows)
    assert statuses == [("failed", "half an ans"), ("streaming", "half an ans")]
    failed = next(m for m in rows if m["status"] == "failed")
    assert failed["error_message"].startswith("interrupted")


async def test_database_restart_gives_503_then_recovers_and_the_answer_is_saved(settings, model_server, identity):
    """The database restarts under a running service, mid-answer: requests during the outage get 503, later ones
    succeed without restarting the service, and the answer that was being written is completed and saved."""
    folder = Path(tempfile.mkdtemp(prefix="citechat-restart-"))  # outside pytest's tree, as in conftest
    server = EmbeddedPostgres(folder)
    url = await server.start()
    model_server.reset()
    model_server.answer_fn = lambda body: ANSWER
    model_server.stream_delay_s = 0.1  # ~3 s of writing: the restart happens inside it
    try:
        async with live(answered_by(settings, model_server, database_url=url)) as client:
            headers, session = await new_conversation(client, identity)
            _response, events = await start_streaming(client, headers, session)
            message_id = (await anext(events))[2]["assistant_message_id"]
            assert (await anext(events))[1] == "sources"

            await server.stop()
            down = await client.get(f"{API}/session", headers=headers)
            assert down.status_code == 503 and "unavailable; try again shortly" in down.json()["detail"]
            assert await server.start() == url

            rest = [name async for _, name, _ in events]
            assert rest[-1] == "done"
            up = await client.get(f"{API}/session/{session['id']}/messages", headers=headers)
            assert up.status_code == 200
            stored = up.json()[-1]
            assert (stored["id"], stored["status"], stored["content"]) == (message_id, "completed", ANSWER)
    finally:
        await server.stop()
        shutil.rmtree(folder, ignore_errors=True)
