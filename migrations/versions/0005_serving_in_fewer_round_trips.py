"""serving in fewer round trips

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 03:40:00

- ``citechat_consume_quota`` counts a message against both quotas in one call, where the ``limits`` library's
  moving window took a dozen round trips: it locks both keys, drops their expired hits, counts both windows, and
  inserts both hits only when both have room (the organization's is looked at first), then returns both windows.
  In PL/pgSQL each statement of a volatile function takes a fresh snapshot, so the counts after the locks see
  every hit committed before them.
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
        CREATE FUNCTION citechat_consume_quota(
            user_key text, user_limit integer, user_window_s double precision,
            org_key text, org_limit integer, org_window_s double precision,
            OUT refused text, OUT user_hits bigint, OUT user_oldest double precision,
            OUT org_hits bigint, OUT org_oldest double precision)
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            -- Always the organization's key first, then the user's: two calls never wait on each other crosswise.
            PERFORM pg_advisory_xact_lock(hashtextextended(org_key, 7));
            PERFORM pg_advisory_xact_lock(hashtextextended(user_key, 7));
            DELETE FROM chat_rate_limits
                WHERE (key = user_key AND hit_at <= clock_timestamp() - make_interval(secs => user_window_s))
                   OR (key = org_key AND hit_at <= clock_timestamp() - make_interval(secs => org_window_s));
            SELECT count(*), extract(epoch FROM min(hit_at)) INTO org_hits, org_oldest FROM chat_rate_limits
                WHERE key = org_key AND hit_at > clock_timestamp() - make_interval(secs => org_window_s);
            SELECT count(*), extract(epoch FROM min(hit_at)) INTO user_hits, user_oldest FROM chat_rate_limits
                WHERE key = user_key AND hit_at > clock_timestamp() - make_interval(secs => user_window_s);
            IF org_hits >= org_limit THEN
                refused := 'organization';
            ELSIF user_hits >= user_limit THEN
                refused := 'user';
            ELSE
                INSERT INTO chat_rate_limits (key, hit_at)
                    VALUES (user_key, clock_timestamp()), (org_key, clock_timestamp());
                user_hits := user_hits + 1;
                org_hits := org_hits + 1;
            END IF;
            user_oldest := coalesce(user_oldest, extract(epoch FROM clock_timestamp()));
            org_oldest := coalesce(org_oldest, extract(epoch FROM clock_timestamp()));
        END
        $$
        """
    )


def downgrade() -> None:
    op.drop_index("idx_chat_messages_one_in_flight", table_name="chat_messages")
    op.execute("DROP FUNCTION citechat_consume_quota(text, integer, double precision, text, integer, double precision)")
