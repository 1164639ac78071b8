"""serving in fewer round trips

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 03:40:00

- ``citechat_rate_limit_hit`` does what ``PostgresStorage.acquire_entry`` did in five round trips (lock the key,
  drop its expired hits, count the window, insert when there is room, commit) as one call. In PL/pgSQL each
  statement of a volatile function takes a fresh snapshot, so the count after the lock sees every hit committed
  before it.
- ``idx_chat_messages_one_in_flight``: at most one answer pending or streaming per session, kept by the database,
  so asking needs no locked read-check-insert transaction. Sessions that already hold more than one (none should)
  keep the newest; the others are marked failed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE chat_messages SET status = 'failed',
            error_message = 'interrupted: the service stopped before the answer was complete; retry it'
        WHERE status IN ('pending', 'streaming') AND id NOT IN (
            SELECT DISTINCT ON (session_id) id FROM chat_messages WHERE status IN ('pending', 'streaming')
            ORDER BY session_id, created_at DESC
        )
        """
    )
    op.create_index(
        "idx_chat_messages_one_in_flight",
        "chat_messages",
        ["session_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'streaming')"),
    )
    op.execute(
        """
        CREATE FUNCTION citechat_rate_limit_hit(hit_key text, hit_limit integer, expiry_s double precision,
                                                amount integer) RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            in_window bigint;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended(hit_key, 7));
            DELETE FROM chat_rate_limits
                WHERE key = hit_key AND hit_at <= clock_timestamp() - make_interval(secs => expiry_s);
            SELECT count(*) INTO in_window FROM chat_rate_limits
                WHERE key = hit_key AND hit_at > clock_timestamp() - make_interval(secs => expiry_s);
            IF in_window + amount > hit_limit THEN
                RETURN false;
            END IF;
            INSERT INTO chat_rate_limits (key, hit_at) SELECT hit_key, clock_timestamp() FROM generate_series(1, amount);
            RETURN true;
        END
        $$
        """
    )


def downgrade() -> None:
    op.drop_index("idx_chat_messages_one_in_flight", table_name="chat_messages")
    op.execute("DROP FUNCTION citechat_rate_limit_hit(text, integer, double precision, integer)")
