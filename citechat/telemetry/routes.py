"""``/api/v1/admin``: operators' reports (tokens whose ``roles`` claim holds ``admin``)."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from citechat.api.dependencies import DbSession, SettingsDep, require_admin
from citechat.api.errors import error_responses
from citechat.telemetry.slo import SloReport, Window, slo_report
from citechat.telemetry.targets import Targets

router = APIRouter(
    prefix="/api/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 503),
)


@router.get("/slo", summary="How recent answers did against the service's targets")
async def get_slo(
    db: DbSession,
    settings: SettingsDep,
    since: Annotated[Window, Query(description="How far back: 30m, 24h, 7d (at most 366d).")] = timedelta(hours=24),
) -> SloReport:
    return await slo_report(db, since, Targets.from_settings(settings), settings.model_prices, provider=settings.llm)
