"""Liveness and readiness probes for process supervisors and load balancers."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from citechat.db.migrations import current_revision

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and migrated to head",
    responses={503: {"description": "Not ready; `detail` says why."}},
)
async def readyz(request: Request) -> JSONResponse:
    expected = request.app.state.schema_head
    try:
        revision = await current_revision(request.app.state.database.engine)
    except (SQLAlchemyError, OSError):
        return JSONResponse({"status": "unavailable", "detail": "database unreachable"}, status_code=503)
    if revision != expected:
        detail = f"schema at {revision}, expected {expected}: run `citechat db upgrade`"
        return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)
    return JSONResponse({"status": "ok", "schema": revision})
