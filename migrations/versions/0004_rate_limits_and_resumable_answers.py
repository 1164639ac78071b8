"""rate limits and resumable answers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 00:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chat_rate_limits",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("hit_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_rate_limits")),
    )
    op.create_index("idx_chat_rate_limits_key_hit", "chat_rate_limits", ["key", "hit_at"], unique=False)
    op.add_column("chat_messages", sa.Column("worker_id", sa.Uuid(), nullable=True))
    op.drop_constraint(op.f("ck_chat_messages_status"), "chat_messages", type_="check")
    op.create_check_constraint(
        op.f("ck_chat_messages_status"),
        "chat_messages",
        "status IN ('pending', 'streaming', 'completed', 'failed', 'stopped')",
    )


def downgrade() -> None:
    op.execute("UPDATE chat_messages SET status = 'completed' WHERE status = 'stopped'")
    op.drop_constraint(op.f("ck_chat_messages_status"), "chat_messages", type_="check")
    op.create_check_constraint(
        op.f("ck_chat_messages_status"), "chat_messages", "status IN ('pending', 'streaming', 'completed', 'failed')"
    )
    op.drop_column("chat_messages", "worker_id")
    op.drop_index("idx_chat_rate_limits_key_hit", table_name="chat_rate_limits")
    op.drop_table("chat_rate_limits")
