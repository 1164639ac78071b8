"""Evaluation datasets in one shape: documents to index, questions with gold answers and gold evidence.

Four formats are read where they lie (datasets are never copied into the repository: their licences differ):

- ``jsonl``, citechat's own: a folder with ``documents/`` (any format citechat ingests) and ``questions.jsonl``,
  one question a line: ``id``, ``question``, optional ``history`` (``[{role: user|assistant, content}]``, the
  conversation a follow-up continues), ``answer`` (gold), ``evidence`` (``[{document: file name, pages: [1-based
  physical pages]}]``, pages optional), ``answerable`` (default true; false: the documents cannot answer it),
  ``tags``.
- ``beir``: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``); graded document relevance,
  no gold answers.
- ``sec10q``: the Docugami SEC 10-Q set: ``docs/*.pdf`` and a CSV with ``Question``, ``Source Docs`` (a file-name
  glob), ``Question Type``, ``Source Chunk Type``, ``Answer``. Evidence is per document, not per page.
- ``financebench``: FinanceBench (Patronus AI) as a folder with ``pdfs/`` and ``questions.jsonl``: ``id``, ``doc``
  (a file in ``pdfs/``), ``question``, ``answer``, ``pages`` (1-based physical pages holding the evidence),
  optional ``evidence`` (the passages' text, not used: the pages are the gold). Evidence is per page.
"""

import csv
import fnmatch
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from citechat.evaluation import beir
from citechat.evaluation.suite import DatasetSpec


class DatasetError(Exception):
    """A dataset that is missing or malformed; the message says which file and line."""


@dataclass(frozen=True)
class Evidence:
    document: str  # the document's key in the dataset (file name, or BEIR corpus id)
    pages: tuple[int, ...] = ()
    grade: int = 1


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answerable: bool = True
    answer: str | None = None
    evidence: tuple[Evidence, ...] = ()
    history: tuple[tuple[str, str], ...] = ()  # (role, content), oldest first
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceDocument:
    key: str
    name: str  # what citations show
    filename: str  # tells Markdown from text
    read: Callable[[], bytes] = field(repr=False)
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    name: str
    format: str
    documents: list[SourceDocument]
    questions: list[Question]


def load(spec: DatasetSpec, path: Path) -> Dataset:
    """``path``: the spec's path, resolved against the suite's repository."""
    if not path.exists():
        raise DatasetError(
            f"dataset not found: {spec.path} (resolved to {path}); {spec.format} datasets are read where they lie, "
            "see README, Evaluation"
        )
    loader = {"jsonl": _jsonl, "beir": _beir, "sec10q": _sec10q, "financebench": _financebench}[spec.format]
    dataset = loader(spec, path)
    if not dataset.questions:
        raise DatasetError(f"{path}: the dataset has no questions")
    if spec.limit:
        dataset = Dataset(dataset.name, dataset.format, dataset.documents, dataset.questions[: spec.limit])
    return dataset


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class _EvidenceRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: str = Field(min_length=1)
    pages: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _pages(self) -> "_EvidenceRow":
        if any(page < 1 for page in self.pages):
            raise ValueError("pages are 1-based")
        return self


class _QuestionRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    history: list[_Turn] = Field(default_factory=list)
    answer: str | None = None
    evidence: list[_EvidenceRow] = Field(default_factory=list)
    answerable: bool = True
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _gold(self) -> "_QuestionRow":
        if self.answerable and not (self.answer or self.evidence):
            raise ValueError("an answerable question needs a gold answer, gold evidence, or both")
        if not self.answerable and (self.answer or self.evidence):
            raise ValueError("an unanswerable question has no gold answer or evidence")
        return self


class _FinanceBenchRow(BaseModel):
    id: str = Field(min_length=1)
    doc: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    pages: list[int] = Field(min_length=1)
    question_type: str | None = None

    @model_validator(mode="after")
    def _pages(self) -> "_FinanceBenchRow":
        if any(page < 1 for page in self.pages):
            raise ValueError("pages are 1-based")
        return self


def _rows(file: Path, model: type[BaseModel]) -> list[tuple[str, Any]]:
    """``file``'s JSON lines as ``model``s, each with where it is ("questions.jsonl line 3", for the caller's own
    errors); a malformed line is a ``DatasetError`` naming the line."""
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file.name} line {number}"
        try:
            rows.append((where, model.model_validate(json.loads(line))))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            raise DatasetError(f"{where}: {problems}") from None
    return rows


def _jsonl(spec: DatasetSpec, folder: Path) -> Dataset:
    questions_file, documents_dir = folder / (spec.questions or "questions.jsonl"), folder / "documents"
    if not questions_file.is_file() or not documents_dir.is_dir():
        raise DatasetError(f"{folder}: a jsonl dataset is a folder with questions.jsonl and documents/")
    documents = [
        SourceDocument(key=p.name, name=p.name, filename=p.name, read=p.read_bytes)
        for p in sorted(documents_dir.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]
    keys, questions = {d.key for d in documents}, []
    for where, row in _rows(questions_file, _QuestionRow):
        if missing := [e.document for e in row.evidence if e.document not in keys]:
            raise DatasetError(f"{where}: evidence names {', '.join(missing)}, not in {documents_dir.name}/")
        questions.append(
            Question(
                id=row.id,
                question=row.question,
                answerable=row.answerable,
                answer=row.answer,
                evidence=tuple(Evidence(e.document, tuple(sorted(set(e.pages)))) for e in row.evidence),
                history=tuple((t.role, t.content) for t in row.history),
                tags=tuple(row.tags),
            )
        )
    if len({q.id for q in questions}) != len(questions):
        raise DatasetError(f"{questions_file}: question ids must be unique")
    return Dataset(folder.name, "jsonl", documents, questions)


def _beir(spec: DatasetSpec, folder: Path) -> Dataset:
    if not (folder / "corpus.jsonl").is_file() or not (folder / "qrels" / f"{spec.split}.tsv").is_file():
        raise DatasetError(f"{folder}: a BEIR folder has corpus.jsonl, queries.jsonl and qrels/{spec.split}.tsv")
    data = beir.load(folder, spec.split)
    # Exactly as `citechat eval beir` indexes a corpus, so either command can reuse the other's organization.
    documents = [
        SourceDocument(
            key=corpus_id,
            name=title or corpus_id,
            filename=f"{corpus_id}.txt",
            read=lambda body=body, title=title: (body or title).encode(),
            metadata={beir.CORPUS_ID_KEY: corpus_id},
        )
        for corpus_id, (title, body) in data.corpus.items()
    ]
    questions = [
        Question(
            id=query_id,
            question=text,
            evidence=tuple(
                Evidence(doc, grade=grade) for doc, grade in sorted(data.qrels[query_id].items()) if grade > 0
            ),
        )
        for query_id, text in data.queries.items()
    ]
    return Dataset(data.name, "beir", documents, questions)


def _financebench(spec: DatasetSpec, folder: Path) -> Dataset:
    questions_file, pdfs = folder / (spec.questions or "questions.jsonl"), folder / "pdfs"
    if not questions_file.is_file() or not pdfs.is_dir():
        raise DatasetError(f"{folder}: a FinanceBench folder has pdfs/*.pdf and {questions_file.name}")
    documents = [
        SourceDocument(key=p.name, name=p.name, filename=p.name, read=p.read_bytes) for p in sorted(pdfs.glob("*.pdf"))
    ]
    keys, questions = {d.key for d in documents}, []
    for where, row in _rows(questions_file, _FinanceBenchRow):
        if row.doc not in keys:
            raise DatasetError(f"{where}: doc {row.doc} is not in {pdfs.name}/")
        evidence = (Evidence(row.doc, tuple(sorted(set(row.pages)))),)
        tags = (row.question_type,) if row.question_type else ()
        questions.append(Question(id=row.id, question=row.question, answer=row.answer, evidence=evidence, tags=tags))
    if len({q.id for q in questions}) != len(questions):
        raise DatasetError(f"{questions_file}: question ids must be unique")
    return Dataset(folder.name, "financebench", documents, questions)


_SOURCE_NOTE = re.compile(r"\(?\s*SOURCE(?:\(S\))?:[^\n]*", re.IGNORECASE)


def _sec10q(spec: DatasetSpec, folder: Path) -> Dataset:
    table, docs = folder / (spec.questions or "data/qna_data.csv"), folder / "docs"
    if not table.is_file() or not docs.is_dir():
        raise DatasetError(f"{folder}: the SEC 10-Q set has docs/*.pdf and {spec.questions or 'data/qna_data.csv'}")
    pdfs = sorted(docs.glob("*.pdf"))
    documents = [SourceDocument(key=p.name, name=p.name, filename=p.name, read=p.read_bytes) for p in pdfs]
    with table.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    needed = {"Question", "Source Docs", "Answer"}
    if not rows or not needed <= set(rows[0]):
        raise DatasetError(f"{table}: expected the columns {', '.join(sorted(needed))}")
    questions = []
    for number, row in enumerate(rows, 1):
        pattern = row["Source Docs"].strip()
        matched = [d.key for d in documents if fnmatch.fnmatch(d.key, pattern if "." in pattern else f"{pattern}.pdf")]
        if not matched:
            raise DatasetError(f"{table.name} row {number}: Source Docs {pattern!r} matches no PDF in docs/")
        questions.append(
            Question(
                id=f"sec10q-{number:03d}",
                question=row["Question"].strip(),
                answer=_SOURCE_NOTE.sub("", row["Answer"]).strip(),
                evidence=tuple(Evidence(key) for key in matched),
                tags=tuple(t for t in (row.get("Question Type", ""), row.get("Source Chunk Type", "")) if t),
            )
        )
    return Dataset(folder.name, "sec10q", documents, questions)
