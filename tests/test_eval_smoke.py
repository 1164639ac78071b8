"""The smoke suite end to end, as CI runs it: `citechat eval run` in its own process against the real stack (the
test PostgreSQL, the local index, the extractive answerer) and the committed baseline; then a run made worse."""

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "evals" / "suites" / "smoke.yaml"
BASELINE = REPO / "evals" / "baselines" / "smoke.json"


async def _citechat(*args: str, postgres_url: str, data_dir: Path) -> tuple[int, str, str]:
    """Runs the command with only the test database configured (no keys, no other CITECHAT_ settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITECHAT_", "OPENAI_", "RAGIE_"))}
    env |= {"CITECHAT_DATABASE_URL": postgres_url, "CITECHAT_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "citechat", *args, cwd=REPO, env=env, stdout=-1, stderr=-1
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=600)
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture(scope="module")
async def smoke(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path]:
    out = tmp_path_factory.mktemp("smoke")
    code, stdout, stderr = await _citechat(
        "eval", "run", str(SUITE), "--out", str(out), "--baseline", str(BASELINE),
        postgres_url=postgres_url, data_dir=out,
    )  # fmt: skip
    return code, stdout, stderr, out


async def test_smoke_suite_passes_against_the_committed_baseline(smoke):
    code, stdout, stderr, out = smoke
    assert code == 0, stderr[-3000:] + stdout[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["suite"]["name"] == "smoke" and results["gate"] == {"passed": True, "failures": []}
    assert results["dataset"] | {"failed_documents": None} == {
        "name": "citechat-smoke",
        "format": "jsonl",
        "documents": 5,
        "questions": 25,
        "unanswerable": 5,
        "failed_documents": None,
    }
    assert results["dataset"]["failed_documents"] == []
    assert results["run"]["provider"] == "extractive" and results["run"]["organization"] is None
    metrics = results["metrics"]["default"]
    assert set(metrics) == {"retrieval", "strict", "balanced", "creative"}
    for name in ("hit@1", "hit@5", "recall@10", "mrr@10", "ndcg@10", "retrieval_ms_p95"):
        assert name in metrics["retrieval"]
    for mode in ("strict", "balanced", "creative"):
        figures = metrics[mode]
        assert figures["answers"] == 25 and figures["failure_rate"] == 0
        for name in ("token_f1", "citation_precision", "citation_recall", "page_accuracy", "faithfulness"):
            assert 0 <= figures[name] <= 1, name
        assert figures["cost_total_usd"] == 0 and figures["tokens_per_answer"] > 0  # extractive answers are free
        assert figures["total_ms_p95"] >= figures["total_ms_p50"] > 0
    assert len(results["answers"]) == 75 and len(results["retrieval"]) == 25
    follow_up = next(r for r in results["answers"] if r["id"] == "bakery-revenue-before" and r["mode"] == "balanced")
    assert follow_up["status"] == "completed" and follow_up["tags"] == ["follow-up"]
    report = (out / "report.md").read_text()
    for heading in ("# Evaluation: smoke", "## Retrieval", "## Answers", "## Cost and speed", "## Gate"):
        assert heading in report
    assert "| default | strict |" in report and "All thresholds and baseline tolerances hold." in report
    assert (out / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "Traceback" not in stderr


async def test_quality_matches_the_baseline_exactly(smoke):
    """The smoke run is deterministic: every quality figure equals the committed baseline's."""
    from citechat.evaluation.scoring import flatten, gated_by_default

    _, _, _, out = smoke
    now = flatten(json.loads((out / "results.json").read_text())["metrics"])
    before = flatten(json.loads(BASELINE.read_text())["metrics"])
    quality = [key for key in before if gated_by_default(key.rsplit("/", 1)[-1])]
    assert quality and {k: now[k] for k in quality} == {k: before[k] for k in quality}


async def test_a_worse_run_fails_and_says_why(smoke, postgres_url: str, tmp_path: Path):
    """A Strict threshold too high to pass refuses good questions: regressions against the baseline, and a
    tightened threshold, each fail the run."""
    suite = yaml.safe_load(SUITE.read_text())
    suite["dataset"]["path"] = str(REPO / suite["dataset"]["path"])
    suite["retrieval"]["strict_min_similarity"] = 0.95
    suite["thresholds"].append({"metric": "refusal_accuracy", "mode": "balanced", "min": 1.0})
    path = tmp_path / "worse.yaml"
    path.write_text(yaml.safe_dump(suite))
    code, stdout, stderr = await _citechat(
        "eval", "run", str(path), "--out", str(tmp_path / "out"), "--baseline", str(BASELINE),
        postgres_url=postgres_url, data_dir=tmp_path,
    )  # fmt: skip
    assert code == 1, stderr[-3000:]
    assert "FAILED: default/strict/false_refusal_rate regressed from 0.1 to" in stderr
    assert "FAILED: default/strict/token_f1 regressed" in stderr
    assert "FAILED: default/balanced/refusal_accuracy = 0.8 is below its threshold 1" in stderr
    assert "balanced/token_f1" not in stderr  # the change touched Strict only
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["gate"]["passed"] is False and "- FAILED:" in (tmp_path / "out" / "report.md").read_text()

    code, stdout, _ = await _citechat(
        "eval", "compare", str(BASELINE), str(tmp_path / "out" / "results.json"),
        postgres_url=postgres_url, data_dir=tmp_path,
    )  # fmt: skip
    assert code == 0
    assert "default/strict/false_refusal_rate" in stdout and "worse" in stdout
    assert "Answers that changed" in stdout and "default/strict/bakery-revenue" in stdout


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ("name: bad\ndataset: {format: jsonl, path: evals/datasets/citechat-smoke}\nmodes: [stricter]", "modes.0"),
        ("name: bad\ndataset: {format: beir, path: ../no/such/folder}\nmodes: []", "dataset not found"),
        ("name: bad\ndataset: {format: jsonl\n", "not valid YAML"),
    ],
)
async def test_a_bad_suite_is_a_clear_error(postgres_url: str, tmp_path: Path, suite: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(suite.replace("evals/", f"{REPO}/evals/"))
    code, stdout, stderr = await _citechat("eval", "run", str(path), postgres_url=postgres_url, data_dir=tmp_path)
    assert code == 2 and message in stderr and "Traceback" not in stderr + stdout


async def test_compare_refuses_what_is_not_a_results_file(postgres_url: str, tmp_path: Path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    code, _, stderr = await _citechat(
        "eval", "compare", str(BASELINE), str(other), postgres_url=postgres_url, data_dir=tmp_path
    )
    assert code == 2 and "not the results.json of `citechat eval run`" in stderr and "Traceback" not in stderr
