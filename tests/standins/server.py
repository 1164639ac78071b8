"""Runs an ASGI app (a stand-in's Starlette app, or citechat's own with its lifespan) under uvicorn on a free
127.0.0.1 port in a background thread: real HTTP, where httpx's in-process transport would buffer a stream."""

import socket
import threading
import time
from typing import Any, Self

import uvicorn


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` serves ``app`` at ``server.url`` until the block ends.

    ``start()`` returns once uvicorn is accepting connections; ``stop()`` asks it to exit and waits for the thread.
    ``port`` is 0 until the first start; a server can be started again after ``stop()`` (on a new port)."""

    def __init__(self, app: Any, *, name: str = "server", start_timeout_s: float = 10.0, lifespan: str = "off") -> None:
        self.app = app
        self.name = name
        self.lifespan = lifespan
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan=self.lifespan, timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=self.name)
        thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                server.should_exit = True
                thread.join(timeout=self.start_timeout_s)
                sock.close()
                raise RuntimeError(f"the {self.name} did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
