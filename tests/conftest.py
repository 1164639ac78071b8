"""Shared fixtures: one embedded PostgreSQL for the whole run, the app on it, and identities to call it with.

Every test makes its own users and organizations (random ids), so tests share the database without seeing each
other's rows.
"""

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from citechat.api.app import create_app
from citechat.auth.tokens import issue_token
from citechat.db.embedded import EmbeddedPostgres
from citechat.settings import Settings
from tests.standins.openai import OpenAIStandIn

TEST_SECRET = "test-secret-" + "x" * 60
STARTUP_TIMEOUT_S = 60  # the first start migrates a fresh database: over asgi-lifespan's 5 s on a busy machine


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A real PostgreSQL 16 with pgvector (the embedded server citechat uses by default).

    Its folder is outside pytest's temporary tree: as root, pgserver runs PostgreSQL as its own user, which must
    enter the folder, and pytest makes its tree private (and prunes old runs) at every start."""
    folder = Path(tempfile.mkdtemp(prefix="citechat-test-pg-"))
    server = EmbeddedPostgres(folder)
    url = await server.start()
    yield url
    await server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        _env_file=None,
        database_url=postgres_url,
        auth_secret=TEST_SECRET,
        data_dir=tmp_path_factory.mktemp("data"),
        cors_origins=["https://app.example.com"],
    )


def running(app: FastAPI) -> LifespanManager:
    """The app's lifespan, with room for a first start on a busy 2-core machine (it prepares the embedding model)."""
    return LifespanManager(app, startup_timeout=120, shutdown_timeout=60)


def derive(settings: Settings, **changes: object) -> Settings:
    """The given settings with some fields changed (validated, unlike ``model_copy``)."""
    return Settings(_env_file=None, **(settings.model_dump() | changes))


def answered_by(settings: Settings, standin, model: str = "standin-model", **changes: object) -> Settings:
    """The given settings with answers written by an OpenAI stand-in (``CITECHAT_LLM=openai-compatible``)."""
    return derive(
        settings,
        llm="openai-compatible",
        llm_base_url=standin.base_url,
        llm_model=model,
        llm_api_key=standin.api_key,
        **changes,
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with running(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app) as c:
        yield c


@asynccontextmanager
async def _client(app: FastAPI, **transport: object) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, **transport), base_url="http://t") as c:
        yield c


@asynccontextmanager
async def client_for(app: FastAPI, **transport: object) -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app's lifespan and yields a client for it (for tests that need their own settings or routes)."""
    async with running(app), _client(app, **transport) as c:
        yield c


@pytest.fixture(scope="module")
def standin(request: pytest.FixtureRequest) -> Iterator[OpenAIStandIn]:
    """The OpenAI stand-in, accepting the test module's ``KEY``, shared by the module's tests."""
    with OpenAIStandIn(api_key=request.module.KEY) as server:
        yield server


@pytest.fixture
def fresh_standin(standin: OpenAIStandIn) -> OpenAIStandIn:
    """``standin`` with no requests, queued answers or faults left from an earlier test (modules that use it for
    every test say ``pytestmark = pytest.mark.usefixtures("fresh_standin")``)."""
    standin.reset()
    return standin


@pytest.fixture
async def db(app: FastAPI) -> AsyncIterator[AsyncSession]:
    """A database session on the app's engine, for setting up and checking rows directly."""
    async with app.state.database.sessions() as session:
        yield session


@pytest.fixture
async def fresh_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """An empty database of its own on the test server."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_async_engine(make_url(postgres_url).set(database=name))
    yield engine
    await engine.dispose()
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE "{name}"'))
    await admin.dispose()


def token_for(user: str, orgs: list[str], secret: str = TEST_SECRET, ttl: timedelta = timedelta(hours=1)) -> str:
    return issue_token(secret, user=user, organizations=orgs, ttl=ttl)


HeadersFactory = Callable[..., dict[str, str]]


@pytest.fixture
def identity() -> HeadersFactory:
    """``identity()`` returns request headers for a brand-new user in a brand-new organization;
    ``identity(user=..., org=...)`` for given ones."""

    def make(user: str | None = None, org: str | None = None, orgs: list[str] | None = None) -> dict[str, str]:
        org = org or f"org-{uuid.uuid4().hex[:8]}"
        token = token_for(user or f"user-{uuid.uuid4().hex[:8]}", orgs or [org])
        headers = {"Authorization": f"Bearer {token}"}
        if orgs:
            headers["X-Organization-ID"] = org
        return headers

    return make


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium, headless, one per test module (the browser tests of the web page)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()
