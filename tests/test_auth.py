"""Bearer-token authentication and tenancy: every failure mode, JWKS keys served over real HTTP, JIT provisioning."""

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select

from citechat.api.app import create_app
from citechat.auth.models import Membership, Organization, User
from citechat.auth.tokens import auth_secret, parse_ttl
from citechat.settings import Settings
from tests.conftest import TEST_SECRET, client_for, derive, token_for

SESSION = "/api/v1/chat/session"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _payload(**overrides) -> dict:
    now = datetime.now(UTC)
    payload = {
        "sub": f"u-{uuid.uuid4().hex[:8]}",
        "orgs": [f"o-{uuid.uuid4().hex[:8]}"],
        "exp": now + timedelta(hours=1),
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def _unsigned(payload: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj, default=str).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("missing", {}),
        ("not bearer", {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
        ("malformed", _bearer("not.a.jwt")),
        ("garbage", _bearer("x" * 40)),
        ("expired", _bearer(jwt.encode(_payload(exp=datetime.now(UTC) - timedelta(seconds=5)), TEST_SECRET))),
        ("wrong secret", _bearer(jwt.encode(_payload(), "another-secret-" + "y" * 40))),
        ("alg none", _bearer(_unsigned(_payload()))),
        ("HS512", _bearer(jwt.encode(_payload(), TEST_SECRET, algorithm="HS512"))),
        ("no exp", _bearer(jwt.encode(_payload(exp=None), TEST_SECRET))),
        ("no sub", _bearer(jwt.encode(_payload(sub=None), TEST_SECRET))),
        ("empty sub", _bearer(jwt.encode(_payload(sub=""), TEST_SECRET))),
        ("all-space sub", _bearer(jwt.encode(_payload(sub="   "), TEST_SECRET))),  # no CLI or form could name it
        ("orgs not a list", _bearer(jwt.encode(_payload(orgs="acme"), TEST_SECRET))),
        ("an all-space org", _bearer(jwt.encode(_payload(orgs=["acme", " "]), TEST_SECRET))),
        ("an org too long", _bearer(jwt.encode(_payload(orgs=["o" * 256]), TEST_SECRET))),
        ("NUL in an org", _bearer(jwt.encode(_payload(orgs=["o\x00"]), TEST_SECRET))),
        ("NUL in sub", _bearer(jwt.encode(_payload(sub="u\x00"), TEST_SECRET))),  # PostgreSQL cannot store it
        ("NUL in a name", _bearer(jwt.encode(_payload(name="Ada\x00"), TEST_SECRET))),
        (
            "RS256 without JWKS configured",
            _bearer(jwt.encode(_payload(), rsa.generate_private_key(65537, 2048), "RS256")),
        ),
    ],
)
async def test_bad_tokens_are_401_with_challenge(client: httpx.AsyncClient, case: str, headers: dict):
    response = await client.get(SESSION, headers=headers)
    assert response.status_code == 401, case
    assert response.headers["www-authenticate"].startswith("Bearer")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert TEST_SECRET not in response.text


async def test_missing_token_challenge_has_no_error_code(client: httpx.AsyncClient):
    response = await client.get(SESSION)
    assert response.headers["www-authenticate"] == "Bearer"
    expired = jwt.encode(_payload(exp=datetime.now(UTC) - timedelta(seconds=5)), TEST_SECRET)
    response = await client.get(SESSION, headers=_bearer(expired))
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["detail"] == "token has expired"


async def test_organization_header_must_be_one_of_the_tokens(client: httpx.AsyncClient):
    token = token_for("erin", ["acme", "beta"])
    assert (await client.get(SESSION, headers=_bearer(token) | {"X-Organization-ID": "acme"})).status_code == 200
    outsider = await client.get(SESSION, headers=_bearer(token) | {"X-Organization-ID": "gamma"})
    assert outsider.status_code == 403
    assert outsider.json() == {"detail": "you are not a member of that organization"}
    ambiguous = await client.get(SESSION, headers=_bearer(token))
    assert ambiguous.status_code == 403 and "X-Organization-ID" in ambiguous.json()["detail"]
    no_orgs = await client.get(SESSION, headers=_bearer(token_for("frank", [])))
    assert no_orgs.status_code == 403


async def test_single_org_token_needs_no_header(client: httpx.AsyncClient):
    org = f"solo-{uuid.uuid4().hex[:6]}"
    response = await client.get(SESSION, headers=_bearer(token_for("gina", [org])))
    assert response.status_code == 200 and response.json()["organization_id"] == org


async def test_users_and_organizations_created_on_first_sight(client: httpx.AsyncClient, db):
    user, org = f"hana-{uuid.uuid4().hex[:6]}", f"newco-{uuid.uuid4().hex[:6]}"
    token = jwt.encode(_payload(sub=user, orgs=[org], name="Hana", email="hana@example.com"), TEST_SECRET)
    assert (await client.get(SESSION, headers=_bearer(token))).status_code == 200
    assert (await client.get(SESSION, headers=_bearer(token))).status_code == 200

    row = (await db.execute(select(User).where(User.external_id == user))).scalar_one()
    assert (row.name, row.email) == ("Hana", "hana@example.com")
    org_row = (await db.execute(select(Organization).where(Organization.external_id == org))).scalar_one()
    memberships = await db.scalar(
        select(func.count()).where(Membership.user_id == row.id, Membership.organization_id == org_row.id)
    )
    assert memberships == 1


async def test_concurrent_first_sight_provisions_once(client: httpx.AsyncClient, db):
    import asyncio

    user, org = f"ivan-{uuid.uuid4().hex[:6]}", f"race-{uuid.uuid4().hex[:6]}"
    token = token_for(user, [org])
    responses = await asyncio.gather(*(client.get("/api/v1/chat/sessions", headers=_bearer(token)) for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert await db.scalar(select(func.count()).where(User.external_id == user)) == 1
    assert await db.scalar(select(func.count()).where(Organization.external_id == org)) == 1


class _JwksServer:
    """A real HTTP server on loopback that serves a JWKS document, like an identity provider does."""

    def __init__(self, keys: list[dict]) -> None:
        self.keys = keys
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_JwksServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _jwk(private_key, kid: str, alg: str) -> dict:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private_key.public_key()))
    return jwk | {"kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def signing_keys() -> dict:
    return {"rsa": rsa.generate_private_key(65537, 2048), "ec": ec.generate_private_key(ec.SECP256R1())}


@pytest.fixture
def jwks_server(signing_keys) -> Iterator[_JwksServer]:
    keys = [_jwk(signing_keys["rsa"], "rsa-1", "RS256"), _jwk(signing_keys["ec"], "ec-1", "ES256")]
    with _JwksServer(keys) as server:
        yield server


@pytest.fixture
async def jwks_client(settings: Settings, jwks_server: _JwksServer):
    jwks_settings = derive(
        settings, **{"auth_secret": None, "auth_jwks_url": jwks_server.url, "auth_audience": "citechat"}
    )
    application = create_app(jwks_settings)
    async with client_for(application) as c:
        yield c


@pytest.mark.parametrize(("key", "kid", "alg"), [("rsa", "rsa-1", "RS256"), ("ec", "ec-1", "ES256")])
async def test_jwks_signed_tokens_are_accepted(jwks_client, signing_keys, jwks_server, key, kid, alg):
    token = jwt.encode(_payload(aud="citechat"), signing_keys[key], algorithm=alg, headers={"kid": kid})
    response = await jwks_client.get(SESSION, headers=_bearer(token))
    assert response.status_code == 200, response.text
    assert jwks_server.requests == 1
    assert (await jwks_client.get(SESSION, headers=_bearer(token))).status_code == 200
    assert jwks_server.requests == 1  # keys are cached


async def test_jwks_rejections(jwks_client, signing_keys):
    other_rsa = rsa.generate_private_key(65537, 2048)
    cases = {
        "unknown kid": jwt.encode(_payload(aud="citechat"), other_rsa, "RS256", headers={"kid": "rotated-away"}),
        "known kid, wrong key": jwt.encode(_payload(aud="citechat"), other_rsa, "RS256", headers={"kid": "rsa-1"}),
        "wrong audience": jwt.encode(_payload(aud="other"), signing_keys["rsa"], "RS256", headers={"kid": "rsa-1"}),
        "no audience": jwt.encode(_payload(), signing_keys["rsa"], "RS256", headers={"kid": "rsa-1"}),
        "HS256 with no secret configured": jwt.encode(_payload(aud="citechat"), TEST_SECRET, "HS256"),
        "alg none": _unsigned(_payload(aud="citechat")),
    }
    for case, token in cases.items():
        response = await jwks_client.get(SESSION, headers=_bearer(token))
        assert response.status_code == 401, case
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_unreachable_jwks_is_503_not_500(settings: Settings, signing_keys):
    dead = derive(settings, auth_secret=None, auth_jwks_url="http://127.0.0.1:9/jwks.json")
    application = create_app(dead)
    async with client_for(application) as c:
        token = jwt.encode(_payload(), signing_keys["rsa"], "RS256", headers={"kid": "rsa-1"})
        response = await c.get(SESSION, headers=_bearer(token))
    assert response.status_code == 503
    assert response.json() == {"detail": "token keys are unavailable; try again shortly"}


def test_embedded_mode_generates_a_secret_once(tmp_path):
    embedded = Settings(_env_file=None, data_dir=tmp_path)
    first = auth_secret(embedded)
    assert first and len(first) >= 32
    assert auth_secret(embedded) == first
    assert (tmp_path / "auth-secret").stat().st_mode & 0o777 == 0o600
    configured = Settings(_env_file=None, data_dir=tmp_path, auth_secret="given-" + "z" * 30)
    assert auth_secret(configured) == "given-" + "z" * 30
    external = Settings(_env_file=None, data_dir=tmp_path / "other", database_url="postgresql+asyncpg://db/x")
    assert auth_secret(external) is None
    assert not (tmp_path / "other").exists()


def test_ttl_parsing():
    assert parse_ttl("90") == timedelta(seconds=90)
    assert parse_ttl("30m") == timedelta(minutes=30)
    assert parse_ttl("12h") == timedelta(hours=12)
    assert parse_ttl("1d") == timedelta(days=1)
    for bad in ("", "0", "1w", "-5m", "soon", "99999999999999999999d"):  # the last overflowed (a 500 as a window)
        with pytest.raises(ValueError, match="not a duration"):
            parse_ttl(bad)
