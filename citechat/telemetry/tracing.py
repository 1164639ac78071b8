"""Spans of answering a question, and the metrics recorded at the same points.

One trace per chat request: the HTTP span (FastAPI's own telemetry), then ``citechat.chat`` over the whole answer
with ``citechat.condense`` (a follow-up rewritten), ``citechat.retrieve`` and ``citechat.generate`` inside it; the
database spans and LlamaIndex's spans nest wherever they run. Attribute names follow OpenTelemetry's GenAI semantic
conventions where they exist (``gen_ai.*``), ``citechat.*`` otherwise.

Questions, passages and answers are user data: they enter spans only with ``CITECHAT_TRACE_CONTENT=true``
(``Telemetry.content``). A span over its stage's target gets ``citechat.slo.breached=true``.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from typing import TYPE_CHECKING, Any

from llama_index.core.instrumentation.span import active_span_id
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, Span, Status, StatusCode, TracerProvider

from citechat.errors import CitechatError
from citechat.pipeline.modes import POLICIES
from citechat.pipeline.pricing import cost_usd
from citechat.settings import Settings
from citechat.telemetry.metrics import ChatMetrics
from citechat.telemetry.targets import Targets

if TYPE_CHECKING:
    from citechat.chat.answering import Event, Turn

BREACHED = "citechat.slo.breached"
SCOPE = "citechat"


class Telemetry:
    """What citechat reports to: the app's (``setup.AppTelemetry``), or ``NO_TELEMETRY`` (the CLI, benchmarks)."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        trace_content: bool = False,
        targets: Targets = Targets(),  # noqa: B008 (frozen)
        prices: dict[str, tuple[float, float]] | None = None,
        provider: str = "",
        backend: str = "",
        top_k: int = 0,
    ) -> None:
        self.tracer = (tracer_provider or NoOpTracerProvider()).get_tracer(SCOPE)
        self.metrics = ChatMetrics((meter_provider or NoOpMeterProvider()).get_meter(SCOPE))
        self.trace_content = trace_content
        self.targets = targets
        self.prices = prices or {}
        self.provider = provider
        self._stage_targets = {
            "citechat.chat": targets.end_to_end_ms,
            "citechat.retrieve": targets.retrieval_ms,
            "citechat.condense": targets.condense_ms,
        }
        self._stage_attributes = {
            "citechat.retrieve": {"citechat.retrieval.backend": backend, "citechat.retrieval.top_k": top_k},
        }
        self._stage_histograms = {  # histogram, and its attributes
            "citechat.retrieve": (self.metrics.retrieval_duration, {"citechat.retrieval.backend": backend}),
            "citechat.condense": (self.metrics.condense_duration, {"gen_ai.system": provider}),
        }

    @classmethod
    def from_settings(
        cls, settings: Settings, *, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> "Telemetry":
        return cls(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            trace_content=settings.trace_content,
            targets=Targets.from_settings(settings),
            prices=settings.model_prices,
            provider=settings.llm,
            backend=settings.retrieval_backend,
            top_k=settings.retrieval_top_k,
        )

    @contextmanager
    def stage_span(
        self, name: str, *, content: dict[str, str | None] | None = None, **attributes: Any
    ) -> Iterator[Span]:
        """A span over one stage, current while it runs (what runs inside nests under it). On exit it gets
        ``citechat.duration_ms`` and, for a stage with a target, ``citechat.slo.breached``; retrieval and condensing
        also record their duration histograms. ``content`` is recorded only when tracing content is on."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            name, attributes=self._stage_attributes.get(name, {}) | attributes
        ) as span:
            self.content(span, content or {})
            # LlamaIndex's spans (OpenInference) take their parent from LlamaIndex's own span stack before the current
            # OpenTelemetry span: cleared here, the LlamaIndex calls a stage makes nest inside the stage's span.
            inside_llama_index = span.is_recording() and active_span_id.get() is not None
            llama_index_parent = active_span_id.set(None) if inside_llama_index else None
            cancelled = False
            try:
                yield span
            except asyncio.CancelledError:
                cancelled = True
                span.set_attribute("citechat.cancelled", True)
                raise
            finally:
                if llama_index_parent is not None:
                    active_span_id.reset(llama_index_parent)
                self._timed(span, name, (time.perf_counter() - started) * 1000, finished=not cancelled)

    def _timed(self, span: Span, name: str, elapsed_ms: float, *, finished: bool = True) -> None:
        """A stage's end: its duration, against its target if it has one, in its histogram if it has one and it
        ``finished`` (a stage cancelled, by a stopped answer or as a search ahead nobody took, stays out)."""
        span.set_attribute("citechat.duration_ms", round(elapsed_ms, 1))
        if (target := self._stage_targets.get(name)) is not None:
            span.set_attribute(BREACHED, elapsed_ms > target)
        if finished and (histogram := self._stage_histograms.get(name)) is not None:
            histogram[0].record(elapsed_ms / 1000, histogram[1])

    def content(self, span: Span, values: dict[str, str | None]) -> None:
        """User text (questions, passages, answers) on a span: only when ``CITECHAT_TRACE_CONTENT`` is on."""
        if self.trace_content:
            span.set_attributes({key: value for key, value in values.items() if value is not None})

    def start_answer(self) -> "AnswerWatch":
        """The ``citechat.chat`` span of an answer, started as its request is taken (``Answering.begin``), before
        the question is admitted: its retrieval may start then, inside it. ``AnswerWatch.admitted`` names the
        answer, ``AnswerWatch.refused`` ends the span of a question refused there, ``observe_answer`` any other."""
        watch = AnswerWatch(self)
        watch.chat = self.tracer.start_span("citechat.chat", attributes=watch.attributes)
        return watch

    async def observe_answer(self, watch: "AnswerWatch", events: AsyncIterator["Event"]) -> AsyncIterator["Event"]:
        """``events`` (an answer being written) passed through unchanged, inside its ``citechat.chat`` span
        (``start_answer``); ``citechat.generate`` runs from the sources to the last token; metrics are recorded when
        the answer ends.

        Watching the events rather than the code that makes them keeps the answering flow free of telemetry."""
        span = watch.chat
        try:
            with watch.current():  # ended below, with the stage's duration and target
                async with aclosing(events):  # closed inside the span: an interrupted answer's last writes too
                    try:
                        async for event in events:
                            watch.see(event)
                            yield event
                    except CitechatError:  # the question was refused after all: there was no answer to observe
                        span.set_attribute("citechat.outcome", "refused")
                        raise
                    except BaseException:
                        watch.interrupted()
                        raise
        finally:
            self._timed(span, "citechat.chat", watch.elapsed_ms())
            span.end()


class AnswerWatch:
    """What ``observe_answer`` learns from one answer's events."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.turn: Turn | None = None  # once admitted
        self.started = time.perf_counter()
        self.stage = "retrieval"
        self.ended = False
        self.chat: Span | None = None
        self.generate: Span | None = None
        self.last_token_ns: int | None = None
        self.attributes = {"gen_ai.operation.name": "chat", "gen_ai.system": telemetry.provider}
        self.metric_attributes = {"gen_ai.system": telemetry.provider}

    def admitted(self, turn: "Turn") -> None:
        """The question was admitted as ``turn``: the span says which answer, model and mode it is."""
        self.turn = turn
        model = {"gen_ai.request.model": turn.model, "citechat.mode": turn.mode.value}
        self.metric_attributes |= model
        self.attributes |= model | {
            "gen_ai.request.temperature": POLICIES[turn.mode].temperature,
            "citechat.session.id": str(turn.session_id),
            "citechat.message.id": str(turn.assistant_id),
        }
        self.chat.set_attributes(self.attributes)
        self.telemetry.content(self.chat, {"citechat.question": turn.question})

    def refused(self, error: BaseException) -> None:
        """The question was not admitted (``error``: why): its span ends here, and no answer is counted."""
        if isinstance(error, CitechatError):
            self.chat.set_attribute("citechat.outcome", "refused")
        else:  # the database away, most likely: the request failed, by its type only (no message, no secrets)
            self.chat.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self.telemetry._timed(self.chat, "citechat.chat", self.elapsed_ms())
        self.chat.end()

    def current(self):
        """The answer's span made current (for work started inside it, in other tasks: they copy the context).
        Its status is set where the answer's outcome is known (a refusal is no error), never from an exception
        passing through."""
        return trace.use_span(self.chat, record_exception=False, set_status_on_exception=False)

    def see(self, event: "Event") -> None:
        if event.name == "sources":
            self.stage = "generation"
            self.generate = self.telemetry.tracer.start_span(
                "citechat.generate",
                context=trace.set_span_in_context(self.chat),
                attributes={k: v for k, v in self.attributes.items() if k.startswith("gen_ai.")}
                | {"citechat.mode": self.turn.mode.value, "citechat.sources": len(event.data.get("sources", []))},
            )
        elif event.name == "token":
            now = time.time_ns()
            if self.last_token_ns is None and self.generate is not None:
                self.generate.add_event("citechat.first_token", timestamp=now)
            self.last_token_ns = now
        elif event.name == "done":
            self._completed(event.data)
        elif event.name == "error":
            self._failed(event.data.get("stage") or self.stage, event.data.get("detail", ""), event.data)

    def interrupted(self) -> None:
        if not self.ended:
            self._failed(self.stage, "interrupted", {"retryable": True}, outcome="interrupted")

    def _completed(self, message: dict) -> None:
        self.ended = True
        metadata = message.get("metadata") or {}
        timings = metadata.get("timings") or {}
        model = message.get("model_used") or self.turn.model
        input_tokens, output_tokens = message.get("tokens_prompt") or 0, message.get("tokens_completion") or 0
        cost = cost_usd(self.telemetry.provider, model, input_tokens, output_tokens, self.telemetry.prices)
        targets = self.telemetry.targets
        usage = {
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            **({"citechat.cost_usd": cost} if cost is not None else {}),  # None: the model has no price
            "citechat.refused": bool(metadata.get("refused")),
        }
        if self.generate is not None:
            ttft, generation = timings.get("ttft_ms"), timings.get("generation_ms")
            self.generate.set_attributes(usage)
            if ttft is not None:
                self.generate.set_attribute("citechat.ttft_ms", ttft)
            if generation is not None:
                self.generate.set_attribute("citechat.generation_ms", generation)
            slow = (generation or 0) > targets.generation_ms or (ttft or 0) > targets.ttft_ms
            self.generate.set_attribute(BREACHED, slow)
            self.generate.end(end_time=self.last_token_ns)
        self.chat.set_attributes(usage | {"citechat.outcome": "completed"})
        self.telemetry.content(self.chat, {"citechat.answer": message.get("content")})
        seconds = (message.get("processing_time_ms") or self.elapsed_ms()) / 1000
        self.telemetry.metrics.answered(
            self.metric_attributes,
            seconds=seconds,
            ttft_ms=timings.get("ttft_ms"),
            generation_ms=timings.get("generation_ms"),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
        )

    def _failed(self, stage: str, detail: str, data: dict, *, outcome: str = "failed") -> None:
        self.ended = True
        for span in (self.generate, self.chat):
            if span is not None and span.is_recording():
                span.set_status(Status(StatusCode.ERROR, detail))
        if self.generate is not None:
            self.generate.end()
        self.chat.set_attributes(
            {
                "citechat.outcome": outcome,
                "citechat.failure.stage": stage,
                "citechat.failure.retryable": bool(data.get("retryable")),
            }
        )
        self.telemetry.metrics.failed(
            self.metric_attributes, seconds=self.elapsed_ms() / 1000, stage=stage, outcome=outcome
        )

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


NO_TELEMETRY = Telemetry()
