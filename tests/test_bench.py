"""The benchmarks run (tiny sizes only: performance goals live in the benchmarks, not in tests)."""

import json
import subprocess
import sys
from pathlib import Path

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
