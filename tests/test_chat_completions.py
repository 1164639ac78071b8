"""citechat's own Chat Completions client (``ChatCompletionsLLM``) over real HTTP against the OpenAI stand-in
(tests/standins/openai.py, itself checked against the official SDK in test_openai_standin.py): what it sends, what
it yields, how each failure reads, and when it retries."""

import email.utils
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent, LLMCompletionEndEvent
from llama_index.core.llms import ChatMessage, MessageRole
from pydantic import Field

from citechat.pipeline import chat_completions
from citechat.pipeline.chat_completions import (
    OPENAI_API_BASE,
    ChatCompletionsLLM,
    LLMError,
    LLMFailed,
    LLMFailedMidAnswer,
    LLMKeyRejected,
    LLMRateLimited,
    LLMRefused,
    LLMTimeout,
    LLMUnreachable,
)
from citechat.pipeline.llms import provider_from_settings
from citechat.settings import Settings
from tests.standins.openai import DEFAULT_ANSWER, OpenAIStandIn

pytestmark = pytest.mark.usefixtures("fresh_standin")
KEY = "sk-chat-completions-test-key-0123456789"
MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer from the sources."),
    ChatMessage(role=MessageRole.USER, content="What is the refund policy?"),
    ChatMessage(role=MessageRole.ASSISTANT, content="Refunds take 30 days [1]."),
    ChatMessage(role=MessageRole.USER, content="And for enterprise plans?"),
]
SENT = [
    {"role": "system", "content": "Answer from the sources."},
    {"role": "user", "content": "What is the refund policy?"},
    {"role": "assistant", "content": "Refunds take 30 days [1]."},
    {"role": "user", "content": "And for enterprise plans?"},
]
PROMPT_WORDS = sum(len(m["content"].split()) for m in SENT)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make(standin: OpenAIStandIn, http: httpx.AsyncClient):
    """``make(**fields)``: an LLM on the stand-in (gpt-4o, temperature 0.3, the right key) with ``fields`` changed."""

    def build(**fields) -> ChatCompletionsLLM:
        values = {"model": "gpt-4o", "temperature": 0.3, "api_base": standin.base_url, "api_key": KEY} | fields
        return ChatCompletionsLLM(http=http, **values)

    return build


async def _stream(llm: ChatCompletionsLLM, messages=MESSAGES, **kwargs) -> list:
    return [response async for response in await llm.astream_chat(messages, **kwargs)]


async def test_streamed_deltas_make_the_reply_and_usage_is_recorded(make, standin):
    llm = make()
    assert llm.usage == {}
    responses = await _stream(llm)

    deltas = [r.delta for r in responses if r.delta]
    assert len(deltas) == len(DEFAULT_ANSWER.split()) and "".join(deltas) == DEFAULT_ANSWER
    assert [r.message.content for r in responses if r.delta][:2] == ["Answer ", "Answer from "]  # the text so far
    assert all(r.message.role == MessageRole.ASSISTANT for r in responses)
    completion = len(DEFAULT_ANSWER.split())
    usage = {"prompt_tokens": PROMPT_WORDS, "completion_tokens": completion, "total_tokens": PROMPT_WORDS + completion}
    assert llm.usage == usage
    last = responses[-1]  # the whole answer once more, for LlamaIndex's tracing
    assert (last.delta, last.message.content) == ("", DEFAULT_ANSWER)
    assert last.additional_kwargs == usage | {"finish_reason": "stop"}

    [sent] = standin.requests
    assert sent == {
        "model": "gpt-4o",
        "messages": SENT,
        "temperature": 0.3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = standin.request_headers[-1]
    assert headers["authorization"] == f"Bearer {KEY}" and headers["content-type"] == "application/json"


async def test_achat_and_acomplete(make, standin):
    llm = make(max_tokens=50)
    chat = await llm.achat(MESSAGES)
    assert chat.message.content == DEFAULT_ANSWER and chat.message.role == MessageRole.ASSISTANT
    assert chat.additional_kwargs["completion_tokens"] == len(DEFAULT_ANSWER.split())
    assert chat.additional_kwargs["finish_reason"] == "stop"
    assert standin.last_request == {
        "model": "gpt-4o",
        "messages": SENT,
        "temperature": 0.3,
        "stream": False,
        "max_tokens": 50,
    }

    completion = await llm.acomplete("Summarise the refund policy.")
    assert completion.text == DEFAULT_ANSWER
    assert standin.last_request["messages"] == [{"role": "user", "content": "Summarise the refund policy."}]
    assert standin.last_request["stream"] is False and "stream_options" not in standin.last_request
    assert llm.usage == {}  # only a streamed answer's usage is the answer's

    streamed = [r async for r in await llm.astream_complete("Summarise the refund policy.")]
    assert "".join(r.delta for r in streamed) == DEFAULT_ANSWER and streamed[-1].text == DEFAULT_ANSWER


async def test_max_tokens_and_extra_parameters_are_sent(make, standin):
    llm = make(max_tokens=3)
    chat = await llm.achat(MESSAGES, seed=7, stop=["\n\n"], logit_bias={"50256": -100}, callback=object())
    assert chat.message.content == "Answer from the" and chat.additional_kwargs["finish_reason"] == "length"
    sent = standin.last_request
    assert sent["max_tokens"] == 3 and sent["seed"] == 7 and sent["stop"] == ["\n\n"]
    assert sent["logit_bias"] == {"50256": -100} and "callback" not in sent  # only plain JSON is sent


async def test_llamaindex_instrumentation_sees_the_calls(make):
    class Recorder(BaseEventHandler):
        events: list = Field(default_factory=list)

        def handle(self, event, **kwargs) -> None:
            self.events.append(event)

    recorder = Recorder()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(recorder)
    try:
        llm = make()
        await _stream(llm)
        await llm.acomplete("Summarise the refund policy.")
    finally:
        dispatcher.event_handlers.remove(recorder)
    kinds = [type(event) for event in recorder.events]
    assert LLMChatStartEvent in kinds and LLMChatEndEvent in kinds and LLMCompletionEndEvent in kinds
    [start] = [e for e in recorder.events if isinstance(e, LLMChatStartEvent)]
    assert start.model_dict["model_name"] == "gpt-4o" and KEY not in str(start.model_dict)
    [end] = [e for e in recorder.events if isinstance(e, LLMChatEndEvent)]
    assert end.response.additional_kwargs["completion_tokens"] == len(DEFAULT_ANSWER.split())


async def test_astream_text_streams_the_text_in_one_span_without_per_token_events(make, standin):
    class Recorder(BaseEventHandler):
        events: list = Field(default_factory=list)

        def handle(self, event, **kwargs) -> None:
            self.events.append(event)

    recorder = Recorder()
    get_dispatcher().add_event_handler(recorder)
    try:
        llm = make()
        pieces = [piece async for piece in await llm.astream_text(MESSAGES)]
    finally:
        get_dispatcher().event_handlers.remove(recorder)
    assert pieces == [f"{word} " for word in DEFAULT_ANSWER.split()[:-1]] + [DEFAULT_ANSWER.split()[-1]]
    completion = len(DEFAULT_ANSWER.split())
    assert llm.usage["completion_tokens"] == completion
    assert standin.requests[-1]["stream"] is True and standin.requests[-1]["messages"] == SENT
    assert [type(e) for e in recorder.events if "LLMChat" in type(e).__name__] == [LLMChatStartEvent, LLMChatEndEvent]
    [end] = [e for e in recorder.events if isinstance(e, LLMChatEndEvent)]
    assert end.response.message.content == DEFAULT_ANSWER
    assert end.response.additional_kwargs == llm.usage | {"finish_reason": "stop"}
    assert end.span_id is not None and end.span_id == recorder.events[0].span_id

    standin.stream_error_after = 2
    seen = []
    with pytest.raises(LLMFailedMidAnswer):
        async for piece in await make().astream_text(MESSAGES):
            seen.append(piece)
    assert seen == ["Answer ", "from "]


async def test_answers_share_one_connection(make, standin):
    """A streamed answer is read to its end, [DONE] and the chunked body's terminator: a response left unread is
    closed by httpx, not pooled, and each answer would open a new connection (against OpenAI, a TLS handshake)."""
    for _ in range(3):
        assert "".join([piece async for piece in await make().astream_text(MESSAGES)]) == DEFAULT_ANSWER
    await _stream(make())
    await make().achat(MESSAGES)
    assert len(standin.client_ports) == 5 and len(set(standin.client_ports)) == 1


@pytest.mark.parametrize(
    ("status", "error", "detail", "retryable", "attempts"),
    [
        (400, LLMRefused, "the language model refused the request (400)", False, 1),
        (403, LLMKeyRejected, "the language model rejected the configured API key", False, 1),
        (404, LLMRefused, "the language model refused the request (404)", False, 1),
        (408, LLMRefused, "the language model refused the request (408)", False, 3),
        (409, LLMRefused, "the language model refused the request (409)", False, 3),
        (429, LLMRateLimited, "the language model is rate limiting requests; try again shortly", True, 3),
        (500, LLMFailed, "the language model failed; try again", True, 3),
        (503, LLMFailed, "the language model failed; try again", True, 3),
    ],
)
async def test_status_errors(make, standin, status, error, detail, retryable, attempts):
    standin.fail_next(status, times=3, retry_after_ms=1)
    with pytest.raises(error) as raised:
        await _stream(make())
    assert (raised.value.detail, raised.value.retryable) == (detail, retryable)
    assert isinstance(raised.value, LLMError) and raised.value.status_code == 502
    assert len(standin.requests) == attempts  # 408, 409, 429 and 5xx are tried three times in all, others once
    _assert_no_secret(raised.value)


async def test_a_wrong_key_is_rejected_at_once(make, standin):
    wrong = "sk-wrong-key-that-must-not-leak-9876"
    with pytest.raises(LLMKeyRejected) as raised:
        await make(api_key=wrong).achat(MESSAGES)
    assert raised.value.detail == "the language model rejected the configured API key"
    assert raised.value.retryable is False and len(standin.requests) == 1
    _assert_no_secret(raised.value, wrong)
    assert "Incorrect API key" not in str(raised.value)  # the provider's body is never repeated


async def test_faults_are_retried_before_the_answer_begins(make, standin):
    standin.fail_next(500, times=2, retry_after_ms=1)
    responses = await _stream(make(max_retries=2))
    assert "".join(r.delta for r in responses) == DEFAULT_ANSWER and len(standin.requests) == 3

    standin.reset()
    standin.fail_next(429, times=1, retry_after_ms=1)
    assert (await make().acomplete("Summarise.")).text == DEFAULT_ANSWER and len(standin.requests) == 2

    standin.reset()
    standin.fail_next(500, times=1, retry_after_ms=1)
    with pytest.raises(LLMFailed):
        await make(max_retries=0).achat(MESSAGES)
    assert len(standin.requests) == 1


async def test_an_error_event_mid_answer_is_not_retried(make, standin):
    standin.stream_error_after = 2
    llm = make()
    seen = []
    with pytest.raises(LLMFailedMidAnswer) as raised:
        async for response in await llm.astream_chat(MESSAGES):
            seen.append(response.delta)
    assert seen == ["Answer ", "from "]
    assert (raised.value.detail, raised.value.retryable) == ("the language model failed mid-answer; try again", True)
    assert len(standin.requests) == 1
    _assert_no_secret(raised.value)


async def test_a_model_that_does_not_answer_times_out(make, standin):
    standin.delay_s = 1.0
    with pytest.raises(LLMTimeout) as raised:
        await make(timeout_s=0.2, max_retries=1).achat(MESSAGES)
    assert (raised.value.detail, raised.value.retryable) == (
        "the language model did not answer in time; try again",
        True,
    )
    assert len(standin.requests) == 2  # timeouts are retried


async def test_a_stream_that_stalls_times_out_without_a_retry(make, standin):
    standin.stream_delay_s = 1.0  # between words: the headers and the first chunk come at once
    with pytest.raises(LLMTimeout):
        await _stream(make(timeout_s=0.2))
    assert len(standin.requests) == 1


async def test_an_unreachable_server(make, monkeypatch):
    waits = []
    monkeypatch.setattr(chat_completions, "_backoff", lambda attempt: waits.append(attempt) or 0)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(LLMUnreachable) as raised:
        await _stream(make(api_base=f"http://127.0.0.1:{port}/v1"))
    detail = "the language model could not be reached; try again shortly"
    assert (raised.value.detail, raised.value.retryable) == (detail, True)
    assert waits == [0, 1]  # two retries, after the SDK's backoff
    _assert_no_secret(raised.value)


async def test_stopping_early_leaves_the_client_usable(make, standin):
    llm = make()
    stream = await llm.astream_chat(MESSAGES)
    assert (await anext(stream)).delta == "Answer "
    await stream.aclose()
    assert (await llm.achat(MESSAGES)).message.content == DEFAULT_ANSWER


def test_the_key_stays_out_of_reprs_and_payloads(make):
    llm = make()
    for shown in (repr(llm), str(llm), llm.to_json(), str(llm.to_dict()), str(llm.to_payload()), llm.model_dump_json()):
        assert KEY not in shown
    assert llm.api_key.get_secret_value() == KEY


def test_metadata_and_sync_calls(make):
    llm = make(context_window=4096)
    assert ChatCompletionsLLM.class_name() == "citechat_chat_completions"
    metadata = llm.metadata
    assert (metadata.context_window, metadata.num_output, metadata.is_chat_model) == (4096, -1, True)
    assert metadata.model_name == "gpt-4o" and make(max_tokens=300).metadata.num_output == 300
    for call in (llm.chat, llm.stream_chat):
        with pytest.raises(NotImplementedError, match="async only"):
            call(MESSAGES)
    for call in (llm.complete, llm.stream_complete):
        with pytest.raises(NotImplementedError, match="async only"):
            call("prompt")


async def test_server_sent_events_parsing():
    body = (
        b": a comment, then an event with two data lines and an id\n\n"
        b'id: 1\ndata: {"choices": [{"delta": {"content": "a"},\ndata:  "finish_reason": null}]}\n\n'
        b'data:{"choices": []}\r\n\r\n'
        b"data: [DONE]\n\n"
        b'data: {"after": "done"}\n\n'
    )
    events = [event async for event in chat_completions._events(httpx.Response(200, content=body))]
    assert events == [{"choices": [{"delta": {"content": "a"}, "finish_reason": None}]}, {"choices": []}]


def test_retry_waits():
    wait = chat_completions._retry_after
    assert wait(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert wait(httpx.Headers({"retry-after": "2"})) == 2.0
    soon = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 < wait(httpx.Headers({"retry-after": soon})) <= 5
    assert wait(httpx.Headers({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"})) is None  # too far off
    assert wait(httpx.Headers({"retry-after": "120"})) is None and wait(httpx.Headers({"retry-after": "soon"})) is None
    assert wait(httpx.Headers({})) is None
    delays = [chat_completions._backoff(attempt) for attempt in range(6)]
    for delay, nominal in zip(delays, (0.5, 1, 2, 4, 8, 8), strict=True):
        assert 0.75 * nominal <= delay <= nominal


async def test_providers_make_chat_completions_llms():
    openai = provider_from_settings(Settings(_env_file=None, llm="openai", openai_api_key=KEY, llm_timeout_s=12))
    llm = openai.create("gpt-4o-mini", 0.5)
    assert isinstance(llm, ChatCompletionsLLM) and llm.api_base == OPENAI_API_BASE
    assert (llm.model, llm.temperature, llm.timeout_s, llm.max_retries) == ("gpt-4o-mini", 0.5, 12, 2)
    assert llm.api_key.get_secret_value() == KEY and llm._http is openai.http
    compatible = provider_from_settings(
        Settings(_env_file=None, llm="openai-compatible", llm_base_url="http://gpu:8000/v1", llm_model="m")
    )
    llm = compatible.create("m", 0.1)
    assert llm.api_base == "http://gpu:8000/v1" and llm.api_key.get_secret_value() == "unused"
    assert llm.context_window == 8192 and llm._http is compatible.http
    for provider in (openai, compatible):
        await provider.aclose()


def _assert_no_secret(error: Exception, key: str = KEY) -> None:
    for shown in (str(error), repr(error), getattr(error, "detail", "")):
        assert key not in shown
