"""Bearer tokens: verifying the ones clients send, and issuing HS256 ones for local use (``citechat token``)."""

import asyncio
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt

from citechat.db.text import unstorable
from citechat.errors import AuthenticationError, ConfigurationError, ServiceUnavailable
from citechat.settings import Settings

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
ADMIN_ROLE = "admin"  # in a token's `roles` claim: the operators' routes (/api/v1/admin)
_SECRET_FILE = "auth-secret"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True)
class Claims:
    """What citechat reads from a verified token."""

    subject: str
    organizations: tuple[str, ...]
    name: str | None = None
    email: str | None = None
    roles: tuple[str, ...] = ()


class JwksKeys:
    """Signing keys fetched from a JWKS URL, cached, and fetched again for a key id not seen before."""

    def __init__(self, url: str, http: httpx.AsyncClient, *, ttl_s: float = 300, min_refetch_s: float = 10):
        self._url, self._http = url, http
        self._ttl_s, self._min_refetch_s = ttl_s, min_refetch_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self._ttl_s
        unknown = kid not in self._keys and now - self._fetched_at > self._min_refetch_s
        if stale or unknown:
            async with self._lock:
                if self._fetched_at < now:
                    await self._fetch()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid not in self._keys:
            raise AuthenticationError("token signed with an unknown key")
        return self._keys[kid]

    async def _fetch(self) -> None:
        try:
            response = await self._http.get(self._url)
            response.raise_for_status()
            key_set = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise ServiceUnavailable("token keys are unavailable; try again shortly") from exc
        self._keys = {k.key_id: k for k in key_set.keys if k.key_id}
        if not self._keys and key_set.keys:
            self._keys = {None: key_set.keys[0]}
        self._fetched_at = time.monotonic()


class TokenVerifier:
    """Checks signature, expiry and claims; the algorithm must be one citechat was configured to trust."""

    def __init__(
        self,
        *,
        secret: str | None,
        jwks: JwksKeys | None,
        audience: str | None = None,
        issuer: str | None = None,
    ):
        if secret is None and jwks is None:
            raise ConfigurationError("set CITECHAT_AUTH_SECRET or CITECHAT_AUTH_JWKS_URL to verify tokens")
        self._secret, self._jwks = secret, jwks
        self._audience, self._issuer = audience, issuer

    async def verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("malformed bearer token") from exc
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._secret is not None:
            key: object = self._secret
        elif algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            key = await self._jwks.key(header.get("kid"))
        else:
            raise AuthenticationError(f"tokens signed with {algorithm!r} are not accepted")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {_safe_reason(exc)}") from exc
        return _claims(payload)


def _safe_reason(exc: jwt.PyJWTError) -> str:
    """PyJWT's messages name the failed check (signature, audience, claim) and never the key: safe to show."""
    return str(exc) or type(exc).__name__


MAX_IDENTIFIER = 255


def identifier_problem(value: str) -> str | None:
    """Why ``value`` cannot be a user or organization id, or None when it can: ids are what tokens carry (``sub``,
    ``orgs``), stored as they are, so 1 to 255 characters, not all spaces, that PostgreSQL can store. The one rule
    for every way in: a token's claims, the development token's form, the command line's ``--org`` and ``--user``."""
    if not value.strip() or len(value) > MAX_IDENTIFIER:
        return f"must be 1 to {MAX_IDENTIFIER} characters, not all spaces"
    return unstorable(value)


def _claims(payload: dict) -> Claims:
    subject, orgs = payload.get("sub"), payload.get("orgs", [])
    if not isinstance(subject, str):
        raise AuthenticationError("token `sub` must be a string")
    if (why := identifier_problem(subject)) is not None:
        raise AuthenticationError(f"token `sub` {why}")
    if not isinstance(orgs, list) or not all(isinstance(o, str) for o in orgs):
        raise AuthenticationError("token `orgs` must be a list of organization ids")
    if (why := next(filter(None, map(identifier_problem, orgs)), None)) is not None:
        raise AuthenticationError(f"token `orgs`: each organization id {why}")
    roles = payload.get("roles", [])
    claims = Claims(
        subject=subject,
        organizations=tuple(orgs),
        name=_optional_str(payload.get("name")),
        email=_optional_str(payload.get("email")),
        roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
    )
    for stored in (claims.name or "", claims.email or ""):
        if (why := unstorable(stored)) is not None:  # provisioning would fail to write it
            raise AuthenticationError(f"token claims {why}")
    return claims


def _optional_str(value: object) -> str | None:
    return value[:255] if isinstance(value, str) and value else None


def issue_token(
    secret: str,
    *,
    user: str,
    organizations: list[str],
    ttl: timedelta,
    name: str | None = None,
    email: str | None = None,
    roles: list[str] | None = None,
) -> str:
    """A token ``TokenVerifier`` accepts: its claims pass the verifier's own checks (``AuthenticationError``
    otherwise, rather than a token every request would refuse)."""
    now = datetime.now(UTC)
    payload: dict[str, object] = {"sub": user, "orgs": organizations, "iat": now, "exp": now + ttl}
    payload |= {k: v for k, v in {"name": name, "email": email, "roles": roles}.items() if v}
    _claims(payload)
    return jwt.encode(payload, secret, algorithm="HS256")


_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """``90``, ``30m``, ``12h``, ``7d``; at most what ``timedelta`` holds (999,999,999 days)."""
    match = _TTL.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 12h, 7d)")
    try:
        return timedelta(seconds=int(match.group(1)) * _TTL_UNITS[match.group(2)])
    except OverflowError:
        raise ValueError(f"not a duration: {text!r} is longer than any date can reach") from None


def auth_secret(settings: Settings) -> str | None:
    """The HS256 secret: the configured one, else (embedded mode only) one generated once in the data dir."""
    if settings.auth_secret is not None:
        return settings.auth_secret.get_secret_value()
    if not settings.embedded_database:
        return None
    path = settings.data_dir / _SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
    return path.read_text().strip()


def _create_secret_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
