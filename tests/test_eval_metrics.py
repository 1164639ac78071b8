"""Evaluation metrics, pricing and the gate, against values computed by hand."""

import math

import pytest

from citechat.evaluation import answers, gate, scoring
from citechat.pipeline.pricing import DEFAULT_PRICES, cost_usd, price_of


def test_token_f1_exact_match_and_answer_recall():
    answer, gold = "Revenue was 7.4 million dollars [1].", "7.4 million dollars"
    # answer tokens: revenue was 74 million dollars (5); gold: 74 million dollars (3); 3 shared
    assert answers.token_f1(answer, gold) == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))  # 0.75
    assert answers.exact_match(answer, gold) == 0.0
    assert answers.exact_match("The 7.4 million dollars.", gold) == 1.0  # articles and punctuation do not count
    assert answers.answer_recall(answer, gold) == 1.0
    assert answers.answer_recall("86 people", "86 people worked there") == 0.5
    assert answers.token_f1("Dundee", "Leith") == 0.0
    assert answers.token_f1("", "") == 1.0


def test_refusals():
    fixed = "I don't have enough information in your documents to answer that."
    assert answers.is_refusal("anything", refused_flag=True, known=[], cited=False)
    assert answers.is_refusal(fixed, refused_flag=False, known=[fixed], cited=False)
    assert answers.is_refusal("Sorry, I could not find that in the files.", refused_flag=False, known=[], cited=False)
    # A cited answer that mentions a gap still answers.
    text = "The report does not contain the profit, but revenue was 7.4 million dollars [1]."
    assert not answers.is_refusal(text, refused_flag=False, known=[fixed], cited=True)
    assert not answers.is_refusal("Revenue rose.", refused_flag=False, known=[fixed], cited=False)


def test_citation_precision_recall_and_page_accuracy():
    cited = [("a.pdf", {2}), ("a.pdf", {3}), ("b.pdf", {1})]
    evidence = [("a.pdf", [2, 4]), ("c.md", [])]
    scores = answers.citation_scores(cited, evidence)
    assert scores["citation_precision"] == pytest.approx(1 / 3)  # only a.pdf page 2 holds gold evidence
    assert scores["citation_recall"] == pytest.approx(1 / 3)  # units a#2, a#4, c: only a#2 cited
    assert scores["page_accuracy"] == pytest.approx(1 / 2)  # a#2 right, a#3 wrong; b.pdf is no gold document
    whole = answers.citation_scores([("c.md", set())], evidence)
    assert (whole["citation_precision"], whole["page_accuracy"]) == (1.0, None)
    assert answers.citation_scores([], evidence)["citation_precision"] is None
    assert answers.source_pages({"page_number": 3, "end_page": 5}) == {3, 4, 5}
    assert answers.source_pages({"page_number": None}) == set()


def test_offline_faithfulness_counts_uncited_sentences_as_unsupported():
    text = "Revenue rose [1]. Margins fell. Staff grew [2]."
    checks = [{"supported": True}, {"supported": False}]
    assert answers.faithfulness(text, checks) == pytest.approx(1 / 3)
    assert answers.faithfulness("", []) is None


def test_ranking_scores_at_page_level():
    ranked = ["a#2", "b#1", "a#4"]
    scores = scoring.ranking_scores(ranked, {"a#2": 1, "a#4": 1}, [1, 3])
    assert (scores["hit@1"], scores["recall@1"], scores["hit@3"], scores["recall@3"]) == (1.0, 0.5, 1.0, 1.0)
    assert scores["mrr@10"] == 1.0
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))  # 0.9197
    late = scoring.ranking_scores(["x", "y", "a"], {"a": 1}, [1])
    assert (late["hit@1"], late["mrr@10"]) == (0.0, pytest.approx(1 / 3))


def _record(answerable=True, status="completed", answer="", sources=(), refused=False, gold=None, citations=None):
    return {
        "answerable": answerable,
        "status": status,
        "answer": answer,
        "gold_answer": gold,
        "refused_flag": refused,
        "sources": list(sources),
        "citations": citations or {"removed_markers": [], "unsupported_sentences": 0, "sentences": []},
        "tokens": {"prompt": 100, "completion": 20},
        "cost_usd": 0.001,
        "timings": {"retrieval_ms": 10, "total_ms": 100},
    }


def test_answer_scores_and_mode_summary():
    evidence = [("a.pdf", [2])]
    right = _record(
        answer="Revenue was 7.4 million dollars [1].",
        gold="7.4 million dollars",
        sources=[{"rank": 1, "document": "a.pdf", "pages": [2], "cited": True, "support": 1.0}],
        citations={
            "removed_markers": [7],
            "unsupported_sentences": 0,
            "sentences": [{"sources": [1], "support": 1.0, "supported": True}],
        },
    )
    failed = _record(status="failed", gold="86 people")
    refused = _record(answerable=False, answer="I don't know.", refused=True)
    invented = _record(answerable=False, answer="Revenue rose [1].", sources=right["sources"])
    records = []
    for record, gold_evidence in ((right, evidence), (failed, evidence), (refused, []), (invented, [])):
        record["scores"] = scoring.answer_scores(record, gold_evidence, ["I don't know."])
        records.append(record)
    assert right["scores"]["token_f1"] == pytest.approx(0.75)
    assert right["scores"]["citation_precision"] == right["scores"]["citation_recall"] == 1.0
    assert right["scores"]["invalid_markers"] == 1
    assert failed["scores"] == {
        "refused": False,
        "invented": False,
        "token_f1": 0.0,
        "exact_match": 0.0,
        "answer_recall": 0.0,
        "citation_recall": 0.0,
    }
    assert refused["scores"]["refused"] and not invented["scores"]["refused"] and invented["scores"]["invented"]

    summary = scoring.summarize_answers(records)
    assert summary["answers"] == 4 and summary["unanswerable"] == 2
    assert summary["failure_rate"] == 0.25
    assert summary["token_f1"] == pytest.approx(0.375)  # (0.75 + 0) over the two answerable questions
    assert summary["citation_recall"] == 0.5 and summary["citation_precision"] == 1.0
    assert summary["refusal_accuracy"] == 0.5 and summary["false_refusal_rate"] == 0.0
    assert summary["invalid_markers"] == pytest.approx(1 / 3, abs=1e-4)  # one removed marker over three answers
    # Faithfulness: 1.0 (one supported sentence of one) and 0.0 (its sentence has no check); the refusal has none.
    assert summary["faithfulness"] == pytest.approx(0.5)
    assert summary["tokens_per_answer"] == 120 and summary["cost_total_usd"] == pytest.approx(0.003)
    assert summary["retrieval_ms_p50"] == 10 and summary["total_ms_p95"] == 100


def test_prices():
    assert price_of("gpt-4o-2024-08-06", DEFAULT_PRICES) == (2.50, 10.00)
    assert price_of("gpt-4o-mini-2024-07-18", DEFAULT_PRICES) == (0.15, 0.60)  # the longest matching entry
    assert price_of("gpt-4omni", DEFAULT_PRICES) is None
    assert cost_usd("openai", "gpt-4o", 1000, 500, DEFAULT_PRICES) == pytest.approx(0.0075)
    assert cost_usd("openai-compatible", "gpt-4o-mini", 1000, 500, DEFAULT_PRICES) == pytest.approx(0.00045)
    assert cost_usd("extractive", "extractive", 1000, 500, DEFAULT_PRICES) == 0.0
    assert cost_usd("local", "SmolLM2", 1000, 500, DEFAULT_PRICES) == 0.0
    assert cost_usd("openai-compatible", "llama-3-70b", 1000, 500, DEFAULT_PRICES) is None


def _results(**figures) -> dict:
    thresholds = figures.pop("thresholds", [])
    tolerances = figures.pop("tolerances", {})
    return {
        "suite": {"thresholds": thresholds, "tolerance": 0.02, "tolerances": tolerances},
        "metrics": {"default": {"retrieval": {"hit@5": figures.get("hit", 0.9)}, "strict": figures.get("strict", {})}},
    }


def test_thresholds():
    thresholds = [
        {"metric": "hit@5", "min": 0.95},
        {"metric": "refusal_accuracy", "mode": "strict", "min": 1.0},
        {"metric": "invalid_markers", "max": 0},
        {"metric": "page_accuracy", "min": 0.5},
    ]
    run = _results(thresholds=thresholds, strict={"refusal_accuracy": 1.0, "invalid_markers": 0.5})
    assert gate.check(run) == [
        "default/retrieval/hit@5 = 0.9 is below its threshold 0.95",
        "default/strict/invalid_markers = 0.5 is above its threshold 0",
        "the threshold on page_accuracy matches no figure of this run",
    ]


def test_regressions_against_a_baseline():
    baseline = _results(strict={"token_f1": 0.60, "refusal_accuracy": 0.8, "total_ms_p95": 50, "answers": 25})
    same = _results(strict={"token_f1": 0.59, "refusal_accuracy": 0.9, "total_ms_p95": 500, "answers": 20})
    assert gate.check(same, baseline) == []  # within tolerance, better, ungated speed, and a count
    worse = _results(strict={"token_f1": 0.50, "refusal_accuracy": 0.8, "total_ms_p95": 500})
    worse["suite"]["tolerances"] = {"total_ms_p95": 100}
    assert gate.check(worse, baseline) == [
        "default/strict/token_f1 regressed from 0.6 to 0.5 (tolerance 0.02)",
        "default/strict/total_ms_p95 regressed from 50 to 500 (tolerance 100)",
    ]
    gone = _results(strict={"token_f1": 0.6})
    assert gate.check(gone, baseline) == ["default/strict/refusal_accuracy is in the baseline but not in this run"]


def test_changes_between_runs():
    before = _results(strict={"token_f1": 0.6, "invalid_markers": 0.0})
    after = _results(strict={"token_f1": 0.7, "invalid_markers": 0.1})
    found = {c.key: c for c in gate.changes(before, after)}
    assert set(found) == {"default/strict/token_f1", "default/strict/invalid_markers"}
    assert found["default/strict/token_f1"].verdict == "better"
    assert found["default/strict/invalid_markers"].verdict == "worse"
    assert found["default/strict/token_f1"].delta == pytest.approx(0.1)
