"""Against real ``citechat serve`` processes sharing the test database: two workers hold the quotas exactly and
serve any answer's stream; a killed process's answer is marked at the next start and can be retried."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import samples
from tests.conftest import TEST_SECRET, token_for
from tests.live import Server, clean_env
from tests.standins.openai import OpenAIStandIn
from tests.test_chat_messages import parse_sse
from tests.test_documents import ingest

API = "/api/v1/chat"
KEY = "standin-key-0123456789"
ANSWER = " ".join(f"word{i}" for i in range(1, 41)) + "."


@pytest.fixture(scope="module")
def model_server() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key=KEY, models=("standin-model",), answers=lambda body: ANSWER) as server:
        yield server


def env_for(settings, model_server: OpenAIStandIn, **extra: str) -> dict[str, str]:
    return clean_env(
        CITECHAT_DATABASE_URL=settings.database_url.get_secret_value(),
        CITECHAT_AUTH_SECRET=TEST_SECRET,
        CITECHAT_DATA_DIR=str(settings.data_dir),  # shares the prepared embedding model
        CITECHAT_LLM="openai-compatible",
        CITECHAT_LLM_BASE_URL=model_server.base_url,
        CITECHAT_LLM_MODEL="standin-model",
        CITECHAT_LLM_API_KEY=KEY,
        **extra,
    )


def headers_of_new_user() -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(f'user-{uuid.uuid4().hex[:8]}', [f'org-{uuid.uuid4().hex[:8]}'])}"}


@pytest.fixture(scope="module")
def two_workers(settings, model_server, tmp_path_factory) -> Iterator[Server]:
    server = Server(env_for(settings, model_server), tmp_path_factory.mktemp("workers"), workers=2)
    yield server
    assert server.stop() == 0


async def test_sixty_messages_at_once_give_exactly_fifty_across_two_workers(two_workers, model_server):
    model_server.reset()
    headers = headers_of_new_user()
    async with httpx.AsyncClient(base_url=two_workers.url, headers=headers, timeout=120) as client:
        sessions = [(await client.post(f"{API}/session/new")).json()["id"] for _ in range(60)]
        sent = await asyncio.gather(
            *(client.post(f"{API}/message", params={"session_id": s}, json={"question": "hi?"}) for s in sessions)
        )
        codes = sorted(response.status_code for response in sent)
        assert codes == [200] * 50 + [429] * 10, [r.text for r in sent if r.status_code not in (200, 429)]
        assert {r.json()["limit"] for r in sent if r.status_code == 429} == {"user"}
        quotas = (await client.get(f"{API}/limits")).json()
        assert quotas["user"]["remaining"] == 0 and quotas["organization"]["remaining"] == 950
        stored = [len((await client.get(f"{API}/session/{s}/messages")).json()) for s in sessions]
        assert sorted(stored) == [0] * 10 + [2] * 50  # refused messages were never stored


async def test_any_worker_streams_any_answer(two_workers, model_server):
    """Followers land on either worker (the kernel spreads connections); each gets the whole answer."""
    model_server.reset()
    model_server.stream_delay_s = 0.03  # ~1.2 s of writing
    headers = headers_of_new_user()
    async with httpx.AsyncClient(base_url=two_workers.url, headers=headers, timeout=60) as client:
        await ingest(client, headers, samples.pdf(samples.TOPICS), "notes.pdf")
        session = (await client.get(f"{API}/session")).json()
        async with client.stream(
            "POST", f"{API}/message/stream", params={"session_id": session["id"]}, json={"question": "glacier?"}
        ) as response:
            first = await anext(response.aiter_text())
            message_id = parse_sse(first.split("\n\n")[0])[0][2]["assistant_message_id"]
            followers = await asyncio.gather(
                *(
                    client.get(f"{API}/message/{message_id}/stream", headers={"Last-Event-ID": str(seen)})
                    for seen in (0, 0, 5, 5, 12, 12)
                )
            )
        for seen, follower in zip((0, 0, 5, 5, 12, 12), followers, strict=True):
            events = parse_sse(follower.text)
            assert events[0][1] == "sources" and events[-1][1] == "done", events[-1]
            streamed = "".join(data["delta"] for _, name, data in events if name == "token")
            assert ANSWER[seen:].startswith(streamed) and events[-1][2]["content"] == ANSWER
    model_server.stream_delay_s = 0


async def test_a_killed_process_leaves_no_answer_streaming(settings, model_server, tmp_path: Path):
    model_server.reset()
    model_server.stream_delay_s = 0.2  # 8 s of writing: the kill comes first
    env, headers = env_for(settings, model_server), headers_of_new_user()
    server = Server(env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
            await ingest(client, headers, samples.pdf(samples.TOPICS), "notes.pdf")
            session = (await client.get(f"{API}/session")).json()
            async with client.stream(
                "POST", f"{API}/message/stream", params={"session_id": session["id"]}, json={"question": "glacier?"}
            ) as response:
                seen = ""
                async for chunk in response.aiter_text():
                    seen += chunk
                    if "event: token" in seen and seen.count("event: token") >= 3:
                        break
                message_id = json.loads(seen.split("data: ", 1)[1].split("\n", 1)[0])["assistant_message_id"]
                await asyncio.sleep(0.6)  # a flush or two
                server.kill()
    finally:
        if server.process.poll() is None:
            server.kill()

    model_server.stream_delay_s = 0
    restarted = Server(env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=restarted.url, headers=headers, timeout=60) as client:
            messages = (await client.get(f"{API}/session/{session['id']}/messages")).json()
            assistant = messages[-1]
            assert assistant["id"] == message_id and assistant["status"] == "failed"
            assert assistant["error_message"].startswith("interrupted") and ANSWER.startswith(assistant["content"])
            assert assistant["content"].startswith("word1 word2")  # the text saved before the kill
            retried = await client.post(f"{API}/message/{message_id}/retry")
            assert retried.status_code == 200 and retried.json()["content"] == ANSWER
    finally:
        assert restarted.stop() == 0
