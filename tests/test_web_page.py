"""The built-in chat page in a real browser against a live citechat (extractive answers, real index, real PDFs):
sign-in, documents, asking with citations, history, modes, hostile document text, phone width and themes."""

import base64
import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests import samples
from tests.browser import ARTIFACTS, TIMEOUT_MS, Identity, WatchedPage, ask, live_citechat

GLACIER = "How far did the glacier retreat at the Vatnajokull outlet?"


@pytest.fixture(scope="module")
def base_url(settings) -> Iterator[str]:
    with live_citechat(settings) as url:
        yield url


@pytest.fixture
def person(base_url) -> Identity:
    return Identity(base_url)


@pytest.fixture
def watched(browser, person) -> Iterator[WatchedPage]:
    page = WatchedPage(browser, person)
    yield page
    page.close()


def drop_file(page, selector: str, name: str, content: bytes, mime: str) -> None:
    """Drops a file on an element the way a drag from the desktop does (a DataTransfer holding a File)."""
    page.evaluate(
        """([selector, name, data, mime]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const target = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                target.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [selector, name, base64.b64encode(content).decode(), mime],
    )


def test_sign_in_upload_ask_and_follow_a_citation(browser, person):
    watched = WatchedPage(browser, person, signed_in=False)
    page = watched.open()
    expect(page.get_by_role("heading", name="Sign in with a token")).to_be_visible()
    expect(page.locator("#dev-signin")).to_be_hidden()  # an operator-configured secret: no development tokens
    watched.screenshot("01-sign-in")
    page.get_by_label("Bearer token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-notice")).to_contain_text("not a token")
    page.get_by_label("Bearer token").fill(person.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible()
    expect(page.locator("#who-name")).to_have_text(person.user)

    # Documents: the picker, with upload progress reported on the way.
    page.get_by_role("button", name="Documents", exact=True).click()
    page.evaluate(
        """() => {
            const $ = (selector) => document.querySelector(selector);
            window.__progress = [];
            const note = (c) => window.__progress.push(Number(c.target.getAttribute("aria-valuenow")));
            const options = { attributes: true, subtree: true, attributeFilter: ["aria-valuenow"] };
            new MutationObserver((changes) => changes.forEach(note)).observe($("#upload-list"), options);
        }"""
    )
    notes = samples.pdf(samples.TOPICS + [" ".join(samples.TOPICS)] * 12)
    page.locator("#file-input").set_input_files(
        files=[{"name": "field-notes.pdf", "mimeType": "application/pdf", "buffer": notes}]
    )
    row = page.locator(".document", has_text="field-notes.pdf")
    expect(row.locator(".badge")).to_have_text("Ready", timeout=60_000)
    expect(row).to_contain_text("16 pages")
    assert page.evaluate("window.__progress")[-1] == 100

    # Drag and drop: a scanned PDF with no text fails, with the reason shown; then it is deleted.
    drop_file(page, "#dropzone", "scan.pdf", samples.image_only_pdf(), "application/pdf")
    failed = page.locator(".document", has_text="scan.pdf")
    expect(failed.locator(".badge")).to_have_text("Failed", timeout=60_000)
    expect(failed.locator(".doc-error")).not_to_be_empty()
    watched.screenshot("02-documents")
    failed.get_by_role("button", name="Delete scan.pdf").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(failed).to_have_count(0)
    page.keyboard.press("Escape")
    expect(page.locator("#documents-panel")).to_be_hidden()

    # Ask: the question shows at once, the answer arrives with cited sources.
    ask(page, GLACIER)
    expect(page.locator(".msg-user").last).to_have_text(GLACIER)
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_contain_text("312 metres")
    expect(page.locator("#chat-title")).to_have_text(GLACIER[:50] + "...")
    expect(page.locator(".session.current .session-title")).to_have_text(GLACIER[:50] + "...")

    # Follow the citation: its card is scrolled to, highlighted, and names the right document and page.
    page.locator("#conversation").evaluate("el => el.scrollTo(0, 0)")
    link = answer.locator("a.cite").first
    number = link.inner_text()
    expect(link).to_have_attribute("aria-label", re.compile(r"field-notes\.pdf, page 3"))
    link.click()
    card = answer.locator(f".source[id$='-{number}']")
    expect(card).to_have_class(re.compile(r"\bhighlight\b"))
    expect(card).to_have_class(re.compile(r"\bcited\b"))
    expect(card).to_be_in_viewport()
    expect(card.locator(".source-name")).to_have_text("field-notes.pdf")
    expect(card.locator(".source-page")).to_have_text("page 3")
    expect(card.locator(".source-text")).to_contain_text("312 metres")
    expect(card.locator(".source-score")).to_have_text(re.compile(r"\d+%"))
    watched.screenshot("03-answer-with-sources")
    watched.assert_clean()
    watched.close()


def test_history_new_chat_rename_archive_delete(watched, person):
    page = watched.open()
    ask(page, "What did the lighthouse keeper log?")
    expect(page.locator(".msg-assistant").last).to_have_attribute("data-state", "completed")
    first = page.locator(".session", has_text="What did the lighthouse keeper log?")
    expect(first).to_have_class(re.compile(r"\bcurrent\b"))

    page.get_by_role("button", name="New chat", exact=True).click()
    expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible()
    expect(page.locator(".session")).to_have_count(2)
    expect(page.locator(".session.current .session-title")).to_have_text("New Chat")
    page.get_by_role("button", name="New chat", exact=True).click()  # the open chat is empty: no second empty one
    expect(page.locator(".session")).to_have_count(2)
    expect(first.locator("time")).to_have_text("just now")

    # History: the earlier chat opens with its messages.
    first.locator(".session-open").click()
    expect(page.locator(".msg-user")).to_have_text(["What did the lighthouse keeper log?"])
    expect(page.locator("#chat-title")).to_have_text("What did the lighthouse keeper log?")

    # Search: by what was asked, in any case; clearing it brings every chat back.
    search = page.get_by_role("searchbox", name="Search chats")
    search.fill("LIGHTHOUSE keeper")
    expect(page.locator(".session")).to_have_count(1)
    expect(page.locator(".session .session-title")).to_have_text("What did the lighthouse keeper log?")
    search.fill("moraine")
    expect(page.locator(".session")).to_have_count(0)
    expect(page.locator("#history-empty")).to_have_text("No chats match.")
    search.fill("")
    expect(page.locator(".session")).to_have_count(2)

    # Rename.
    first.get_by_role("button", name=re.compile("Actions for")).click()
    page.get_by_role("menuitem", name="Rename").click()
    page.get_by_label("Title").fill("Lighthouse questions")
    page.get_by_role("dialog").get_by_role("button", name="Rename").click()
    renamed = page.locator(".session", has_text="Lighthouse questions")
    expect(renamed).to_have_count(1)
    expect(page.locator("#chat-title")).to_have_text("Lighthouse questions")
    watched.screenshot("04-history")

    # Archive: it leaves the list (the open chat becomes the active one), and comes back with "Show archived".
    renamed.get_by_role("button", name=re.compile("Actions for")).click()
    page.get_by_role("menuitem", name="Archive").click()
    expect(renamed).to_have_count(0)
    expect(page.locator("#chat-title")).to_have_text("New Chat")
    page.get_by_text("Show archived").click()
    expect(renamed.locator(".tag")).to_have_text("Archived")
    renamed.locator(".session-open").click()
    expect(page.locator("#composer-note")).to_contain_text("archived and read-only")
    expect(page.get_by_role("textbox", name="Ask a question about your documents")).to_be_disabled()

    # Delete asks first; cancelling keeps the chat.
    renamed.get_by_role("button", name=re.compile("Actions for")).click()
    page.get_by_role("menuitem", name="Delete").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Lighthouse questions")
    dialog.get_by_role("button", name="Cancel").click()
    expect(renamed).to_have_count(1)
    renamed.get_by_role("button", name=re.compile("Actions for")).click()
    page.get_by_role("menuitem", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(renamed).to_have_count(0)
    expect(page.locator(".session")).to_have_count(1)
    sessions = person.api("GET", "/api/v1/chat/sessions", params={"include_archived": True}).json()
    assert [s["title"] for s in sessions] == ["New Chat"]
    watched.assert_clean()


def test_mode_change_is_saved_with_the_chat_and_used(watched, person):
    person.add_document("field-notes.pdf", samples.pdf(samples.TOPICS))
    page = watched.open()
    page.get_by_role("button", name=re.compile("Balanced|Strict|Creative")).click()
    settings = page.get_by_role("dialog", name="Answer settings")
    for mode, about in [("Strict", "declines otherwise"), ("Balanced", "marked inferences"), ("Creative", "general")]:
        expect(settings.locator(".mode-option", has_text=mode)).to_contain_text(about)
    expect(settings.get_by_label("Model")).to_have_value("extractive")
    watched.screenshot("05-settings")
    settings.get_by_text("Creative").click()
    page.keyboard.press("Escape")
    expect(settings).to_be_hidden()
    expect(page.locator("#settings-summary")).to_have_text("Creative")

    ask(page, GLACIER)
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".answer-meta")).to_contain_text("Creative")
    assert person.api("GET", "/api/v1/chat/session").json()["mode"] == "creative"
    page.reload()
    expect(page.locator("#settings-summary")).to_have_text("Creative")
    watched.assert_clean()


def test_a_cited_page_opens_in_its_document(watched, person):
    """ "Open page 3" shows the original PDF at page 3 (``#page=3``, which the PDF viewer honours), fetched with the
    token; Markdown opens as text; HTML is downloaded, never shown as a page of citechat's; the documents panel opens
    them too; a deleted document says so."""
    notes = samples.pdf(samples.TOPICS)
    person.add_document("field-notes.pdf", notes)
    page = watched.open()
    page.evaluate(_KEEP_BLOBS)
    ask(page, GLACIER)
    answer = page.locator(".msg-assistant").first
    expect(answer).to_have_attribute("data-state", "completed")
    card = answer.locator(".source.cited", has_text="312 metres")
    expect(card.locator(".source-page")).to_have_text("page 3")
    button = card.get_by_role("button", name="Open field-notes.pdf at page 3")
    expect(button).to_have_text("page 3")
    with watched.context.expect_page() as opened:
        button.click()
    tab = opened.value
    tab.wait_for_url(re.compile(r"^blob:http://127\.0\.0\.1:\d+/[0-9a-f-]+#page=3$"))
    assert tab.evaluate("document.contentType") == "application/pdf"
    expect(_pdf_viewer(tab).locator("#pageSelector")).to_have_value("3")  # Chromium's own viewer, at the cited page
    assert _blob(page, tab.url) == notes
    tab.screenshot(path=ARTIFACTS / "12-cited-page-opened.png")
    tab.close()

    person.add_document("pilot-log.md", b"# Pilot log\n\nThe harbour pilot boarded 41 ships in March.")
    html = b"<html><body><p>The harbour pilot also boarded 39 ships in April.</p></body></html>"
    person.add_document("pilots.html", html)
    ask(page, "How many ships did the harbour pilot board?")
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    for folded in answer.locator("details.more-sources").all():
        folded.locator("summary").click()
    with watched.context.expect_page() as opened:
        answer.get_by_role("button", name="Open pilot-log.md").click()
    text = opened.value
    text.wait_for_url(re.compile(r"^blob:"))
    assert text.evaluate("document.contentType") == "text/plain"
    expect(text.locator("body")).to_have_text("# Pilot log\n\nThe harbour pilot boarded 41 ships in March.")
    text.close()
    with page.expect_download() as downloaded:
        answer.get_by_role("button", name="Open pilots.html").click()
    assert downloaded.value.suggested_filename == "pilots.html"
    assert watched.context.pages == [page]  # downloaded, not shown

    # The documents panel opens each document too: a PDF at its first page.
    page.locator("#documents-button").click()
    with watched.context.expect_page() as opened:
        page.locator("#documents-panel").get_by_role("button", name="Open field-notes.pdf").click()
    whole = opened.value
    whole.wait_for_url(re.compile(r"^blob:.*#page=1$"))
    expect(_pdf_viewer(whole).locator("#pageSelector")).to_have_value("1")
    whole.close()
    page.keyboard.press("Escape")

    documents = person.api("GET", "/api/v1/documents").json()
    pdf = next(d for d in documents if d["name"] == "field-notes.pdf")
    assert person.api("DELETE", f"/api/v1/documents/{pdf['id']}").status_code == 204
    with watched.context.expect_page() as opened:
        button.click()
    _closes(opened.value)
    expect(page.locator("#toasts")).to_contain_text("Could not open field-notes.pdf: it has been deleted.")
    watched.assert_clean()


def test_an_answer_is_copied_with_the_sources_it_cites(watched, person):
    """Pasted into a report, the answer's markers still point somewhere: the copy lists the cited sources, by
    number, with document and page."""
    person.add_document("field-notes.pdf", samples.pdf(samples.TOPICS))
    watched.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = watched.open()
    ask(page, GLACIER)
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    number = answer.locator("a.cite").first.inner_text()
    answer.get_by_role("button", name="Copy the answer with its sources").click()
    expect(page.locator("#toasts")).to_contain_text("Answer copied with its sources")
    [stored] = [m for m in person.api("GET", _messages(person)).json() if m["role"] == "assistant"]
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"{stored['content']}\n\nSources:\n[{number}] field-notes.pdf, page 3\n"
    watched.assert_clean()


def test_a_chat_exports_as_markdown_with_its_sources(watched, person, tmp_path):
    person.add_document("field-notes.pdf", samples.pdf(samples.TOPICS))
    page = watched.open()
    ask(page, GLACIER)
    expect(page.locator(".msg-assistant").last).to_have_attribute("data-state", "completed")
    ask(page, "What did the lighthouse keeper log?")
    expect(page.locator(".msg-assistant").last).to_have_attribute("data-state", "completed")
    page.locator(".session.current").get_by_role("button", name=re.compile("Actions for")).click()
    with page.expect_download() as downloaded:
        page.get_by_role("menuitem", name="Export").click()
    assert downloaded.value.suggested_filename == f"{GLACIER[:50]}....md"
    path = tmp_path / "chat.md"
    downloaded.value.save_as(path)
    stored = person.api("GET", _messages(person)).json()
    first, second = (m for m in stored if m["role"] == "assistant")
    text = path.read_text()
    assert text.startswith(f"# {GLACIER[:50]}...\n\nExported from citechat on ")
    assert text.endswith(
        f"**You:** {GLACIER}\n\n**citechat:** {first['content']}\n\nSources:\n[1] field-notes.pdf, page 3\n\n"
        f"**You:** What did the lighthouse keeper log?\n\n**citechat:** {second['content']}\n\nSources:\n"
        "[1] field-notes.pdf, page 1\n"
    )
    watched.assert_clean()


def test_a_question_typed_and_not_sent_is_kept_per_chat(watched, person):
    """A reload, a closed tab or a switch to another chat loses no unsent question; sending it, or signing out,
    forgets it."""
    page = watched.open()
    box = page.get_by_role("textbox", name="Ask a question about your documents")
    ask(page, "What did the lighthouse keeper log?")
    expect(page.locator(".msg-assistant").last).to_have_attribute("data-state", "completed")
    box.fill("How far did the glacier")
    page.reload()
    expect(box).to_have_value("How far did the glacier")
    page.get_by_role("button", name="New chat", exact=True).click()
    expect(page.locator(".session")).to_have_count(2)
    expect(box).to_have_value("")
    box.fill("A second draft")
    page.locator(".session", has_text="lighthouse keeper").locator(".session-open").click()
    expect(box).to_have_value("How far did the glacier")
    box.press("End")
    box.type(" retreat?")
    box.press("Enter")
    expect(page.locator(".msg-assistant").last).to_have_attribute("data-state", "completed")
    expect(box).to_have_value("")
    page.reload()
    expect(box).to_have_value("")
    page.locator(".session", has_text="New Chat").locator(".session-open").click()
    expect(box).to_have_value("A second draft")
    page.locator("#sign-out").click()
    drafts = page.evaluate("Object.keys(localStorage).filter((key) => key.startsWith('citechat.draft.'))")
    assert drafts == []
    watched.assert_clean()


def test_questions_asked_about_chosen_documents_only(watched, person):
    """Ticked in the documents panel, documents become the only ones asked about: a chip says so, the answers
    cite them alone (Strict refuses what only another document says), and clearing the chip asks all of them."""
    person.add_document("field-notes.pdf", samples.pdf(samples.TOPICS))
    person.add_document("camp-rules.pdf", samples.pdf(["Survey teams start at the east camp at six."]))
    page = watched.open()
    page.locator("#documents-button").click()
    panel = page.locator("#documents-panel")
    panel.get_by_role("checkbox", name="Ask about camp-rules.pdf").check()
    chip = page.locator("#scope-chip")
    expect(chip).to_have_text("Asking about camp-rules.pdf only")
    page.keyboard.press("Escape")
    ask(page, GLACIER)
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_have_text(
        "I don't have enough information in your documents to answer that."
    )
    expect(answer.locator(".answer-meta")).to_contain_text("asked about 1 document")

    page.locator("#documents-button").click()
    panel.get_by_role("checkbox", name="Ask about field-notes.pdf").check()
    expect(chip).to_have_text("Asking about camp-rules.pdf and 1 more only")
    page.keyboard.press("Escape")
    ask(page, GLACIER)
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_contain_text("312 metres")
    watched.screenshot("13-asked-about-chosen-documents")

    chip.get_by_role("button", name="Ask about all documents again").click()
    expect(chip).to_be_hidden()
    page.locator("#documents-button").click()
    expect(panel.get_by_role("checkbox", name="Ask about field-notes.pdf")).not_to_be_checked()
    page.keyboard.press("Escape")
    ask(page, "When do survey teams start?")
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".answer-meta")).not_to_contain_text("asked about")
    stored = [m for m in person.api("GET", _messages(person)).json() if m["role"] == "assistant"]
    assert [len(m["metadata"].get("documents", [])) for m in stored] == [1, 2, 0]
    watched.assert_clean()


def _messages(person) -> str:
    session = person.api("GET", "/api/v1/chat/session").json()
    return f"/api/v1/chat/session/{session['id']}/messages"


# The page's Content-Security-Policy lets it fetch nothing but its own origin, blob URLs included: the test keeps
# each blob the page makes a URL of, to read it back.
_KEEP_BLOBS = """() => {
    const make = URL.createObjectURL;
    window.__blobs = {};
    URL.createObjectURL = (blob) => { const url = make(blob); window.__blobs[url] = blob; return url; };
}"""


def _closes(tab) -> None:
    if not tab.is_closed():
        tab.wait_for_event("close")


def _pdf_viewer(tab):
    """The frame of Chromium's PDF viewer (an extension's page) in a tab showing a PDF, once it is there."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not (frames := [f for f in tab.frames if f.url.startswith("chrome-extension://")]):
        assert time.monotonic() < deadline, f"no PDF viewer in {[f.url for f in tab.frames]}"
        tab.wait_for_timeout(100)
    return frames[0]


def _blob(page, url: str) -> bytes:
    """The bytes of a blob URL the page made."""
    read = "async (url) => Array.from(new Uint8Array(await window.__blobs[url].arrayBuffer()))"
    return bytes(page.evaluate(read, url.split("#")[0]))


HOSTILE = [
    'Harbour log: <img src=x onerror="window.__pwned=1;alert(1)"> was painted on the pier.',
    "Harbour log: <script>window.__pwned=2;alert(2)</script> was chalked on the gate.",
    "Harbour log: [a link](javascript:window.__pwned=3) and <b>bold</b> were carved in the quay wall.",
]


def test_hostile_text_in_a_document_stays_text(watched, person):
    person.add_document("harbour.pdf", samples.pdf(HOSTILE))
    page = watched.open()
    question = "What was painted on the pier? <img src=y onerror=alert(9)>"
    ask(page, question)
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_contain_text('<img src=x onerror="window.__pwned=1;alert(1)">')
    expect(page.locator(".msg-user").last).to_have_text(question)
    expect(page.locator(".session.current .session-title")).to_contain_text("<img src=y")

    ask(page, "What was chalked on the gate and carved in the quay wall?")
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    cards = page.locator(".source-text")
    expect(cards.filter(has_text="<script>window.__pwned=2;alert(2)</script>")).not_to_have_count(0)
    expect(cards.filter(has_text="<b>bold</b>")).not_to_have_count(0)
    for selector in (".markdown img", ".markdown script", ".markdown b", ".source img", ".msg-user img"):
        expect(page.locator(selector)).to_have_count(0)
    expect(page.locator("a[href^='javascript']")).to_have_count(0)
    assert page.evaluate("window.__pwned") is None
    watched.screenshot("06-hostile-text-inert")
    watched.assert_clean()  # no alert() dialog, no script error


def test_phone_width_dark_theme_and_keyboard(browser, person):
    person.add_document("field-notes.pdf", samples.pdf(samples.TOPICS))
    watched = WatchedPage(browser, person, width=375, height=740, color_scheme="dark")
    page = watched.open()
    box = page.get_by_role("textbox", name="Ask a question about your documents")
    expect(box).to_be_focused()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()  # a drawer on a phone, closed at first
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the screen

    box.fill("First line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("First line\nsecond line")
    box.fill(GLACIER)
    box.press("Enter")
    expect(page.locator(".msg-assistant").last).to_have_attribute("data-state", "completed")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(14, 16, 21)", background  # the dark theme, from the system preference
    watched.screenshot("07-phone-dark")

    page.get_by_role("button", name="Show the history").click()
    expect(page.locator("#sidebar")).to_be_in_viewport()
    expect(page.locator(".session")).to_have_count(1)
    watched.screenshot("08-phone-history")
    page.locator("#sidebar-backdrop").click(position={"x": 360, "y": 400})
    expect(page.locator("#sidebar")).not_to_be_in_viewport()

    page.get_by_role("button", name="Switch to light theme").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    page.reload()
    expect(page.get_by_role("button", name="Switch to dark theme")).to_be_visible()
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
    watched.assert_clean()
    watched.close()
