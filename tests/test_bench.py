"""The benchmarks run (tiny sizes only: performance goals live in the benchmarks, not in tests)."""

import json
import subprocess
import sys
from pathlib import Path

from citechat.bench import overhead
from tests import samples


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "citechat", "bench", *args], capture_output=True, text=True, timeout=600
    )


def test_retrieval_benchmark_smoke(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    topics = samples.TOPICS * 10
    (corpus / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": str(i), "title": f"Doc {i}", "text": t}) for i, t in enumerate(topics))
    )
    (corpus / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": str(i), "text": t.split(",")[0]}) for i, t in enumerate(topics))
    )
    result = _bench("retrieval", "--quick", "--corpus", str(corpus), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert [r["chunks"] for r in report["results"]] == [500, 2000]
    assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in report["results"])
    assert report["environment"]["cores"] >= 1 and "llama-index-core" in report["environment"]["versions"]
    assert "| 2,000 |" in (tmp_path / "out" / "retrieval.md").read_text()


def test_ingest_benchmark_smoke(tmp_path: Path):
    folder = tmp_path / "pdfs"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(samples.pdf(samples.TOPICS))
    (folder / "b.pdf").write_bytes(samples.pdf(list(reversed(samples.TOPICS))))
    result = _bench("ingest", "--quick", "--folder", str(folder), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert (report["documents"], report["pages"]) == (2, 8)
    assert report["pages_per_s"] > 0 and set(report["stages_s"]) == {"parse_s", "embed_s", "store_s"}


def test_overhead_benchmark_smoke(tmp_path: Path):
    result = _bench("overhead", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "overhead.json").read_text())
    streams = sorted({r["streams"] for r in report["runs"]})
    assert [(r["path"], r["streams"]) for r in report["runs"]] == [
        (path, n) for n in streams for path in ("floor", "citechat", "llamaindex")
    ]
    pace = report["pace"]
    for r in report["runs"]:
        assert r["errors"] == 0, r["error_examples"]
        assert r["ttft_ms"]["p50"] >= pace["first_token_ms"]  # the generator's first token comes after 200 ms
        assert r["generator_ms"]["p50"] >= pace["first_token_ms"] + pace["tokens"] * pace["token_ms"]
        assert r["overhead_ms"]["p99"] >= r["overhead_ms"]["p50"] > -5  # the clocks of two processes
        assert r["messages_per_s"] > 0 and r["cpu_ms_per_message"] > 0
        served_from_database = r["path"] != "floor"
        assert (r["db_statements_per_message"] > 0) == served_from_database
        assert (r["retrieval_ms"]["p50"] > 0) == served_from_database
    assert [(r["path"], r["streams"], r["messages"]) for r in report["bursts"]] == [
        (path, n, n) for n in streams if n > 1 for path in ("floor", "citechat", "llamaindex")
    ]
    assert all(r["errors"] == 0 and r["ttft_ms"]["p50"] >= pace["first_token_ms"] for r in report["bursts"])
    assert set(report["goals"]) == {"overhead_p95_ms_at_16", "overhead_p95_vs_floor_at_16"}
    assert report["rounds"] == 1 and all(len(r["rounds"]) == 1 for r in report["runs"] + report["bursts"])
    assert "| citechat |" in (tmp_path / "overhead.md").read_text()


def test_overhead_figures_are_the_medians_of_the_rounds():
    def measured(p50: float, p95: float, errors: int, cpu: float) -> dict:
        latencies = {"p50": p50, "p95": p95, "p99": p95 + 1}
        return {
            "path": "citechat",
            "streams": 16,
            "messages": 96,
            "errors": errors,
            "error_examples": ["HTTP 503"] * errors,
            "ttft_ms": latencies,
            "overhead_ms": latencies,
            "cpu_ms_per_message": cpu,
        }

    rounds = [measured(9.0, 12.0, 0, 30.0), measured(15.0, 40.0, 1, 33.0), measured(10.0, 13.0, 0, 31.5)]
    combined = overhead._median_of(rounds)
    assert combined["overhead_ms"] == {"p50": 10.0, "p95": 13.0, "p99": 14.0}  # one slow round does not decide
    assert (combined["cpu_ms_per_message"], combined["errors"], combined["messages"]) == (31.5, 1, 288)
    assert combined["error_examples"] == ["HTTP 503"] and (combined["path"], combined["streams"]) == ("citechat", 16)
    assert [r["overhead_ms"]["p95"] for r in combined["rounds"]] == [12.0, 40.0, 13.0]


def test_memory_benchmark_smoke(tmp_path: Path):
    result = _bench("memory", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "memory.json").read_text())
    assert report["errors"] == 0
    assert 50 < report["server_idle_mb"] <= report["server_peak_mb"] * 1.05  # the embedding model alone is ~90 MB
    assert report["floor_idle_mb"] > 0 and report["streams"] >= 1
    assert "server idle MB" in (tmp_path / "memory.md").read_text()
