"""``/api/v1/auth/dev-token``: signed tokens on request, for trying citechat on one's own machine.

The built-in page needs a token, and on a fresh ``citechat serve`` nobody has an identity provider yet. So in local
embedded mode only (bound to loopback, no operator-configured secret or JWKS: the secret is the one generated into
the data dir) the page may ask for a token naming any user. In every other configuration the routes do not exist
(404), because anyone who can reach them can act as anyone. Each request must also come from this machine and name a
loopback host, which keeps out other hosts behind a proxy and web pages that rebind a DNS name to 127.0.0.1.
"""

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from citechat.api.errors import error_responses
from citechat.auth.tokens import MAX_IDENTIFIER, auth_secret, identifier_problem, issue_token
from citechat.errors import PermissionDenied
from citechat.settings import Settings

TOKEN_TTL = timedelta(days=1)


def _identifier(value: str) -> str:
    if (why := identifier_problem(value)) is not None:
        raise ValueError(why)
    return value


# Bounds stated for the OpenAPI document; the rule itself is the tokens' (``identifier_problem``).
Identifier = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_IDENTIFIER),
    AfterValidator(_identifier),
]


def enabled(settings: Settings) -> bool:
    """Whether this process runs the self-contained local set-up that may hand out development tokens."""
    return (
        settings.embedded_database
        and settings.auth_secret is None
        and settings.auth_jwks_url is None
        and settings.serve_host is not None
        and _is_loopback(settings.serve_host)
    )


class DevTokenRequest(BaseModel):
    user: Identifier = Field(description="The user id (`sub`) the token names.")
    org: Identifier = Field(description="The one organization the token names.")
    name: Identifier | None = Field(default=None, description="Display name.")


class DevToken(BaseModel):
    token: str
    user: str
    org: str
    expires_at: datetime


class DevTokenStatus(BaseModel):
    available: bool = True


def router_for(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=error_responses(403))

    @router.get("/dev-token", summary="Whether development tokens are offered (404 when not)")
    async def dev_token_status() -> DevTokenStatus:
        return DevTokenStatus()

    @router.post("/dev-token", summary="A token for a named user (local embedded mode only)")
    async def dev_token(request: Request, body: DevTokenRequest) -> DevToken:
        """Signed with the data dir's generated secret, exactly like ``citechat token``; valid for one day."""
        _require_local(request)
        secret = auth_secret(settings)
        assert secret is not None  # embedded mode always has one (see enabled)
        token = issue_token(secret, user=body.user, organizations=[body.org], ttl=TOKEN_TTL, name=body.name)
        return DevToken(token=token, user=body.user, org=body.org, expires_at=datetime.now(UTC) + TOKEN_TTL)

    return router


def _require_local(request: Request) -> None:
    client = request.client.host if request.client else ""
    host = (request.url.hostname or "").strip("[]").lower()
    if not (_is_loopback(client) and _is_loopback(host)):
        raise PermissionDenied("development tokens are only given to requests from this machine")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
