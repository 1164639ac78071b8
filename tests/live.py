"""``citechat serve`` as a real process (or several workers), for tests that need process boundaries: restarts,
kills, two workers sharing a database."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CLI = [sys.executable, "-m", "citechat"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any CITECHAT_ setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITECHAT_")}
    return env | variables


class Server:
    """``citechat serve`` on a free port, ready (``/readyz``) when constructed."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"serve-{self.port}.log"
        self.process = subprocess.Popen(  # noqa: S603
            [*CLI, "serve", "--port", str(self.port), "--workers", str(workers)],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches every worker
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"citechat serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"citechat serve not ready in 90 s: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        """Ctrl-C, as an operator stops it."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL to every process of the server: a crash, with no chance to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
