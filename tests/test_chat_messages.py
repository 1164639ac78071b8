"""Asking in a session, end to end on the extractive default: real API, real index, real PDF."""

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest

from tests import samples
from tests.test_documents import ingest

API = "/api/v1/chat"
REFUSAL = "I don't have enough information in your documents to answer that."


async def new_conversation(client, identity) -> tuple[dict, dict]:
    """Headers of a new user whose organization holds a four-page PDF named "Field notes" (one topic per page),
    and their session."""
    headers = identity(org=f"ask-{uuid.uuid4().hex[:8]}")
    document = await ingest(client, headers, samples.pdf(samples.TOPICS), "field-notes.pdf", name="Field notes")
    assert document["status"] == "ready"
    return headers, (await client.get(f"{API}/session", headers=headers)).json()


@pytest.fixture
async def asker(client, identity):
    return await new_conversation(client, identity)


async def ask(client, headers, session, question: str, **body) -> dict:
    """Asks for the completed answer (``POST /message``, the session's mode unless told) and returns it."""
    response = await client.post(
        f"{API}/message", params={"session_id": session["id"]}, json={"question": question} | body, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


async def stream_question(
    client, headers, session, question: str = "How far did the glacier retreat?", **body
) -> list[tuple[int, str, dict]]:
    """Asks over SSE (balanced mode unless told) and returns the events once the answer has ended."""
    response = await client.post(
        f"{API}/message/stream",
        params={"session_id": session["id"]},
        json={"question": question, "mode": "balanced"} | body,
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


def parse_sse(body: str) -> list[tuple[int, str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def test_answer_cites_the_right_page(client, asker):
    headers, session = asker
    question = "How much did the glacier retreat at the Vatnajokull outlet?"
    answer = await ask(client, headers, session, question, mode="balanced")
    assert (answer["role"], answer["status"], answer["model_used"]) == ("assistant", "completed", "extractive")
    assert "312 metres" in answer["content"] and "[" in answer["content"]
    cited = [s for s in answer["sources"] if s["cited"]]
    assert cited and cited[0]["page_number"] == 3 and cited[0]["document_name"] == "Field notes"
    assert cited[0]["supported"] is True and f"[{cited[0]['rank']}]" in answer["content"]
    assert answer["metadata"]["mode"] == "balanced" and answer["temperature_used"] == 0.5
    assert answer["metadata"]["prompt_version"] and answer["tokens_total"] > 0
    sentences = answer["metadata"]["citations"]["sentences"]
    assert sentences and all(s["supported"] and s["sources"] for s in sentences)
    assert set(answer["metadata"]["timings"]) == {"retrieval_ms", "ttft_ms", "generation_ms"}  # no condensing

    history = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["sources"] == answer["sources"]  # a reload shows exactly the same citations
    listed = (await client.get(f"{API}/session", headers=headers)).json()
    assert listed["title"] == question[:50] + "..." and listed["message_count"] == 2


async def test_stream_events_in_order(client, asker):
    headers, session = asker
    response = await client.post(
        f"{API}/message/stream",
        params={"session_id": session["id"]},
        json={"question": "What did the bakery's quarterly revenue rise to?"},
        headers=headers,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    names = [name for _, name, _ in events]
    assert names[:2] == ["user_message", "sources"] and names[-1] == "done"
    assert set(names[2:-1]) == {"token"} and len(names[2:-1]) > 1
    user, sources, done = events[0][2], events[1][2]["sources"], events[-1][2]
    assert user["role"] == "user" and user["content"].startswith("What did the bakery")
    assert user["assistant_message_id"] == done["id"]
    assert [s["rank"] for s in sources] == list(range(1, len(sources) + 1))
    streamed = "".join(data["delta"] for _, name, data in events if name == "token")
    # Each id is the number of characters of the answer sent so far: what a reconnecting client says it has seen.
    ids, seen = [number for number, _, _ in events], 0
    for number, name, data in events:
        seen += len(data["delta"]) if name == "token" else 0
        assert number == seen
    assert ids == sorted(ids) and ids[-1] == len(streamed)
    assert done["content"] == streamed and "7.4 million" in done["content"]
    assert done["status"] == "completed" and any(s["cited"] and s["page_number"] == 2 for s in done["sources"])


async def test_strict_refuses_without_relevant_sources(client, asker):
    headers, session = asker
    answer = await ask(client, headers, session, "Which opera did Verdi write in 1853?", mode="strict")
    assert answer["content"] == REFUSAL and answer["sources"] == []
    assert answer["metadata"]["refused"] is True and answer["status"] == "completed"


async def test_refusals_and_bad_input(client, asker, identity):
    headers, session = asker
    url = f"{API}/message"
    for body in ({"question": ""}, {"question": "   "}, {"question": "x" * 5001}, {"question": "ok", "mode": "wild"}):
        assert (
            await client.post(url, params={"session_id": session["id"]}, json=body, headers=headers)
        ).status_code == 422
    assert (await client.post(url, json={"question": "hi"}, headers=headers)).status_code == 422  # no session_id
    stranger = identity()
    response = await client.post(url, params={"session_id": session["id"]}, json={"question": "hi"}, headers=stranger)
    assert response.status_code == 404
    await client.post(f"{API}/session/{session['id']}/archive", headers=headers)
    response = await client.post(url, params={"session_id": session["id"]}, json={"question": "hi"}, headers=headers)
    assert response.status_code == 409 and "read-only" in response.json()["detail"]
    messages = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert messages == []  # nothing was stored for refused requests


async def test_a_question_asked_about_some_documents_is_answered_from_them_only(client, asker, identity):
    """Asked about one document, only its passages are searched and cited (a question another document answers
    is refused in Strict); the answer says which documents it was asked about, and a retry asks them again."""
    headers, session = asker
    notes = (await client.get("/api/v1/documents", headers=headers)).json()[0]
    handbook = await ingest(client, headers, samples.pdf(["Survey teams start at the east camp at six."]), "h.pdf")
    scope = {"document_ids": [handbook["id"]], "mode": "strict"}

    answer = await ask(client, headers, session, "When do survey teams start?", **scope)
    assert {source["ragie_document_id"] for source in answer["sources"]} == {handbook["id"]}
    assert answer["metadata"]["documents"] == [handbook["id"]] and "six" in answer["content"]
    elsewhere = await ask(client, headers, session, "How far did the glacier retreat?", **scope)
    assert elsewhere["content"] == REFUSAL  # the field notes answer it, and were not asked
    everywhere = await ask(client, headers, session, "How far did the glacier retreat?", mode="strict")
    assert "312 metres" in everywhere["content"] and "documents" not in everywhere["metadata"]
    both = await ask(client, headers, session, "How far did the glacier retreat?", mode="strict",
                     document_ids=[notes["id"], handbook["id"], notes["id"]])  # fmt: skip
    assert "312 metres" in both["content"] and both["metadata"]["documents"] == [notes["id"], handbook["id"]]

    again = await ask(client, headers, session, "How far did the glacier retreat?", **scope)
    retried = await client.post(f"{API}/message/{again['id']}/retry", json={}, headers=headers)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["content"], retried.json()["metadata"]["documents"]) == (REFUSAL, [handbook["id"]])
    assert (await client.delete(f"/api/v1/documents/{handbook['id']}", headers=headers)).status_code == 204
    gone = await client.post(f"{API}/message/{again['id']}/retry", json={}, headers=headers)
    assert gone.status_code == 409 and "were deleted since" in gone.json()["detail"]
    kept = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()[-1]
    assert (kept["id"], kept["status"], kept["content"]) == (again["id"], "completed", REFUSAL)  # left as it was

    theirs = await ingest(client, identity(), samples.pdf(["Another organization's survey notes."]), "t.pdf")
    for document_ids, why in (
        ([theirs["id"]], "not documents of this organization"),
        ([str(uuid.uuid4())], "not documents of this organization"),
        ([], "at least 1"),
        ([str(uuid.uuid4()) for _ in range(21)], "at most 20"),
        (["not-an-id"], "UUID"),
    ):
        response = await client.post(
            f"{API}/message",
            params={"session_id": session["id"]},
            json={"question": "When do survey teams start?", "document_ids": document_ids},
            headers=headers,
        )
        assert response.status_code == 422 and why in json.dumps(response.json()), response.text
    messages = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert len(messages) == 10  # five questions answered; the refused requests stored nothing


async def test_text_the_database_cannot_store_is_a_422_and_stores_nothing(client, asker):
    """A NUL character, or half of a surrogate pair (a JSON escape can carry one), failed the question's insert:
    a 500 after the question was admitted."""
    headers, session = asker
    url = f"{API}/message"
    for raw, reason in [(b'{"question": "a\\u0000b"}', "nul"), (b'{"question": "a\\ud800b"}', "unicode")]:
        json_headers = headers | {"Content-Type": "application/json"}
        response = await client.post(url, params={"session_id": session["id"]}, content=raw, headers=json_headers)
        assert response.status_code == 422 and reason in response.json()["detail"][0]["msg"].lower(), response.text
    response = await client.patch(f"{API}/session/{session['id']}", json={"title": "a\x00b"}, headers=headers)
    assert response.status_code == 422 and "NUL" in response.json()["detail"][0]["msg"]
    assert (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json() == []


async def test_models_of_the_extractive_default(client, asker):
    headers, session = asker
    assert (await client.get(f"{API}/models", headers=headers)).json() == {
        "provider": "extractive",
        "models": ["extractive"],
        "default": "extractive",
    }
    response = await client.post(
        f"{API}/message",
        params={"session_id": session["id"]},
        json={"question": "hi", "model": "gpt-4o"},
        headers=headers,
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "model 'gpt-4o' is not available; available: extractive"
    assert (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json() == []


async def test_conversation_cites_the_right_page_each_turn(client, asker):
    headers, session = asker
    for question, page, fact in [
        ("How far did the glacier retreat?", 3, "312 metres"),
        ("What did the bakery's quarterly revenue rise to?", 2, "7.4 million"),
        ("How many storms did the lighthouse keeper log?", 1, "forty storms"),
    ]:
        answer = await ask(client, headers, session, question)
        assert fact in answer["content"]
        assert next(s["page_number"] for s in answer["sources"] if s["cited"]) == page
    history = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert [m["role"] for m in history] == ["user", "assistant"] * 3


async def test_a_strict_follow_up_is_searched_with_the_question_before_it(client, asker):
    """Without a model to rewrite it, "Where was that?" is searched (and its sentences weighed) joined to the
    question asked before it: asked alone, it names nothing to search for, and Strict refused it."""
    headers, session = asker
    first = await ask(client, headers, session, "How far did the glacier retreat?", mode="strict")
    follow_up = await ask(client, headers, session, "Where was that?", mode="strict")
    assert "312 metres" in first["content"] and "condense_ms" not in first["metadata"]["timings"]
    assert follow_up["content"] != REFUSAL and "Vatnajokull outlet" in follow_up["content"]
    assert next(s["page_number"] for s in follow_up["sources"] if s["cited"]) == 3
    assert "condense_ms" in follow_up["metadata"]["timings"]


async def test_a_new_question_in_a_conversation_is_searched_as_asked(client, asker):
    """Joined to the question about the lighthouse, the enzyme question searched the lighthouse's page and Strict
    found nothing to say; asked as it is, it is answered from the trial's page."""
    headers, session = asker
    first = await ask(client, headers, session, "How many storms did the lighthouse keeper log?", mode="strict")
    second = await ask(client, headers, session, "What reduction did patients on the enzyme show?", mode="strict")
    assert "forty storms" in first["content"]
    assert "38 percent reduction" in second["content"] and "forty storms" not in second["content"]
    assert next(s["page_number"] for s in second["sources"] if s["cited"]) == 4


async def test_session_mode_is_the_default(client, asker):
    headers, session = asker
    await client.patch(f"{API}/session/{session['id']}", json={"mode": "creative"}, headers=headers)
    answer = await ask(client, headers, session, "glacier?")
    assert answer["metadata"]["mode"] == "creative" and answer["temperature_used"] == 0.9


async def test_quiet_streams_get_heartbeats(monkeypatch):
    """While nothing happens (a slow model), the stream sends comment lines so proxies keep it open."""
    import asyncio

    from citechat.chat import message_routes, streams
    from citechat.chat.answering import Event

    monkeypatch.setattr(streams, "HEARTBEAT_S", 0.05)
    stream = streams.AnswerStream()
    stream.publish(Event("user_message", {"n": 1}))

    async def slow_model():
        await asyncio.sleep(0.18)
        stream.publish(Event("token", {"delta": "ok"}))
        stream.publish(Event("done", {"n": 2}))
        stream.finish()

    writing = asyncio.create_task(slow_model())
    lines = [chunk async for chunk in message_routes._sse(stream.follow())]
    await writing
    assert lines[0].startswith("id: 0\nevent: user_message\n")
    assert 2 <= lines.count(": heartbeat\n\n") <= 4
    assert lines[-2].startswith("id: 2\nevent: token\n")
    assert lines[-1].startswith("id: 2\nevent: done\n")


async def test_an_interrupted_answer_is_never_left_streaming(app, client, asker):
    """A client that goes away mid-answer: the message ends ``failed`` (retryable), not ``streaming`` forever."""
    from citechat.auth.service import provision
    from citechat.chat import schemas
    from citechat.chat.workers import INTERRUPTED

    headers, session = asker
    async with app.state.database.sessions() as db:
        me = (await client.get(f"{API}/session", headers=headers)).json()
        principal = await provision(db, me["user_id"], me["organization_id"])
    answering = app.state.answering
    turn = await answering.begin(principal, uuid.UUID(session["id"]), schemas.SendMessage(question="glacier?"))
    events = answering.run(turn)
    assert (await anext(events)).name == "user_message"
    assert (await anext(events)).name == "sources"
    await events.aclose()  # what Starlette does when the connection drops

    messages = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assistant = messages[-1]
    assert (assistant["status"], assistant["error_message"]) == ("failed", INTERRUPTED)


async def stage_a_race(app, monkeypatch, session_id: str, *, age_s: int = 0) -> None:
    """Another send's answer in flight in the session (``age_s`` old), which the checks before the next write miss,
    as a snapshot taken before that send would: the write then meets idx_chat_messages_one_in_flight."""
    from sqlalchemy import text

    from citechat.chat import answering

    async with app.state.database.sessions() as db:
        await db.execute(
            text(
                "INSERT INTO chat_messages (session_id, role, content, status, created_at)"
                " VALUES (:s, 'assistant', '', 'pending', now() - make_interval(secs => :age))"
            ),
            {"s": session_id, "age": age_s},
        )
        await db.commit()

    async def checks_missing_the_race(db, busy_id, busy_worker) -> None:
        return None

    monkeypatch.setattr(answering, "_clear_or_refuse", checks_missing_the_race)


@pytest.mark.parametrize("route", ["message", "message/stream"])
async def test_a_send_that_loses_a_race_is_a_conflict_and_stores_nothing(app, client, asker, monkeypatch, route):
    """The question is admitted, then stored while retrieval already runs; a send that stored its own answer in
    between is refused by the database (idx_chat_messages_one_in_flight) when this one is stored: still an HTTP 409
    (the stream never starts), and nothing of it is stored. The race is staged: the admission misses the other
    answer, as a snapshot taken before that send would."""
    headers, session = asker
    await stage_a_race(app, monkeypatch, session["id"])
    sent = await client.post(
        f"{API}/{route}", params={"session_id": session["id"]}, json={"question": "Who wins?"}, headers=headers
    )
    assert sent.status_code == 409 and "still being written" in sent.json()["detail"]
    assert sent.headers["content-type"].startswith("application/json")
    stored = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert [(m["role"], m["status"]) for m in stored] == [("assistant", "pending")]  # only the other send's
    for _ in range(100):  # the refused answer's task ends by itself, having written nothing
        if not app.state.streams._running:
            break
        await asyncio.sleep(0.01)
    assert not app.state.streams._running


async def test_a_retry_that_loses_a_race_with_a_send_is_a_conflict(app, client, asker, monkeypatch):
    """A retry checks the session, then writes; a send that commits in between leaves two answers in flight, which
    the database refuses (idx_chat_messages_one_in_flight): 409, and nothing changes. The race is staged: the
    retry's check is made to miss the other answer, as a snapshot taken before that send would."""
    headers, session = asker
    answer = (await stream_question(client, headers, session))[-1][2]
    await stage_a_race(app, monkeypatch, session["id"], age_s=60)  # older, so the retried answer stays the latest
    retried = await client.post(f"{API}/message/{answer['id']}/retry", headers=headers)
    assert retried.status_code == 409 and "still being written" in retried.json()["detail"]
    stored = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert [m["status"] for m in stored if m["id"] == answer["id"]] == ["completed"]


async def test_a_shutdown_while_the_question_is_stored_leaves_no_answer_pending(app, client, asker, monkeypatch):
    """An answer starts (retrieval) while its question is still being stored. Stopped then, as at a shutdown, it
    waits for the question to be stored and marks its answer interrupted: never left pending."""
    from citechat.chat import answering, workers
    from citechat.chat.schemas import SendMessage

    headers, session = asker
    storing, release = asyncio.Event(), asyncio.Event()
    store = answering.Answering._store

    async def slow_store(self, *args) -> None:
        storing.set()
        await release.wait()
        await store(self, *args)

    monkeypatch.setattr(answering.Answering, "_store", slow_store)
    sessions, token = app.state.database.sessions, headers["Authorization"].split()[1]
    principal = await app.state.authenticator.authenticate(token, None, sessions)
    question = SendMessage(question="How far did the glacier retreat?", mode="balanced")
    turn = await app.state.answering.begin(principal, uuid.UUID(session["id"]), question)
    starting = asyncio.ensure_future(app.state.streams.start(turn))
    await storing.wait()
    closing = asyncio.ensure_future(app.state.streams.aclose())  # what the lifespan does at shutdown
    await asyncio.sleep(0.05)
    assert not closing.done()  # the answer waits for its question to be stored
    release.set()
    await closing
    await starting  # the question was stored

    stored = (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json()
    assert [(m["role"], m["status"]) for m in stored] == [("user", "completed"), ("assistant", "failed")]
    assert stored[1]["error_message"] == workers.INTERRUPTED  # which says to retry it


async def test_a_question_slow_to_store_is_answered_not_taken_for_stopped(app, client, asker, monkeypatch):
    """Under load the question can take longer to store than the flusher waits before its first save (it checks
    that the answer is still in flight, which is how a stop asked on another worker reaches this one). It waits
    for the question to be stored: before, the answer is not there, and must not be taken for stopped."""
    from citechat.chat import answering, streams

    headers, session = asker
    store = answering.Answering._store

    async def slow_store(self, *args) -> None:
        await asyncio.sleep(3 * streams.FLUSH_S)
        await store(self, *args)

    monkeypatch.setattr(answering.Answering, "_store", slow_store)
    events = await stream_question(client, headers, session)
    assert events[-1][1] == "done" and events[-1][2]["status"] == "completed"
    assert events[-1][2]["content"]


async def test_no_connection_free_in_time_is_a_503_and_nothing_is_lost(app, client, asker, monkeypatch):
    """Answering's statements wait for a connection of their pool as long as the engine's pool would (30 s), then
    the question is refused as busy (503), not left waiting; once connections are free it is answered."""
    headers, session = asker
    pool = app.state.database.pool
    monkeypatch.setattr(app.state.answering.statements, "wait_s", 0.2)
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        refused = await client.post(
            f"{API}/message", params={"session_id": session["id"]}, json={"question": "Who?"}, headers=headers
        )
    finally:
        for connection in held:
            await pool.release(connection)
    assert refused.status_code == 503 and refused.json() == {"detail": "the service is busy; try again shortly"}
    assert (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).json() == []
    events = await stream_question(client, headers, session)
    assert events[-1][1] == "done" and events[-1][2]["status"] == "completed"


async def test_progress_and_quota_hits_do_not_wait_for_the_disk_but_the_answer_does(app, client, asker):
    """An answer's progress and a question's quota hits commit asynchronously: losing them in a crash of the
    database costs nothing (the final write repeats the one, the question's own commit flushes the other). The
    final write waits for the disk, as ``done`` says the answer is kept. The setting lasts the statement's
    transaction only: the pool does not reset its connections."""
    from citechat.chat import answering, streams
    from citechat.ratelimits import storage

    headers, session = asker
    answer = (await stream_question(client, headers, session))[-1][2]
    answer_id = uuid.UUID(answer["id"])
    final = {"answer_id": answer_id, "text": answer["content"], "prompt": 0, "completion": 1, "total": 1}
    final |= {"took_ms": 1, "metadata": {}, "at": datetime.now(UTC), "rows": []}
    quota = storage.PostgresQuotaStore(None, per_user_per_hour=10, per_org_per_day=10).parameters("user/u", "org/o")
    cases = [
        (streams._SAVE_TEXT, {"answer_id": answer_id, "text": "so far"}, "off"),
        (storage._CONSUME_ALONE, quota, "off"),
        (answering._COMPLETE, final, "on"),
    ]
    async with app.state.database.pool.acquire() as db:
        for statement, params, expected in cases:
            transaction = db.transaction()
            await transaction.start()  # the statement's own transaction, held open to look inside; rolled back
            await db.execute("UPDATE chat_messages SET status = 'streaming' WHERE id = $1", answer_id)
            assert await db.fetchrow(statement.sql, *statement.arguments(params)) is not None
            assert (await db.fetchval("SHOW synchronous_commit"), statement.sql[:40]) == (expected, statement.sql[:40])
            await transaction.rollback()
            assert await db.fetchval("SHOW synchronous_commit") == "on"
