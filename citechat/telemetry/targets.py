"""The service's targets (README: Settings, ``CITECHAT_SLO_*``): what spans are flagged against and the SLO report
compares with. Latency targets are P95s in milliseconds."""

from dataclasses import dataclass

from citechat.settings import Settings


@dataclass(frozen=True)
class Targets:
    end_to_end_ms: float = 5000
    retrieval_ms: float = 500
    condense_ms: float = 1000
    ttft_ms: float = 2000
    generation_ms: float = 4000
    error_rate: float = 0.05
    cost_per_message_usd: float = 0.05

    @classmethod
    def from_settings(cls, settings: Settings) -> "Targets":
        return cls(
            end_to_end_ms=settings.slo_end_to_end_ms,
            retrieval_ms=settings.slo_retrieval_ms,
            condense_ms=settings.slo_condense_ms,
            ttft_ms=settings.slo_ttft_ms,
            generation_ms=settings.slo_generation_ms,
            error_rate=settings.slo_error_rate,
            cost_per_message_usd=settings.slo_cost_per_message_usd,
        )
