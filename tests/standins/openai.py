"""A STAND-IN for OpenAI's Chat Completions API, for tests only: it is not OpenAI and runs no model.

It is a real HTTP server on 127.0.0.1 (Starlette under uvicorn, in a background thread) serving the endpoints
citechat's model clients call, with the wire format of OpenAI's documented API as the official ``openai`` SDK models
it (``openai/types/chat/chat_completion.py``, ``chat_completion_chunk.py``, ``completion_usage.py``, ``model.py``),
so ``openai.AsyncOpenAI(base_url=standin.base_url)`` and LlamaIndex's ``OpenAI``/``OpenAILike`` work against it:

- ``POST /v1/chat/completions``: JSON ``{model, messages, temperature, stream, stream_options, max_tokens, ...}``
  -> 200 ``{id, object: "chat.completion", created, model, choices: [{index, message: {role, content}, finish_reason,
  logprobs}], usage: {prompt_tokens, completion_tokens, total_tokens}}``. With ``stream: true``: ``text/event-stream``
  of ``data: {chunk}`` events (``object: "chat.completion.chunk"``): first a delta with the ``role``, then one delta
  per word of the reply, then an empty delta with the ``finish_reason``; with ``stream_options.include_usage`` every
  chunk has ``usage: null`` and a last chunk has no choices and the usage; then ``data: [DONE]``.
- ``GET /v1/models``, ``GET /v1/models/{id}`` -> ``{object: "list", data: [{id, object: "model", created,
  owned_by}]}`` / one model.
- ``Authorization: Bearer <key>`` on every call; errors are OpenAI's ``{"error": {message, type, param, code}}``:
  401 ``invalid_api_key``, 404 ``model_not_found`` for a model not in ``models``, 400 ``invalid_request_error`` for
  a malformed body (no messages, unknown role, temperature outside 0-2, ``stream_options`` without ``stream``).

Made up here: the reply. A queued answer (``queue_answers``) is used first, else ``answer_fn(body)``; the default
(``default_answer``) rewrites a condense request ("... Standalone question:") into a standalone question and answers
everything else with ``DEFAULT_ANSWER``. ``max_tokens``/``max_completion_tokens`` cut the reply to that many words
(``finish_reason: "length"``). Token counts are word counts. Faults: ``fail_next`` (OpenAI error JSON for the next
requests, optionally with ``retry-after-ms``), ``delay_s`` (before answering), ``stream_delay_s`` (between chunks),
``stream_error_after`` (an error event in the stream after that many words, which the SDK raises as ``APIError``).
Every chat request body is kept in ``requests`` (its headers in ``request_headers``, the client's port in
``client_ports``: one port, one connection) so tests can assert what was sent: system prompt, history, model,
temperature.
"""

import asyncio
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.standins.server import BackgroundServer

Body = dict[str, Any]
Answer = str | Callable[[Body], str]

DEFAULT_ANSWER = "Answer from the first source [1]."
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_CREATED = 1_700_000_000  # the models' made-up creation time
_ERRORS = {  # status -> (type, code, message) as OpenAI sends them
    400: ("invalid_request_error", None, "Bad request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
    403: ("invalid_request_error", None, "You are not allowed to sample from this model"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 20ms."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def openai_error(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error response: ``{"error": {message, type, param, code}}`` with ``status``."""
    kind, default_code, default_message = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"Error {status}")
    )
    error = {"message": message or default_message, "type": kind, "param": param, "code": code or default_code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def message_text(message: Body) -> str:
    """A message's text: ``content`` as a string or as a list of ``{"type": "text", "text": ...}`` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def last_user_text(body: Body) -> str:
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return message_text(users[-1]) if users else ""


def is_condense_request(body: Body) -> bool:
    """Whether the request asks to rewrite a follow-up into a standalone question (citechat's ``condense.txt`` and
    LlamaIndex's default condense prompt both end with "Standalone question:")."""
    return "standalone question" in last_user_text(body).lower()


def condensed_question(prompt: str) -> str:
    """The stand-in's rewrite of a condense prompt: the follow-up, plus the conversation's last user question when
    there is one (``"<follow-up> (follow-up to: <earlier question>)"``), so retrieval sees the earlier topic."""
    follow_up = re.search(
        r"(?:follow-up question|follow[- ]up input)\s*:\s*(.*?)\s*standalone question\s*:",
        prompt,
        re.IGNORECASE | re.DOTALL,
    )
    question = " ".join(follow_up.group(1).split()) if follow_up else ""
    if not question:
        before = re.split(r"standalone question\s*:", prompt, flags=re.IGNORECASE)[0]
        lines = [line.strip() for line in before.splitlines() if line.strip()]
        question = lines[-1] if lines else ""
    earlier = re.findall(r"^\s*user\s*:\s*(.+)$", prompt, re.IGNORECASE | re.MULTILINE)
    if earlier and earlier[-1].strip() != question:
        return f"{question} (follow-up to: {earlier[-1].strip()})"
    return question


def default_answer(body: Body) -> str:
    """Condense requests get ``condensed_question``; everything else gets ``DEFAULT_ANSWER``."""
    if is_condense_request(body):
        return condensed_question(last_user_text(body))
    return DEFAULT_ANSWER


def count_words(text: str) -> int:
    return len(text.split())


def split_words(text: str) -> list[str]:
    """Word pieces that concatenate back to ``text`` exactly (each keeps its trailing whitespace)."""
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


class OpenAIStandIn:
    """The stand-in server. ``with OpenAIStandIn() as openai:`` runs it; ``openai.base_url`` (``url`` + ``/v1``) is
    what the SDK's ``base_url`` / LlamaIndex's ``api_base`` take."""

    def __init__(
        self,
        api_key: str = "openai-standin-key",
        *,
        models: Iterable[str] = ("gpt-4o", "gpt-4o-mini"),
        answers: Callable[[Body], str] | Iterable[Answer] | None = None,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self._initial_answer_fn: Callable[[Body], str] = default_answer
        self._initial_answers: list[Answer] = []
        if callable(answers):
            self._initial_answer_fn = answers
        elif answers is not None:
            self._initial_answers = list(answers)
        self.answer_fn = self._initial_answer_fn
        self.queued_answers: deque[Answer] = deque(self._initial_answers)
        self.requests: list[Body] = []
        self.request_headers: list[dict[str, str]] = []
        self.client_ports: list[int] = []  # per chat request: the client's end of its connection
        self.delay_s = 0.0
        self.stream_delay_s = 0.0
        self.stream_error_after: int | None = None
        self._faults: deque[tuple[int, str, int | None]] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._get_model, methods=["GET"]),
            ]
        )
        self._background = BackgroundServer(self.app, name="OpenAI stand-in")

    @property
    def url(self) -> str:
        return self._background.url

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return self._background.port

    @property
    def last_request(self) -> Body:
        return self.requests[-1]

    def answer_requests(self) -> list[Body]:
        """The chat requests that were not condense requests (the ones that write answers)."""
        return [body for body in self.requests if not is_condense_request(body)]

    def condense_requests(self) -> list[Body]:
        return [body for body in self.requests if is_condense_request(body)]

    def queue_answers(self, *answers: Answer) -> None:
        """Reply to the next chat requests with these, in order (a string, or a function of the request body)."""
        with self._lock:
            self.queued_answers.extend(answers)

    def fail_next(
        self, status: int, times: int = 1, *, path: str = "/v1/chat/completions", retry_after_ms: int | None = None
    ) -> None:
        """Answer the next ``times`` requests under ``path`` with ``status`` and OpenAI's error JSON; with
        ``retry_after_ms`` also the ``retry-after-ms`` header, which the SDK waits for instead of its backoff."""
        with self._lock:
            self._faults.extend([(status, path, retry_after_ms)] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget requests, queued answers and faults, and restore the constructor's answers, so one running server
        can serve many tests."""
        with self._lock:
            self._faults.clear()
            self.queued_answers = deque(self._initial_answers)
        self.answer_fn = self._initial_answer_fn
        self.requests.clear()
        self.request_headers.clear()
        self.client_ports.clear()
        self.delay_s = self.stream_delay_s = 0.0
        self.stream_error_after = None

    def start(self) -> "OpenAIStandIn":
        self._background.start()
        return self

    def stop(self) -> None:
        self._background.stop()

    def __enter__(self) -> "OpenAIStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take_fault(self, path: str) -> tuple[int, int | None] | None:
        with self._lock:
            for position, (status, prefix, retry_after_ms) in enumerate(self._faults):
                if path.startswith(prefix):
                    del self._faults[position]
                    return status, retry_after_ms
        return None

    def _next_answer(self, body: Body) -> str:
        with self._lock:
            answer = self.queued_answers.popleft() if self.queued_answers else self.answer_fn
        return answer(body) if callable(answer) else answer

    async def _gate(self, request: Request) -> Response | None:
        """Applies delay, injected faults and auth; ``None`` lets the request through."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        fault = self._take_fault(request.url.path)
        if fault is not None:
            status, retry_after_ms = fault
            headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else None
            return openai_error(status, headers=headers)
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or not authorization.removeprefix("Bearer ").strip():
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        key = authorization.removeprefix("Bearer ").strip()
        if key != self.api_key:
            masked = f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"
            return openai_error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            )
        return None

    def _model_json(self, model: str) -> Body:
        return {"id": model, "object": "model", "created": _CREATED, "owned_by": "standin"}

    async def _list_models(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        return JSONResponse({"object": "list", "data": [self._model_json(m) for m in self.models]})

    async def _get_model(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        model = request.path_params["model"]
        if model not in self.models:
            return self._unknown_model(model)
        return JSONResponse(self._model_json(model))

    @staticmethod
    def _unknown_model(model: str) -> Response:
        return openai_error(404, f"The model `{model}` does not exist or you do not have access to it.")

    async def _chat_completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        self.requests.append(body if isinstance(body, dict) else {"invalid_body": body})
        self.request_headers.append(dict(request.headers))
        self.client_ports.append(request.client.port if request.client else 0)
        if (refused := await self._gate(request)) is not None:
            return refused
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.")
        if (invalid := self._validate(body)) is not None:
            return invalid
        model = body["model"]
        if model not in self.models:
            return self._unknown_model(model)
        reply = self._next_answer(body)
        finish_reason = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and count_words(reply) > limit:
            reply, finish_reason = "".join(split_words(reply)[:limit]).rstrip(), "length"
        prompt_tokens = sum(count_words(message_text(m)) for m in body["messages"])
        completion_tokens = count_words(reply)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = self._stream(completion_id, created, model, reply, finish_reason, usage if include_usage else None)
            return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_standin",
            }
        )

    @staticmethod
    def _validate(body: Body) -> Response | None:
        if not isinstance(body.get("model"), str) or not body["model"]:
            return openai_error(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(400, "'messages' must contain at least one message.", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return openai_error(
                    400, f"Invalid value for 'messages[{index}].role'.", param=f"messages[{index}].role"
                )
        temperature = body.get("temperature")
        if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 2):
            return openai_error(
                400, f"Invalid 'temperature': decimal above maximum value. Got {temperature}.", param="temperature"
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            return openai_error(
                400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        return None

    async def _stream(
        self, completion_id: str, created: int, model: str, reply: str, finish_reason: str, usage: Body | None
    ) -> AsyncIterator[str]:
        def chunk(choices: list[Body], **extra: Any) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_standin",
                "choices": choices,
                **({"usage": None} if usage is not None else {}),
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n"

        def choice(delta: Body, finish: str | None = None) -> list[Body]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        yield chunk(choice({"role": "assistant", "content": "", "refusal": None}))
        for sent, piece in enumerate(split_words(reply)):
            if self.stream_error_after is not None and sent >= self.stream_error_after:
                error = {"message": "The server had an error while processing your request.", "type": "server_error"}
                yield f"data: {json.dumps({'error': {**error, 'param': None, 'code': None}})}\n\n"
                return
            if self.stream_delay_s:
                await asyncio.sleep(self.stream_delay_s)
            yield chunk(choice({"content": piece}))
        yield chunk(choice({}, finish_reason))
        if usage is not None:
            yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"
