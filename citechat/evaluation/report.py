"""What a run leaves behind: ``results.json`` (everything, re-scorable), ``report.md`` (tables a person reads, by
config and mode) and ``chart.png`` (the quality figures side by side)."""

import json
from pathlib import Path

from citechat.bench.report import environment
from citechat.evaluation.gate import Change

RETRIEVAL_COLUMNS = ("questions", "mrr@10", "ndcg@10")
ANSWER_COLUMNS = {
    "answers": "answers",
    "token_f1": "token F1",
    "exact_match": "EM",
    "answer_recall": "answer recall",
    "citation_precision": "citation precision",
    "citation_recall": "citation recall",
    "page_accuracy": "page accuracy",
    "invalid_markers": "invalid markers",
    "faithfulness": "faithfulness",
    "faithfulness_judge": "faithfulness (judge)",
    "refusal_accuracy": "refusal accuracy",
    "false_refusal_rate": "false refusals",
    "failure_rate": "failures",
}
STAGES = ("retrieval_ms", "condense_ms", "ttft_ms", "generation_ms", "total_ms")


def write(results: dict, out: Path, failures: list[str], against: list[Change] | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "environment": environment(), "gate": {"passed": not failures, "failures": failures}}
    paths = [out / "results.json", out / "report.md", out / "chart.png"]
    paths[0].write_text(to_json(results))
    paths[1].write_text(markdown(results, against))
    from citechat.evaluation.chart import draw

    draw(results, paths[2])
    return paths


def to_json(results: dict) -> str:
    """Indented, except that each per-question record takes one line: a refreshed baseline then diffs question by
    question."""
    records = {key: results[key] for key in ("retrieval", "answers") if key in results}
    head = json.dumps({k: v for k, v in results.items() if k not in records}, indent=1, ensure_ascii=False)
    parts = [head[:-2]]
    for key, rows in records.items():
        lines = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows)
        parts.append(f',\n "{key}": [\n{lines}\n ]')
    return "".join(parts) + "\n}\n"


def markdown(results: dict, against: list[Change] | None = None) -> str:
    suite, data, run = results["suite"], results["dataset"], results["run"]
    unanswerable = data.get("unanswerable", 0)
    lines = [
        f"# Evaluation: {suite['name']}",
        "",
        *([suite["description"].strip(), ""] if suite.get("description") else []),
        f"- Dataset: {data['name']} ({data['format']}), {data['documents']} documents, {data['questions']} questions"
        + (f" ({unanswerable} unanswerable)" if unanswerable else ""),
        f"- Retrieval: {suite['retrieval']['backend']}, top_k {suite['retrieval']['top_k']}; answers: "
        f"{run['provider']} ({run['model']})" + (f"; judge: {run['judge']}" if run.get("judge") else ""),
        f"- Modes: {', '.join(suite['modes'])}; prompt versions: "
        + ", ".join(f"{c} {v}" for c, v in run["prompt_versions"].items()),
        f"- Run {run['started']}, {run['seconds']} s",
    ]
    if not suite["modes"]:  # retrieval only: no answers, so no model or prompts to name
        lines[-3:-1] = [f"- Retrieval only: {suite['retrieval']['backend']} index"]
    if data["failed_documents"]:
        lines.append(f"- **{len(data['failed_documents'])} documents failed to index**: " + _failed(data))
    if any(len(sections["retrieval"]) > 1 for sections in results["metrics"].values()):
        lines += ["", "## Retrieval", "", "Ranked pages where the gold evidence names pages, else documents.", ""]
        lines += _retrieval_table(results["metrics"])
    if suite["modes"]:
        lines += ["", "## Answers", "", *_answers_table(results["metrics"])]
        lines += ["", "## Cost and speed", "", "Milliseconds as p50 / p95.", "", *_speed_table(results["metrics"])]
        lines += _misses(results["answers"])
    gate = results.get("gate")
    if gate is not None:
        lines += ["", "## Gate", ""]
        lines += [f"- FAILED: {f}" for f in gate["failures"]] or ["All thresholds and baseline tolerances hold."]
    if against:
        lines += ["", "## Against the baseline", "", "| figure | baseline | this run | change |", "|---|---:|---:|---|"]
        lines += [
            f"| {c.key} | {_fmt(c.before)} | {_fmt(c.after)} | {c.verdict or ''} {_fmt_delta(c.delta)} |"
            for c in against
        ]
    return "\n".join(lines) + "\n"


def _failed(data: dict) -> str:
    return "; ".join(f"{f['document']} ({f['error']})" for f in data["failed_documents"][:10])


def _retrieval_table(metrics: dict) -> list[str]:
    first = next(iter(metrics.values()))["retrieval"]
    ks = [m for m in first if m.startswith(("hit@", "recall@"))]
    columns = [*RETRIEVAL_COLUMNS, *sorted(ks, key=_cutoff_order), "retrieval_ms_p50", "retrieval_ms_p95"]
    rows = [
        "| config | " + " | ".join(c.replace("retrieval_ms_", "ms ") for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for config, sections in metrics.items():
        rows.append(f"| {config} | " + " | ".join(_fmt(sections["retrieval"].get(c)) for c in columns) + " |")
    return rows


def _answers_table(metrics: dict) -> list[str]:
    rows = [
        "| config | mode | " + " | ".join(ANSWER_COLUMNS.values()) + " |",
        "|---|---|" + "---:|" * len(ANSWER_COLUMNS),
    ]
    for config, mode, figures in _modes(metrics):
        rows.append(f"| {config} | {mode} | " + " | ".join(_fmt(figures.get(c)) for c in ANSWER_COLUMNS) + " |")
    return rows


def _speed_table(metrics: dict) -> list[str]:
    head = ["tokens/answer", "USD/answer", "USD total", *(s.removesuffix("_ms") for s in STAGES)]
    rows = ["| config | mode | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(head)]
    for config, mode, f in _modes(metrics):
        cost = [_fmt(f.get("tokens_per_answer")), _usd(f.get("cost_per_answer_usd")), _usd(f.get("cost_total_usd"))]
        speed = [
            f"{_fmt(f.get(f'{s}_p50'))} / {_fmt(f.get(f'{s}_p95'))}" if f.get(f"{s}_p50") is not None else "-"
            for s in STAGES
        ]
        rows.append(f"| {config} | {mode} | " + " | ".join(cost + speed) + " |")
    return rows


def _misses(answers: list[dict]) -> list[str]:
    invented = [r for r in answers if r["scores"].get("invented")]
    refused = [r for r in answers if r["answerable"] and r["scores"].get("refused")]
    failed = [r for r in answers if r["status"] != "completed"]
    lines = []
    for title, records in (
        ("Unanswerable questions answered anyway", invented),
        ("Answerable questions refused", refused),
        ("Failed answers", failed),
    ):
        if records:
            lines += ["", f"### {title} ({len(records)})", ""]
            lines += [f"- {r['config']}/{r['mode']} `{r['id']}`: {r['question']}" for r in records[:30]]
            if len(records) > 30:
                lines.append(f"- ... and {len(records) - 30} more (see results.json)")
    return lines


def _modes(metrics: dict):
    for config, sections in metrics.items():
        for mode, figures in sections.items():
            if mode != "retrieval":
                yield config, mode, figures


def _cutoff_order(metric: str) -> tuple[str, int]:
    name, k = metric.split("@")
    return name, int(k)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _fmt_delta(delta) -> str:
    return "" if delta is None else f"({delta:+.3f})"


def _usd(value) -> str:
    return "unknown" if value is None else f"{value:.5f}"
