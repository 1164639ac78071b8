from datetime import datetime

from pydantic import BaseModel, Field

from citechat.ratelimits.service import Quota


class QuotaOut(BaseModel):
    limit: int = Field(description="Messages allowed per window.")
    remaining: int
    window: str = Field(description="rolling hour (user) or rolling day (organization)")
    reset_at: datetime = Field(description="When the oldest message in the window leaves it.")

    @classmethod
    def of(cls, quota: Quota) -> "QuotaOut":
        window = "rolling hour" if quota.scope == "user" else "rolling day"
        return cls(limit=quota.limit, remaining=quota.remaining, window=window, reset_at=quota.reset_at)


class Limits(BaseModel):
    user: QuotaOut
    organization: QuotaOut
