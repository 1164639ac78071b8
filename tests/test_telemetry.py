"""Traces and metrics of a streamed chat request: real HTTP through the ASGI app, the real index on the embedded
PostgreSQL, a model behind the OpenAI stand-in (real token usage), the SDK's in-memory exporter and metric reader."""

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from citechat.api.app import create_app
from citechat.pipeline.pricing import cost_usd
from citechat.telemetry.setup import Exporters
from tests.conftest import answered_by, client_for
from tests.standins.openai import OpenAIStandIn
from tests.test_chat_messages import new_conversation, parse_sse

API = "/api/v1/chat"
KEY = "standin-secret-key-4242"
MODEL = "gpt-4o"  # priced, so the cost counter moves
FIRST = "What did the quarterly revenue of the Orbital Bakery rise to?"
FOLLOW_UP = "Which exports drove that increase, specifically?"
ANSWER = "Sourdough exports to Norway drove it [1]."
PASSAGE = "rose to 7.4 million dollars"  # the indexed page's text, never in the question or answer


@pytest.fixture(scope="module")
def model_server() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key=KEY, models=(MODEL,)) as server:
        yield server


class Traced:
    """A running app whose telemetry goes to memory."""

    def __init__(self, app, client, spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
        self.app, self.client, self.spans, self.metrics = app, client, spans, metrics

    def metric(self, name: str) -> list:
        """The data points of one metric (empty when it was never recorded)."""
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return list(metric.data.data_points)
        return []

    async def ask(self, headers: dict, session: dict, question: str, **body) -> list[tuple[int, str, dict]]:
        response = await self.client.post(
            f"{API}/message/stream",
            params={"session_id": session["id"]},
            json={"question": question, "mode": "balanced", **body},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        events = parse_sse(response.text)
        await self.app.state.streams.wait(uuid.UUID(events[-1][2].get("message_id") or events[-1][2]["id"]))
        return events


@pytest.fixture
def tracing(app, settings, model_server):
    """``tracing(**settings)``: an app on the model stand-in with in-memory telemetry (after the session's ``app``,
    which migrated the database)."""
    model_server.reset()

    async def make(**changes) -> AsyncIterator[Traced]:
        configured = answered_by(settings, model_server, MODEL, **changes)
        spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
        app = create_app(configured, exporters=Exporters(span_exporters=(spans,), metric_readers=(metrics,)))
        async with client_for(app) as client:
            yield Traced(app, client, spans, metrics)

    return make


LOOSE = {f"slo_{stage}_ms": 600_000 for stage in ("end_to_end", "retrieval", "condense", "ttft", "generation")}


@pytest.fixture
async def traced(tracing) -> AsyncIterator[Traced]:
    """Targets out of reach: a busy machine never flips a breach flag (``test_content_and_breaches...`` sets them)."""
    async for running in tracing(**LOOSE):
        yield running


def by_id(spans) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


def ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        chain.append(span)
    return chain


def chat_trace(spans, message_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    [chat] = [s for s in spans if s.name == "citechat.chat" and s.attributes.get("citechat.message.id") == message_id]
    return chat, [s for s in spans if s.context.trace_id == chat.context.trace_id]


def every_text(spans) -> str:
    """Everything a span carries that could hold text: attributes, event attributes, status, resource."""
    parts = []
    for span in spans:
        parts += [span.name, str(span.status.description or "")]
        parts += [str(v) for v in span.attributes.values()]
        parts += [str(v) for event in span.events for v in (event.attributes or {}).values()]
        parts += [str(v) for v in span.resource.attributes.values()]
    return "\n".join(parts)


async def test_span_tree_of_a_streamed_follow_up(traced, model_server, identity):
    headers, session = await new_conversation(traced.client, identity)
    await traced.ask(headers, session, FIRST)
    traced.spans.clear()
    model_server.queue_answers(lambda body: "Follow-up: which exports drove the revenue?", ANSWER)

    events = await traced.ask(headers, session, FOLLOW_UP)
    done = events[-1][2]
    assert events[-1][1] == "done" and done["content"] == ANSWER
    spans = traced.spans.get_finished_spans()
    chat, trace = chat_trace(spans, done["id"])
    index = by_id(trace)
    [http] = [s for s in trace if s.kind == SpanKind.SERVER]
    assert http.name == "POST /api/v1/chat/message/stream" and http.attributes["http.response.status_code"] == 200
    assert http in ancestors(chat, index)
    assert chat.attributes["gen_ai.request.model"] == MODEL and chat.attributes["citechat.mode"] == "balanced"
    assert chat.attributes["citechat.outcome"] == "completed" and chat.attributes["citechat.slo.breached"] is False
    assert chat.status.status_code != StatusCode.ERROR

    stages = {name: [s for s in trace if s.name == f"citechat.{name}"] for name in ("condense", "retrieve", "generate")}
    # One search: a follow-up the model condenses is not searched ahead of its admission (see chat.search_ahead).
    [condense], [retrieve], [generate] = stages["condense"], stages["retrieve"], stages["generate"]
    for stage in (condense, retrieve, generate):
        assert chat in ancestors(stage, index), stage.name
    assert generate.parent.span_id == chat.context.span_id
    assert condense.end_time <= retrieve.start_time <= retrieve.end_time <= generate.start_time

    assert retrieve.attributes["citechat.retrieval.backend"] == "local"
    assert retrieve.attributes["citechat.retrieval.top_k"] == 5
    assert retrieve.attributes["citechat.retrieval.results"] == len(done["sources"])
    assert retrieve.attributes["citechat.slo.breached"] is False and retrieve.attributes["citechat.duration_ms"] > 0

    attributes = generate.attributes
    assert attributes["gen_ai.system"] == "openai-compatible" and attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == MODEL and attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == done["tokens_prompt"] > 100
    assert attributes["gen_ai.usage.output_tokens"] == done["tokens_completion"] == len(ANSWER.split())
    assert attributes["citechat.ttft_ms"] == done["metadata"]["timings"]["ttft_ms"]
    expected_cost = cost_usd("openai-compatible", MODEL, done["tokens_prompt"], len(ANSWER.split()), {MODEL: (2.5, 10)})
    assert attributes["citechat.cost_usd"] == pytest.approx(expected_cost)
    [first_token] = [e for e in generate.events if e.name == "citechat.first_token"]
    assert generate.start_time <= first_token.timestamp <= generate.end_time

    database = [s for s in trace if "db.statement" in s.attributes or "db.query.text" in s.attributes]
    assert any(retrieve in ancestors(s, index) for s in database)  # the index's queries
    assert any(chat in ancestors(s, index) and retrieve not in ancestors(s, index) for s in database)  # the answer's
    assert any(http in ancestors(s, index) and chat not in ancestors(s, index) for s in database)  # the question
    llama_index = [s for s in trace if "openinference.span.kind" in s.attributes]
    llms = [s for s in llama_index if s.attributes["openinference.span.kind"] == "LLM" and chat in ancestors(s, index)]
    [answer] = [s for s in llms if s.attributes.get("llm.token_count.completion") == done["tokens_completion"]]
    assert answer.attributes["llm.token_count.prompt"] == done["tokens_prompt"]  # from the streamed answer's end event
    assert answer.attributes["llm.finish_reason"] == "stop"
    assert any(s.attributes["openinference.span.kind"] == "RETRIEVER" for s in llama_index)

    text = every_text(spans)  # no content, no secret, in any span of the two requests
    secrets = (FIRST, FOLLOW_UP, "drove the revenue", ANSWER, PASSAGE, KEY, headers["Authorization"].split()[1])
    for secret in secrets:
        assert secret not in text, secret


def admission_and_retrieval(spans, message_id: str) -> tuple[ReadableSpan, ReadableSpan, ReadableSpan]:
    """An answer's span, its retrieval's, and its admitting statement's (the answer's first outside retrieval)."""
    chat, trace = chat_trace(spans, message_id)
    index = by_id(trace)
    [retrieve] = [s for s in trace if s.name == "citechat.retrieve"]
    statements = [s for s in trace if "db.statement" in s.attributes and chat in ancestors(s, index)]
    admission = min((s for s in statements if retrieve not in ancestors(s, index)), key=lambda s: s.start_time)
    return chat, retrieve, admission


async def test_a_question_is_searched_while_it_is_admitted_unless_its_asker_was_just_refused(traced, identity):
    headers, session = await new_conversation(traced.client, identity)
    traced.spans.clear()
    done = (await traced.ask(headers, session, FIRST))[-1][2]
    chat, retrieve, admission = admission_and_retrieval(traced.spans.get_finished_spans(), done["id"])
    assert retrieve.parent.span_id == chat.context.span_id
    assert retrieve.start_time < admission.end_time  # searching had begun before the database admitted it
    assert "citechat.cancelled" not in retrieve.attributes

    traced.spans.clear()
    unknown = await traced.client.post(
        f"{API}/message/stream", params={"session_id": str(uuid.uuid4())}, json={"question": FIRST}, headers=headers
    )
    assert unknown.status_code == 404
    [refused] = [s for s in traced.spans.get_finished_spans() if s.name == "citechat.chat"]
    assert refused.attributes["citechat.outcome"] == "refused" and refused.status.status_code == StatusCode.UNSET
    assert "citechat.message.id" not in refused.attributes  # no answer was begun

    other = (await traced.client.post(f"{API}/session/new", headers=headers)).json()
    done = (await traced.ask(headers, other, FIRST))[-1][2]
    _, retrieve, admission = admission_and_retrieval(traced.spans.get_finished_spans(), done["id"])
    assert retrieve.start_time >= admission.end_time  # refused a moment ago: searched only once admitted


async def test_metrics_of_answers_and_failures(tracing, model_server, identity):
    async for traced in tracing(**LOOSE, ratelimit_user_per_hour=2):
        headers, session = await new_conversation(traced.client, identity)
        model_server.fail_next(500, times=3, retry_after_ms=1)
        failed = await traced.ask(headers, session, "In which year was that?")
        assert failed[-1][1] == "error"
        other_session = (await traced.client.post(f"{API}/session/new", headers=headers)).json()
        done = (await traced.ask(headers, other_session, FIRST))[-1][2]
        refused = await traced.client.post(
            f"{API}/message", params={"session_id": other_session["id"]}, json={"question": "more?"}, headers=headers
        )
        assert refused.status_code == 429  # the third message: over the quota of two

        common = {"gen_ai.system": "openai-compatible", "gen_ai.request.model": MODEL, "citechat.mode": "balanced"}
        outcomes = traced.metric("citechat.messages")
        [completed, failure] = sorted(outcomes, key=lambda p: p.attributes["citechat.outcome"])
        assert completed.attributes == common | {"citechat.outcome": "completed"} and completed.value == 1
        assert failure.attributes == common | {"citechat.outcome": "failed"} and failure.value == 1
        [stage] = traced.metric("citechat.failures")
        assert stage.attributes["citechat.stage"] == "generation" and stage.value == 1

        durations = {p.attributes["citechat.outcome"]: p for p in traced.metric("citechat.request.duration")}
        assert durations["completed"].count == 1 and durations["completed"].sum == done["processing_time_ms"] / 1000
        assert durations["failed"].count == 1
        [retrieval] = traced.metric("citechat.retrieval.duration")
        assert retrieval.count == 2 and retrieval.attributes == {"citechat.retrieval.backend": "local"}
        assert 0.5 in retrieval.explicit_bounds and 5 in retrieval.explicit_bounds
        [ttft] = traced.metric("citechat.ttft")
        assert ttft.count == 1 and ttft.sum == done["metadata"]["timings"]["ttft_ms"] / 1000
        [generation] = traced.metric("citechat.generation.duration")
        assert generation.count == 1 and generation.sum == done["metadata"]["timings"]["generation_ms"] / 1000

        tokens = {p.attributes["gen_ai.token.type"]: p.value for p in traced.metric("citechat.tokens")}
        assert tokens == {"input": done["tokens_prompt"], "output": done["tokens_completion"]}
        [cost] = traced.metric("citechat.cost")
        assert cost.value == pytest.approx(done["tokens_prompt"] * 2.5e-6 + done["tokens_completion"] * 10e-6)
        [limited] = traced.metric("citechat.rate_limit.rejections")
        assert limited.value == 1 and limited.attributes == {"citechat.rate_limit.scope": "user"}
        assert traced.metric("http.server.request.duration")  # FastAPI's own, on the app's provider

        [chat] = [s for s in traced.spans.get_finished_spans() if s.name == "citechat.chat" and s.status.is_ok is False]
        assert chat.status.status_code == StatusCode.ERROR and chat.status.description == failed[-1][2]["detail"]
        assert chat.attributes["citechat.failure.stage"] == "generation"
        assert chat.attributes["citechat.outcome"] == "failed"


async def test_content_and_breaches_when_asked_for(tracing, model_server, identity):
    async for traced in tracing(trace_content=True, **LOOSE | {"slo_retrieval_ms": 0.001, "slo_end_to_end_ms": 0.001}):
        headers, session = await new_conversation(traced.client, identity)
        traced.spans.clear()
        model_server.queue_answers(ANSWER)
        done = (await traced.ask(headers, session, FIRST))[-1][2]
        spans = traced.spans.get_finished_spans()
        chat, trace = chat_trace(spans, done["id"])
        [retrieve] = [s for s in trace if s.name == "citechat.retrieve"]
        [generate] = [s for s in trace if s.name == "citechat.generate"]
        assert chat.attributes["citechat.question"] == FIRST and chat.attributes["citechat.answer"] == ANSWER
        assert retrieve.attributes["citechat.query"] == FIRST
        assert chat.attributes["citechat.slo.breached"] is True and retrieve.attributes["citechat.slo.breached"] is True
        assert generate.attributes["citechat.slo.breached"] is False
        assert PASSAGE in every_text(trace)  # LlamaIndex's spans show the passages now
        assert KEY not in every_text(spans)  # secrets never


async def test_nothing_is_traced_by_default(settings, identity):
    app = create_app(settings)
    async with client_for(app) as client:
        headers = identity()
        assert (await client.get(f"{API}/session", headers=headers)).status_code == 200
        telemetry = app.state.telemetry
        assert not telemetry.tracer.start_span("x").is_recording()


async def test_an_answer_cut_off_by_shutdown(traced, model_server, identity):
    from citechat.chat.schemas import SendMessage

    headers, session = await new_conversation(traced.client, identity)
    sessions = traced.app.state.database.sessions
    principal = await traced.app.state.authenticator.authenticate(headers["Authorization"].split()[1], None, sessions)
    model_server.queue_answers(" ".join(["word"] * 200))
    model_server.stream_delay_s = 0.05
    answering, streams = traced.app.state.answering, traced.app.state.streams
    turn = await answering.begin(principal, uuid.UUID(session["id"]), SendMessage(question=FIRST, mode="balanced"))
    async for _, event in (await streams.start(turn)).follow():
        if event.name == "token":
            break
    await streams.aclose()  # what the lifespan does at shutdown

    [chat] = [s for s in traced.spans.get_finished_spans() if s.name == "citechat.chat"]
    assert chat.attributes["citechat.outcome"] == "interrupted" and chat.status.status_code == StatusCode.ERROR
    assert chat.attributes["citechat.failure.stage"] == "generation"
    [generate] = [s for s in traced.spans.get_finished_spans() if s.name == "citechat.generate"]
    assert generate.status.status_code == StatusCode.ERROR
    [failure] = traced.metric("citechat.failures")
    assert failure.attributes["citechat.outcome"] == "interrupted" and failure.value == 1
    [message] = traced.metric("citechat.messages")
    assert message.attributes["citechat.outcome"] == "interrupted"
