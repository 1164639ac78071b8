"""From per-question records to the figures a report shows and a baseline gates, and which way is better.

Every figure is a flat ``metric -> number`` mapping per config and per mode (or ``retrieval``), so results flatten
to keys such as ``default/strict/refusal_accuracy`` that thresholds and baselines name. Means skip questions a
metric does not apply to (``None``); a failed answer scores 0 on the answer metrics it should have had.
"""

import re
from collections.abc import Iterable, Sequence

from citechat.bench.report import percentile
from citechat.evaluation import answers
from citechat.evaluation.metrics import hit_at_k, mean, mrr_at_k, ndcg_at_k, recall_at_k

_RANKING = re.compile(r"^(hit|recall|mrr|ndcg)@\d+$")
ANSWER_SCORES = (  # 0-1, higher is better, in the order reports show them
    "token_f1",
    "exact_match",
    "answer_recall",
    "citation_precision",
    "citation_recall",
    "page_accuracy",
    "faithfulness",
    "faithfulness_judge",
    "refusal_accuracy",
)
HIGHER_IS_BETTER = frozenset(ANSWER_SCORES)
LOWER_IS_BETTER = frozenset({"invalid_markers", "unsupported_citations", "false_refusal_rate", "failure_rate"})
COST = frozenset({"tokens_per_answer", "prompt_tokens", "completion_tokens", "cost_per_answer_usd", "cost_total_usd"})
COUNTS = frozenset({"questions", "answers", "unanswerable"})
STAGES = ("condense_ms", "retrieval_ms", "ttft_ms", "generation_ms", "total_ms")


GROUPS = ("retrieval", "answers", "citations", "faithfulness", "refusals", "cost", "speed")
_GROUP_OF = {
    **dict.fromkeys(("token_f1", "exact_match", "answer_recall"), "answers"),
    **dict.fromkeys(
        ("citation_precision", "citation_recall", "page_accuracy", "invalid_markers", "unsupported_citations"),
        "citations",
    ),
    **dict.fromkeys(("faithfulness", "faithfulness_judge"), "faithfulness"),
    **dict.fromkeys(("refusal_accuracy", "false_refusal_rate"), "refusals"),
    **dict.fromkeys(COST, "cost"),
}


def group_of(metric: str) -> str | None:
    """The group a suite's ``metrics`` selects a metric by; None for counts and failures, always reported."""
    if _RANKING.match(metric):
        return "retrieval"
    if metric.endswith(("_ms_p50", "_ms_p95")):
        return "speed"
    return _GROUP_OF.get(metric)


def select(figures: dict, groups: Iterable[str]) -> dict:
    wanted = set(groups)
    return {k: v for k, v in figures.items() if group_of(k) is None or group_of(k) in wanted}


def direction(metric: str) -> int | None:
    """+1 when higher is better, -1 when lower is, None for counts."""
    if _RANKING.match(metric) or metric in HIGHER_IS_BETTER:
        return 1
    if metric in LOWER_IS_BETTER or metric in COST or metric.endswith(("_ms_p50", "_ms_p95")):
        return -1
    return None


def gated_by_default(metric: str) -> bool:
    """Quality figures are compared with a baseline unless told otherwise; cost and speed only when a suite gives
    them a tolerance (time varies from machine to machine, and a test must never depend on it)."""
    return direction(metric) is not None and metric not in COST and not metric.endswith(("_ms_p50", "_ms_p95"))


def is_known(metric: str) -> bool:
    return direction(metric) is not None or metric in COUNTS


def ranking_scores(ranked: Sequence[str], relevant: dict[str, int], ks: Iterable[int]) -> dict[str, float]:
    scores = {"mrr@10": mrr_at_k(ranked, relevant, 10), "ndcg@10": ndcg_at_k(ranked, relevant, 10)}
    for k in ks:
        scores[f"hit@{k}"] = hit_at_k(ranked, relevant, k)
        scores[f"recall@{k}"] = recall_at_k(ranked, relevant, k)
    return scores


def answer_scores(record: dict, evidence: Sequence[tuple[str, Sequence[int]]], refusals: Sequence[str]) -> dict:
    """Scores of one stored answer (see ``citechat.evaluation.answers``)."""
    if record["status"] != "completed":  # no answer: it has every applicable score at 0 and refused nothing
        scores: dict = {"refused": False, "invented": False}
        if record.get("gold_answer"):
            scores |= {"token_f1": 0.0, "exact_match": 0.0, "answer_recall": 0.0}
        if record["answerable"] and evidence:
            scores["citation_recall"] = 0.0
        return scores
    text, gold = record["answer"], record.get("gold_answer")
    cited = [(s["document"], set(s["pages"])) for s in record["sources"] if s["cited"]]
    refused = answers.is_refusal(text, refused_flag=record["refused_flag"], known=refusals, cited=bool(cited))
    scores = {"refused": refused, "invented": not record["answerable"] and not refused}
    if gold:
        scores |= {
            "token_f1": answers.token_f1(text, gold),
            "exact_match": answers.exact_match(text, gold),
            "answer_recall": answers.answer_recall(text, gold),
        }
    if record["answerable"] and evidence:
        scores |= answers.citation_scores([] if refused else cited, evidence)
    checks = record.get("citations") or {}
    scores["invalid_markers"] = len(checks.get("removed_markers", []))
    scores["unsupported_citations"] = checks.get("unsupported_sentences", 0)
    scores["faithfulness"] = None if refused else answers.faithfulness(text, checks.get("sentences", []))
    return scores


def summarize_answers(records: Sequence[dict]) -> dict:
    """One mode's figures over its answers."""
    scored = [r["scores"] for r in records]
    answerable = [r["scores"] for r in records if r["answerable"]]
    unanswerable = [r["scores"] for r in records if not r["answerable"]]
    summary: dict = {
        "answers": len(records),
        "unanswerable": len(unanswerable),
        "failure_rate": _share(r["status"] != "completed" for r in records),
    }
    for metric in ("token_f1", "exact_match", "answer_recall", "citation_precision", "citation_recall"):
        summary[metric] = _mean_of(answerable, metric)
    for metric in ("page_accuracy", "faithfulness", "faithfulness_judge"):
        summary[metric] = _mean_of(scored, metric)
    summary["invalid_markers"] = _mean_of(scored, "invalid_markers")
    summary["unsupported_citations"] = _mean_of(scored, "unsupported_citations")
    summary["refusal_accuracy"] = _share(s["refused"] for s in unanswerable) if unanswerable else None
    summary["false_refusal_rate"] = _share(s["refused"] for s in answerable) if answerable else None
    summary |= _cost(records)
    for stage in STAGES:
        values = [r["timings"][stage] for r in records if r.get("timings", {}).get(stage) is not None]
        if values:
            summary[f"{stage}_p50"] = round(percentile(values, 50), 1)
            summary[f"{stage}_p95"] = round(percentile(values, 95), 1)
    return {k: (round(v, 4) if isinstance(v, float) and not k.startswith("cost") else v) for k, v in summary.items()}


def summarize_retrieval(records: Sequence[dict]) -> dict:
    scored = [r for r in records if r["scores"]]
    summary: dict = {"questions": len(scored)}
    for metric in scored[0]["scores"] if scored else ():
        summary[metric] = round(mean([r["scores"][metric] for r in scored]), 4)
    latencies = [r["retrieval_ms"] for r in records]
    if latencies:
        summary["retrieval_ms_p50"] = round(percentile(latencies, 50), 1)
        summary["retrieval_ms_p95"] = round(percentile(latencies, 95), 1)
    return summary


def flatten(metrics: dict) -> dict[str, float | int | None]:
    """``{config: {section: {metric: value}}}`` -> ``{"config/section/metric": value}``."""
    return {
        f"{config}/{section}/{metric}": value
        for config, sections in metrics.items()
        for section, figures in sections.items()
        for metric, value in figures.items()
    }


def _cost(records: Sequence[dict]) -> dict:
    done = [r for r in records if r["status"] == "completed"]
    if not done:
        return {}
    costs = [r["cost_usd"] for r in done]
    known = None not in costs
    return {
        "tokens_per_answer": mean([r["tokens"]["prompt"] + r["tokens"]["completion"] for r in done]),
        "prompt_tokens": mean([r["tokens"]["prompt"] for r in done]),
        "completion_tokens": mean([r["tokens"]["completion"] for r in done]),
        "cost_per_answer_usd": round(mean(costs), 6) if known else None,
        "cost_total_usd": round(sum(costs), 6) if known else None,
    }


def _mean_of(scores: Sequence[dict], metric: str) -> float | None:
    values = [s[metric] for s in scores if s.get(metric) is not None]
    return mean(values) if values else None


def _share(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0
