"""Runs a suite through the service's own pipeline: ``open_runtime`` gives the configured database (embedded by
default), index, answering and prompts, so an evaluation measures exactly what users get.

The dataset's documents are indexed into an organization of their own (a fresh one, removed afterwards, unless
``--org`` names one to reuse). Retrieval is measured once per config with the question as written; then every
question is asked in every mode, each in a new chat session holding its gold conversation history, through
``Answering.begin``/``run``: real retriever, prompts, model, and citation check. Per-question records keep what the
scores need, so ``results.json`` can be re-scored without re-running.
"""

import asyncio
import dataclasses
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from citechat.auth.models import Organization as OrganizationRow
from citechat.auth.service import Principal, provision
from citechat.chat import models as chat_models
from citechat.chat import schemas
from citechat.chat import service as chat_service
from citechat.documents import commands, models
from citechat.errors import CitechatError
from citechat.evaluation import scoring
from citechat.evaluation.answers import source_pages
from citechat.evaluation.datasets import Dataset, Question
from citechat.evaluation.judge import Judge
from citechat.evaluation.suite import ConfigSpec, Suite
from citechat.pipeline.extractive import NOTHING_FOUND
from citechat.pipeline.pricing import cost_usd
from citechat.pipeline.prompts import PromptStore
from citechat.retrievers.base import Organization
from citechat.retrievers.local import LocalIndex
from citechat.runtime import Runtime, open_runtime
from citechat.settings import Settings

EVAL_USER = "citechat-eval"
Track = Callable[[str, int], Callable[[], None]]  # (what, how many) -> advance by one


@dataclass(frozen=True)
class RunOptions:
    org: str | None = None  # reuse (and keep) this organization instead of a fresh one
    keep: bool = False  # keep the fresh organization and its index


def suite_settings(suite: Suite, base: Settings) -> Settings:
    """The process settings with the suite's retrieval and LLM choices applied (keys stay in the environment)."""
    r, llm = suite.retrieval, suite.llm
    changes: dict = {"retriever": r.backend, "retrieval_top_k": r.top_k, "llm": llm.provider}
    # An offline run is not a user: its questions are counted in memory, against quotas out of reach.
    out_of_reach = 10**9
    changes |= {"ratelimit_storage": "async+memory://", "ratelimit_user_per_hour": out_of_reach}
    changes |= {"ratelimit_org_per_day": out_of_reach}
    optional = {
        "strict_min_similarity": r.strict_min_similarity,
        "chunk_size": r.chunk_size,
        "chunk_overlap": r.chunk_overlap,
        "llm_model": llm.model,
        "llm_base_url": llm.base_url,
        "local_model": suite.resolve(llm.local_model) if llm.local_model else None,
        "prompts_dir": suite.resolve(suite.prompts_dir) if suite.prompts_dir else None,
    }
    changes |= {k: v for k, v in optional.items() if v is not None}
    if models := list(dict.fromkeys(m for m in [llm.model, *(c.model for c in suite.configs)] if m)):
        changes["llm_models"] = models
    return type(base)(**(base.model_dump() | changes))


async def run_suite(suite: Suite, dataset: Dataset, settings: Settings, options: RunOptions, track: Track) -> dict:
    started, clock = datetime.now(UTC), time.perf_counter()
    async with _judge(suite, settings) as judge, open_runtime(settings, resume_ingestion=False) as runtime:
        org_name = options.org or f"eval-{suite.name}-{uuid.uuid4().hex[:8]}"
        organization = await commands.organization(runtime, org_name)
        try:
            keys, failed = await _index(runtime, organization, dataset, track)
            async with runtime.database.sessions() as db:
                principal = await provision(db, EVAL_USER, org_name)
            metrics, retrievals, answers, versions = {}, [], [], {}
            for config in suite.effective_configs:
                found = []
                if "retrieval" in suite.metrics:
                    found = await _retrieval(runtime, organization, suite, config, dataset.questions, keys, track)
                metrics[config.name] = {"retrieval": scoring.select(scoring.summarize_retrieval(found), suite.metrics)}
                retrievals += found
                answering = _answering(runtime, suite, config)
                versions[config.name] = answering.prompts.current().version
                for mode in suite.modes:
                    asked = [
                        await _ask(runtime, answering, principal, config, mode, q, keys, judge)
                        for q in _tracked(dataset.questions, track(f"{config.name}: {mode}", len(dataset.questions)))
                    ]
                    metrics[config.name][mode.value] = scoring.select(scoring.summarize_answers(asked), suite.metrics)
                    answers += asked
                    await _release()
        finally:
            if options.org is None and not options.keep:
                await _remove(runtime, organization)
    return {
        "suite": suite.model_dump(mode="json"),
        "dataset": {
            "name": dataset.name,
            "format": dataset.format,
            "documents": len(dataset.documents),
            "questions": len(dataset.questions),
            "unanswerable": sum(not q.answerable for q in dataset.questions),
            "failed_documents": failed,
        },
        "run": {
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - clock, 1),
            "organization": org_name if options.org or options.keep else None,
            "provider": settings.llm,
            "model": runtime.answering.llms.default_model,
            "prompt_versions": versions,
            "judge": suite.llm.judge.model if judge else None,
            "judge_calls": judge.calls if judge else 0,
        },
        "metrics": metrics,
        "retrieval": retrievals,
        "answers": answers,
    }


@asynccontextmanager
async def _judge(suite: Suite, settings: Settings) -> AsyncIterator[Judge | None]:
    """The suite's judge when it scores faithfulness with one (None otherwise), closed after the run."""
    spec = suite.llm.judge
    if spec is None or "faithfulness" not in suite.metrics:
        yield None
        return
    changes = {"llm": spec.provider, "llm_model": spec.model, "llm_base_url": spec.base_url, "llm_models": []}
    judge = Judge(type(settings)(**(settings.model_dump() | changes)), spec.model)
    try:
        yield judge
    finally:
        await judge.aclose()


async def _index(runtime: Runtime, org: Organization, dataset: Dataset, track: Track) -> tuple[dict, list]:
    """Indexes every document; returns {document id: [dataset keys]} of the ready ones, and the failures."""
    step, pending, keys, failed = track("indexing", len(dataset.documents)), {}, {}, []
    for document in dataset.documents:
        try:
            accepted = await commands.upload(
                runtime,
                org,
                filename=document.filename,
                content=document.read(),
                name=document.name,
                metadata=document.metadata or None,
            )
        except CitechatError as exc:
            failed.append({"document": document.key, "error": exc.detail})
            step()
            continue
        pending.setdefault(accepted.document.id, []).append(document.key)
        if accepted.created:
            runtime.ingestion.submit(accepted.document.id).add_done_callback(lambda _: step())  # the running task
        else:
            step()
    await runtime.ingestion.wait(list(pending))
    async with runtime.database.sessions() as db:
        rows = await db.execute(
            select(models.Document.id, models.Document.status, models.Document.error).where(
                models.Document.id.in_(list(pending))
            )
        )
        for document_id, status, error in rows:
            if status == "ready":
                keys[str(document_id)] = pending[document_id]
            else:
                failed += [{"document": key, "error": error or status} for key in pending[document_id]]
    return keys, failed


async def _retrieval(runtime, org, suite: Suite, config: ConfigSpec, questions, keys, track: Track) -> list[dict]:
    depth = suite.retrieval.depth or max([*suite.retrieval.k, 10])
    search = config.search or suite.retrieval.search
    if search != "hybrid" and not isinstance(runtime.index, LocalIndex):
        raise CitechatError(f"search: {search} measures the local index only")
    records = []
    for question in _tracked(questions, track(f"{config.name}: retrieval", len(questions))):
        clock = time.perf_counter()
        if search == "hybrid":
            nodes = await runtime.index.retriever(org, depth).aretrieve(question.question)
        else:
            nodes = await runtime.index.search(org, question.question, depth, mode=search)
        ranked, relevant = _ranking([n.node.metadata for n in nodes], question, keys)
        records.append(
            {
                "config": config.name,
                "id": question.id,
                "retrieval_ms": round((time.perf_counter() - clock) * 1000, 1),
                "ranked": ranked[:10],
                "scores": scoring.ranking_scores(ranked, relevant, suite.retrieval.k) if relevant else {},
            }
        )
    return records


def _ranking(found: list[dict], question: Question, keys: dict) -> tuple[list[str], dict[str, int]]:
    """Ranked units and graded relevance: pages ("doc#3") when every gold document has gold pages, else documents."""
    paged = bool(question.evidence) and all(e.pages for e in question.evidence)
    ranked: dict[str, None] = {}
    for meta in found:
        for key in keys.get(meta["document_id"], [f"other:{meta['document_id']}"]):
            if paged:
                pages = source_pages({"page_number": meta.get("start_page"), "end_page": meta.get("end_page")})
                ranked |= dict.fromkeys(f"{key}#{page}" for page in sorted(pages))
            else:
                ranked[key] = None
    if paged:
        return list(ranked), {f"{e.document}#{p}": e.grade for e in question.evidence for p in e.pages}
    return list(ranked), {e.document: e.grade for e in question.evidence}


def _answering(runtime: Runtime, suite: Suite, config: ConfigSpec):
    changes: dict = {}
    if config.top_k is not None:
        changes["top_k"] = config.top_k
    if config.strict_min_similarity is not None:
        changes["min_similarity"] = config.strict_min_similarity
    if config.prompts_dir is not None:
        changes["prompts"] = PromptStore(suite.resolve(config.prompts_dir))
    return dataclasses.replace(runtime.answering, **changes)


async def _ask(runtime, answering, principal: Principal, config, mode, question: Question, keys, judge) -> dict:
    session_id = await _session(runtime, principal, question.history)
    message, error = None, None
    try:
        request = schemas.SendMessage(question=question.question, mode=mode, model=config.model)
        turn = await answering.begin(principal, session_id, request)
        async for event in answering.run(turn):
            if event.name == "done":
                message = event.data
            elif event.name == "error":
                error = event.data["detail"]
    except (CitechatError, ValueError) as exc:
        error = getattr(exc, "detail", None) or str(exc)
    record = _record(config.name, mode.value, question, message, error, keys, answering)
    prompts = answering.prompts.current()
    evidence = [(e.document, e.pages) for e in question.evidence]
    record["scores"] = scoring.answer_scores(record, evidence, [prompts.strict_refusal, NOTHING_FOUND])
    if judge is not None and message is not None and not record["scores"]["refused"]:
        passages = {s["rank"]: s["chunk_text"] or "" for s in message["sources"]}
        record["scores"]["faithfulness_judge"] = await judge.faithfulness(question.question, record, passages)
    return record


def _record(config: str, mode: str, question: Question, message, error, keys, answering) -> dict:
    base = {
        "config": config,
        "mode": mode,
        "id": question.id,
        "question": question.question,
        "tags": list(question.tags),
        "answerable": question.answerable,
        "gold_answer": question.answer,
    }
    if message is None:
        return base | {"status": "failed", "error": error or "no answer", "answer": "", "sources": []}
    meta, llms = message.get("metadata") or {}, answering.llms
    prompt, completion = message.get("tokens_prompt") or 0, message.get("tokens_completion") or 0
    return base | {
        "status": message["status"],
        "error": message.get("error_message"),
        "answer": message["content"],
        "model": message.get("model_used"),
        "refused_flag": bool(meta.get("refused")),
        "sources": [
            {
                "rank": s["rank"],
                "document": keys.get(s["ragie_document_id"], [f"other:{s['ragie_document_id']}"])[0],
                "pages": sorted(source_pages(s)),
                "cited": s["cited"],
                "support": s["support"],
                "score": s["relevance_score"],
            }
            for s in message["sources"]
        ],
        "citations": meta.get("citations"),
        "tokens": {"prompt": prompt, "completion": completion},
        "cost_usd": cost_usd(llms.name, message.get("model_used"), prompt, completion, llms.settings.model_prices),
        "timings": {**(meta.get("timings") or {}), "total_ms": message.get("processing_time_ms")},
    }


async def _session(runtime: Runtime, principal: Principal, history) -> uuid.UUID:
    """A new chat session holding the question's gold conversation, oldest message first."""
    async with runtime.database.sessions() as db:
        session = await chat_service.start_new(db, principal)
        start = datetime.now(UTC) - timedelta(seconds=len(history) + 1)
        db.add_all(
            chat_models.ChatMessage(
                session_id=session.id,
                role=role,
                content=content,
                status="completed",
                created_at=start + timedelta(seconds=i),
            )
            for i, (role, content) in enumerate(history)
        )
        await db.commit()
        return session.id


async def _remove(runtime: Runtime, org: Organization) -> None:
    """Drops the throwaway organization: its documents leave the index, and everything else goes with the row."""
    async with runtime.database.sessions() as db:
        if not isinstance(runtime.index, LocalIndex):  # an external index keeps its own copies: delete each
            rows = await db.execute(
                select(models.Document.id, models.Document.external_id).where(models.Document.organization_id == org.id)
            )
            for document_id, external_id in rows.all():
                await runtime.index.delete(org, document_id, external_id)
        await db.execute(delete(OrganizationRow).where(OrganizationRow.id == org.id))
        await db.commit()


async def _release() -> None:
    """Lets go of what finished answers left behind while the event loop still runs. Each LlamaIndex chat engine
    keeps its memory in an in-memory SQLite database with a worker thread (aiosqlite), closed only when collected;
    collected after ``asyncio.run`` has closed the loop, each would print a traceback."""
    gc.collect()
    await asyncio.sleep(0.05)


def _tracked(items, step: Callable[[], None]):
    for item in items:
        yield item
        step()
