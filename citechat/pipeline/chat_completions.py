"""A LlamaIndex ``LLM`` speaking OpenAI's Chat Completions wire format itself, on the provider's shared HTTP client.

It serves the ``openai``, ``openai-compatible`` and ``local`` providers. Through LlamaIndex's ``OpenAILike`` and the
``openai`` SDK a streamed 200-token answer cost 22.5 ms of CPU; here it costs 5.7 ms (loopback, one LLM per
answer as citechat makes them). The SDK path paid for a new ``AsyncOpenAI`` per LLM (and importing
``openai.resources.chat`` on its first ``.chat``), then per chunk the SDK's SSE decoder, ``BaseModel.construct``
with its protocol ``isinstance`` checks, and LlamaIndex rebuilding the chunk as a ``ChatResponse``. Here a chunk is
one ``json.loads``, and ``astream_text`` (what answers use) hands on its text as it is: what is left per token is
mostly httpx reading the chunk. The API key is a ``SecretStr`` excluded from dumps: no repr, LlamaIndex
payload or error text carries it.

Failures become ``LLMError`` subclasses (``detail`` is what the user is told, ``retryable`` whether trying again
may help). Retries follow the SDK's default: up to ``max_retries`` more attempts on connection errors, timeouts,
408, 409, 429 and 5xx, until a successful response has begun; a stream that began is never sent again.
"""

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from pydantic import Field, PrivateAttr, SecretStr

from citechat.errors import CitechatError

OPENAI_API_BASE = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is not waited for: the backoff is used instead
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_JSON = str | int | float | bool | list | dict | None
dispatcher = get_dispatcher(__name__)


class LLMError(CitechatError):
    """The language model failed to answer; ``detail`` is safe to show (no key, no response body)."""

    status_code = 502
    retryable = False


class LLMKeyRejected(LLMError):
    def __init__(self) -> None:
        super().__init__("the language model rejected the configured API key")


class LLMRateLimited(LLMError):
    retryable = True

    def __init__(self) -> None:
        super().__init__("the language model is rate limiting requests; try again shortly")


class LLMTimeout(LLMError):
    retryable = True

    def __init__(self) -> None:
        super().__init__("the language model did not answer in time; try again")


class LLMUnreachable(LLMError):
    retryable = True

    def __init__(self) -> None:
        super().__init__("the language model could not be reached; try again shortly")


class LLMFailed(LLMError):
    """A 5xx, or a successful response that is not a chat completion."""

    retryable = True

    def __init__(self) -> None:
        super().__init__("the language model failed; try again")


class LLMRefused(LLMError):
    """Any other 4xx: the request itself is wrong (unknown model, context too long); retrying cannot help."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the language model refused the request ({status})")
        self.status = status


class LLMFailedMidAnswer(LLMError):
    """The stream broke after it had begun: an error event, a dropped connection, a malformed chunk."""

    retryable = True

    def __init__(self) -> None:
        super().__init__("the language model failed mid-answer; try again")


class ChatCompletionsLLM(LLM):
    """``POST {api_base}/chat/completions``, async only. An instance serves one request; after a streamed answer
    ``usage`` holds the token counts the provider reported (empty when it reported none)."""

    model: str
    temperature: float = 0.1
    api_base: str = OPENAI_API_BASE  # ends in /v1
    api_key: SecretStr = Field(exclude=True, repr=False)
    timeout_s: float = Field(default=60.0, gt=0)  # connect, write, pool, and each read (a stalled stream)
    max_retries: int = Field(default=2, ge=0)
    context_window: int = 8192
    max_tokens: int | None = None
    _http: httpx.AsyncClient = PrivateAttr()
    _usage: dict[str, int] = PrivateAttr(default_factory=dict)

    def __init__(self, *, http: httpx.AsyncClient, **fields: Any) -> None:
        super().__init__(**fields)
        self._http = http

    @classmethod
    def class_name(cls) -> str:
        return "citechat_chat_completions"

    @property
    def metadata(self) -> LLMMetadata:
        # num_output as LlamaIndex's OpenAI classes give it: nothing is reserved for the answer when it is unbounded
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens or -1,
            is_chat_model=True,
            model_name=self.model,
        )

    @property
    def usage(self) -> dict[str, int]:
        """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` of the last streamed answer."""
        return self._usage

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._astream_chat(messages, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        chat = await self._achat([ChatMessage(role=MessageRole.USER, content=prompt)], kwargs)
        return CompletionResponse(text=chat.message.content or "", additional_kwargs=chat.additional_kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        chats = self._astream_chat([ChatMessage(role=MessageRole.USER, content=prompt)], kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for chat in chats:
                yield CompletionResponse(
                    text=chat.message.content or "", delta=chat.delta, additional_kwargs=chat.additional_kwargs
                )

        return gen()

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        raise NotImplementedError("ChatCompletionsLLM is async only: call achat()")

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Any:
        raise NotImplementedError("ChatCompletionsLLM is async only: call astream_chat()")

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError("ChatCompletionsLLM is async only: call acomplete()")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError("ChatCompletionsLLM is async only: call astream_complete()")

    async def _achat(self, messages: Sequence[ChatMessage], kwargs: dict) -> ChatResponse:
        response = await self._send(self._body(messages, kwargs, stream=False), stream=False)
        try:
            completion = response.json()
            choice = completion["choices"][0]
            content = choice["message"].get("content") or ""
            extra = _usage(completion.get("usage"))
            if finish_reason := choice.get("finish_reason"):
                extra["finish_reason"] = finish_reason
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):  # not a chat completion
            raise LLMFailed() from None
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content), additional_kwargs=extra)

    @dispatcher.span
    async def astream_text(self, messages: Sequence[ChatMessage], **kwargs: Any) -> AsyncIterator[str]:
        """``astream_chat`` as the answer's text pieces, in one LLM span with its start and end events (the end one
        with the whole answer, usage and finish reason, as tracing reads them) and nothing per token: LlamaIndex's
        ``astream_chat`` adds an in-progress event (a pydantic object with a UUID, which tracing only reads for a
        finish reason the end event has too) and a ``ChatResponse`` to every token: 4 of an answer's 31 ms of CPU."""
        span_id = active_span_id.get()
        start = LLMChatStartEvent(
            model_dict=self.to_payload(), messages=messages, additional_kwargs=kwargs, span_id=span_id
        )
        dispatcher.event(start)
        return self._text(messages, kwargs, span_id)

    async def _text(self, messages: Sequence[ChatMessage], kwargs: dict, span_id: str | None) -> AsyncIterator[str]:
        answer = _Answer()
        async for delta in self._stream(messages, kwargs, answer):
            yield delta
        dispatcher.event(LLMChatEndEvent(messages=messages, response=answer.response(self._usage), span_id=span_id))

    async def _astream_chat(self, messages: Sequence[ChatMessage], kwargs: dict) -> ChatResponseAsyncGen:
        answer = _Answer()
        async for delta in self._stream(messages, kwargs, answer):
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=answer.text), delta=delta)
        # The whole answer once more, with usage and finish reason: LlamaIndex's tracing reads them from the last
        yield answer.response(self._usage)

    async def _stream(self, messages: Sequence[ChatMessage], kwargs: dict, answer: "_Answer") -> AsyncIterator[str]:
        """The text pieces of a streamed answer, as they come, kept whole in ``answer``; usage lands in ``usage``.
        The request is sent when the first piece is asked for, so a failure belongs to generation."""
        response = await self._send(self._body(messages, kwargs, stream=True), stream=True)
        try:
            async for event in _events(response):
                delta, finish, usage = _chunk(event)
                if usage:
                    self._usage = usage
                answer.finish_reason = finish or answer.finish_reason
                if delta:
                    answer.text += delta
                    yield delta
        except httpx.TimeoutException:
            raise LLMTimeout() from None
        except (httpx.TransportError, httpx.StreamError, ValueError):  # a dropped connection, a malformed event
            raise LLMFailedMidAnswer() from None
        finally:
            await response.aclose()

    def _body(self, messages: Sequence[ChatMessage], kwargs: dict, *, stream: bool) -> dict:
        body = {
            "model": self.model,
            "messages": [{"role": m.role.value, "content": m.content or ""} for m in messages],
            "temperature": self.temperature,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update((key, value) for key, value in kwargs.items() if isinstance(value, _JSON))
        return body

    async def _send(self, body: dict, *, stream: bool) -> httpx.Response:
        """A 2xx response (for a stream: its headers, the body unread), after up to ``max_retries`` retries."""
        request = self._http.build_request(
            "POST",
            f"{self.api_base.rstrip('/')}/chat/completions",
            content=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.api_key.get_secret_value()}",
                "Content-Type": "application/json",
            },
            timeout=httpx.Timeout(self.timeout_s),
        )
        for attempt in range(self.max_retries + 1):
            retry_after = cause = None
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                failure, cause = LLMTimeout(), exc
            except httpx.TransportError as exc:
                failure, cause = LLMUnreachable(), exc
            else:
                if response.is_success:
                    return response
                await response.aclose()
                failure = _status_failure(response.status_code)
                if not (response.status_code in RETRY_STATUSES or response.status_code >= 500):
                    raise failure
                retry_after = _retry_after(response.headers)
            if attempt == self.max_retries:
                raise failure from cause
            await asyncio.sleep(retry_after if retry_after is not None else _backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Answer:
    """A streamed answer so far."""

    text: str = ""
    finish_reason: str | None = None

    def response(self, usage: dict[str, int]) -> ChatResponse:
        extra = {**usage, **({"finish_reason": self.finish_reason} if self.finish_reason else {})}
        message = ChatMessage(role=MessageRole.ASSISTANT, content=self.text)
        return ChatResponse(message=message, delta="", additional_kwargs=extra)


async def _events(response: httpx.Response) -> AsyncIterator[dict]:
    """The JSON payloads of a Server-Sent Events stream, up to ``data: [DONE]`` (comments and other fields are
    skipped; an event's several ``data:`` lines are joined, as the SSE standard says). The body is read to its end
    even so: httpx pools a connection only once its response was read whole, and closes it otherwise."""
    data: list[str] = []
    done = False
    async for line in response.aiter_lines():
        if done:
            continue
        if line.startswith("data:"):
            data.append(line[6:] if line[5:6] == " " else line[5:])
        elif not line and data:
            payload = data[0] if len(data) == 1 else "\n".join(data)
            data = []
            if payload == "[DONE]":
                done = True
                continue
            yield json.loads(payload)
    if data and not done and (payload := "\n".join(data)) != "[DONE]":  # the last event, unterminated
        yield json.loads(payload)


def _chunk(event: Any) -> tuple[str | None, str | None, dict[str, int]]:
    """(text, finish reason, usage) of one ``chat.completion.chunk``; an error event fails the answer."""
    try:
        if event.get("error"):
            raise LLMFailedMidAnswer()
        choices = event.get("choices")
        if not choices:
            return None, None, _usage(event.get("usage"))
        choice = choices[0]
        return (choice.get("delta") or {}).get("content"), choice.get("finish_reason"), _usage(event.get("usage"))
    except (AttributeError, TypeError, IndexError, KeyError):
        raise LLMFailedMidAnswer() from None


def _usage(usage: Any) -> dict[str, int]:
    if not usage or not isinstance(usage, dict):
        return {}
    return {key: usage[key] for key in _USAGE_KEYS if isinstance(usage.get(key), int)}


def _status_failure(status: int) -> LLMError:
    if status in (401, 403):
        return LLMKeyRejected()
    if status == 429:
        return LLMRateLimited()
    if status >= 500:
        return LLMFailed()
    return LLMRefused(status)


def _retry_after(headers: httpx.Headers) -> float | None:
    """The wait the provider asks for (``retry-after-ms``, else ``retry-after`` in seconds or as a date), when
    it is short enough to honour."""
    seconds = None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            seconds = float(ms) / 1000
        elif (value := headers.get("retry-after")) is not None:
            try:
                seconds = float(value)
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                seconds = when.timestamp() - time.time()
    except (ValueError, TypeError):
        return None
    return seconds if seconds is not None and 0 < seconds <= MAX_RETRY_AFTER_S else None


def _backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s ... up to 8 s, less up to a quarter at random so that clients that failed together do not
    all come back together (the SDK's jitter)."""
    delay = min(INITIAL_RETRY_DELAY_S * 2**attempt, MAX_RETRY_DELAY_S)
    return delay * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret
