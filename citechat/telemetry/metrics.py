"""citechat's metric instruments, created once per meter (the app's, or a no-op one when nothing is exported).

Durations are histograms in seconds (OpenTelemetry's convention) whose bucket boundaries include every latency target
(0.5 s, 1 s, 2 s, 4 s, 5 s), so "share of answers under target" is exact in Prometheus. Attribute values are few and
bounded (stage, mode, model, outcome): never ids, never text.
"""

from opentelemetry.metrics import Meter

LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 30, 60)


class ChatMetrics:
    def __init__(self, meter: Meter) -> None:
        def histogram(name: str, description: str):
            return meter.create_histogram(
                name, unit="s", description=description, explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S
            )

        self.request_duration = histogram("citechat.request.duration", "A whole answer, question stored to saved.")
        self.retrieval_duration = histogram("citechat.retrieval.duration", "Retrieving the passages of one answer.")
        self.condense_duration = histogram("citechat.condense.duration", "Rewriting a follow-up as a question.")
        self.generation_duration = histogram("citechat.generation.duration", "Writing the answer (to its last token).")
        self.ttft = histogram("citechat.ttft", "From the question to the first token of its answer.")
        self.messages = meter.create_counter("citechat.messages", unit="{message}", description="Answers, by outcome.")
        self.failures = meter.create_counter("citechat.failures", unit="{failure}", description="Failed answers.")
        self.rate_limit_rejections = meter.create_counter(
            "citechat.rate_limit.rejections", unit="{request}", description="Requests refused by a rate limit."
        )
        self.tokens = meter.create_counter("citechat.tokens", unit="{token}", description="Model tokens, by type.")
        self.cost = meter.create_counter("citechat.cost", unit="USD", description="Estimated model cost.")

    def rate_limited(self, scope: str) -> None:
        """One request refused by the rate limit of ``scope`` (e.g. ``user``, ``organization``)."""
        self.rate_limit_rejections.add(1, {"citechat.rate_limit.scope": scope})

    def answered(
        self,
        attributes: dict[str, str],
        *,
        seconds: float,
        ttft_ms: float | None = None,
        generation_ms: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | None = 0.0,
    ) -> None:
        """A completed answer: its timings (as the message records them), tokens and cost."""
        self.messages.add(1, attributes | {"citechat.outcome": "completed"})
        self.request_duration.record(seconds, attributes | {"citechat.outcome": "completed"})
        if ttft_ms is not None:
            self.ttft.record(ttft_ms / 1000, attributes)
        if generation_ms is not None:
            self.generation_duration.record(generation_ms / 1000, attributes)
        self.tokens.add(input_tokens, attributes | {"gen_ai.token.type": "input"})
        self.tokens.add(output_tokens, attributes | {"gen_ai.token.type": "output"})
        if cost_usd is not None:  # a model without a price adds nothing, rather than a false 0
            self.cost.add(cost_usd, attributes)

    def failed(self, attributes: dict[str, str], *, seconds: float, stage: str, outcome: str = "failed") -> None:
        """An answer that ended ``failed`` (or was ``interrupted``) at ``stage``."""
        self.messages.add(1, attributes | {"citechat.outcome": outcome})
        self.request_duration.record(seconds, attributes | {"citechat.outcome": outcome})
        self.failures.add(1, attributes | {"citechat.stage": stage, "citechat.outcome": outcome})
