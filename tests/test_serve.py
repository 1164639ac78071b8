"""``citechat serve`` as a user runs it: a real process on its embedded defaults, stopped and started again."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from citechat.db.migrations import head_revision

CLI = [sys.executable, "-m", "citechat"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITECHAT_")}
    return env | {"CITECHAT_DATA_DIR": str(data_dir)}


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self.process = subprocess.Popen(  # noqa: S603
            [*CLI, "serve", "--port", str(self.port)],
            env=_env(data_dir),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"citechat serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"citechat serve not ready in 60 s: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


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

    server = Server(data_dir)
    try:
        session = httpx.get(f"{server.url}/api/v1/chat/session", headers=headers).json()
        renamed = httpx.patch(
            f"{server.url}/api/v1/chat/session/{session['id']}", json={"title": "kept"}, headers=headers
        )
        assert renamed.status_code == 200
    finally:
        assert server.stop() == 0
    assert not _postgres_running(data_dir / "pgdata"), "embedded PostgreSQL must stop with the service"

    server = Server(data_dir)
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


def test_token_command_rejects_bad_ttl(tmp_path: Path):
    result = subprocess.run(  # noqa: S603
        [*CLI, "token", "--user", "a", "--org", "b", "--ttl", "forever"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "not a duration" in result.stderr
