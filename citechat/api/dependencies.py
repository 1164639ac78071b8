"""Typed dependencies shared by every router. The objects behind them live on ``app.state`` (the lifespan).

All of them are ``async def``, even those that await nothing: FastAPI runs a plain ``def`` dependency in its thread
pool, a thread hop (and a wait for the GIL) on every request that uses it."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from citechat.auth.service import Principal
from citechat.auth.tokens import ADMIN_ROLE
from citechat.db.database import Database
from citechat.errors import PermissionDenied
from citechat.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A JWT: HS256 with the service's secret, or RS256/ES256.")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_db(database: Annotated[Database, Depends(get_database)]) -> AsyncIterator[AsyncSession]:
    async with database.sessions() as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(get_db)]


async def get_principal(
    request: Request,
    database: Annotated[Database, Depends(get_database)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_organization_id: Annotated[
        str | None, Header(description="Organization to act in; optional when the token lists one.")
    ] = None,
) -> Principal:
    token = credentials.credentials if credentials else None
    return await request.app.state.authenticator.authenticate(token, x_organization_id, database.sessions)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: CurrentPrincipal) -> Principal:
    """Operators' routes: the token's ``roles`` claim must hold ``admin`` (``citechat token --admin``)."""
    if ADMIN_ROLE not in principal.roles:
        raise PermissionDenied("this needs a token with the admin role")
    return principal
