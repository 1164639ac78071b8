"""Observability: OpenTelemetry traces and metrics of every stage of an answer, and the SLO report.

- ``tracing``: ``Telemetry`` (spans of the stages, ``citechat.slo.breached``, metrics at the same points);
  ``NO_TELEMETRY`` where nothing is exported (the CLI, benchmarks).
- ``metrics``: the instruments, including ``rate_limited(scope)`` for the rate limiter.
- ``setup``: exporters from ``OTEL_*`` variables, the app's own providers, SQLAlchemy and LlamaIndex instrumentation;
  ``redaction``: LlamaIndex's spans without user text.
- ``targets``: the ``CITECHAT_SLO_*`` targets; ``slo``: the report computed from the stored answers, served by
  ``routes`` (``GET /api/v1/admin/slo``) and ``citechat slo``.
"""

from citechat.telemetry.tracing import NO_TELEMETRY, Telemetry

__all__ = ["NO_TELEMETRY", "Telemetry"]
