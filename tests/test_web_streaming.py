"""The chat page while answers are written by a model (the OpenAI stand-in, slowed down or failing on purpose):
thinking and token-by-token streaming, unsupported citations, failures with Retry, Stop, quota refusals, and
answers that outlive a lost connection or a reload."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Locator, Route, expect

from tests import samples
from tests.browser import Identity, WatchedPage, ask, live_citechat
from tests.conftest import answered_by
from tests.standins.openai import OpenAIStandIn

KEY = "standin-key-0123456789"
WORDS = (
    "The glacier survey measured a retreat of 312 metres at the Vatnajokull outlet [1]. "
    "Over the same years the bakery's quarterly revenue rose to 7.4 million dollars [2]. "
    "Both figures come straight from the field notes, which end here."
)


@pytest.fixture(scope="module")
def model() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key=KEY, models=("standin-model",)) as server:
        yield server


@pytest.fixture(scope="module")
def base_url(settings, model) -> Iterator[str]:
    configured = answered_by(settings, model)
    with live_citechat(configured) as url:
        yield url


@pytest.fixture(scope="module")
def team(base_url) -> str:
    """An organization with the field notes indexed; each test is a new user in it (so a chat of its own)."""
    founder = Identity(base_url)
    founder.add_document("field-notes.pdf", samples.pdf(samples.TOPICS))
    return founder.org


@pytest.fixture
def person(base_url, model, team) -> Identity:
    model.reset()
    person = Identity(base_url, org=team)
    session = person.api("GET", "/api/v1/chat/session").json()  # Balanced: Strict declines loose questions
    assert person.api("PATCH", f"/api/v1/chat/session/{session['id']}", json={"mode": "balanced"}).status_code == 200
    return person


@pytest.fixture
def watched(browser, person) -> Iterator[WatchedPage]:
    page = WatchedPage(browser, person)
    yield page
    page.close()


def messages(person: Identity) -> list[dict]:
    session = person.api("GET", "/api/v1/chat/session").json()
    return person.api("GET", f"/api/v1/chat/session/{session['id']}/messages").json()


def test_answer_streams_token_by_token(watched, person, model):
    model.queue_answers(WORDS)
    model.delay_s = 1.0  # the model takes a moment before its first token ...
    model.stream_delay_s = 0.1  # ... and then writes word by word
    page = watched.open()
    ask(page, "What do the field notes say?")
    expect(page.locator(".msg-user").last).to_have_text("What do the field notes say?")
    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".thinking")).to_be_visible()
    expect(answer).to_have_attribute("aria-busy", "true")
    expect(page.get_by_role("button", name="Stop the answer")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_hidden()

    expect(answer.locator(".markdown")).to_contain_text("The glacier survey measured")
    expect(answer).to_have_attribute("data-state", "streaming")
    assert "which end here" not in answer.locator(".markdown").inner_text()  # part of the answer, not all of it
    expect(answer.locator(".thinking")).to_have_count(0)
    watched.screenshot("09-streaming")

    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_contain_text("which end here")
    expect(answer.locator("a.cite")).to_have_text(["1", "2"])
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(answer).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("#announcer")).to_contain_text("Answer: The glacier survey")
    watched.assert_clean()


def test_unsupported_citation_is_flagged(watched, model):
    model.queue_answers("The lighthouse keeper adopted eleven cats and opened a cinema [1].")
    page = watched.open()
    ask(page, "What did the lighthouse keeper do in the winter of 1911?")
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    link = answer.locator("a.cite")
    expect(link).to_have_class(re.compile(r"\bunsupported\b"))
    expect(link).to_have_attribute("aria-label", re.compile("not clearly supported"))
    card = answer.locator(".source.unsupported")
    expect(card.locator(".source-flag")).to_contain_text("not clearly supported")
    expect(answer.locator(".flag-count")).to_have_text("1 not clearly supported")
    watched.assert_clean()


def test_failed_answer_shows_the_reason_and_retry(watched, person, model):
    model.fail_next(500, times=3, retry_after_ms=1)  # every attempt of the model client fails
    page = watched.open()
    ask(page, "How far did the glacier retreat?")
    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".error-box")).to_contain_text("the language model failed; try again", ignore_case=True)
    expect(answer.get_by_role("button", name="Retry")).to_be_visible()
    expect(page.locator("#announcer")).to_contain_text("The answer failed")
    watched.screenshot("10-failed-with-retry")

    page.reload()  # the failure was saved: it shows again, with its Retry
    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".error-box")).to_contain_text("the language model failed; try again", ignore_case=True)
    expect(answer.get_by_role("button", name="Retry")).to_be_visible()
    watched.assert_clean()


def test_retry_regenerates_the_failed_answer(watched, person, model):
    model.fail_next(500, times=3, retry_after_ms=1)
    page = watched.open()
    ask(page, "How far did the glacier retreat?")
    answer = page.locator(".msg-assistant").last
    retry = answer.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    failed_id = answer.get_attribute("data-id")
    model.answer_fn = lambda body: "It retreated 312 metres [1]."  # also any condense request: harmless
    retry.click()
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_have_text("It retreated 312 metres 1.")
    expect(answer.locator(".error-box")).to_have_count(0)
    expect(page.locator(".msg-user")).to_have_count(1)  # the question is not asked twice
    assert answer.get_attribute("data-id") == failed_id
    stored = messages(person)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "completed"), ("assistant", "completed")]
    assert stored[1]["id"] == failed_id
    watched.assert_clean()


def test_stop_keeps_the_partial_answer(watched, person, model):
    model.answer_fn = lambda body: WORDS
    model.stream_delay_s = 0.4  # slow enough that the answer cannot finish before the stop reaches the server
    page = watched.open()
    ask(page, "What do the field notes say?")
    answer = page.locator(".msg-assistant").last
    expect(answer.locator(".markdown")).to_contain_text("The glacier survey")
    with page.expect_response("**/api/v1/chat/message/*/cancel") as cancelled:
        page.keyboard.press("Escape")  # Esc stops, like the Stop button
    assert cancelled.value.json()["status"] == "stopped"
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".stopped-note")).to_contain_text("Stopped.")
    expect(answer.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    shown = answer.locator(".markdown").inner_text()
    assert "which end here" not in shown
    stored = messages(person)[-1]
    assert stored["status"] == "stopped" and stored["content"].startswith("The glacier survey")
    watched.assert_clean()


def spend(person: Identity, times: int) -> None:
    """Sends messages through the API, each in a new chat, so they count against the person's quota."""
    for _ in range(times):
        session = person.api("POST", "/api/v1/chat/session/new").json()
        sent = person.api("POST", "/api/v1/chat/message", params={"session_id": session["id"]}, json={"question": "hi"})
        assert sent.status_code == 200, sent.text


def test_quota_refusal_says_when_asking_is_possible_again(watched, person, model):
    """The server's real quota (50 a user per rolling hour): a warning when few are left, then its 429."""
    spend(person, 48)
    page = watched.open()
    expect(page.locator("#quota-note")).to_contain_text("2 messages left, until")  # warned before it runs out
    spend(person, 2)
    ask(page, "How far did the glacier retreat?")
    notice = page.locator(".msg-assistant").last.locator(".rate-limit")
    expect(notice).to_contain_text("You have reached the message limit.")
    expect(notice).to_contain_text("You can ask again at")
    expect(notice).to_contain_text(re.compile(r"in (59|60) minutes|in 1 hour"))
    expect(page.locator(".msg-user").last.locator(".unsent-note")).to_have_text("Not sent")
    box = page.get_by_role("textbox", name="Ask a question about your documents")
    expect(box).to_have_value("How far did the glacier retreat?")  # kept, to send when the quota allows
    watched.screenshot("11-quota-reached")

    # An organization's quota (1,000 a day) is too many to spend here: its refusal is routed, in the server's shape.
    reset = datetime.now(UTC) + timedelta(minutes=25, seconds=20)
    body = {"detail": "limit reached", "limit": "organization", "reset_at": reset.isoformat(), "retry_after": 1520}
    watched.page.route(
        "**/api/v1/chat/message/stream*",
        lambda route: route.fulfill(status=429, json=body, headers={"Retry-After": "1520"}),
    )
    ask(page, "How far did the glacier retreat?")
    expect(page.locator(".rate-limit").last).to_contain_text("Your organization has reached the message limit.")
    expect(page.locator(".rate-limit").last).to_contain_text("in 25 minutes")
    watched.assert_clean()


CUT_AFTER = 5  # user_message, sources and three tokens reach the page; then the connection drops


def _drop_connection_mid_answer(watched: WatchedPage, model: OpenAIStandIn) -> tuple[Locator, dict]:
    """The page's stream delivers only the first events and then ends without done or error, as a connection that
    breaks does. (Chromium's offline switch leaves open streams alone, so the cut is made by routing the request.)
    Returns the answer and ``{"last_id"}``: the id of the last event the page got."""
    model.queue_answers(WORDS)
    model.stream_delay_s = 0.05
    seen: dict = {}

    def cut(route: Route) -> None:
        response = route.fetch()
        events = [block for block in response.text().split("\n\n") if block.startswith("id:")][:CUT_AFTER]
        seen["last_id"] = int(events[-1].splitlines()[0].removeprefix("id:"))
        route.fulfill(response=response, body="\n\n".join(events) + "\n\n")

    page = watched.open()
    page.route("**/api/v1/chat/message/stream?*", cut)
    ask(page, "What do the field notes say?")
    return page.locator(".msg-assistant").last, seen


def test_lost_connection_resumes_the_answer(watched, person, model):
    answer, _ = _drop_connection_mid_answer(watched, model)
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".reconnect-note")).to_have_count(0)
    text = answer.locator(".markdown").inner_text()
    assert text.count("The glacier survey") == 1 and text.endswith("which end here.")  # nothing lost, nothing twice
    assert messages(person)[-1]["status"] == "completed"
    watched.assert_clean()


def test_lost_connection_replays_the_missed_events(watched, model):
    """The same through the stream's replay: GET .../stream with Last-Event-ID, not by reading the saved answer."""
    answer, seen = _drop_connection_mid_answer(watched, model)
    expect(answer).to_have_attribute("data-state", "completed")
    replays = [h for method, url, h in watched.requests if method == "GET" and url.endswith("/stream")]
    assert [int(h["last-event-id"]) for h in replays] == [seen["last_id"]]
    polled = [url for method, url, _ in watched.requests if method == "GET" and "/messages?limit=10" in url]
    assert not polled
    text = answer.locator(".markdown").inner_text()
    assert text.count("The glacier survey") == 1 and text.endswith("which end here.")
    watched.assert_clean()


def test_reload_during_an_answer_picks_it_up_again(watched, person, model):
    model.queue_answers(WORDS)
    model.stream_delay_s = 0.1
    page = watched.open()
    ask(page, "What do the field notes say?")
    expect(page.locator(".msg-assistant").last.locator(".markdown")).to_contain_text("The glacier survey")
    page.reload()  # the answer goes on on the server; the page finds it still being written and follows it
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_attribute("data-state", "completed")
    expect(answer.locator(".markdown")).to_contain_text("which end here")
    expect(page.locator(".msg-user")).to_have_text(["What do the field notes say?"])
    watched.assert_clean()
