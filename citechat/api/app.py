"""The FastAPI application: ``create_app()`` builds it; its lifespan opens and closes everything it uses.
``create_served_app()`` is the one ``citechat serve`` runs, one per process."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from citechat.api import health
from citechat.api.errors import document_request_errors, install_error_handlers
from citechat.auth import dev_tokens
from citechat.auth.service import Authenticator
from citechat.auth.tokens import JwksKeys, TokenVerifier, auth_secret
from citechat.chat import message_routes
from citechat.chat import routes as chat_routes
from citechat.db.migrations import head_revision
from citechat.documents import routes as document_routes
from citechat.ratelimits import routes as ratelimit_routes
from citechat.runtime import open_runtime
from citechat.settings import Settings
from citechat.telemetry import routes as telemetry_routes
from citechat.telemetry.setup import AppTelemetry, Exporters
from citechat.web import router as web_router

log = logging.getLogger(__name__)


def create_served_app() -> FastAPI:
    """``create_app()`` for a process of its own: once started, everything alive (the embedding model, LlamaIndex,
    the ORM's mappings: ~230,000 objects) is moved out of the garbage collector's way (``gc.freeze``). A full
    collection walked them all, stopping every stream of the process for ~150 ms every hundred answers or so; now
    it walks what answers allocate. Not in ``create_app``: a process that makes many apps (the tests) would keep
    the cycles of the ones it throws away."""
    app = create_app()
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with started(app):
            gc.collect()
            gc.freeze()
            yield

    app.router.lifespan_context = lifespan
    return app


def create_app(settings: Settings | None = None, *, exporters: Exporters | None = None) -> FastAPI:
    """``exporters``: where telemetry goes (default: the ``OTEL_*`` variables; tests pass in-memory ones)."""
    settings = settings or Settings()
    observability = AppTelemetry(settings, exporters or Exporters.from_env())

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
            app.state.telemetry = telemetry = stack.enter_context(observability.running())
            runtime = await stack.enter_async_context(open_runtime(settings, telemetry=telemetry))
            stack.enter_context(observability.database_spans(runtime.database.engine))
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
        telemetry=observability.fastapi_config(),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Organization-ID", "Last-Event-ID"],
        )
    install_error_handlers(app)
    document_request_errors(app)
    app.include_router(health.router)
    app.include_router(chat_routes.router)
    app.include_router(message_routes.router)
    app.include_router(ratelimit_routes.router)
    app.include_router(document_routes.router)
    if dev_tokens.enabled(settings):
        app.include_router(dev_tokens.router_for(settings))
    app.include_router(web_router)
    app.include_router(telemetry_routes.router)
    return app
