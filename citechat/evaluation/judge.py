"""Faithfulness judged by a model: LlamaIndex's ``FaithfulnessEvaluator``, one citing sentence at a time.

The offline measure (``answers.faithfulness``) checks word overlap; a judge also sees paraphrase and negation. To
report the same quantity, the judge is asked about each sentence against the passages that sentence cites, and an
answer scores the share of its sentences judged supported (a sentence citing nothing is unsupported, unasked).
The judge is built like the answering models (``LLMProvider``), at temperature 0, from the suite's ``llm.judge``.
"""

from llama_index.core.evaluation import FaithfulnessEvaluator

from citechat.errors import CitechatError
from citechat.pipeline import citations
from citechat.pipeline.chat_completions import LLMError
from citechat.pipeline.llms import provider_from_settings
from citechat.settings import Settings


class JudgeError(CitechatError):
    status_code = 502


class Judge:
    def __init__(self, settings: Settings, model: str) -> None:
        self.provider = provider_from_settings(settings)
        self._evaluator = FaithfulnessEvaluator(llm=self.provider.create(model, 0.0))
        self.calls = 0

    async def aclose(self) -> None:
        """Closes the judge's connections to its model."""
        await self.provider.aclose()

    async def faithfulness(self, question: str, record: dict, passages: dict[int, str]) -> float | None:
        """Share of the answer's sentences the judge finds supported by their cited passages (``passages``: the
        text of each source by its number)."""
        total = len(citations.split_sentences(record["answer"]))
        if not total:
            return None
        supported = 0
        for sentence in (record.get("citations") or {}).get("sentences", []):
            contexts = [passages[n] for n in sentence["sources"] if n in passages]
            if contexts and await self._supported(question, sentence["text"], contexts):
                supported += 1
        return min(1.0, supported / total)

    async def _supported(self, question: str, sentence: str, contexts: list[str]) -> bool:
        self.calls += 1
        try:
            result = await self._evaluator.aevaluate(query=question, response=sentence, contexts=contexts)
        except LLMError as exc:
            raise JudgeError(f"the judge model failed: {exc.detail}") from exc
        return bool(result.passing)
