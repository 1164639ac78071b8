"""The migrations build exactly the schema the models describe, and can be taken down and up again."""

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from citechat.db.base import all_tables
from citechat.db.migrations import alembic_config, current_revision, head_revision, upgrade_to_head


def _differences(connection: Connection) -> list:
    context = MigrationContext.configure(connection, opts={"compare_server_default": True, "compare_type": True})
    return compare_metadata(context, all_tables())


def _downgrade_to_base(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "base")


async def test_models_and_migrations_agree(fresh_engine: AsyncEngine):
    await upgrade_to_head(fresh_engine)
    assert await current_revision(fresh_engine) == head_revision()
    async with fresh_engine.connect() as conn:
        assert await conn.run_sync(_differences) == []


async def test_downgrade_and_upgrade_again(fresh_engine: AsyncEngine):
    await upgrade_to_head(fresh_engine)
    async with fresh_engine.begin() as conn:
        await conn.run_sync(_downgrade_to_base)
    async with fresh_engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    assert tables == ["alembic_version"]
    await upgrade_to_head(fresh_engine)
    await upgrade_to_head(fresh_engine)  # idempotent at head
    assert await current_revision(fresh_engine) == head_revision()


async def test_one_active_session_is_enforced_by_the_database(fresh_engine: AsyncEngine):
    """The partial unique index holds even for writers that bypass the service."""
    await upgrade_to_head(fresh_engine)
    async with fresh_engine.begin() as conn:
        user = (await conn.execute(text("INSERT INTO users (external_id) VALUES ('u') RETURNING id"))).scalar()
        org = (await conn.execute(text("INSERT INTO organizations (external_id) VALUES ('o') RETURNING id"))).scalar()
        insert = text("INSERT INTO chat_sessions (user_id, organization_id, title, is_active) VALUES (:u, :o, 't', :a)")
        await conn.execute(insert, {"u": user, "o": org, "a": True})
        await conn.execute(insert, {"u": user, "o": org, "a": False})
        await conn.execute(insert, {"u": user, "o": org, "a": False})
    with pytest.raises(Exception, match="idx_chat_sessions_active"):
        async with fresh_engine.begin() as conn:
            await conn.execute(insert, {"u": user, "o": org, "a": True})


async def test_spec_defaults_are_in_the_schema(fresh_engine: AsyncEngine):
    await upgrade_to_head(fresh_engine)
    async with fresh_engine.begin() as conn:
        user = (await conn.execute(text("INSERT INTO users (external_id) VALUES ('u') RETURNING id"))).scalar()
        org = (await conn.execute(text("INSERT INTO organizations (external_id) VALUES ('o') RETURNING id"))).scalar()
        session = (
            (
                await conn.execute(
                    text(
                        "INSERT INTO chat_sessions (user_id, organization_id, title) VALUES (:u, :o, 't') RETURNING *"
                    ),
                    {"u": user, "o": org},
                )
            )
            .mappings()
            .one()
        )
        message = (
            (
                await conn.execute(
                    text("INSERT INTO chat_messages (session_id, role, content) VALUES (:s, 'user', 'q') RETURNING *"),
                    {"s": session["id"]},
                )
            )
            .mappings()
            .one()
        )
    assert session["is_active"] is True and session["is_archived"] is False
    assert (session["temperature"], session["model_name"], session["max_context_messages"]) == (0.1, "gpt-4o", 5)
    assert session["created_at"].tzinfo is not None and session["last_message_at"] is None
    assert message["status"] == "completed" and message["created_at"].tzinfo is not None
    with pytest.raises(Exception, match="ck_chat_messages_role"):
        async with fresh_engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO chat_messages (session_id, role, content) VALUES (:s, 'robot', 'q')"),
                {"s": session["id"]},
            )
