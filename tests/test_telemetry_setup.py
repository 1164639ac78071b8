"""Export configured by the standard OTEL_* variables (real OTLP/HTTP to a local receiver), and the collector
configuration shipped beside citechat."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from citechat.api.app import create_app
from citechat.errors import ConfigurationError
from citechat.telemetry.setup import Exporters
from tests.conftest import client_for
from tests.standins.server import BackgroundServer


@pytest.mark.parametrize(
    ("environ", "traces", "metrics"),
    [
        ({}, (), ()),  # nothing by default
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}, (), ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp"}, ("otlp:grpc",), ("otlp:grpc",)),
        (
            {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp:http/protobuf", "console"),
            (),
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "OTLP",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            },
            ("otlp:http/protobuf",),
            ("otlp:grpc",),
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, (), ()),
    ],
)
def test_exporters_from_the_environment(environ, traces, metrics):
    exporters = Exporters.from_env(environ)
    assert (exporters.traces, exporters.metrics) == (traces, metrics)
    assert exporters.tracing == bool(traces) and exporters.metering == bool(metrics)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unsupported exporter 'zipkin'"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER: unsupported exporter 'prometheus'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not supported"),
    ],
)
def test_unsupported_export_is_refused_at_start(environ, message):
    with pytest.raises(ConfigurationError, match=message):
        Exporters.from_env(environ)


class OtlpReceiver:
    """A local OTLP/HTTP endpoint keeping what it receives (protobuf bodies, as the SDK's exporters send them)."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.raw: list[bytes] = []
        app = Starlette(
            routes=[
                Route("/v1/traces", self._receive(ExportTraceServiceRequest, self.traces), methods=["POST"]),
                Route("/v1/metrics", self._receive(ExportMetricsServiceRequest, self.metrics), methods=["POST"]),
            ]
        )
        self.server = BackgroundServer(app, name="OTLP receiver")

    def _receive(self, message_type, into: list):
        async def receive(request: Request) -> Response:
            body = await request.body()
            self.raw.append(body)
            into.append(message_type.FromString(body))
            return Response(b"", media_type="application/x-protobuf")

        return receive


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    with receiver.server:
        yield receiver


async def test_otlp_http_export(app, settings, identity, receiver, monkeypatch):
    for name, value in {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.server.url,
        "OTEL_SERVICE_NAME": "citechat-under-test",
    }.items():
        monkeypatch.setenv(name, value)
    headers = identity()
    async with client_for(create_app(settings)) as client:
        assert (await client.get("/api/v1/chat/session", headers=headers)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
    # the lifespan has ended: everything pending was flushed
    spans = [
        (resource.resource, span)
        for request in receiver.traces
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in spans}
    assert "GET /api/v1/chat/session" in names and not any("healthz" in name for name in names)
    assert any(name in names for name in ("SELECT", "INSERT", "connect"))  # the database's spans
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "citechat-under-test" and resource["service.version"] == "0.1.0"
    metric_names = {
        metric.name
        for request in receiver.metrics
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "http.server.request.duration" in metric_names
    token = headers["Authorization"].split()[1].encode()
    assert not any(token in body for body in receiver.raw)  # no credentials leave the process


def test_collector_configuration(repo_root: Path):
    config = yaml.safe_load((repo_root / "otel-collector.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind] or component in config.get("connectors", {}), component
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert "spanmetrics" in pipelines["traces"]["exporters"] and "spanmetrics" in pipelines["metrics"]["receivers"]
    assert "batch" in pipelines["traces"]["processors"] and "batch" in pipelines["metrics"]["processors"]
    assert any(name.startswith("otlp_grpc") for name in pipelines["traces"]["exporters"])
    assert "prometheus" in pipelines["metrics"]["exporters"]
    buckets = config["connectors"]["spanmetrics"]["histogram"]["explicit"]["buckets"]
    assert {"500ms", "2s", "4s", "5s"} <= set(buckets)  # the targets are bucket boundaries

    readme = (repo_root / "README.md").read_text()
    assert "## Observability" in readme and "otel/opentelemetry-collector-contrib" in readme
    assert "otel-collector.yaml:/etc/otelcol-contrib/config.yaml" in readme
    for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        assert variable in readme
