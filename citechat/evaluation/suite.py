"""An evaluation suite: a YAML file naming a dataset, how to retrieve and answer, what to compare and what to demand.

Validated with pydantic before anything runs, so a typo is a message naming the field, never a traceback halfway
through a long run. Relative paths in a suite are relative to the repository that holds it (the nearest folder
above the suite with a ``pyproject.toml``; the suite's own folder when there is none), so suites say
``../shared/datasets/scifact`` whatever the working directory. Keys never go in a suite: they come from the
environment, exactly as for the service.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from citechat.evaluation.scoring import GROUPS, group_of, is_known
from citechat.pipeline.modes import ResponseMode

SearchMode = Literal["hybrid", "dense", "lexical"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SuiteError(Exception):
    """A suite that cannot be read or is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    format: Literal["jsonl", "beir", "sec10q", "financebench"]
    path: Path
    questions: str | None = Field(
        default=None, description="jsonl, financebench: questions.jsonl; sec10q: data/qna_data.csv"
    )
    split: str = Field(default="test", description="beir: the qrels split")
    limit: int | None = Field(default=None, ge=1, description="Only the first N questions.")


class RetrievalSpec(_Strict):
    backend: Literal["local", "ragie"] = "local"
    top_k: int = Field(default=5, ge=1, le=100, description="Passages an answer is written from.")
    strict_min_similarity: float | None = Field(default=None, ge=-1, le=1)
    chunk_size: int | None = Field(default=None, ge=32, le=2048)
    chunk_overlap: int | None = Field(default=None, ge=0, le=512)
    k: list[int] = Field(default=[1, 3, 5, 10], min_length=1, description="Cut-offs of hit@k and recall@k.")
    depth: int | None = Field(
        default=None, ge=1, le=1000, description="Passages ranked for the retrieval metrics (default: max(k, 10))."
    )
    search: SearchMode = Field(default="hybrid", description="Ranking the retrieval metrics measure (local).")

    @model_validator(mode="after")
    def _cutoffs(self) -> "RetrievalSpec":
        if any(k < 1 or k > 1000 for k in self.k):
            raise ValueError("every k must be between 1 and 1000")
        return self


class JudgeSpec(_Strict):
    provider: Literal["openai", "openai-compatible"]
    model: str
    base_url: str | None = None


class LLMSpec(_Strict):
    provider: Literal["extractive", "openai", "openai-compatible", "local"] = "extractive"
    model: str | None = None
    base_url: str | None = None
    local_model: Path | None = Field(default=None, description="GGUF file (default: CITECHAT_LOCAL_MODEL).")
    judge: JudgeSpec | None = Field(default=None, description="A model that judges faithfulness sentence by sentence.")


class ConfigSpec(_Strict):
    """One variant to compare: what differs from the suite's own retrieval and LLM settings."""

    name: str = Field(pattern=NAME)
    top_k: int | None = Field(default=None, ge=1, le=100)
    strict_min_similarity: float | None = Field(default=None, ge=-1, le=1)
    model: str | None = None
    prompts_dir: Path | None = None
    search: SearchMode | None = None


class Threshold(_Strict):
    metric: str
    mode: str | None = Field(default=None, description="A mode, or `retrieval`; default: every one.")
    config: str | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> "Threshold":
        if self.min is None and self.max is None:
            raise ValueError(f"threshold on {self.metric} needs min or max")
        if not is_known(self.metric):
            raise ValueError(f"unknown metric {self.metric!r} (see README, Evaluation, for the metric names)")
        return self


class Suite(_Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    dataset: DatasetSpec
    retrieval: RetrievalSpec = RetrievalSpec()
    llm: LLMSpec = LLMSpec()
    prompts_dir: Path | None = None
    modes: list[ResponseMode] = Field(default=list(ResponseMode), description="Empty: retrieval only.")
    metrics: list[Literal[GROUPS]] = Field(default=list(GROUPS), min_length=1, description="Metric groups to report.")
    configs: list[ConfigSpec] = Field(default_factory=list, description="Empty: one config named `default`.")
    thresholds: list[Threshold] = Field(default_factory=list)
    tolerance: float = Field(default=0.02, ge=0, description="Largest allowed regression against a baseline.")
    tolerances: dict[str, float] = Field(default_factory=dict, description="Per metric; also gates cost/speed.")
    _base: Path = PrivateAttr(default=Path())

    @model_validator(mode="after")
    def _consistent(self) -> "Suite":
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("modes are listed twice")
        names = [c.name for c in self.effective_configs]
        if len(set(names)) != len(names):
            raise ValueError("config names must be unique")
        searches = {self.retrieval.search} | {c.search for c in self.configs if c.search}
        if searches != {"hybrid"} and self.modes:
            raise ValueError("answers always use hybrid retrieval: `search` other than hybrid needs `modes: []`")
        if self.llm.provider == "extractive" and (self.llm.model or any(c.model for c in self.configs)):
            raise ValueError("the extractive answerer has no models to choose: remove `model`")
        sections = {"retrieval", *self.modes}
        for threshold in self.thresholds:
            if group_of(threshold.metric) not in (None, *self.metrics):
                raise ValueError(f"threshold on {threshold.metric}: its group is not in `metrics`")
            if threshold.mode is not None and threshold.mode not in sections:
                raise ValueError(f"threshold on {threshold.metric}: mode {threshold.mode!r} is not run by this suite")
            if threshold.config is not None and threshold.config not in names:
                raise ValueError(f"threshold on {threshold.metric}: no config named {threshold.config!r}")
        if unknown := [m for m in self.tolerances if not is_known(m)]:
            raise ValueError(f"unknown metric(s) in tolerances: {', '.join(unknown)}")
        if any(t < 0 for t in self.tolerances.values()):
            raise ValueError("tolerances cannot be negative")
        return self

    @property
    def effective_configs(self) -> list[ConfigSpec]:
        return self.configs or [ConfigSpec(name="default")]

    @property
    def base(self) -> Path:
        return self._base

    def resolve(self, path: Path) -> Path:
        """A path of the suite, relative to the repository that holds it."""
        return path if path.is_absolute() else (self._base / path).resolve()


def load_suite(path: Path) -> Suite:
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a YAML mapping (name, dataset, ...)")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SuiteError(f"{path}: invalid suite\n{problems}") from None
    suite._base = _repository(path.resolve().parent)
    return suite


def _where(location: tuple) -> str:
    return ".".join(str(part) for part in location) or "(suite)"


def _repository(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return folder
