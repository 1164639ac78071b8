"""``citechat serve`` as a user runs it: a real process on its embedded defaults, stopped and started again."""

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from citechat.db.migrations import head_revision
from tests.live import CLI, Server, clean_env


def _env(data_dir: Path) -> dict[str, str]:
    return clean_env(CITECHAT_DATA_DIR=str(data_dir))


def _postgres_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_on_embedded_defaults_keeps_data_across_restarts(tmp_path: Path):
    data_dir = tmp_path / "data"
    token = subprocess.run(  # noqa: S603
        [*CLI, "token", "--user", "alice", "--org", "acme", "--ttl", "10m"],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    server = Server(_env(data_dir), data_dir.parent)
    try:
        session = httpx.get(f"{server.url}/api/v1/chat/session", headers=headers).json()
        renamed = httpx.patch(
            f"{server.url}/api/v1/chat/session/{session['id']}", json={"title": "kept"}, headers=headers
        )
        assert renamed.status_code == 200
    finally:
        assert server.stop() == 0
    assert not _postgres_running(data_dir / "pgdata"), "embedded PostgreSQL must stop with the service"

    server = Server(_env(data_dir), data_dir.parent)
    try:
        again = httpx.get(f"{server.url}/api/v1/chat/session", headers=headers).json()
        assert again["id"] == session["id"] and again["title"] == "kept"
    finally:
        assert server.stop() == 0


def test_db_upgrade_command(tmp_path: Path):
    result = subprocess.run(  # noqa: S603
        [*CLI, "db", "upgrade"], env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"database schema at revision {head_revision()}" in result.stdout
    assert not _postgres_running(tmp_path / "data" / "pgdata")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--user", "a", "--org", "b", "--ttl", "forever"], "not a duration"),
        (["--user", "", "--org", "b"], "token `sub` must be 1 to 255 characters"),  # was issued, then always refused
        (["--user", "a", "--org", " "], "token `orgs`: each organization id must be 1 to 255"),
    ],
)
def test_token_command_rejects_what_the_server_would(tmp_path: Path, arguments: list[str], message: str):
    result = subprocess.run(  # noqa: S603
        [*CLI, "token", *arguments], env=_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr


async def test_the_served_app_moves_what_start_up_made_out_of_the_collectors_way(settings, monkeypatch):
    """``citechat serve`` runs ``create_served_app``: once started, the objects alive are frozen, so a full
    collection no longer walks the models and libraries (a ~150 ms stop of every stream)."""
    import gc

    from citechat.api import app as app_module
    from tests.conftest import running

    made = app_module.create_app
    monkeypatch.setattr(app_module, "create_app", lambda: made(settings))
    gc.unfreeze()
    try:
        async with running(app_module.create_served_app()):
            assert gc.get_freeze_count() > 100_000
    finally:
        gc.unfreeze()  # this test process makes many apps: let the rest be collected
