"""What the browser tests share: Debian's Chromium driven by Playwright, a whole citechat app served by uvicorn on
127.0.0.1, identities with their documents, and a page that records anything a script did that it should not.

Chromium is not downloaded by Playwright (the machine has no route to its CDN): it is the distribution's package at
``/usr/bin/chromium``, which ``.ci/run`` installs when missing. Without it the tests fail; they never skip.
"""

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect

from citechat.api.app import create_app
from citechat.settings import Settings
from tests.conftest import token_for
from tests.live import Server, clean_env
from tests.standins.server import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "web"
TIMEOUT_MS = 20_000  # how long an expectation waits: generous, for a machine busy with other work

expect.set_options(timeout=TIMEOUT_MS)


def launch(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@contextmanager
def live_citechat(settings: Settings) -> Iterator[str]:
    """citechat (lifespan and all) on a free 127.0.0.1 port; yields its URL."""
    with BackgroundServer(create_app(settings), name="citechat", start_timeout_s=60, lifespan="on") as server:
        yield server.url


@contextmanager
def citechat_serve(data_dir: Path) -> Iterator[str]:
    """``citechat serve`` as a user starts it (its own process, embedded defaults, 127.0.0.1); yields its URL."""
    server = Server(clean_env(CITECHAT_DATA_DIR=str(data_dir)), data_dir.parent)
    try:
        yield server.url
    finally:
        assert server.stop() == 0, server.log.read_text()[-3000:]


@dataclass
class Identity:
    """A new user in a new organization, with a token for it."""

    base_url: str
    user: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:8]}")
    org: str = field(default_factory=lambda: f"org-{uuid.uuid4().hex[:8]}")

    @property
    def token(self) -> str:
        return token_for(self.user, [self.org])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{self.base_url}{path}", headers=self.headers, timeout=30, **kwargs)

    def add_document(self, name: str, content: bytes, content_type: str = "application/pdf") -> dict:
        """Uploads through the API and waits until it is indexed."""
        response = self.api("POST", "/api/v1/documents", files={"file": (name, content, content_type)})
        assert response.status_code in (200, 202), response.text
        document = response.json()
        deadline = time.monotonic() + 60
        while document["status"] in ("pending", "processing") and time.monotonic() < deadline:
            time.sleep(0.2)
            document = self.api("GET", f"/api/v1/documents/{document['id']}").json()
        assert document["status"] == "ready", document
        return document


class WatchedPage:
    """A page in a fresh browser context, signed in as ``identity`` (unless ``signed_in`` is false), with every
    script error, console error and dialog recorded, so a test can assert that nothing ran that should not."""

    def __init__(
        self,
        browser: Browser,
        identity: Identity,
        *,
        signed_in: bool = True,
        width: int = 1280,
        height: int = 860,
        color_scheme: str = "light",
    ) -> None:
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=color_scheme, reduced_motion="reduce"
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        if signed_in:
            token = json.dumps(identity.token)
            self.context.add_init_script(
                f"localStorage.citechat_seeded || localStorage.setItem('citechat.token', {token})"
            )
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)
        self.page.on("request", lambda r: self.requests.append((r.method, r.url, r.headers)))
        self.base_url = identity.base_url

    def _console(self, message) -> None:
        # A refused request is logged by Chromium itself ("Failed to load resource"): that is the API answering
        # 404/429 as the test intends, not a script error.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self) -> Page:
        self.page.goto(self.base_url)
        return self.page

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("document.getElementById('toasts')?.replaceChildren()")
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
        return path

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs

    def close(self) -> None:
        self.context.close()


def ask(page: Page, question: str) -> None:
    box = page.get_by_role("textbox", name="Ask a question about your documents")
    box.fill(question)
    box.press("Enter")
