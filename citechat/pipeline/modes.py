"""Response modes: each sets the temperature and the grounding policy, not only the temperature."""

from dataclasses import dataclass
from enum import StrEnum


class ResponseMode(StrEnum):
    STRICT = "strict"
    BALANCED = "balanced"
    CREATIVE = "creative"


@dataclass(frozen=True)
class ModePolicy:
    temperature: float
    refuses_without_relevant_source: bool  # Strict answers a fixed sentence, with no model call, below the threshold
    description: str


POLICIES: dict[ResponseMode, ModePolicy] = {
    ResponseMode.STRICT: ModePolicy(0.1, True, "Only what your documents say, every claim cited; declines otherwise."),
    ResponseMode.BALANCED: ModePolicy(0.5, False, "Grounded in your documents, with clearly marked inferences."),
    ResponseMode.CREATIVE: ModePolicy(0.9, False, "Uses your documents plus general knowledge, clearly separated."),
}
