"""Serving overhead: what citechat adds to an answer beyond what the model and the retriever take, next to the
floor (a bare FastAPI relay) and the peer (LlamaIndex's chat engine in-process), at 1, 16 and 64 streams at once.

For each message: time to first token, and overhead = total time - the generator's own time for that message (it
reports it per tag) - retrieval time (citechat's ``done`` event reports it; the peer's is timed around its
retriever; the floor has none). Per run: throughput, CPU-ms per message of the serving process (psutil), database
statements and transactions per message (SQLAlchemy events, ``queries.py``), errors.

Each run is a steady state, as a load test measures one: the streams start spread over one answer's time (a
ramp-up), each stream's first message is not measured, and the figures are those of the messages after it. Started
all at once, the streams would stay in step (each round's answers start together, and one event loop shares its
CPU among them until all are set up, so they also end together) and every message would measure the queue of
the whole round: that case, every stream sending at the same moment, is measured too, once per path in each
round (``bursts``), and reported beside the steady state rather than as it.

The three paths take turns at each concurrency, ``rounds`` times, each round in another order, and each figure is
the median of the rounds': this machine's speed drifts within minutes, and the floor's own p95 at 16 streams
ranged from 5 to 10 ms between single runs, enough to flip the goal's verdict either way. Each round's overhead
percentiles are kept in the JSON (``rounds``).
"""

import math
import statistics

import httpx

from citechat.bench.client import Sample, run_level
from citechat.bench.paths import Citechat, Floor, Peer
from citechat.bench.queries import QueryCounter
from citechat.bench.report import percentile
from citechat.bench.stack import Stack

LEVELS = {1: 20, 16: 96, 64: 192}  # concurrent streams: messages sent per round
QUICK_LEVELS = {1: 2, 16: 16}
ROUNDS = 3  # per concurrency and path, taking turns
WARM_UP = 3  # messages per path before the first run, not measured
GOAL_P95_MS = 25.0
GOAL_FLOOR_RATIO = 1.5
GOAL_STREAMS = 16


async def run(stack: Stack, levels: dict[int, int], *, warm_up: int = WARM_UP, rounds: int = ROUNDS) -> dict:
    counter = QueryCounter.install()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    try:
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            paths = [Floor(stack, http), Citechat(stack, http), Peer(stack, counter)]
            for path in paths:
                await path.prepare(1, warm_up)
                await run_level(path.send, concurrency=1, messages=warm_up)
            await http.get(f"{stack.generator.url}/bench/timings")  # forget the warm-up's
            runs, bursts = [], []
            for streams, messages in levels.items():
                measured: dict[str, list[dict]] = {path.name: [] for path in paths}
                burst: dict[str, list[dict]] = {path.name: [] for path in paths}
                for r in range(rounds):
                    for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                        measured[path.name].append(await _measure(stack, http, path, streams, messages))
                    for path in paths if streams > 1 else []:
                        burst[path.name].append(await _burst(stack, http, path, streams))
                runs += [_median_of(measured[path.name]) for path in paths]
                bursts += [_median_of(burst[path.name]) for path in paths if burst[path.name]]
    finally:
        counter.uninstall()
    return {
        "pace": {
            "first_token_ms": stack.pace.first_token_ms,
            "tokens": stack.pace.tokens,
            "token_ms": stack.pace.token_ms,
        },
        "corpus": stack.corpus,
        "counting": "db statements, and transactions sent as BEGIN...COMMIT (autocommit statements are none):"
        " SQLAlchemy engine events in the serving process (pings excluded)",
        "method": "steady state: streams started one answer's time apart in all, each stream's first message not"
        " measured; bursts: every stream sent at the same moment; each figure the median of the rounds' (errors and"
        " messages summed), the paths taking turns",
        "rounds": rounds,
        "runs": runs,
        "bursts": bursts,
        "goals": _goals(runs),
    }


async def _measure(stack: Stack, http: httpx.AsyncClient, path, streams: int, messages: int) -> dict:
    """``messages`` measured at ``streams`` in a steady state: one more per stream is sent first (the ramp-up,
    which also opens every connection the path needs), and CPU and database work count all that was sent."""
    sent = streams + messages
    await path.prepare(streams, sent)
    cpu, queries = path.cpu_s(), await path.queries()
    ramp_s = stack.pace.total_ms / 1000 if streams > 1 else 0.0
    samples = await run_level(path.send, concurrency=streams, messages=sent, ramp_s=ramp_s)
    cpu, queries_after = path.cpu_s() - cpu, await path.queries()
    generator_ms = (await http.get(f"{stack.generator.url}/bench/timings")).json()
    measured = samples[streams:]
    summary = _summary(path.name, streams, measured, generator_ms)
    mean_s = sum(s.total_ms for s in measured) / len(measured) / 1000
    return summary | {
        "messages_per_s": round(streams / mean_s, 2),  # each stream sends its next as soon as one ends
        "cpu_ms_per_message": round(cpu * 1000 / sent, 1),
        "db_statements_per_message": round((queries_after["statements"] - queries["statements"]) / sent, 1),
        "db_transactions_per_message": round((queries_after["transactions"] - queries["transactions"]) / sent, 1),
    }


async def _burst(stack: Stack, http: httpx.AsyncClient, path, streams: int) -> dict:
    """One message per stream, all sent at the same moment."""
    await path.prepare(streams, streams)
    samples = await run_level(path.send, concurrency=streams, messages=streams)
    generator_ms = (await http.get(f"{stack.generator.url}/bench/timings")).json()
    return _summary(path.name, streams, samples, generator_ms)


def _summary(name: str, streams: int, samples: list[Sample], generator_ms: dict[str, float]) -> dict:
    ok = [s for s in samples if s.error is None and s.ttft_ms is not None and s.tag in generator_ms]
    errors = [s.error or "no first token or no generator timing" for s in samples if s not in ok]
    overhead = [s.total_ms - generator_ms[s.tag] - s.retrieval_ms for s in ok]
    return {
        "path": name,
        "streams": streams,
        "messages": len(samples),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "ttft_ms": _percentiles([s.ttft_ms for s in ok]),
        "overhead_ms": _percentiles(overhead),
        "generator_ms": _percentiles([generator_ms[s.tag] for s in ok]),
        "retrieval_ms": _percentiles([s.retrieval_ms for s in ok]),
    }


def _median_of(rounds: list[dict]) -> dict:
    """One path's figures at one concurrency over its rounds: each the median of the rounds' (errors and messages
    summed), with each round's latencies kept (``rounds``)."""
    combined: dict = {}
    for key, value in rounds[0].items():
        if key in ("errors", "messages"):
            combined[key] = sum(r[key] for r in rounds)
        elif key == "error_examples":
            combined[key] = sorted({e for r in rounds for e in r[key]})[:3]
        elif isinstance(value, dict):
            combined[key] = {q: round(statistics.median(r[key][q] for r in rounds), 1) for q in value}
        elif isinstance(value, float):
            combined[key] = round(statistics.median(r[key] for r in rounds), 2)
        else:  # path, streams
            combined[key] = value
    combined["rounds"] = [{"ttft_ms": r["ttft_ms"], "overhead_ms": r["overhead_ms"]} for r in rounds]
    return combined


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)}


def _goals(runs: list[dict]) -> dict:
    at = {(r["path"], r["streams"]): r for r in runs}
    ours, floor = at.get(("citechat", GOAL_STREAMS)), at.get(("floor", GOAL_STREAMS))
    if ours is None or floor is None:
        return {}
    p95, floor_p95 = ours["overhead_ms"]["p95"], floor["overhead_ms"]["p95"]
    ratio = p95 / floor_p95 if floor_p95 > 0 else math.inf
    return {
        f"overhead_p95_ms_at_{GOAL_STREAMS}": {"value": p95, "goal": GOAL_P95_MS, "met": p95 <= GOAL_P95_MS},
        f"overhead_p95_vs_floor_at_{GOAL_STREAMS}": {
            "value": round(ratio, 2),
            "goal": GOAL_FLOOR_RATIO,
            "met": ratio <= GOAL_FLOOR_RATIO,
        },
    }


def markdown(report: dict) -> str:
    pace = report["pace"]
    lines = [
        f"Paced generator: first token after {pace['first_token_ms']:.0f} ms, then {pace['tokens']} tokens at "
        f"{pace['token_ms']:.0f} ms each. Overhead = total time - generator's time - retrieval time. Steady state"
        " (streams ramped up over one answer's time, each stream's first message not measured); each figure the"
        f" median of {report['rounds']} rounds, the paths taking turns. Index: "
        f"{report['corpus']['documents']} documents, {report['corpus']['chunks']:,} chunks.",
        "",
        "| streams | path | TTFT p50 / p95 / p99 ms | overhead p50 / p95 / p99 ms | msgs/s | CPU ms/msg "
        "| DB statements (transactions)/msg | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"{_latencies(r)} {r['messages_per_s']} | {r['cpu_ms_per_message']} | "
            f"{r['db_statements_per_message']} ({r['db_transactions_per_message']}) | {r['errors']} |"
        )
    if report.get("bursts"):
        lines += [
            "",
            "Every stream sending at the same moment (not the steady state the goal is about):",
            "",
            "| streams | path | TTFT p50 / p95 / p99 ms | overhead p50 / p95 / p99 ms | errors |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [f"{_latencies(r)} {r['errors']} |" for r in report["bursts"]]
    for name, goal in report["goals"].items():
        lines.append("")
        lines.append(f"Goal {name} <= {goal['goal']}: {goal['value']} ({'met' if goal['met'] else 'missed'}).")
    return "\n".join(lines) + "\n"


def _latencies(run: dict) -> str:
    """A table row's first cells: streams, path, time to first token, overhead."""
    t, o = run["ttft_ms"], run["overhead_ms"]
    return (
        f"| {run['streams']} | {run['path']} | {t['p50']} / {t['p95']} / {t['p99']} | "
        f"{o['p50']} / {o['p95']} / {o['p99']} |"
    )
