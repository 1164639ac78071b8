"""The SLO report: how the answers of a recent window did against the targets, from what the database recorded.

Percentiles are PostgreSQL's ``percentile_cont`` (linear interpolation) over the assistant messages of the window that
ended ``completed``: ``processing_time_ms`` end to end, and the stage timings kept in ``metadata.timings``.
Condensing only runs for follow-ups, so its percentiles cover fewer answers. The error rate is the share of ended
answers (completed or failed) that failed; answers still being written are left out. Cost is priced per model from
``CITECHAT_MODEL_PRICES`` (``pipeline/pricing.py``) and averaged over the completed answers.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, TypeAdapter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from citechat.auth.tokens import parse_ttl
from citechat.pipeline.pricing import cost_usd, price_of
from citechat.telemetry.targets import Targets

Status = Literal["PASS", "FAIL", "NO DATA"]
LATENCIES = ("end_to_end", "retrieval", "condense", "ttft", "generation")
MAX_WINDOW = timedelta(days=366)

_PERCENTILES = ", ".join(
    f"percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {column}) "
    f"FILTER (WHERE status = 'completed') AS {name}, count({column}) FILTER (WHERE status = 'completed') AS {name}_n"
    for name, column in {
        "end_to_end": "processing_time_ms",
        "retrieval": "(message_metadata -> 'timings' ->> 'retrieval_ms')::float",
        "condense": "(message_metadata -> 'timings' ->> 'condense_ms')::float",
        "ttft": "(message_metadata -> 'timings' ->> 'ttft_ms')::float",
        "generation": "(message_metadata -> 'timings' ->> 'generation_ms')::float",
    }.items()
)
_ANSWERS = "FROM chat_messages WHERE role = 'assistant' AND created_at >= :since AND created_at <= :until"
_FIGURES = text(f"""
SELECT count(*) FILTER (WHERE status IN ('completed', 'failed')) AS ended,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       avg(coalesce(tokens_prompt, 0)) FILTER (WHERE status = 'completed') AS prompt_tokens,
       avg(coalesce(tokens_completion, 0)) FILTER (WHERE status = 'completed') AS completion_tokens,
       {_PERCENTILES}
{_ANSWERS}
""")
_TOKENS_BY_MODEL = text(f"""
SELECT model_used, sum(coalesce(tokens_prompt, 0)) AS prompt, sum(coalesce(tokens_completion, 0)) AS completion
{_ANSWERS} AND status = 'completed'
GROUP BY model_used
""")


def _short_duration(value: object) -> object:
    """``30m``, ``24h``, ``7d`` or seconds; anything else goes on to pydantic (ISO 8601 ``P1D``, ``HH:MM:SS``)."""
    if isinstance(value, str | int):
        try:
            return parse_ttl(str(value))
        except ValueError:
            return value
    return value


def _within_limits(window: timedelta) -> timedelta:
    if not timedelta(0) < window <= MAX_WINDOW:
        raise ValueError(f"the window must be longer than 0 and at most {MAX_WINDOW.days} days")
    return window


Window = Annotated[timedelta, BeforeValidator(_short_duration), AfterValidator(_within_limits)]
parse_window = TypeAdapter(Window).validate_python


class Latency(BaseModel):
    answers: int = Field(description="Completed answers that measured this stage.")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    target_p95_ms: float
    status: Status


class Rate(BaseModel):
    value: float | None
    target: float
    status: Status


class Tokens(BaseModel):
    prompt: float | None
    completion: float | None
    total: float | None


class SloReport(BaseModel):
    since: datetime
    until: datetime
    answers: int = Field(description="Answers that ended (completed or failed) in the window.")
    failed: int
    latency: dict[str, Latency] = Field(description="end_to_end, retrieval, condense, ttft, generation.")
    error_rate: Rate
    tokens_per_message: Tokens
    cost_per_message_usd: Rate
    passed: bool = Field(description="No figure failed its target.")


async def slo_report(
    db: AsyncSession,
    window: timedelta,
    targets: Targets,
    prices: dict[str, tuple[float, float]],
    *,
    provider: str = "",
    until: datetime | None = None,
) -> SloReport:
    """``provider`` is the configured one, for answers whose model has no price (see ``_cost``)."""
    until = until or datetime.now(UTC)
    bounds = {"since": until - window, "until": until}
    row = (await db.execute(_FIGURES, bounds)).mappings().one()
    by_model = (await db.execute(_TOKENS_BY_MODEL, bounds)).all()
    latency = {name: _latency(row[name], row[f"{name}_n"], getattr(targets, f"{name}_ms")) for name in LATENCIES}
    completed = row["ended"] - row["failed"]
    error_rate = row["failed"] / row["ended"] if row["ended"] else None
    costs = [_cost(m.model_used, m.prompt, m.completion, prices, provider) for m in by_model]
    cost = sum(costs) / completed if completed and None not in costs else None  # an unpriced model: unknown
    prompt, completion = _float(row["prompt_tokens"]), _float(row["completion_tokens"])
    report = SloReport(
        since=bounds["since"],
        until=until,
        answers=row["ended"],
        failed=row["failed"],
        latency=latency,
        error_rate=Rate(value=error_rate, target=targets.error_rate, status=_status(error_rate, targets.error_rate)),
        tokens_per_message=Tokens(
            prompt=prompt, completion=completion, total=None if prompt is None else prompt + completion
        ),
        cost_per_message_usd=Rate(
            value=cost, target=targets.cost_per_message_usd, status=_status(cost, targets.cost_per_message_usd)
        ),
        passed=True,
    )
    statuses = [f.status for f in latency.values()] + [report.error_rate.status, report.cost_per_message_usd.status]
    report.passed = "FAIL" not in statuses
    return report


def _latency(percentiles: list[float] | None, answers: int, target: float) -> Latency:
    p50, p95, p99 = percentiles if percentiles else (None, None, None)
    return Latency(
        answers=answers, p50_ms=p50, p95_ms=p95, p99_ms=p99, target_p95_ms=target, status=_status(p95, target)
    )


def _status(value: float | None, target: float) -> Status:
    """Targets are upper bounds that must not be reached: P95 under 5 s, error rate under 5 %."""
    if value is None:
        return "NO DATA"
    return "PASS" if value < target else "FAIL"


def _float(value: object) -> float | None:
    return None if value is None else float(value)


def render(report: SloReport) -> str:
    """The report as a plain-text table (``citechat slo``)."""
    lines = [
        f"answers {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC: "
        f"{report.answers} ended, {report.failed} failed",
        "",
        f"{'':<12}{'answers':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'target':>10}  status",
    ]
    for name, f in report.latency.items():
        figures = "".join(f"{_fmt(v, '.0f'):>10}" for v in (f.p50_ms, f.p95_ms, f.p99_ms, f.target_p95_ms))
        lines.append(f"{name:<12}{f.answers:>8}{figures}  {f.status}")
    error, cost, tokens = report.error_rate, report.cost_per_message_usd, report.tokens_per_message
    lines += [
        "",
        f"error rate         {_fmt(error.value, '.2%'):>10} (target < {error.target:.0%})  {error.status}",
        f"cost per message   {_fmt(cost.value, '.4f', '$'):>10} (target < ${cost.target:.2f})  {cost.status}",
        f"tokens per message {_fmt(tokens.total, '.0f'):>10} "
        f"(prompt {_fmt(tokens.prompt, '.0f')}, completion {_fmt(tokens.completion, '.0f')})",
        "",
        "overall: " + ("PASS" if report.passed else "FAIL"),
    ]
    return "\n".join(lines)


def _fmt(value: float | None, spec: str, prefix: str = "") -> str:
    return "-" if value is None else prefix + format(value, spec)


def _cost(model: str | None, prompt: int, completion: int, prices, provider: str) -> float | None:
    """Answers record their model, not their provider: a priced model is priced, whoever served it; any other is
    free when it is the extractive answerer or the configured provider is free (local), else unknown."""
    if price_of(model or "", prices) is None:
        provider = "extractive" if model == "extractive" else provider
    else:
        provider = "priced"
    return cost_usd(provider, model, prompt, completion, prices)
