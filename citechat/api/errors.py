"""Errors to HTTP, in one place: every error body is JSON ``{"detail": ...}`` and none carries internals."""

import json
import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from citechat.db.statements import UNAVAILABLE, PoolBusy
from citechat.errors import AuthenticationError, CitechatError, MissingCredentials
from citechat.ratelimits.service import RateLimited

log = logging.getLogger(__name__)


class ErrorResponse(JSONResponse):
    """An error's JSON, every character outside ASCII escaped: an error may quote what the caller sent (a
    validation issue's ``input``, an unknown model's name), and half of a surrogate pair, which a JSON escape can
    carry into a request, cannot be encoded as UTF-8; escaped, it is valid JSON still. Starlette's JSONResponse
    failed on it, turning a 422 into a 500."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


class ErrorBody(BaseModel):
    detail: str
    limit: str | None = None
    reset_at: str | None = None
    retry_after: int | None = None


def document_request_errors(app: FastAPI) -> None:
    """The OpenAPI schema's request errors as they are answered. FastAPI documents a 422 as its list of validation
    issues; citechat also answers 422 with ``{"detail": "..."}`` for a value no schema can rule out (a model this
    server does not serve, document metadata that is not an object), so ``detail`` is either. A body that cannot
    be read at all (bytes that are not text, a broken multipart form) is a 400 (FastAPI's), documented on every
    operation that takes a body."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()  # FastAPI's, made once and kept
        validation = schema["components"]["schemas"].get("HTTPValidationError")
        if validation is not None and "anyOf" not in validation["properties"]["detail"]:
            issues = validation["properties"]["detail"]
            validation["properties"]["detail"] = {"anyOf": [issues, {"type": "string"}], "title": "Detail"}
            unreadable = {
                "description": "The body could not be read (bytes that are not text, a broken multipart form).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                if "requestBody" in operation:
                    operation["responses"].setdefault("400", unreadable)
        return schema

    app.openapi = openapi


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI documentation of the error statuses a route can answer with."""
    described = {
        401: "Missing, malformed, expired or wrongly signed bearer token.",
        403: "Not a member of the requested organization.",
        404: "Not found, or not the caller's.",
        409: "Conflicts with the resource's current state.",
        413: "The upload is larger than allowed.",
        415: "The upload's format is not supported.",
        429: "A message quota is spent: the body says which (`limit`: user or organization) and when it resets.",
        503: "A dependency (database, key set) is unavailable; retry.",
    }
    return {code: {"model": ErrorBody, "description": described[code]} for code in codes}


async def _citechat_error(request: Request, exc: CitechatError) -> JSONResponse:
    headers = None
    if isinstance(exc, AuthenticationError):  # RFC 6750: no error code when no token was sent
        challenge = "Bearer" if isinstance(exc, MissingCredentials) else 'Bearer error="invalid_token"'
        headers = {"WWW-Authenticate": challenge}
    if isinstance(exc, RateLimited):
        quota = exc.quota
        headers = quota.headers() | {"Retry-After": str(exc.retry_after)}
        body = {"detail": exc.detail, "limit": quota.scope, "reset_at": quota.reset_at.isoformat()}
        return ErrorResponse(body | {"retry_after": exc.retry_after}, status_code=429, headers=headers)
    return ErrorResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        return await _database_away(request, exc)
    return await _unexpected_error(request, exc)


async def _database_away(request: Request, exc: Exception) -> JSONResponse:
    """The connection lost or the server shutting down: through SQLAlchemy (``_database_error``), or on the answer
    path's asyncpg pool (``db.statements``)."""
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return ErrorResponse({"detail": "the database is unavailable; try again shortly"}, status_code=503)


async def _connection_error(request: Request, exc: OSError) -> JSONResponse:
    log.warning("connection failure during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return ErrorResponse({"detail": "a backing service is unavailable; try again shortly"}, status_code=503)


async def _busy(request: Request, exc: PoolTimeout | PoolBusy) -> JSONResponse:
    log.warning("no database connection free in time during %s %s", request.method, request.url.path)
    return ErrorResponse({"detail": "the service is busy; try again shortly"}, status_code=503)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error during %s %s", request.method, request.url.path)
    return ErrorResponse({"detail": "internal error"}, status_code=500)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, as FastAPI words it, rendered as every error is (``ErrorResponse``)."""
    return ErrorResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(CitechatError, _citechat_error)
    app.add_exception_handler(DBAPIError, _database_error)
    for away in UNAVAILABLE:  # the answer path's asyncpg errors for the database away (OSError: just below)
        if away is not OSError:
            app.add_exception_handler(away, _database_away)
    app.add_exception_handler(OSError, _connection_error)
    app.add_exception_handler(PoolTimeout, _busy)
    app.add_exception_handler(PoolBusy, _busy)
    app.add_exception_handler(Exception, _unexpected_error)
