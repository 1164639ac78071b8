"""Development tokens exist only in local embedded mode (bound to loopback, no operator secret or JWKS), answer only
requests from this machine, and are what the page signs in with on a fresh ``citechat serve``."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from playwright.sync_api import expect, sync_playwright

from citechat.api.app import create_app
from citechat.auth.tokens import auth_secret
from citechat.settings import Settings
from tests.browser import ARTIFACTS, citechat_serve, launch

URL = "/api/v1/auth/dev-token"


def local(data_dir: Path, **changes: object) -> Settings:
    """What ``citechat serve`` runs with on its defaults: embedded database, generated secret, 127.0.0.1."""
    base = {"database_url": None, "auth_secret": None, "auth_jwks_url": None, "serve_host": "127.0.0.1"}
    return Settings(_env_file=None, data_dir=data_dir, **(base | changes))


def client(settings: Settings, *, peer: str = "127.0.0.1", host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    """The app's routes without its lifespan: the dev-token route needs no database, so none is started."""
    transport = httpx.ASGITransport(app=create_app(settings), client=(peer, 50000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


async def test_local_embedded_mode_gives_tokens_signed_like_citechat_token(tmp_path):
    settings = local(tmp_path)
    async with client(settings) as c:
        assert (await c.get(URL)).json() == {"available": True}
        response = await c.post(URL, json={"user": " alice ", "org": "acme"})
    assert response.status_code == 200, response.text
    body = response.json()
    claims = jwt.decode(body["token"], auth_secret(settings), algorithms=["HS256"])
    assert (claims["sub"], claims["orgs"]) == ("alice", ["acme"]) and (body["user"], body["org"]) == ("alice", "acme")
    expires = datetime.fromtimestamp(claims["exp"], UTC)
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)


@pytest.mark.parametrize(
    "changes",
    [
        {"serve_host": None},  # not started by `citechat serve` (e.g. uvicorn on its own): bind address unknown
        {"serve_host": "0.0.0.0"},  # noqa: S104 (what is being refused)
        {"serve_host": "192.168.1.20"},
        {"auth_secret": "operator-secret-" + "x" * 40},
        {"auth_jwks_url": "https://idp.example.com/.well-known/jwks.json"},
        {"database_url": "postgresql+asyncpg://u:p@db.example.com/citechat", "auth_secret": "s" * 48},
    ],
    ids=["unknown-host", "all-interfaces", "lan-address", "operator-secret", "jwks", "external-database"],
)
async def test_absent_in_every_other_configuration(tmp_path, changes):
    async with client(local(tmp_path, **changes)) as c:
        assert (await c.get(URL)).status_code == 404
        refused = await c.post(URL, json={"user": "alice", "org": "acme"})
    assert refused.status_code == 404 and refused.json() == {"detail": "Not Found"}
    assert not (tmp_path / "auth-secret").exists()  # nothing was signed, no secret was made


@pytest.mark.parametrize(
    ("peer", "host"),
    [("10.0.0.7", "127.0.0.1:8000"), ("127.0.0.1", "rebound.example.com:8000")],
    ids=["remote-client", "dns-rebinding"],
)
async def test_only_requests_from_this_machine(tmp_path, peer, host):
    async with client(local(tmp_path), peer=peer, host=host) as c:
        response = await c.post(URL, json={"user": "alice", "org": "acme"})
    assert response.status_code == 403
    assert response.json() == {"detail": "development tokens are only given to requests from this machine"}


async def test_bad_requests_are_422(tmp_path):
    async with client(local(tmp_path)) as c:
        for body in ({}, {"user": "", "org": "acme"}, {"user": "a", "org": "x" * 256}, {"user": "a", "org": "o\x00"}):
            response = await c.post(URL, json=body)
            assert response.status_code == 422 and isinstance(response.json()["detail"], list), body


def test_serve_tells_the_app_where_it_listens(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from citechat.cli import app

    monkeypatch.setenv("CITECHAT_SERVE_HOST", "placeholder")  # restored after the test
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "8123"])  # noqa: S104
    assert result.exit_code == 0, result.output
    assert seen["host"] == "0.0.0.0" and os.environ["CITECHAT_SERVE_HOST"] == "0.0.0.0"  # noqa: S104
    assert Settings(_env_file=None).serve_host == "0.0.0.0"  # noqa: S104


@pytest.fixture
def served(tmp_path) -> Iterator[str]:
    with citechat_serve(tmp_path / "data") as url:
        yield url


def test_the_page_signs_in_with_a_development_token_on_citechat_serve(served):
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.goto(served)
        expect(page.get_by_role("heading", name="Local sign-in")).to_be_visible(timeout=20_000)
        page.locator("#dev-user").fill("dana")
        page.locator("#dev-org").fill("field-team")
        page.get_by_role("button", name="Continue").click()
        expect(page.locator("#who-name")).to_have_text("dana", timeout=20_000)
        expect(page.locator("#who-org")).to_have_text("field-team")
        expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "00-local-sign-in-done.png"))
        browser.close()
