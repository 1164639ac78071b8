"""answers: modes and verified citations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 23:22:56.662432
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "chat_sessions", sa.Column("response_mode", sa.String(length=20), server_default="strict", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_chat_sessions_response_mode"), "chat_sessions", "response_mode IN ('strict', 'balanced', 'creative')"
    )
    op.add_column("chat_sources", sa.Column("end_page", sa.Integer(), nullable=True))
    op.add_column("chat_sources", sa.Column("page_label", sa.String(length=50), nullable=True))
    op.add_column("chat_sources", sa.Column("rank", sa.Integer(), nullable=True))
    op.add_column("chat_sources", sa.Column("cited", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("chat_sources", sa.Column("support", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("chat_sources", "support")
    op.drop_column("chat_sources", "cited")
    op.drop_column("chat_sources", "rank")
    op.drop_column("chat_sources", "page_label")
    op.drop_column("chat_sources", "end_page")
    op.drop_constraint(op.f("ck_chat_sessions_response_mode"), "chat_sessions", type_="check")
    op.drop_column("chat_sessions", "response_mode")
