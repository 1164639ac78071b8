"""quota counts kept

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 20:20:00

``citechat_consume_quota`` cost a question more the more hits the table held: 0.43 ms with a few hundred hits,
0.84 ms with 2,000 more and 4.0 ms with 20,000 more, under the organization's lock, so every question of the
organization waited its turn. Two causes:

- its DELETE of expired hits compared ``hit_at`` with ``clock_timestamp()``, which is volatile, so PostgreSQL could
  not use the (key, hit_at) index for it and read the whole table, every organization's hits, at every question;
  the cut-offs are now taken once, after the locks, into variables, and the DELETE is two index range scans;
- it counted each window row by row (``count(*)`` over the key's hits in the window): each key's count is now kept
  in ``chat_rate_limit_counts``, hits that leave the window are deleted as before and taken off the count, a new
  hit adds one, and the oldest hit is the first row of the key's index.

The function keeps its signature and its answers; the counts start from the hits there are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SIGNATURE = """citechat_consume_quota(
            user_key text, user_limit integer, user_window_s double precision,
            org_key text, org_limit integer, org_window_s double precision,
            OUT refused text, OUT user_hits bigint, OUT user_oldest double precision,
            OUT org_hits bigint, OUT org_oldest double precision)"""

_COUNTED = f"""
        CREATE OR REPLACE FUNCTION {_SIGNATURE}
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            asked_at timestamptz;
        BEGIN
            -- Always the organization's key first, then the user's: two calls never wait on each other crosswise.
            PERFORM pg_advisory_xact_lock(hashtextextended(org_key, 7));
            PERFORM pg_advisory_xact_lock(hashtextextended(user_key, 7));
            -- Read once, after the locks: compared as a value, the cut-offs below are ranges of the key's index.
            asked_at := clock_timestamp();
            -- Hits that left their window leave the table and their key's count.
            WITH gone AS (
                DELETE FROM chat_rate_limits
                WHERE (key = user_key AND hit_at <= asked_at - make_interval(secs => user_window_s))
                   OR (key = org_key AND hit_at <= asked_at - make_interval(secs => org_window_s))
                RETURNING key
            )
            UPDATE chat_rate_limit_counts AS kept SET hits = kept.hits - gone_by_key.hits
            FROM (SELECT key, count(*) AS hits FROM gone GROUP BY key) AS gone_by_key
            WHERE kept.key = gone_by_key.key;
            org_hits := coalesce((SELECT hits FROM chat_rate_limit_counts WHERE key = org_key), 0);
            user_hits := coalesce((SELECT hits FROM chat_rate_limit_counts WHERE key = user_key), 0);
            org_oldest := extract(epoch FROM (
                SELECT hit_at FROM chat_rate_limits WHERE key = org_key ORDER BY hit_at LIMIT 1));
            user_oldest := extract(epoch FROM (
                SELECT hit_at FROM chat_rate_limits WHERE key = user_key ORDER BY hit_at LIMIT 1));
            IF org_hits >= org_limit THEN
                refused := 'organization';
            ELSIF user_hits >= user_limit THEN
                refused := 'user';
            ELSE
                INSERT INTO chat_rate_limits (key, hit_at) VALUES (user_key, asked_at), (org_key, asked_at);
                INSERT INTO chat_rate_limit_counts AS kept (key, hits) VALUES (user_key, 1), (org_key, 1)
                    ON CONFLICT (key) DO UPDATE SET hits = kept.hits + 1;
                user_hits := user_hits + 1;
                org_hits := org_hits + 1;
            END IF;
            user_oldest := coalesce(user_oldest, extract(epoch FROM asked_at));
            org_oldest := coalesce(org_oldest, extract(epoch FROM asked_at));
        END
        $$
        """  # noqa: S608 (the function's own text: no input reaches it)

# 0005's, for the downgrade.
_ROW_BY_ROW = f"""
        CREATE OR REPLACE FUNCTION {_SIGNATURE}
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
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
        """  # noqa: S608 (the function's own text: no input reaches it)


def upgrade() -> None:
    op.create_table(
        "chat_rate_limit_counts",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_chat_rate_limit_counts")),
    )
    op.execute("INSERT INTO chat_rate_limit_counts (key, hits) SELECT key, count(*) FROM chat_rate_limits GROUP BY key")
    op.execute(_COUNTED)


def downgrade() -> None:
    op.execute(_ROW_BY_ROW)
    op.drop_table("chat_rate_limit_counts")
