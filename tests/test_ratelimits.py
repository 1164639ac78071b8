"""Message quotas: exact under concurrency, named when spent, surviving a restart, on PostgreSQL and on Redis."""

import asyncio
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from citechat.api.app import create_app
from citechat.auth.service import Principal
from citechat.db.statements import Runner
from citechat.ratelimits.service import RateLimited, RateLimits
from citechat.ratelimits.storage import LimitsQuotaStore, PostgresQuotaStore
from tests.conftest import client_for, derive

API = "/api/v1/chat"


def principal() -> Principal:
    return Principal(uuid.uuid4(), uuid.uuid4(), "someone", "some-org")


async def consume_all(limits: RateLimits, who: Principal, n: int) -> tuple[int, int]:
    async def one() -> bool:
        try:
            await limits.consume(who)
        except RateLimited:
            return False
        return True

    accepted = sum(await asyncio.gather(*(one() for _ in range(n))))
    return accepted, n - accepted


async def test_postgres_window_is_exact_under_concurrency(app):
    quotas = {"per_user_per_hour": 50, "per_org_per_day": 1000}
    limits = RateLimits(PostgresQuotaStore(Runner(app.state.database.pool), **quotas))
    who = principal()
    assert await consume_all(limits, who, 60) == (50, 10)
    user, organization = await limits.status(who)
    assert (user.remaining, organization.remaining) == (0, 950)


async def test_organization_quota_spent_does_not_spend_the_users(app):
    quotas = {"per_user_per_hour": 5, "per_org_per_day": 3}
    limits = RateLimits(PostgresQuotaStore(Runner(app.state.database.pool), **quotas))
    alice = principal()
    bob = Principal(uuid.uuid4(), alice.organization_id, "bob", alice.organization)
    assert await consume_all(limits, alice, 3) == (3, 0)
    with pytest.raises(RateLimited) as refused:
        await limits.consume(bob)
    assert refused.value.quota.scope == "organization" and refused.value.quota.remaining == 0
    user, _ = await limits.status(bob)
    assert user.remaining == 5  # bob's own quota is untouched


async def test_hits_leave_the_window_and_its_kept_count(app):
    """A hit older than its window no longer counts: read as it is, and once the next hit deletes it (the function
    keeps each key's count beside its hits, so it reads one row however many hits a window holds)."""
    quotas = {"per_user_per_hour": 4, "per_org_per_day": 100}
    limits = RateLimits(PostgresQuotaStore(Runner(app.state.database.pool), **quotas))
    who = principal()
    assert await consume_all(limits, who, 4) == (4, 0)
    async with app.state.database.pool.acquire() as db:  # two of the user's hits are now two hours old
        await db.execute(
            "UPDATE chat_rate_limits SET hit_at = hit_at - interval '2 hours' WHERE id IN"
            " (SELECT id FROM chat_rate_limits WHERE key = $1 ORDER BY hit_at LIMIT 2)",
            f"user/{who.user_id}",
        )
    user, organization = await limits.status(who)  # read: the aged hits are out of the hour, still stored
    assert (user.remaining, organization.remaining) == (2, 96)
    assert (await limits.consume(who)).remaining == 1  # counted: they are deleted, and taken off the count
    async with app.state.database.pool.acquire() as db:
        kept = await db.fetchval("SELECT hits FROM chat_rate_limit_counts WHERE key = $1", f"user/{who.user_id}")
        stored = await db.fetchval("SELECT count(*) FROM chat_rate_limits WHERE key = $1", f"user/{who.user_id}")
    assert kept == stored == 3
    assert await consume_all(limits, who, 3) == (1, 2)


@pytest.fixture
async def limited(settings, identity):
    """The API with a quota of 3 messages per user per hour and 5 per organization per day."""
    application = create_app(derive(settings, ratelimit_user_per_hour=3, ratelimit_org_per_day=5))
    async with client_for(application) as c:
        yield application, c


async def session_of(client, headers) -> str:
    return (await client.post(f"{API}/session/new", headers=headers)).json()["id"]


async def test_messages_carry_quota_headers_and_the_fourth_is_refused(limited, identity):
    _, client = limited
    headers = identity()
    remaining = []
    for _ in range(3):
        sent = await client.post(
            f"{API}/message",
            params={"session_id": await session_of(client, headers)},
            json={"question": "hi?"},
            headers=headers,
        )
        assert sent.status_code == 200, sent.text
        assert sent.headers["X-RateLimit-Limit"] == "3" and int(sent.headers["X-RateLimit-Reset"]) > 0
        remaining.append(int(sent.headers["X-RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]

    session_id = await session_of(client, headers)
    refused = await client.post(
        f"{API}/message/stream", params={"session_id": session_id}, json={"question": "one more?"}, headers=headers
    )
    assert refused.status_code == 429
    body = refused.json()
    assert body["limit"] == "user" and "3 messages per hour" in body["detail"] and body["reset_at"]
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600 and body["retry_after"] == int(
        refused.headers["Retry-After"]
    )
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    messages = (await client.get(f"{API}/session/{session_id}/messages", headers=headers)).json()
    assert messages == []  # a refused message is not stored

    quotas = (await client.get(f"{API}/limits", headers=headers)).json()
    assert quotas["user"] | {"reset_at": None} == {
        "limit": 3,
        "remaining": 0,
        "window": "rolling hour",
        "reset_at": None,
    }
    assert (quotas["organization"]["limit"], quotas["organization"]["remaining"]) == (5, 2)


async def test_a_refused_question_costs_no_quota(limited, identity):
    """The session is checked in the statement that counts the question, and counting waits for the check."""
    _, client = limited
    headers, stranger = identity(), identity()
    archived = await session_of(client, headers)
    assert (await client.post(f"{API}/session/{archived}/archive", headers=headers)).status_code == 204
    refusals = [
        (archived, headers, 409),
        (await session_of(client, stranger), headers, 404),  # someone else's
        (str(uuid.uuid4()), headers, 404),
    ]
    for session_id, who, status in refusals * 2:
        refused = await client.post(
            f"{API}/message", params={"session_id": session_id}, json={"question": "hi?"}, headers=who
        )
        assert refused.status_code == status, refused.text
    quotas = (await client.get(f"{API}/limits", headers=headers)).json()
    assert quotas["user"]["remaining"] == 3
    sent = await client.post(
        f"{API}/message",
        params={"session_id": await session_of(client, headers)},
        json={"question": "hi?"},
        headers=headers,
    )
    assert sent.status_code == 200 and sent.headers["X-RateLimit-Remaining"] == "2"


async def test_organization_limit_is_named(limited, identity):
    _, client = limited
    org = f"org-{uuid.uuid4().hex[:8]}"
    first, second = identity(org=org), identity(org=org)
    for headers in (first, first, first, second, second):
        sent = await client.post(
            f"{API}/message",
            params={"session_id": await session_of(client, headers)},
            json={"question": "hi?"},
            headers=headers,
        )
        assert sent.status_code == 200
    refused = await client.post(
        f"{API}/message",
        params={"session_id": await session_of(client, second)},
        json={"question": "hi?"},
        headers=second,
    )
    assert refused.status_code == 429 and refused.json()["limit"] == "organization"
    assert "organization" in refused.json()["detail"] and "per day" in refused.json()["detail"]


async def test_limits_survive_a_restart(settings, identity):
    headers = identity()
    limited_settings = derive(settings, ratelimit_user_per_hour=1)
    async with client_for(create_app(limited_settings)) as client:
        session_id = await session_of(client, headers)
        sent = await client.post(
            f"{API}/message", params={"session_id": session_id}, json={"question": "a?"}, headers=headers
        )
        assert sent.status_code == 200
    async with client_for(create_app(limited_settings)) as client:  # a new process on the same database
        session_id = await session_of(client, headers)
        again = await client.post(
            f"{API}/message", params={"session_id": session_id}, json={"question": "b?"}, headers=headers
        )
        assert again.status_code == 429


async def test_limits_need_a_token(client):
    assert (await client.get(f"{API}/limits")).status_code == 401


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    """A real Redis server (Debian's redis-server; ``.ci/run`` installs it when missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder: Path = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(  # noqa: S603
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        subprocess.run(["sleep", "0.05"], check=True)  # noqa: S607
    yield f"async+redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


async def test_redis_storage_is_exact_and_serves_the_api(settings, identity, redis_url):
    from limits.storage import storage_from_string

    quotas = {"per_user_per_hour": 50, "per_org_per_day": 1000}
    limits = RateLimits(LimitsQuotaStore(storage_from_string(redis_url), **quotas))
    assert await consume_all(limits, principal(), 60) == (50, 10)

    headers = identity()
    async with client_for(
        create_app(derive(settings, ratelimit_storage=redis_url, ratelimit_user_per_hour=1))
    ) as client:
        ok = await client.post(
            f"{API}/message",
            params={"session_id": await session_of(client, headers)},
            json={"question": "a?"},
            headers=headers,
        )
        refused = await client.post(
            f"{API}/message",
            params={"session_id": await session_of(client, headers)},
            json={"question": "b?"},
            headers=headers,
        )
    assert (ok.status_code, refused.status_code) == (200, 429)


def test_storage_setting_must_be_an_async_limits_uri(settings):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ratelimit_storage"):
        derive(settings, ratelimit_storage="redis://localhost:6379")
