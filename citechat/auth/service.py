"""Resolving a verified token to the caller: user, organization and membership, created on first sight."""

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from citechat.auth.tokens import Claims, TokenVerifier
from citechat.errors import MissingCredentials, PermissionDenied

# One round trip: upsert the user and the organization, link them, return both ids.
_PROVISION = text("""
WITH u AS (
    INSERT INTO users (external_id, name, email) VALUES (:sub, :name, :email)
    ON CONFLICT (external_id) DO UPDATE
        SET name = COALESCE(EXCLUDED.name, users.name), email = COALESCE(EXCLUDED.email, users.email)
    RETURNING id
), o AS (
    INSERT INTO organizations (external_id) VALUES (:org)
    ON CONFLICT (external_id) DO UPDATE SET external_id = EXCLUDED.external_id
    RETURNING id
), m AS (
    INSERT INTO memberships (user_id, organization_id) SELECT u.id, o.id FROM u, o
    ON CONFLICT DO NOTHING
)
SELECT u.id AS user_id, o.id AS organization_id FROM u, o
""")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller acting in one organization."""

    user_id: uuid.UUID
    organization_id: uuid.UUID
    user: str
    organization: str
    roles: tuple[str, ...] = ()


class Authenticator:
    """Verifies tokens and maps them to principals; remembers ids it has provisioned to skip the upsert."""

    def __init__(self, verifier: TokenVerifier, *, cache_size: int = 10_000) -> None:
        self._verifier = verifier
        self._known: OrderedDict[tuple, tuple[uuid.UUID, uuid.UUID]] = OrderedDict()
        self._cache_size = cache_size

    async def authenticate(
        self, token: str | None, organization: str | None, sessions: async_sessionmaker[AsyncSession]
    ) -> Principal:
        """The caller; ``sessions`` opens a database session only for a caller not seen before (to provision)."""
        if not token:
            raise MissingCredentials("missing bearer token")
        claims = await self._verifier.verify(token)
        org = choose_organization(claims, organization)
        user_id, org_id = await self._provision(claims, org, sessions)
        return Principal(user_id, org_id, claims.subject, org, claims.roles)

    async def _provision(
        self, claims: Claims, org: str, sessions: async_sessionmaker[AsyncSession]
    ) -> tuple[uuid.UUID, uuid.UUID]:
        key = (claims.subject, claims.name, claims.email, org)
        if (ids := self._known.get(key)) is not None:
            self._known.move_to_end(key)
            return ids
        async with sessions() as db:
            principal = await provision(db, claims.subject, org, name=claims.name, email=claims.email)
        self._known[key] = ids = (principal.user_id, principal.organization_id)
        if len(self._known) > self._cache_size:
            self._known.popitem(last=False)
        return ids


async def provision(
    db: AsyncSession, user: str, organization: str, *, name: str | None = None, email: str | None = None
) -> Principal:
    """The user acting in the organization, both (and the membership) created if new."""
    params = {"sub": user, "name": name, "email": email, "org": organization}
    row = (await db.execute(_PROVISION, params)).one()
    await db.commit()
    return Principal(row.user_id, row.organization_id, user, organization)


async def ensure_organization(db: AsyncSession, external_id: str) -> uuid.UUID:
    """The organization's database id, creating it on first use (for the CLI, which acts without a token)."""
    return await db.scalar(
        text(
            "INSERT INTO organizations (external_id) VALUES (:org) "
            "ON CONFLICT (external_id) DO UPDATE SET external_id = EXCLUDED.external_id RETURNING id"
        ),
        {"org": external_id},
    )


def choose_organization(claims: Claims, requested: str | None) -> str:
    """The organization a request acts in: the ``X-Organization-ID`` header, or the token's only one."""
    if requested is not None:
        if requested not in claims.organizations:
            raise PermissionDenied("you are not a member of that organization")
        return requested
    if len(claims.organizations) == 1:
        return claims.organizations[0]
    if not claims.organizations:
        raise PermissionDenied("the token grants no organization")
    raise PermissionDenied("the token lists several organizations: choose one with X-Organization-ID")
