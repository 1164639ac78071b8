"""The benchmark's servers as processes of their own: each one's CPU time and memory are then its own, read from
the operating system (psutil), and none of them competes for the benchmark client's interpreter lock."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
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


@dataclass(frozen=True)
class Launched:
    """A server process started and perhaps not yet listening."""

    name: str
    url: str
    popen: subprocess.Popen
    log: Path


def launch(name: str, module: str, args: list[str], *, env: dict[str, str], log: Path, port: int) -> Launched:
    """Starts ``python -m module --port port *args``, its output to ``log``; ``ready`` waits for it, ``stop``
    ends it. Ports are chosen before launching, so servers that know each other's address start together."""
    with log.open("w") as output:
        popen = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", module, "--port", str(port), *args], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    return Launched(name, f"http://127.0.0.1:{port}", popen, log)


async def ready(launched: Launched, path: str, timeout_s: float = 120) -> Service:
    """The service once ``GET path`` answers 200."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if launched.popen.poll() is not None:
                raise RuntimeError(f"{launched.name} exited with {launched.popen.returncode}: {_tail(launched.log)}")
            try:
                if (await http.get(launched.url + path)).status_code == 200:
                    return Service(launched.name, launched.url, psutil.Process(launched.popen.pid))
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{launched.name} was not ready in {timeout_s:.0f} s: {_tail(launched.log)}")


async def stop(launched: Launched) -> None:
    """SIGINT (a graceful stop), then SIGKILL after 30 s."""
    if launched.popen.poll() is None:
        launched.popen.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(launched.popen.wait, 30)
        except subprocess.TimeoutExpired:
            launched.popen.kill()
            await asyncio.to_thread(launched.popen.wait)


def child_env(**values: str) -> dict[str, str]:
    """This process's environment without any ``CITECHAT_`` setting, plus ``values``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CITECHAT_")} | values


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]
