"""A paced generator for the serving benchmark: an OpenAI-compatible chat server whose timing is known exactly.

Every answer is the same 200 tokens: the first after 200 ms, then one every 5 ms, the stream closed 1,200 ms after
the request arrived. Deadlines are absolute (from the request's arrival), so late wake-ups never add up. It speaks
the Chat Completions wire format (``data: {chunk}`` events, usage on request, ``data: [DONE]``), so citechat's
``openai-compatible`` provider and LlamaIndex's ``OpenAILike`` use it as they would any server.

It runs in a process of its own (``python -m citechat.bench.generator --port N``) so its work is never counted as
the server's. Each question carries a made-up word (``tag``); the generator records how long it took for each
tag, and ``GET /bench/timings`` hands those durations over (and forgets them), so the benchmark subtracts what the
generator really took from each message, not just the nominal 1,200 ms.
"""

import argparse
import asyncio
import json
import re
import secrets
import string
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "paced"
_TAG = re.compile(r"\bzq[a-z]{8}\b")
# An answer that cites its sources the way citechat's prompts ask, so citation checking has real work to do.
_SENTENCES = (
    "The filing reports that net sales increased compared with the same quarter of the prior year [1].",
    "Operating expenses grew more slowly than revenue, which improved the operating margin [2].",
    "The company returned cash to shareholders through dividends and repurchases of common stock [1].",
    "Management noted risks from foreign exchange rates, supply constraints and the macroeconomic climate [3].",
)


@dataclass(frozen=True)
class Pace:
    """When each token is sent, measured from the request's arrival."""

    first_token_ms: float = 200.0
    tokens: int = 200
    token_ms: float = 5.0

    @property
    def total_ms(self) -> float:
        """When the stream ends: the first token's wait plus ``token_ms`` for each of the tokens."""
        return self.first_token_ms + self.tokens * self.token_ms


def new_tag() -> str:
    """A made-up word that finds no match in any index, so it leaves retrieval as it is."""
    return "zq" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))


def find_tag(text: str) -> str | None:
    found = _TAG.search(text)
    return found.group(0) if found else None


def answer_tokens(count: int) -> list[str]:
    """``count`` word pieces (each with its trailing space) of a cited answer."""
    words = " ".join(_SENTENCES).split(" ")
    return [f"{words[i % len(words)]} " for i in range(count)]


def create_app(pace: Pace) -> Starlette:
    """The generator's app. Timings live on ``app.state`` (one dict per app, read and cleared by the benchmark)."""
    tokens = answer_tokens(pace.tokens)
    usage = {"prompt_tokens": 0, "completion_tokens": pace.tokens, "total_tokens": pace.tokens}

    def chunk(delta: dict | None, finish: str | None = None, *, with_usage: bool = False) -> str:
        data = {
            "id": "chatcmpl-paced",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if with_usage:
            data["usage"] = usage if delta is None else None
        return f"data: {json.dumps(data)}\n\n"

    # Everything sent is made once: the benchmark measures the server in front of the generator, not this.
    plain = [chunk({"content": t}) for t in tokens]
    metered = [chunk({"content": t}, with_usage=True) for t in tokens]
    opening = {u: chunk({"role": "assistant", "content": ""}, with_usage=u) for u in (False, True)}
    closing = {
        False: chunk({}, "stop") + "data: [DONE]\n\n",
        True: chunk({}, "stop", with_usage=True) + chunk(None, with_usage=True) + "data: [DONE]\n\n",
    }

    async def completions(request: Request) -> Response:
        arrived = time.perf_counter()
        body = json.loads(await request.body())
        tag = find_tag(json.dumps(body.get("messages", [])))
        timings: dict[str, float] = request.app.state.timings
        if not body.get("stream"):
            await _sleep_until(arrived + pace.total_ms / 1000)
            if tag:
                timings[tag] = (time.perf_counter() - arrived) * 1000
            message = {"role": "assistant", "content": "".join(tokens).strip()}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(
                {"id": "chatcmpl-paced", "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pieces = metered if with_usage else plain

        async def stream() -> AsyncIterator[str]:
            first = arrived + pace.first_token_ms / 1000
            await _sleep_until(first)
            yield opening[with_usage] + pieces[0]
            for i in range(1, len(pieces)):
                await _sleep_until(first + i * pace.token_ms / 1000)
                yield pieces[i]
            await _sleep_until(arrived + pace.total_ms / 1000)
            yield closing[with_usage]
            if tag:  # runs once the last bytes were handed to the connection
                timings[tag] = (time.perf_counter() - arrived) * 1000

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def take_timings(request: Request) -> Response:
        taken, request.app.state.timings = request.app.state.timings, {}
        return JSONResponse(taken)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/bench/timings", take_timings, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )
    app.state.timings = {}
    return app


async def _sleep_until(deadline: float) -> None:
    """Never early: an event loop may wake a timer up to its clock resolution (about 1 ms) before it is due."""
    while (delay := deadline - time.perf_counter()) > 0:  # noqa: ASYNC110 (a deadline, not an event)
        await asyncio.sleep(delay)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-token-ms", type=float, default=Pace.first_token_ms)
    parser.add_argument("--tokens", type=int, default=Pace.tokens)
    parser.add_argument("--token-ms", type=float, default=Pace.token_ms)
    args = parser.parse_args()
    pace = Pace(args.first_token_ms, args.tokens, args.token_ms)
    uvicorn.run(create_app(pace), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
