"""The FastAPI application: ``create_app()`` builds it; its lifespan opens and closes everything it uses."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from citechat.api import health
from citechat.api.errors import install_error_handlers
from citechat.auth.service import Authenticator
from citechat.auth.tokens import JwksKeys, TokenVerifier, auth_secret
from citechat.chat import message_routes
from citechat.chat import routes as chat_routes
from citechat.db.migrations import head_revision
from citechat.documents import routes as document_routes
from citechat.ratelimits import routes as ratelimit_routes
from citechat.runtime import open_runtime
from citechat.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
            jwks = JwksKeys(settings.auth_jwks_url, http) if settings.auth_jwks_url else None
            verifier = TokenVerifier(
                secret=auth_secret(settings),
                jwks=jwks,
                audience=settings.auth_audience,
                issuer=settings.auth_issuer,
            )
            app.state.settings = settings
            app.state.authenticator = Authenticator(verifier)
            app.state.schema_head = head_revision()
            runtime = await stack.enter_async_context(open_runtime(settings))
            app.state.database = runtime.database
            app.state.index = runtime.index
            app.state.ingestion = runtime.ingestion
            app.state.answering = runtime.answering
            app.state.streams = runtime.streams
            app.state.limits = runtime.answering.limits
            log.info("citechat ready (%s database)", "embedded" if settings.embedded_database else "external")
            yield

    app = FastAPI(
        title="citechat",
        summary="Chat with your documents; every answer cites document and page.",
        version="0.1.0",
        lifespan=lifespan,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Organization-ID", "Last-Event-ID"],
        )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(chat_routes.router)
    app.include_router(message_routes.router)
    app.include_router(ratelimit_routes.router)
    app.include_router(document_routes.router)
    return app
