"""``citechat ingest``, ``citechat documents`` and ``citechat eval beir`` as a user runs them (real processes)."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from citechat.evaluation.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from tests import samples
from tests.conftest import TEST_SECRET


@pytest.fixture
def run_cli(postgres_url: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITECHAT_")}
    env |= {
        "CITECHAT_DATABASE_URL": postgres_url,
        "CITECHAT_AUTH_SECRET": TEST_SECRET,
        "CITECHAT_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",  # tables printed whole (ids included), as on a wide terminal
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(  # noqa: S603
            [sys.executable, "-m", "citechat", *args], env=env, capture_output=True, text=True, timeout=300
        )

    return run


def test_ingest_folder_reports_and_lists(run_cli, tmp_path: Path):
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "report.pdf").write_bytes(samples.pdf(samples.TOPICS[:2]))
    (folder / "nested" / "notes.md").write_text("# Notes\n\nThe glacier retreated 312 metres.")
    (folder / "nested" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / ".hidden.txt").write_text("never indexed")
    org = f"cli-{uuid.uuid4().hex[:6]}"

    result = run_cli("ingest", str(folder), "--org", org)
    assert result.returncode == 1, result.stderr  # one file was rejected
    assert "2 documents indexed, 0 already present, 1 failed; 2 pages" in result.stdout
    assert "picture.png: unsupported file type" in result.stderr

    again = run_cli("ingest", str(folder / "report.pdf"), "--org", org)
    assert again.returncode == 0 and "0 documents indexed, 1 already present" in again.stdout

    listing = run_cli("documents", "--org", org)
    assert listing.returncode == 0
    assert "report.pdf" in listing.stdout and "notes.md" in listing.stdout and "ready" in listing.stdout
    assert ".hidden" not in listing.stdout


def test_ingest_missing_path_is_a_usage_error(run_cli):
    result = run_cli("ingest", "/nonexistent/folder", "--org", "x")
    assert result.returncode == 2 and "no such file or folder" in result.stderr


@pytest.mark.parametrize("args", [["ingest", "{file}", "--org", ""], ["ask", "hi", "--org", "acme", "--user", "  "]])
def test_an_empty_organization_or_user_is_a_usage_error(run_cli, tmp_path: Path, args: list[str]):
    """An empty organization was accepted, making an organization no token can name."""
    (tmp_path / "a.txt").write_text("text")
    result = run_cli(*[arg.format(file=tmp_path / "a.txt") for arg in args])
    assert result.returncode == 2 and "must be 1 to 255 characters" in result.stderr, result.stderr


def test_eval_beir_on_a_small_dataset(run_cli, tmp_path: Path):
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Lighthouses", "text": samples.TOPICS[0]},
        {"_id": "d2", "title": "Bakery", "text": samples.TOPICS[1]},
        {"_id": "d3", "title": "Glaciers", "text": samples.TOPICS[2]},
        {"_id": "d4", "title": "Enzymes", "text": samples.TOPICS[3]},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus))
    queries = [{"_id": "q1", "text": "how much did the glacier retreat"}, {"_id": "q2", "text": "bakery revenue"}]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq2\td2\t1\n")

    result = run_cli("eval", "beir", str(folder), "--org", f"beir-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 6}
    assert {"hybrid", "dense", "lexical"} <= set(rows)
    assert "1.000" in rows["hybrid"]  # both queries find their document first


def test_metrics_match_their_definitions():
    relevant = {"a": 1, "c": 2}
    ranked = ["b", "a", "c"]
    ideal = 2 / 1 + 1 / 1.5849625
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx((1 / 1.5849625 + 2 / 2) / ideal)
    assert ndcg_at_k(["c", "a"], relevant, 10) == pytest.approx(1.0)
    assert recall_at_k(ranked, relevant, 2) == 0.5 and recall_at_k(ranked, relevant, 3) == 1.0
    assert mrr_at_k(ranked, relevant, 10) == 0.5 and mrr_at_k(ranked, relevant, 1) == 0.0
    assert hit_at_k(ranked, relevant, 1) == 0.0 and hit_at_k(ranked, relevant, 2) == 1.0
    assert ndcg_at_k(ranked, {}, 10) == 0.0


def test_reindex_after_a_model_change(run_cli, tmp_path: Path, postgres_url: str):
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    org = f"re-{uuid.uuid4().hex[:6]}"
    (tmp_path / "a.md").write_text("The glacier retreated 312 metres between 2015 and 2023.")
    assert run_cli("ingest", str(tmp_path / "a.md"), "--org", org).returncode == 0

    async def pretend_other_model() -> None:
        engine = create_async_engine(postgres_url)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE embedding_index SET model = 'an-older-model'"))
        await engine.dispose()

    asyncio.run(pretend_other_model())
    (tmp_path / "b.md").write_text("The lighthouse keeper logged forty storms.")
    refused = run_cli("ingest", str(tmp_path / "b.md"), "--org", org)
    assert refused.returncode == 1 and "run `citechat reindex`" in refused.stderr

    result = run_cli("reindex")
    assert result.returncode == 0, result.stderr
    assert "documents re-indexed with minilm" in result.stdout
    listing = run_cli("documents", "--org", org)
    assert listing.stdout.count("ready") == 2 and "failed" not in listing.stdout


def test_ask_streams_an_answer_with_its_sources(run_cli, tmp_path: Path):
    org = f"ask-{uuid.uuid4().hex[:6]}"
    (tmp_path / "notes.pdf").write_bytes(samples.pdf(samples.TOPICS))
    assert run_cli("ingest", str(tmp_path / "notes.pdf"), "--org", org).returncode == 0
    result = run_cli("ask", "How far did the glacier retreat?", "--org", org, "--mode", "balanced")
    assert result.returncode == 0, result.stderr
    assert "312 metres" in result.stdout
    assert "notes.pdf, page 3 (cited)" in result.stdout
    bad = run_cli("ask", "hi", "--org", org, "--mode", "wild")
    assert bad.returncode == 2

    # Asked about chosen documents only (ids as `citechat documents` lists them).
    (tmp_path / "camp.md").write_text("Survey teams start at the east camp at six.")
    assert run_cli("ingest", str(tmp_path / "camp.md"), "--org", org).returncode == 0
    listing = run_cli("documents", "--org", org).stdout
    [camp] = [line for line in listing.splitlines() if "camp.md" in line]
    [camp_id] = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", camp)
    scoped = run_cli("ask", "How far did the glacier retreat?", "--org", org, "--mode", "strict", "--document", camp_id)
    assert scoped.returncode == 0, scoped.stderr
    assert "I don't have enough information" in scoped.stdout and "notes.pdf" not in scoped.stdout
    unknown = run_cli("ask", "hi", "--org", org, "--document", str(uuid.uuid4()))
    assert unknown.returncode == 2 and "not documents of this organization" in unknown.stderr
    assert run_cli("ask", "hi", "--org", org, "--document", "not-an-id").returncode == 2
