"""Suites and datasets: what is accepted, what is refused and how it is said, and the four loaders."""

import importlib.util
import json
from pathlib import Path

import pytest

from citechat.documents import formats
from citechat.documents.parsing import parse
from citechat.evaluation import datasets
from citechat.evaluation.suite import DatasetSpec, SuiteError, load_suite

SMOKE = Path(__file__).resolve().parents[1] / "evals" / "datasets" / "citechat-smoke"


def _suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_every_committed_suite_is_valid(repo_root: Path):
    suites = sorted((repo_root / "evals" / "suites").glob("*.yaml"))
    assert {p.stem for p in suites} >= {"smoke", "scifact-retrieval", "sec10q", "financebench"}
    for path in suites:
        suite = load_suite(path)
        assert suite.base == repo_root  # relative paths are relative to the repository
        assert suite.resolve(Path("x")) == repo_root / "x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ndataset: [unclosed", "not valid YAML"),
        ("- a list", "a suite is a YAML mapping"),
        (
            "name: x\ndataset: {format: csv, path: d}",
            "dataset.format: Input should be 'jsonl', 'beir', 'sec10q' or 'financebench'",
        ),
        ("name: x\ndataset: {format: jsonl, path: d}\nllm: {provider: openai, api_key: k}", "llm.api_key: Extra"),
        ("name: x\ndataset: {format: jsonl, path: d}\nmodes: [strict, wild]", "modes.1: Input should be"),
        ("name: x\ndataset: {format: jsonl, path: d}\nthresholds: [{metric: hit5, min: 1}]", "unknown metric 'hit5'"),
        ("name: x\ndataset: {format: jsonl, path: d}\nthresholds: [{metric: hit@5}]", "needs min or max"),
        (
            "name: x\ndataset: {format: jsonl, path: d}\nmodes: [strict]\n"
            "thresholds: [{metric: token_f1, mode: x, min: 1}]",
            "mode 'x' is not run by this suite",
        ),
        ("name: x\ndataset: {format: beir, path: d}\nretrieval: {search: dense}", "needs `modes: []`"),
        ("name: x\ndataset: {format: jsonl, path: d}\nllm: {model: gpt-4o}", "extractive answerer has no models"),
        ("name: a/b\ndataset: {format: jsonl, path: d}", "name: String should match pattern"),
        ("name: x\ndataset: {format: jsonl, path: d}\nretrieval: {top_k: 0}", "retrieval.top_k: Input should be"),
    ],
)
def test_invalid_suites_are_explained(tmp_path: Path, text: str, message: str):
    with pytest.raises(SuiteError) as error:
        load_suite(_suite(tmp_path, text))
    assert message in str(error.value)


def test_a_missing_suite_or_dataset(tmp_path: Path):
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(tmp_path / "nope.yaml")
    suite = load_suite(_suite(tmp_path, "name: x\ndataset: {format: beir, path: ../missing/scifact}\nmodes: []"))
    with pytest.raises(datasets.DatasetError, match=r"dataset not found: \.\./missing/scifact"):
        datasets.load(suite.dataset, suite.resolve(suite.dataset.path))


def test_the_smoke_dataset(repo_root: Path):
    data = datasets.load(DatasetSpec(format="jsonl", path=SMOKE), SMOKE)
    assert len(data.documents) == 5 and len(data.questions) == 25
    assert sum(not q.answerable for q in data.questions) == 5
    follow_ups = [q for q in data.questions if q.history]
    assert len(follow_ups) == 4 and all(q.history[-1][0] == "assistant" for q in follow_ups)
    assert all(e.pages for q in data.questions for e in q.evidence if e.document.endswith(".pdf"))


def test_each_smoke_pdf_holds_its_source_text_page_by_page():
    spec = importlib.util.spec_from_file_location("smoke_build", SMOKE / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    sources = sorted((SMOKE / "sources").glob("*.txt"))
    assert len(sources) == 4
    for source in sources:
        parsed = parse((SMOKE / "documents" / f"{source.stem}.pdf").read_bytes(), formats.PDF)
        expected = [" ".join(page.split()) for page in build.pages(source)]
        assert [" ".join(page.text.split()) for page in parsed.pages] == expected, source.name
        assert build.pdf(build.pages(source), source.stem) == (SMOKE / "documents" / f"{source.stem}.pdf").read_bytes()


def _jsonl(tmp_path: Path, rows: list) -> Path:
    (tmp_path / "documents").mkdir(exist_ok=True)
    (tmp_path / "documents" / "a.md").write_text("# A\n\nAlpha.")
    (tmp_path / "questions.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return tmp_path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['{"id": 1'], "questions.jsonl line 1: not JSON"),
        ([{"id": "q", "question": "?"}], "line 1: row: Value error, an answerable question needs"),
        (
            [{"id": "q", "question": "?", "answer": "x", "evidence": [{"document": "b.md"}]}],
            "line 1: evidence names b.md",
        ),
        ([{"id": "q", "question": "?", "answerable": False, "answer": "x"}], "has no gold answer"),
        (
            [{"id": "q", "question": "?", "answer": "x", "history": [{"role": "bot", "content": "hi"}]}],
            "history.0.role",
        ),
        ([{"id": "q", "question": "?", "answer": "x"}, {"id": "q", "question": "?", "answer": "y"}], "must be unique"),
        ([{"id": "q", "question": "?", "answer": "x", "evidence": [{"document": "a.md", "pages": [0]}]}], "1-based"),
    ],
)
def test_invalid_jsonl_rows_name_their_line(tmp_path: Path, rows: list, message: str):
    folder = _jsonl(tmp_path, rows)
    with pytest.raises(datasets.DatasetError) as error:
        datasets.load(DatasetSpec(format="jsonl", path=folder), folder)
    assert message in str(error.value)


def test_sec10q_questions_map_to_their_filings(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "data").mkdir()
    for name in ("2023 Q1 AAPL.pdf", "2023 Q2 AAPL.pdf", "2023 Q2 INTC.pdf"):
        (tmp_path / "docs" / name).write_bytes(b"%PDF-1.4")
    (tmp_path / "data" / "qna_data.csv").write_text(
        "\ufeffQuestion,Source Docs,Question Type,Source Chunk Type,Answer\n"
        'Apple sales?,*AAPL*,Multi-Doc RAG,Table,"Up.\n\nSOURCE(S): 2023 Q1 AAPL.pdf, 2023 Q2 AAPL.pdf"\n'
        "Intel tax?,*2023 Q2 INTC*,Single-Doc Single-Chunk RAG,Text,Low (SOURCE: 2023 Q2 INTC.pdf)\n",
        encoding="utf-8",
    )
    data = datasets.load(DatasetSpec(format="sec10q", path=tmp_path), tmp_path)
    assert [d.key for d in data.documents] == ["2023 Q1 AAPL.pdf", "2023 Q2 AAPL.pdf", "2023 Q2 INTC.pdf"]
    apple, intel = data.questions
    assert [e.document for e in apple.evidence] == ["2023 Q1 AAPL.pdf", "2023 Q2 AAPL.pdf"]
    assert [e.document for e in intel.evidence] == ["2023 Q2 INTC.pdf"]
    assert (apple.answer, intel.answer) == ("Up.", "Low")  # the source notes are not part of the gold answer
    assert apple.tags == ("Multi-Doc RAG", "Table") and apple.id == "sec10q-001"
    (tmp_path / "data" / "qna_data.csv").write_text("Question,Source Docs,Answer\nX?,*MSFT*,Y\n")
    with pytest.raises(datasets.DatasetError, match="row 1: Source Docs '\\*MSFT\\*' matches no PDF"):
        datasets.load(DatasetSpec(format="sec10q", path=tmp_path), tmp_path)


def test_financebench_questions_carry_their_pages(tmp_path: Path):
    (tmp_path / "pdfs").mkdir()
    for name in ("ADOBE_2022_10K.pdf", "AMCOR_2023Q2_10Q.pdf"):
        (tmp_path / "pdfs" / name).write_bytes(b"%PDF-1.4")
    rows = [
        {"id": "fb_1", "doc": "AMCOR_2023Q2_10Q.pdf", "question": "Debt?", "answer": "$6.3B", "pages": [12, 3, 12]},
        {
            "id": "fb_2",
            "doc": "ADOBE_2022_10K.pdf",
            "question": "FCF?",
            "answer": "$7.4B",
            "pages": [54],
            "evidence": ["..."],
        },
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(row) for row in rows))
    data = datasets.load(DatasetSpec(format="financebench", path=tmp_path), tmp_path)
    assert [d.key for d in data.documents] == ["ADOBE_2022_10K.pdf", "AMCOR_2023Q2_10Q.pdf"]
    debt, cash = data.questions
    assert debt.evidence == (datasets.Evidence("AMCOR_2023Q2_10Q.pdf", (3, 12)),)  # by page, sorted, once each
    assert (cash.id, cash.answer, cash.evidence[0].pages) == ("fb_2", "$7.4B", (54,))
    for row, message in [
        (rows[0] | {"doc": "MISSING.pdf"}, "questions.jsonl line 1: doc MISSING.pdf is not in pdfs/"),
        (rows[0] | {"pages": []}, "questions.jsonl line 1: pages: List should have at least 1 item"),
        (rows[0] | {"pages": [0]}, "1-based"),
    ]:
        questions.write_text(json.dumps(row))
        with pytest.raises(datasets.DatasetError, match=message):
            datasets.load(DatasetSpec(format="financebench", path=tmp_path), tmp_path)


def test_beir_folders(tmp_path: Path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "T1", "text": "One."}\n{"_id": "d2", "title": "", "text": "Two."}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "one?"}\n{"_id": "q9", "text": "unjudged"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n")
    data = datasets.load(DatasetSpec(format="beir", path=tmp_path, limit=5), tmp_path)
    assert [(d.key, d.name, d.read()) for d in data.documents] == [("d1", "T1", b"One."), ("d2", "d2", b"Two.")]
    [question] = data.questions
    assert (question.id, question.evidence) == ("q1", (datasets.Evidence("d1", grade=2),))
    with pytest.raises(datasets.DatasetError, match=r"qrels/dev\.tsv"):
        datasets.load(DatasetSpec(format="beir", path=tmp_path, split="dev"), tmp_path)


def test_metric_groups(tmp_path: Path):
    from citechat.evaluation.scoring import group_of, select

    assert [group_of(m) for m in ("hit@5", "token_f1", "page_accuracy", "ttft_ms_p95", "cost_total_usd")] == [
        "retrieval",
        "answers",
        "citations",
        "speed",
        "cost",
    ]
    figures = {"answers": 3, "failure_rate": 0.0, "token_f1": 0.5, "faithfulness": 1.0, "total_ms_p50": 9.0}
    assert select(figures, ["answers"]) == {"answers": 3, "failure_rate": 0.0, "token_f1": 0.5}
    suite = load_suite(_suite(tmp_path, "name: x\ndataset: {format: jsonl, path: d}\nmetrics: [answers, refusals]"))
    assert suite.metrics == ["answers", "refusals"]
    with pytest.raises(SuiteError, match=r"metrics\.0: Input should be 'retrieval'"):
        load_suite(_suite(tmp_path, "name: x\ndataset: {format: jsonl, path: d}\nmetrics: [vibes]"))
    with pytest.raises(SuiteError, match="threshold on hit@5: its group is not in `metrics`"):
        load_suite(
            _suite(
                tmp_path,
                "name: x\ndataset: {format: jsonl, path: d}\nmetrics: [answers]\nthresholds: [{metric: hit@5, min: 1}]",
            )
        )
