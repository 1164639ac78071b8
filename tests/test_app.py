"""The app's edges: health probes, error bodies, OpenAPI, CORS."""

import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from citechat.api.app import create_app
from citechat.settings import Settings
from tests.conftest import client_for, derive
from tests.test_migrations import _downgrade_to_base


async def test_health_and_readiness(client: httpx.AsyncClient):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


async def test_readiness_fails_when_schema_is_behind(settings: Settings, fresh_engine):
    url = fresh_engine.url.render_as_string(hide_password=False)
    application = create_app(derive(settings, database_url=url))
    async with client_for(application) as c:
        assert (await c.get("/readyz")).status_code == 200
        async with fresh_engine.begin() as conn:
            await conn.run_sync(_downgrade_to_base)
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert "citechat db upgrade" in response.json()["detail"]


async def test_unexpected_errors_are_json_500_without_internals(settings: Settings):
    application: FastAPI = create_app(settings)

    @application.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 at /secret/path.py line 7")

    async with client_for(application, raise_app_exceptions=False) as c:
        response = await c.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "hunter2" not in response.text and "Traceback" not in response.text


async def test_database_outage_is_503(settings: Settings):
    application: FastAPI = create_app(settings)

    @application.get("/query")
    async def query() -> None:
        async with application.state.database.sessions() as db:
            await db.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    async with client_for(application, raise_app_exceptions=False) as c:
        response = await c.get("/query")
    assert response.status_code == 503
    assert response.json() == {"detail": "the database is unavailable; try again shortly"}


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient, identity):
    assert (await client.get("/api/v1/nowhere")).json() == {"detail": "Not Found"}
    response = await client.put("/api/v1/chat/session", headers=identity())
    assert response.status_code == 405 and response.json() == {"detail": "Method Not Allowed"}


async def test_openapi_documents_routes_and_errors(client: httpx.AsyncClient):
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in [
        "/api/v1/chat/session",
        "/api/v1/chat/session/new",
        "/api/v1/chat/sessions",
        "/api/v1/chat/session/{session_id}/messages",
        "/api/v1/chat/session/{session_id}/archive",
        "/api/v1/chat/session/{session_id}",
        "/healthz",
        "/readyz",
    ]:
        assert path in paths, path
    messages = paths["/api/v1/chat/session/{session_id}/messages"]["get"]["responses"]
    assert {"200", "401", "403", "404", "422", "503"} <= set(messages)
    assert {"ChatSession", "ChatMessage", "ChatSource", "ErrorBody"} <= set(spec["components"]["schemas"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await client.get("/docs")).status_code == 200


async def test_request_errors_are_answered_as_documented(client: httpx.AsyncClient, identity):
    """Each error a client can provoke with its request has its status documented for that operation, in a shape
    the document allows: a generated client parses what it gets (a schema fuzzer, schemathesis, found these
    undocumented)."""
    spec = (await client.get("/openapi.json")).json()
    headers = identity()
    session = (await client.get("/api/v1/chat/session", headers=headers)).json()

    def documented(path: str, method: str, status: int) -> dict:
        responses = spec["paths"][path][method]["responses"]
        assert str(status) in responses, (method, path, status, sorted(responses))
        return responses[str(status)]

    unreadable = await client.post(
        "/api/v1/chat/message",
        params={"session_id": session["id"]},
        content=b"\xff\xfe{",  # not even text (JSON that does not parse is a 422, a validation issue)
        headers=headers | {"Content-Type": "application/json"},
    )
    assert unreadable.status_code == 400 and isinstance(unreadable.json()["detail"], str)
    assert documented("/api/v1/chat/message", "post", 400)["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    for path in ("/api/v1/chat/message/stream", "/api/v1/documents", "/api/v1/chat/session/{session_id}"):
        documented(path, "post" if "session_id" not in path else "patch", 400)

    unknown_model = await client.post(
        "/api/v1/chat/message",
        params={"session_id": session["id"]},
        json={"question": "hi", "model": "gpt-9"},
        headers=headers,
    )
    assert unknown_model.status_code == 422 and isinstance(unknown_model.json()["detail"], str)
    documented("/api/v1/chat/message", "post", 422)
    detail = spec["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"]
    assert {"type": "string"} in detail["anyOf"] and any(d.get("type") == "array" for d in detail["anyOf"])

    for path in ("/api/v1/chat/sessions", "/api/v1/documents"):
        missing_cursor = await client.get(path, params={"before": str(uuid.uuid4())}, headers=headers)
        assert missing_cursor.status_code == 404, path
        documented(path, "get", 404)
    documented("/api/v1/chat/message/{message_id}/retry", "post", 429)
    update = spec["components"]["schemas"]["UpdateSession"]
    assert update["anyOf"] == [{"required": ["title"]}, {"required": ["mode"]}]
    assert (await client.patch(f"/api/v1/chat/session/{session['id']}", json={}, headers=headers)).status_code == 422


async def test_cors_for_configured_origins_only(client: httpx.AsyncClient):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,x-organization-id",
    }
    allowed = await client.options(
        "/api/v1/chat/session/new", headers={"Origin": "https://app.example.com", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    refused = await client.options("/api/v1/chat/session/new", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
