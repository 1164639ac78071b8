from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Identity, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from citechat.db.base import Base


class RateLimitHit(Base):
    """One accepted hit of a moving-window limit; rows older than the window are deleted as the key is hit."""

    __tablename__ = "chat_rate_limits"
    __table_args__ = (Index("idx_chat_rate_limits_key_hit", "key", "hit_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    key: Mapped[str] = mapped_column(String(300))
    hit_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RateLimitCount(Base):
    """How many hits of a key are in ``chat_rate_limits``: kept by ``citechat_consume_quota`` as it adds a hit and
    deletes the ones that left their window, so counting a window is one row, however many hits it holds."""

    __tablename__ = "chat_rate_limit_counts"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    hits: Mapped[int] = mapped_column(BigInteger)
