"""Where telemetry goes, and the instrumentation that feeds it; the app opens both in its lifespan.

Export is configured with the standard variables, read once when the app is made (``Exporters.from_env``):
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` = ``otlp``, ``console`` or ``none`` (comma-separated for
several); ``otlp`` speaks gRPC or HTTP per ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or its ``_TRACES_`` / ``_METRICS_``
variant; ``grpc`` by default, as in OpenTelemetry's Python SDK) and the exporters read their own
``OTEL_EXPORTER_OTLP_*`` endpoint and header variables. Unlike the SDK, unset means ``none``: nothing is exported
and nothing is instrumented unless asked for. ``OTEL_SDK_DISABLED=true`` turns everything off.

The tracer and meter providers are the app's own, never OpenTelemetry's global ones, so several apps (the tests make
many) never share state; tests hand ``Exporters`` an in-memory span exporter and metric reader instead.
"""

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from citechat.errors import ConfigurationError
from citechat.settings import Settings
from citechat.telemetry.redaction import WithoutContent
from citechat.telemetry.tracing import Telemetry

log = logging.getLogger(__name__)
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
_PROBES = ("/healthz", "/readyz")


@dataclass(frozen=True)
class Exporters:
    """What to export to: exporter names from the environment, and exporters handed over directly (tests)."""

    traces: tuple[str, ...] = ()  # "otlp:grpc", "otlp:http/protobuf", "console"
    metrics: tuple[str, ...] = ()
    span_exporters: tuple[SpanExporter, ...] = ()  # exported as each span ends
    metric_readers: tuple[MetricReader, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Exporters":
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        return cls(traces=_names(environ, "TRACES"), metrics=_names(environ, "METRICS"))

    @property
    def tracing(self) -> bool:
        return bool(self.traces or self.span_exporters)

    @property
    def metering(self) -> bool:
        return bool(self.metrics or self.metric_readers)


def _names(environ: Mapping[str, str], signal: str) -> tuple[str, ...]:
    variable = f"OTEL_{signal}_EXPORTER"
    names = [n.strip().lower() for n in environ.get(variable, "none").split(",") if n.strip()]
    if unknown := [n for n in names if n not in EXPORTERS]:
        raise ConfigurationError(f"{variable}: unsupported exporter {unknown[0]!r} (use {', '.join(EXPORTERS)})")
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip()
    if "otlp" in names and protocol not in PROTOCOLS:
        raise ConfigurationError(f"OTLP protocol {protocol!r} is not supported (use {' or '.join(PROTOCOLS)})")
    return tuple(f"otlp:{protocol}" if n == "otlp" else n for n in names if n != "none")


class AppTelemetry:
    """The app's providers (made with the app, as FastAPI's own telemetry takes them when constructed) and, while
    ``running``, their exporters and the SQLAlchemy and LlamaIndex instrumentation."""

    def __init__(self, settings: Settings, exporters: Exporters) -> None:
        self.settings, self.exporters = settings, exporters
        resource = _resource()
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False) if exporters.tracing else None
        self.meter_provider = MeterProvider(resource=resource, shutdown_on_exit=False) if exporters.metering else None
        self.telemetry = Telemetry.from_settings(
            settings, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def fastapi_config(self) -> dict:
        """FastAPI's native telemetry (the HTTP span and ``http.server.*`` metrics) on these providers only."""
        return {
            "tracer_provider": self.tracer_provider,
            "meter_provider": self.meter_provider,
            "tracing": self.tracer_provider is not None,
            "metrics": self.meter_provider is not None,
            "logs": False,  # citechat logs through logging; request bodies stay out of telemetry
            "auto_configure": False,  # export is configured here, from the same variables
            "exclude": lambda scope: scope.get("path") in _PROBES,
        }

    @contextmanager
    def running(self) -> Iterator[Telemetry]:
        """Exporters attached and LlamaIndex instrumented; on exit, everything pending is flushed and shut down."""
        readers: list[MetricReader] = []
        try:
            if self.tracer_provider is not None:
                for processor in _span_processors(self.exporters):
                    content = self.settings.trace_content
                    self.tracer_provider.add_span_processor(processor if content else WithoutContent(processor))
            if self.meter_provider is not None:
                for reader in _metric_readers(self.exporters):
                    self.meter_provider.add_metric_reader(reader)
                    readers.append(reader)
            with self._llama_index_spans():
                yield self.telemetry
        finally:
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                for reader in readers:  # the provider's shutdown only reaches readers it was constructed with
                    reader.force_flush()  # a last collection and export
                    self.meter_provider.remove_metric_reader(reader)  # and its shutdown
                self.meter_provider.shutdown()

    @contextmanager
    def database_spans(self, engine: AsyncEngine) -> Iterator[None]:
        """A span per SQL statement on ``engine`` (statements carry placeholders, never the values bound to them)."""
        if self.tracer_provider is None:
            yield
            return
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        instrumentor = SQLAlchemyInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:  # one instrumented app per process (the tests make many)
            log.warning("SQLAlchemy is already instrumented; this app's database spans go to the first app")
            yield
            return
        instrumentor.instrument(
            engine=engine.sync_engine,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            skip_dep_check=True,  # it declares sqlalchemy < 2.1; the engine events it uses are unchanged in 2.1
        )
        try:
            yield
        finally:
            instrumentor.uninstrument()

    @contextmanager
    def _llama_index_spans(self) -> Iterator[None]:
        """LlamaIndex's own spans (chat engine, retriever, LLM calls) through OpenInference. Its prompts, passages and
        answers are hidden unless tracing content is on; embedding vectors always are."""
        if self.tracer_provider is None:
            yield
            return
        from openinference.instrumentation import TraceConfig
        from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

        instrumentor = LlamaIndexInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            log.warning("LlamaIndex is already instrumented; this app's LlamaIndex spans go to the first app")
            yield
            return
        hide = not self.settings.trace_content
        config = TraceConfig(
            hide_inputs=hide,
            hide_outputs=hide,
            hide_input_messages=hide,
            hide_output_messages=hide,
            hide_input_text=hide,
            hide_output_text=hide,
            hide_prompts=hide,
            hide_choices=hide,
            hide_retrieval_documents=hide,
            hide_embeddings_text=hide,
            hide_embedding_vectors=True,
        )
        instrumentor.instrument(tracer_provider=self.tracer_provider, config=config)
        try:
            yield
        finally:
            instrumentor.uninstrument()


def _span_processors(exporters: Exporters) -> list:
    processors = [SimpleSpanProcessor(exporter) for exporter in exporters.span_exporters]
    for name in exporters.traces:
        if name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp:grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    return processors


def _metric_readers(exporters: Exporters) -> list[MetricReader]:
    readers = list(exporters.metric_readers)
    for name in exporters.metrics:  # each exported every OTEL_METRIC_EXPORT_INTERVAL ms (60 s by default)
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "otlp:grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return readers


def _resource() -> Resource:
    """``service.name`` is citechat unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` names it."""
    from importlib.metadata import version

    resource = Resource.create({"service.version": version("citechat")})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "citechat"}))
    return resource
