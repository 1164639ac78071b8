"""Memory: resident size of the citechat server process idle (started, and one question answered so the embedding
model and every code path are loaded) and at its peak while answering many streams at once (sampled every 20 ms).

Processes the server starts count with it; the embedded PostgreSQL does not (it runs detached, shared with other
processes, and its shared buffers would be counted once per backend). The floor's figures are shown beside it.
"""

import asyncio
import contextlib

import httpx

from citechat.bench.client import run_level
from citechat.bench.paths import Citechat
from citechat.bench.processes import Service
from citechat.bench.stack import Stack

GOAL_MB = 600
SAMPLE_S = 0.02
MB = 2**20


async def run(stack: Stack, streams: int) -> dict:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as http:
        path = Citechat(stack, http)
        await path.prepare(1, 1)
        [first] = await run_level(path.send, concurrency=1, messages=1)
        await asyncio.sleep(1)
        idle = {s.name: await _settled(s) for s in (stack.server, stack.floor)}
        await path.prepare(streams, streams)
        peak = [0]
        sampler = asyncio.create_task(_sample(stack.server, peak))
        try:
            samples = await run_level(path.send, concurrency=streams, messages=streams)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    errors = sum(1 for s in [first, *samples] if s.error is not None)
    server_idle, server_peak = idle[stack.server.name] / MB, peak[0] / MB
    return {
        "streams": streams,
        "errors": errors,
        "server_idle_mb": round(server_idle, 1),
        "server_peak_mb": round(server_peak, 1),
        "floor_idle_mb": round(idle[stack.floor.name] / MB, 1),
        "goal_mb": GOAL_MB,
        "met": server_peak < GOAL_MB,
        "counted": "the server process and its children; not the embedded PostgreSQL",
    }


async def _settled(process: Service) -> int:
    """The median of five readings 0.1 s apart."""
    readings = []
    for _ in range(5):
        readings.append(process.rss_bytes())
        await asyncio.sleep(0.1)
    return sorted(readings)[len(readings) // 2]


async def _sample(process: Service, peak: list[int]) -> None:
    """Keeps the highest reading in ``peak[0]`` until cancelled."""
    while True:
        peak[0] = max(peak[0], process.rss_bytes())
        await asyncio.sleep(SAMPLE_S)


def markdown(report: dict) -> str:
    return (
        f"| server idle MB | server peak MB at {report['streams']} streams | floor idle MB | goal | errors |\n"
        "|---:|---:|---:|---:|---:|\n"
        f"| {report['server_idle_mb']} | {report['server_peak_mb']} | {report['floor_idle_mb']} | "
        f"< {report['goal_mb']} MB ({'met' if report['met'] else 'missed'}) | {report['errors']} |\n"
    )
