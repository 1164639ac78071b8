"""The SLO report on known answers in a database of its own (figures computed by hand), through the admin route and
the ``citechat slo`` command; ``citechat token --admin``."""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from citechat.auth.models import Organization, User
from citechat.auth.tokens import issue_token
from citechat.chat.models import ChatMessage, ChatSession
from citechat.db.migrations import upgrade_to_head
from citechat.pipeline.pricing import DEFAULT_PRICES
from citechat.telemetry.slo import slo_report
from citechat.telemetry.targets import Targets
from tests.conftest import TEST_SECRET

NOW = datetime.now(UTC)

# (status, end to end, retrieval, condense, ttft, generation, model, prompt tokens, completion tokens)
ANSWERS = [
    ("completed", 1000, 100, None, 500, 1000, "gpt-4o", 1000, 200),
    ("completed", 2000, 200, 200, 600, 1000, "gpt-4o-2024-08-06", 1000, 200),  # priced as gpt-4o
    ("completed", 3000, 300, None, 700, 2000, "gpt-4o-mini", 2000, 500),
    ("completed", 4000, 400, 600, 800, 3000, "extractive", 0, 50),
    ("completed", 10000, 500, None, 900, 9000, "extractive", 0, 50),
    ("failed", None, None, None, None, None, "gpt-4o", None, None),
]
# By hand, percentile_cont(p) over n sorted values: v[floor(h)] + (h - floor(h)) * (v[floor(h)+1] - v[floor(h)]),
# h = p * (n - 1). End to end, n = 5: p95 h = 3.8 -> 4000 + 0.8 * 6000 = 8800; p99 h = 3.96 -> 9760.
EXPECTED_MS = {  # p50, p95, p99
    "end_to_end": (3000, 8800, 9760),
    "retrieval": (300, 480, 496),
    "condense": (400, 580, 596),  # two follow-ups: h = 0.95 -> 200 + 0.95 * 400
    "ttft": (700, 880, 896),
    "generation": (2000, 7800, 8760),
}
# gpt-4o 2 x (1000 x 2.50 + 200 x 10.00) / 1e6 = 0.009; gpt-4o-mini (2000 x 0.15 + 500 x 0.60) / 1e6 = 0.0006
COST_PER_MESSAGE = (0.009 + 0.0006) / 5


def _message(session_id: uuid.UUID, answer: tuple, created_at: datetime) -> ChatMessage:
    status, total, retrieval, condense, ttft, generation, model, prompt, completion = answer
    timings = {"retrieval_ms": retrieval, "ttft_ms": ttft, "generation_ms": generation}
    if condense is not None:
        timings["condense_ms"] = condense
    return ChatMessage(
        session_id=session_id,
        role="assistant",
        content="",
        status=status,
        processing_time_ms=total,
        model_used=model,
        tokens_prompt=prompt,
        tokens_completion=completion,
        message_metadata={"timings": timings} if status == "completed" else {"mode": "strict"},
        created_at=created_at,
    )


@pytest.fixture
async def answers_db(fresh_engine) -> str:
    """A database of its own holding ``ANSWERS`` an hour old, and rows the report must leave out; its URL."""
    await upgrade_to_head(fresh_engine)
    async with AsyncSession(fresh_engine) as db:
        org, user = Organization(external_id="slo-org"), User(external_id="slo-user")
        db.add_all([org, user])
        await db.flush()
        session = ChatSession(user_id=user.id, organization_id=org.id, title="t")
        db.add(session)
        await db.flush()
        hour_ago = NOW - timedelta(hours=1)
        db.add_all([_message(session.id, answer, hour_ago) for answer in ANSWERS])
        old = _message(session.id, ("completed", 90000, 9000, 9000, 9000, 9000, "gpt-4o", 10**6, 10**6), NOW)
        old.created_at = NOW - timedelta(days=3)  # outside the window
        pending = _message(session.id, ("completed", 1, 1, 1, 1, 1, "gpt-4o", 1, 1), hour_ago)
        pending.status = "streaming"  # not ended yet
        question = ChatMessage(session_id=session.id, role="user", content="q", status="completed", created_at=hour_ago)
        db.add_all([old, pending, question])
        await db.commit()
    return fresh_engine.url.render_as_string(hide_password=False)


async def test_report_figures_on_known_answers(answers_db, fresh_engine):
    async with AsyncSession(fresh_engine) as db:
        report = await slo_report(db, timedelta(hours=24), Targets(), DEFAULT_PRICES, until=NOW)
    assert (report.answers, report.failed) == (6, 1)
    assert report.until - report.since == timedelta(hours=24)
    for name, (p50, p95, p99) in EXPECTED_MS.items():
        figure = report.latency[name]
        assert (figure.p50_ms, figure.p95_ms, figure.p99_ms) == pytest.approx((p50, p95, p99)), name
    assert report.latency["condense"].answers == 2 and report.latency["end_to_end"].answers == 5
    statuses = {name: figure.status for name, figure in report.latency.items()}
    assert statuses == {
        "end_to_end": "FAIL",  # 8800 >= 5000
        "retrieval": "PASS",  # 480 < 500
        "condense": "PASS",
        "ttft": "PASS",
        "generation": "FAIL",  # 7800 >= 4000
    }
    assert report.error_rate.value == pytest.approx(1 / 6) and report.error_rate.status == "FAIL"
    assert report.cost_per_message_usd.value == pytest.approx(COST_PER_MESSAGE)
    assert report.cost_per_message_usd.status == "PASS"
    tokens = report.tokens_per_message
    assert (tokens.prompt, tokens.completion, tokens.total) == pytest.approx((800, 200, 1000))
    assert report.passed is False

    async with AsyncSession(fresh_engine) as db:
        empty = await slo_report(db, timedelta(minutes=5), Targets(), DEFAULT_PRICES, until=NOW)
    assert empty.answers == 0 and empty.error_rate.status == "NO DATA" and empty.passed is True
    assert all(f.status == "NO DATA" and f.p95_ms is None for f in empty.latency.values())


def _admin(orgs: list[str] | None = None) -> dict[str, str]:
    token = issue_token(
        TEST_SECRET, user="operator", organizations=orgs or ["ops"], ttl=timedelta(hours=1), roles=["admin"]
    )
    return {"Authorization": f"Bearer {token}"}


async def test_admin_route(client, identity):
    response = await client.get("/api/v1/admin/slo", headers=identity())
    assert response.status_code == 403 and response.json() == {"detail": "this needs a token with the admin role"}
    assert (await client.get("/api/v1/admin/slo")).status_code == 401
    for bad in ("yesterday", "0h", "400d", "-5m", "99999999999999999999d", "99999999999999999999"):
        response = await client.get("/api/v1/admin/slo", params={"since": bad}, headers=_admin())
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["query", "since"]

    report = (await client.get("/api/v1/admin/slo", params={"since": "90m"}, headers=_admin())).json()
    assert set(report["latency"]) == {"end_to_end", "retrieval", "condense", "ttft", "generation"}
    assert report["latency"]["retrieval"]["target_p95_ms"] == 500
    assert report["error_rate"]["target"] == 0.05 and report["cost_per_message_usd"]["target"] == 0.05
    since, until = (datetime.fromisoformat(report[k]) for k in ("since", "until"))
    assert until - since == timedelta(minutes=90)
    default = (await client.get("/api/v1/admin/slo", headers=_admin())).json()
    assert datetime.fromisoformat(default["until"]) - datetime.fromisoformat(default["since"]) == timedelta(hours=24)


def _cli(*args: str, database_url: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITECHAT_", "OTEL_"))}
    env |= {
        "CITECHAT_DATABASE_URL": database_url,
        "CITECHAT_AUTH_SECRET": TEST_SECRET,
        "CITECHAT_DATA_DIR": str(tmp_path),
    }
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "citechat", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_slo_command(answers_db, tmp_path):
    result = _cli("slo", "--since", "24h", database_url=answers_db, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert lines["end_to_end"] == ["end_to_end", "5", "3000", "8800", "9760", "5000", "FAIL"]
    assert lines["retrieval"] == ["retrieval", "5", "300", "480", "496", "500", "PASS"]
    assert lines["condense"][:2] == ["condense", "2"]
    assert "16.67%" in result.stdout and "$0.0019" in result.stdout and "overall: FAIL" in result.stdout

    as_json = json.loads(_cli("slo", "--json", database_url=answers_db, tmp_path=tmp_path).stdout)
    assert as_json["latency"]["generation"]["p95_ms"] == pytest.approx(7800) and as_json["answers"] == 6
    bad = _cli("slo", "--since", "soon", database_url=answers_db, tmp_path=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_admin_tokens(answers_db, tmp_path):
    for flags, roles in ((["--admin"], ["admin"]), ([], None)):
        result = _cli("token", "--user", "op", "--org", "ops", *flags, database_url=answers_db, tmp_path=tmp_path)
        claims = jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"])
        assert claims.get("roles") == roles
