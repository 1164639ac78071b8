"""The chat sessions API: the spec's contract, ownership, concurrency and pagination, on a real PostgreSQL."""

import asyncio
import uuid

import httpx
from sqlalchemy import event, func, select

from citechat.auth.models import User
from citechat.chat import models

API = "/api/v1/chat"
SESSION_FIELDS = {
    "id",
    "user_id",
    "organization_id",
    "title",
    "is_active",
    "is_archived",
    "temperature",
    "model_name",
    "mode",
    "created_at",
    "updated_at",
    "last_message_at",
    "message_count",
}


async def test_get_session_creates_then_resumes(client: httpx.AsyncClient, identity):
    headers = identity(user="alice", org=f"acme-{uuid.uuid4().hex[:6]}")
    first = await client.get(f"{API}/session", headers=headers)
    assert first.status_code == 200
    body = first.json()
    assert set(body) == SESSION_FIELDS
    assert body["user_id"] == "alice"
    assert body["organization_id"].startswith("acme-")
    assert body["title"] == "New Chat"
    assert body["is_active"] is True and body["is_archived"] is False
    assert body["message_count"] == 0
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")

    again = await client.get(f"{API}/session", headers=headers)
    assert again.json()["id"] == body["id"]


async def test_new_session_deactivates_previous(client: httpx.AsyncClient, identity):
    headers = identity()
    old = (await client.get(f"{API}/session", headers=headers)).json()
    new = (await client.post(f"{API}/session/new", headers=headers)).json()
    assert new["id"] != old["id"] and new["is_active"] is True
    assert (await client.get(f"{API}/session", headers=headers)).json()["id"] == new["id"]
    listed = {s["id"]: s for s in (await client.get(f"{API}/sessions", headers=headers)).json()}
    assert listed[old["id"]]["is_active"] is False
    assert listed[new["id"]]["is_active"] is True


async def test_concurrent_first_requests_make_one_session(client: httpx.AsyncClient, identity, db):
    headers = identity()
    responses = await asyncio.gather(*(client.get(f"{API}/session", headers=headers) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    count = await db.scalar(select(func.count()).where(models.ChatSession.id == uuid.UUID(ids.pop())))
    user_sessions = await db.scalar(
        select(func.count())
        .select_from(models.ChatSession)
        .join(User, User.id == models.ChatSession.user_id)
        .where(User.external_id == responses[0].json()["user_id"])
    )
    assert count == 1 and user_sessions == 1


async def test_concurrent_new_sessions_leave_exactly_one_active(client: httpx.AsyncClient, identity):
    headers = identity()
    responses = await asyncio.gather(*(client.post(f"{API}/session/new", headers=headers) for _ in range(8)))
    assert {r.status_code for r in responses} == {200}
    sessions = (await client.get(f"{API}/sessions", headers=headers)).json()
    assert len(sessions) == 8
    assert sum(s["is_active"] for s in sessions) == 1


async def test_sessions_listed_newest_first_with_counts_and_pages(client: httpx.AsyncClient, identity, db, app):
    headers = identity()
    created = [(await client.post(f"{API}/session/new", headers=headers)).json()["id"] for _ in range(5)]
    await _add_messages(db, uuid.UUID(created[0]), 3)

    listed = (await client.get(f"{API}/sessions", headers=headers)).json()
    # the session that just got messages was updated last; the rest follow newest first
    assert [s["id"] for s in listed] == [created[0], *reversed(created[1:])]
    assert listed[0]["message_count"] == 3 and listed[1]["message_count"] == 0

    page1 = (await client.get(f"{API}/sessions", params={"limit": 2}, headers=headers)).json()
    page2 = (
        await client.get(f"{API}/sessions", params={"limit": 2, "before": page1[-1]["id"]}, headers=headers)
    ).json()
    page3 = (
        await client.get(f"{API}/sessions", params={"limit": 2, "before": page2[-1]["id"]}, headers=headers)
    ).json()
    assert [s["id"] for s in page1 + page2 + page3] == [s["id"] for s in listed]


async def test_archived_sessions_hidden_unless_asked(client: httpx.AsyncClient, identity):
    headers = identity()
    active = (await client.get(f"{API}/session", headers=headers)).json()
    assert (await client.post(f"{API}/session/{active['id']}/archive", headers=headers)).status_code == 204

    visible = (await client.get(f"{API}/sessions", headers=headers)).json()
    assert active["id"] not in [s["id"] for s in visible]
    everything = (await client.get(f"{API}/sessions", params={"include_archived": "true"}, headers=headers)).json()
    archived = next(s for s in everything if s["id"] == active["id"])
    assert archived["is_archived"] is True and archived["is_active"] is False

    # archiving the active session left none active: the next GET /session makes a new one
    fresh = (await client.get(f"{API}/session", headers=headers)).json()
    assert fresh["id"] != active["id"] and fresh["is_active"] is True


async def test_sessions_found_by_what_their_title_or_messages_say(client: httpx.AsyncClient, identity, db):
    headers, stranger = identity(), identity()
    titled, said, silent, archived = [
        (await client.post(f"{API}/session/new", headers=headers)).json()["id"] for _ in range(4)
    ]
    await client.patch(f"{API}/session/{titled}", json={"title": "GLACIER questions"}, headers=headers)
    for session_id, content in ((said, "How far did the glacier retreat? 100% of it?"), (archived, "glacier again")):
        db.add(models.ChatMessage(session_id=uuid.UUID(session_id), role="user", content=content))
    await db.commit()
    assert (await client.post(f"{API}/session/{archived}/archive", headers=headers)).status_code == 204
    theirs = (await client.get(f"{API}/session", headers=stranger)).json()["id"]
    await client.patch(f"{API}/session/{theirs}", json={"title": "glacier"}, headers=stranger)

    async def found(q: str, **params) -> list[str]:
        response = await client.get(f"{API}/sessions", params={"q": q, **params}, headers=headers)
        assert response.status_code == 200, response.text
        return [s["id"] for s in response.json()]

    # The latest changed first (the rename came after the messages), in any case; never another user's.
    assert await found("Glacier") == [titled, said]
    assert await found("  glacier ") == [titled, said]
    assert await found("glacier", include_archived="true") == [archived, titled, said]
    assert await found("100%") == [said]  # % and _ are themselves, not wildcards
    assert await found("1_0") == [] and await found("moraine") == []
    assert silent not in await found("glacier", include_archived="true")
    assert await found("glacier", limit=1, before=titled) == [said]
    for bad in ("", "   ", "x" * 201, "a\x00"):
        response = await client.get(f"{API}/sessions", params={"q": bad}, headers=headers)
        assert response.status_code == 422 and response.json()["detail"], bad


async def test_delete_cascades_to_messages_and_sources(client: httpx.AsyncClient, identity, db):
    headers = identity()
    session = (await client.get(f"{API}/session", headers=headers)).json()
    message_ids = await _add_messages(db, uuid.UUID(session["id"]), 2, sources_per_message=2)

    assert (await client.delete(f"{API}/session/{session['id']}", headers=headers)).status_code == 204
    assert await db.scalar(select(func.count()).where(models.ChatMessage.id.in_(message_ids))) == 0
    assert await db.scalar(select(func.count()).where(models.ChatSource.message_id.in_(message_ids))) == 0
    assert (await client.get(f"{API}/session/{session['id']}/messages", headers=headers)).status_code == 404
    # deleting the active session leaves none active
    assert (await client.get(f"{API}/session", headers=headers)).json()["id"] != session["id"]


async def test_rename(client: httpx.AsyncClient, identity):
    headers = identity()
    session = (await client.get(f"{API}/session", headers=headers)).json()
    renamed = await client.patch(f"{API}/session/{session['id']}", json={"title": "  Q3 filings  "}, headers=headers)
    assert renamed.status_code == 200 and renamed.json()["title"] == "Q3 filings"
    for bad in ({"title": ""}, {"title": "   "}, {"title": "x" * 256}, {}):
        response = await client.patch(f"{API}/session/{session['id']}", json=bad, headers=headers)
        assert response.status_code == 422, bad
        assert "detail" in response.json()
    assert (await client.get(f"{API}/session", headers=headers)).json()["title"] == "Q3 filings"


async def test_set_default_mode(client: httpx.AsyncClient, identity):
    headers = identity()
    session = (await client.get(f"{API}/session", headers=headers)).json()
    assert (session["mode"], session["temperature"]) == ("strict", 0.1)
    updated = (await client.patch(f"{API}/session/{session['id']}", json={"mode": "creative"}, headers=headers)).json()
    assert (updated["mode"], updated["temperature"], updated["title"]) == ("creative", 0.9, "New Chat")
    bad = await client.patch(f"{API}/session/{session['id']}", json={"mode": "loud"}, headers=headers)
    assert bad.status_code == 422


async def test_messages_newest_window_in_chronological_order(client: httpx.AsyncClient, identity, db):
    headers = identity()
    session = (await client.get(f"{API}/session", headers=headers)).json()
    ids = await _add_messages(db, uuid.UUID(session["id"]), 7, sources_per_message=2)

    response = await client.get(f"{API}/session/{session['id']}/messages", params={"limit": 3}, headers=headers)
    assert response.status_code == 200
    messages = response.json()
    assert [m["id"] for m in messages] == [str(i) for i in ids[-3:]]
    assert [m["content"] for m in messages] == ["message 4", "message 5", "message 6"]
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert len(assistant["sources"]) == 2
    assert set(assistant["sources"][0]) >= {  # the spec's fields, and citation facts beside them
        "id",
        "ragie_document_id",
        "document_name",
        "page_number",
        "chunk_text",
        "relevance_score",
        "chunk_id",
        "end_page",
        "page_label",
        "rank",
        "cited",
        "support",
        "supported",
    }
    older = await client.get(
        f"{API}/session/{session['id']}/messages", params={"limit": 3, "before": messages[0]["id"]}, headers=headers
    )
    assert [m["id"] for m in older.json()] == [str(i) for i in ids[1:4]]
    stranger = await client.get(
        f"{API}/session/{session['id']}/messages", params={"before": str(uuid.uuid4())}, headers=headers
    )
    assert stranger.status_code == 404


async def test_messages_load_in_constant_queries(client: httpx.AsyncClient, identity, db, app):
    headers = identity()
    session = (await client.get(f"{API}/session", headers=headers)).json()
    url = f"{API}/session/{session['id']}/messages"

    async def queries_for(n_messages: int) -> int:
        await _add_messages(db, uuid.UUID(session["id"]), n_messages, sources_per_message=3)
        statements: list[str] = []
        engine = app.state.database.engine.sync_engine
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert (await client.get(url, params={"limit": 200}, headers=headers)).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        return len(statements)

    assert await queries_for(2) == await queries_for(40)


async def test_another_users_session_is_not_found(client: httpx.AsyncClient, identity):
    org = f"acme-{uuid.uuid4().hex[:6]}"
    alice, bob = identity(user=f"alice-{org}", org=org), identity(user=f"bob-{org}", org=org)
    session = (await client.get(f"{API}/session", headers=alice)).json()
    sid = session["id"]

    for method, path, kwargs in [
        ("GET", f"{API}/session/{sid}/messages", {}),
        ("POST", f"{API}/session/{sid}/archive", {}),
        ("DELETE", f"{API}/session/{sid}", {}),
        ("PATCH", f"{API}/session/{sid}", {"json": {"title": "mine now"}}),
        ("GET", f"{API}/sessions", {"params": {"before": sid}}),
    ]:
        response = await client.request(method, path, headers=bob, **kwargs)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "chat session not found"}
        # the same answer as for an id that exists nowhere: no hint that the session exists
        nowhere = await client.request(method, path.replace(sid, str(uuid.uuid4())), headers=bob, **kwargs)
        assert nowhere.status_code == 404 and nowhere.json() == response.json()

    assert sid not in [s["id"] for s in (await client.get(f"{API}/sessions", headers=bob)).json()]
    still_there = (await client.get(f"{API}/session", headers=alice)).json()
    assert still_there["id"] == sid and still_there["title"] == "New Chat"


async def test_other_organization_cannot_see_chats(client: httpx.AsyncClient, identity):
    """One user in two organizations: each organization has its own sessions, and a member of B sees none of A."""
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    user = f"carol-{a}"
    in_a = identity(user=user, org=a, orgs=[a, b])
    in_b = identity(user=user, org=b, orgs=[a, b])
    session_a = (await client.get(f"{API}/session", headers=in_a)).json()
    session_b = (await client.get(f"{API}/session", headers=in_b)).json()
    assert session_a["id"] != session_b["id"]
    assert session_a["organization_id"] == a and session_b["organization_id"] == b

    listed_b = (await client.get(f"{API}/sessions", params={"include_archived": True}, headers=in_b)).json()
    assert [s["id"] for s in listed_b] == [session_b["id"]]
    assert (await client.get(f"{API}/session/{session_a['id']}/messages", headers=in_b)).status_code == 404

    member_of_b_only = identity(user=f"dave-{b}", org=b)
    assert (await client.get(f"{API}/sessions", headers=member_of_b_only)).json() == []
    assert (await client.get(f"{API}/session/{session_a['id']}/messages", headers=member_of_b_only)).status_code == 404


async def test_bad_inputs_are_422_with_json(client: httpx.AsyncClient, identity):
    headers = identity()
    for path, params in [
        (f"{API}/session/not-a-uuid/messages", {}),
        (f"{API}/sessions", {"limit": 0}),
        (f"{API}/sessions", {"limit": 101}),
        (f"{API}/sessions", {"include_archived": "perhaps"}),
        (f"{API}/sessions", {"before": "yesterday"}),
    ]:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 422, (path, params)
        assert isinstance(response.json()["detail"], list)
    malformed = await client.patch(
        f"{API}/session/{uuid.uuid4()}", content=b"{not json", headers=headers | {"content-type": "application/json"}
    )
    assert malformed.status_code == 422


async def _add_messages(db, session_id: uuid.UUID, n: int, sources_per_message: int = 0) -> list[uuid.UUID]:
    """Messages as the chat pipeline will store them (there is no send endpoint yet), alternating roles."""
    ids = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        message = models.ChatMessage(session_id=session_id, role=role, content=f"message {i}")
        db.add(message)
        await db.flush()
        if role == "assistant":
            for rank in range(sources_per_message):
                db.add(
                    models.ChatSource(
                        message_id=message.id,
                        ragie_document_id=f"doc-{rank}",
                        document_name=f"report-{rank}.pdf",
                        page_number=rank + 1,
                        chunk_text=f"passage {rank}",
                        relevance_score=1.0 - rank / 10,
                    )
                )
        ids.append(message.id)
    session = await db.get(models.ChatSession, session_id)
    session.last_message_at = func.now()
    await db.commit()
    return ids
