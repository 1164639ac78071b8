"""``GET /api/v1/chat/limits``: the caller's remaining quotas."""

from fastapi import APIRouter, Request

from citechat.api.dependencies import CurrentPrincipal
from citechat.api.errors import error_responses
from citechat.ratelimits import schemas

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], responses=error_responses(401, 403, 503))


@router.get("/limits", summary="The caller's message quotas: limit, remaining, and when each resets")
async def get_limits(request: Request, principal: CurrentPrincipal) -> schemas.Limits:
    user, organization = await request.app.state.limits.status(principal)
    return schemas.Limits(user=schemas.QuotaOut.of(user), organization=schemas.QuotaOut.of(organization))
