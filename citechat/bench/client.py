"""The benchmark's client: one Server-Sent Events answer timed as a browser would see it, and many at once.

The client shares the machine with the servers it measures, so it reads each stream as raw bytes and only looks
for the first ``token`` event and for the closing ``done`` or ``error``: it never parses the tokens in between.
"""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

_TOKEN, _DONE, _ERROR = b"event: token\n", b"event: done\n", b"event: error\n"


@dataclass(frozen=True)
class Sample:
    """One answer: when its first token and its end arrived (ms after the request was sent), and how it ended."""

    tag: str
    ttft_ms: float | None
    total_ms: float
    done: dict | None = None  # the ``done`` event's data
    error: str | None = None
    retrieval_ms: float = 0.0  # what the retriever took, as the path reports it


async def stream(http: httpx.AsyncClient, tag: str, url: str, *, json_body: dict, headers: dict) -> Sample:
    """POSTs ``json_body`` to ``url`` and times the SSE answer until ``done`` or ``error``."""
    started = time.perf_counter()
    first = None
    tail = b""
    try:
        async with http.stream("POST", url, json=json_body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                detail = f"HTTP {response.status_code}: {response.text[:200]}"
                return Sample(tag, None, _ms(started), error=detail)
            ending = False  # from the chunk holding ``done`` or ``error`` on, everything is kept
            async for chunk in response.aiter_raw():
                window = tail + chunk
                if first is None and _TOKEN in window:
                    first = time.perf_counter()
                ending = ending or _DONE in window or _ERROR in window
                tail = window if ending or first is None else window[-len(_ERROR) :]
    except httpx.HTTPError as exc:
        return Sample(tag, None, _ms(started), error=f"{type(exc).__name__}: {exc}")
    total = _ms(started)
    name, data = _last_event(tail)
    ttft = None if first is None else (first - started) * 1000
    if name != "done":
        return Sample(tag, ttft, total, error=f"ended with {name or 'nothing'}: {json.dumps(data)[:200]}")
    retrieval = ((data.get("metadata") or {}).get("timings") or {}).get("retrieval_ms", 0)
    return Sample(tag, ttft, total, done=data, retrieval_ms=float(retrieval))


async def run_level(
    send: Callable[[int], Awaitable[Sample]], *, concurrency: int, messages: int, ramp_s: float = 0.0
) -> list[Sample]:
    """Sends ``messages`` answers, ``concurrency`` in flight at any time (each slot sends its next as soon as its
    previous one ended); ``send(i)`` sends the ``i``-th. ``ramp_s``: the slots start that far apart in all (slot
    ``k`` sends its first, the ``k``-th message, ``k * ramp_s / concurrency`` s after the first), as a load test
    ramps up, instead of all at once. Returns the samples in the order the messages were numbered."""
    queue = iter(range(messages))
    samples: dict[int, Sample] = {}

    async def slot(k: int) -> None:
        for n, i in enumerate(queue):
            if n == 0 and ramp_s:
                await asyncio.sleep(k * ramp_s / concurrency)
            samples[i] = await send(i)

    await asyncio.gather(*(slot(k) for k in range(concurrency)))
    return [samples[i] for i in range(messages)]


def _last_event(buffer: bytes) -> tuple[str | None, dict]:
    """The name and data of the last complete event in ``buffer`` (``done`` and ``error`` are the last ones)."""
    for block in reversed(buffer.decode("utf-8", "replace").split("\n\n")):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            try:
                return fields["event"], json.loads(fields.get("data", "{}"))
            except ValueError:
                return fields["event"], {}
    return None, {}


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
