"""A suite answered by a model and judged by one (CITECHAT_LLM=openai-compatible against the OpenAI stand-in):
token usage and cost per answer, the condense stage of follow-ups, and LlamaIndex's FaithfulnessEvaluator."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from citechat.evaluation import datasets, runner
from citechat.evaluation.suite import load_suite
from tests.conftest import derive
from tests.standins.openai import OpenAIStandIn, default_answer, last_user_text

KEY = "standin-key-eval-0123456789"
SMOKE = Path(__file__).resolve().parents[1] / "evals" / "datasets" / "citechat-smoke"
QUESTIONS = ("bakery-revenue", "bakery-revenue-before", "nitrogen")


def _answer(body: dict) -> str:
    text = last_user_text(body)
    if "supported by the context" in text:  # LlamaIndex's faithfulness prompt
        return "NO" if "54 percent" in text else "YES"
    if "Standalone question" in text:
        return default_answer(body)
    return "Revenue for 2023 was 7.4 million dollars [1]. Clot size fell by 54 percent [1]."


@pytest.fixture(scope="module")
def model_server() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(api_key=KEY, models=("gpt-4o-mini", "judge-model"), answers=_answer) as server:
        yield server


def _dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "subset"
    folder.mkdir()
    (folder / "documents").symlink_to(SMOKE / "documents")
    rows = [json.loads(line) for line in (SMOKE / "questions.jsonl").read_text().splitlines()]
    (folder / "questions.jsonl").write_text("\n".join(json.dumps(r) for r in rows if r["id"] in QUESTIONS))
    return folder


async def test_a_model_answered_and_judged_suite(settings, model_server, tmp_path: Path, monkeypatch):
    judges = []

    class RecordedJudge(runner.Judge):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            judges.append(self)

    monkeypatch.setattr(runner, "Judge", RecordedJudge)
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(
        f"""
name: llm
dataset: {{format: jsonl, path: {_dataset(tmp_path)}}}
llm:
  provider: openai-compatible
  model: gpt-4o-mini
  base_url: {model_server.base_url}
  judge: {{provider: openai-compatible, model: judge-model, base_url: {model_server.base_url}}}
modes: [balanced]
"""
    )
    suite = load_suite(suite_file)
    dataset = datasets.load(suite.dataset, suite.resolve(suite.dataset.path))
    configured = runner.suite_settings(suite, derive(settings, llm_api_key=KEY))
    assert configured.llm == "openai-compatible" and configured.llm_models == ["gpt-4o-mini"]
    results = await runner.run_suite(suite, dataset, configured, runner.RunOptions(), lambda what, total: lambda: None)

    answers = {r["id"]: r for r in results["answers"]}
    revenue = answers["bakery-revenue"]
    assert revenue["status"] == "completed" and revenue["model"] == "gpt-4o-mini"
    assert revenue["tokens"]["prompt"] > 0 and revenue["tokens"]["completion"] == 15  # the stand-in counts words
    expected = (revenue["tokens"]["prompt"] * 0.15 + 15 * 0.60) / 1_000_000
    assert revenue["cost_usd"] == pytest.approx(expected)
    # Two sentences, both citing [1]: the judge supports the first and not the second.
    assert revenue["scores"]["faithfulness_judge"] == pytest.approx(0.5)
    assert "condense_ms" in answers["bakery-revenue-before"]["timings"]  # a model rewrites follow-ups
    assert answers["nitrogen"]["scores"]["invented"]  # the stand-in answers anything: Balanced invented
    figures = results["metrics"]["default"]["balanced"]
    assert figures["refusal_accuracy"] == 0.0 and figures["cost_per_answer_usd"] > 0
    assert figures["faithfulness_judge"] is not None and results["run"]["judge_calls"] >= 4
    judged = [r for r in model_server.requests if "supported by the context" in last_user_text(r)]
    assert judged and all(r["model"] == "judge-model" and r["temperature"] == 0 for r in judged)
    [judge] = judges
    assert judge.provider.http.is_closed  # the judge's connections are closed with the run
