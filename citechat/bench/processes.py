"""The benchmark's servers as processes of their own: each one's CPU time and memory are then its own, read from
the operating system (psutil), and none of them competes for the benchmark client's interpreter lock."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil


@dataclass(frozen=True)
class Service:
    """A running server: where it listens, and its process."""

    name: str
    url: str
    process: psutil.Process

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process has used so far, its threads included."""
        times = self.process.cpu_times()
        return times.user + times.system

    def rss_bytes(self) -> int:
        """Resident size of the process and of any processes it started (none but PostgreSQL's, which are left out:
        the embedded server is started detached, so its processes are never the service's children)."""
        processes = [self.process, *self.process.children(recursive=True)]
        total = 0
        for process in processes:
            try:
                if process is self.process or "postgres" not in process.name():
                    total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def service(
    name: str, module: str, args: list[str], *, env: dict[str, str], ready_path: str, log: Path, timeout_s: float = 120
) -> AsyncIterator[Service]:
    """Runs ``python -m module --port N *args`` until the block ends (SIGINT, then SIGKILL after 30 s)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        process = subprocess.Popen(  # noqa: S603, ASYNC220 (our own interpreter and module; returns at once)
            [sys.executable, "-m", module, "--port", str(port), *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        await _wait_ready(name, process, url + ready_path, log, timeout_s)
        yield Service(name, url, psutil.Process(process.pid))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


def child_env(**values: str) -> dict[str, str]:
    """This process's environment without any ``CITECHAT_`` setting, plus ``values``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CITECHAT_")} | values


async def _wait_ready(name: str, process: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {_tail(log)}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} was not ready in {timeout_s:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]
