"""The ``citechat`` command: run the service, manage its database, make tokens for local use."""

import asyncio
import copy
import logging.config
from pathlib import Path
from typing import Annotated

import typer

from citechat.errors import CitechatError
from citechat.settings import Settings

app = typer.Typer(
    help="citechat: chat with your documents, with cited answers.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
eval_app = typer.Typer(help="Offline evaluation.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
prompts_app = typer.Typer(help="Prompt templates.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")
bench_app = typer.Typer(help="Benchmarks (a throwaway embedded database each; results as JSON and Markdown).")
app.add_typer(bench_app, name="bench")
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _identifier(value: str | None) -> str | None:
    """An organization or user id as the API's tokens carry them (an empty one was accepted here, making an
    organization no token can name)."""
    from citechat.auth.tokens import identifier_problem

    if value is not None and (why := identifier_problem(value)) is not None:
        raise typer.BadParameter(why)
    return value


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the API (embedded PostgreSQL unless CITECHAT_DATABASE_URL is set; migrations applied on start)."""
    import os

    import uvicorn

    os.environ["CITECHAT_SERVE_HOST"] = host  # the app (in every worker) learns where it listens
    uvicorn.run(
        "citechat.api.app:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=logging_config(log_level),
        proxy_headers=True,
    )


def logging_config(level: str) -> dict:
    """uvicorn's logging, plus citechat's loggers; applied in every worker process."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["plain"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["plain"] = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    for name, name_level in [("citechat", level), ("alembic", "warning"), ("pgserver", "warning")]:
        config["loggers"][name] = {"handlers": ["plain"], "level": name_level.upper(), "propagate": False}
    return config


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    from citechat.db.database import open_database
    from citechat.db.migrations import current_revision

    logging.config.dictConfig(logging_config("info"))

    async def upgrade() -> str | None:
        async with open_database(Settings(), migrate=True) as database:
            return await current_revision(database.engine)

    typer.echo(f"database schema at revision {asyncio.run(upgrade())}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    org: Annotated[str, typer.Option(help="Organization whose documents answer.", callback=_identifier)],
    user: Annotated[str, typer.Option(help="User whose chat session it goes to.", callback=_identifier)] = "cli",
    mode: Annotated[str | None, typer.Option(help="strict, balanced or creative (default: the session's).")] = None,
    session: Annotated[str | None, typer.Option(help="Session id (default: the user's active session).")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the configured one).")] = None,
    document: Annotated[
        list[str] | None,
        typer.Option(help="Ask about this document only (its id, as `citechat documents` lists it); repeatable."),
    ] = None,
) -> None:
    """Ask a question in the terminal: the answer streams, then its sources with pages."""
    import uuid

    from citechat.auth.service import provision
    from citechat.chat import schemas
    from citechat.chat import service as chat_service
    from citechat.runtime import open_runtime

    try:
        request = schemas.SendMessage(question=question, mode=mode, model=model, document_ids=document or None)
        session_id = uuid.UUID(session) if session else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    async def run() -> int:
        async with open_runtime(Settings(), resume_ingestion=False) as runtime:
            async with runtime.database.sessions() as db:
                principal = await provision(db, user, org)
                target = session_id or (await chat_service.get_or_create_active(db, principal)).id
            turn = await runtime.answering.begin(principal, target, request)
            async for event in runtime.answering.run(turn):
                if event.name == "token":
                    typer.echo(event.data["delta"], nl=False)
                elif event.name == "done":
                    typer.echo("\n")
                    for source in event.data["sources"]:
                        pages = f", page {source['page_number']}" if source["page_number"] else ""
                        mark = "cited" if source["cited"] else "not cited"
                        if source["cited"] and source["supported"] is False:
                            mark += ", unsupported"
                        typer.echo(f"[{source['rank']}] {source['document_name']}{pages} ({mark})")
                elif event.name == "error":
                    typer.echo(f"\nfailed: {event.data['detail']}", err=True)
                    return 1
            return 0

    logging.config.dictConfig(logging_config("warning"))
    try:
        code = asyncio.run(run())
    except CitechatError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (searched recursively).")],
    org: Annotated[str, typer.Option(help="Organization id the documents belong to.", callback=_identifier)],
) -> None:
    """Upload and index documents for an organization, with progress and a summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from citechat.documents import commands
    from citechat.runtime import open_runtime

    try:
        files = commands.collect_files(paths)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="PATHS") from exc

    async def run() -> commands.IngestReport:
        async with open_runtime(Settings()) as runtime:
            organization = await commands.organization(runtime, org)
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, transient=False) as progress:
                task = progress.add_task("indexing", total=len(files))

                def done(path: Path, document) -> None:
                    state = document.status if document is not None else "rejected"
                    progress.update(task, advance=1, description=f"{path.name[:40]} ({state})")

                return await commands.ingest_files(runtime, organization, files, done)

    logging.config.dictConfig(logging_config("warning"))
    report = asyncio.run(run())
    typer.echo(
        f"{report.documents} documents indexed, {report.skipped} already present, {len(report.failures)} failed; "
        f"{report.pages} pages, {report.chunks} chunks in {report.seconds:.1f} s "
        f"({report.pages_per_second:.1f} pages/s)"
    )
    for path, reason in report.failures:
        typer.echo(f"  failed: {path}: {reason}", err=True)
    if report.failures:
        raise typer.Exit(1)


@app.command()
def documents(
    org: Annotated[str, typer.Option(help="Organization id.", callback=_identifier)],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 100,
) -> None:
    """List an organization's documents."""
    from rich.console import Console
    from rich.table import Table

    from citechat.documents import commands
    from citechat.runtime import open_runtime

    async def run():
        async with open_runtime(Settings(), resume_ingestion=False) as runtime:
            return await commands.list_documents(runtime, await commands.organization(runtime, org), limit)

    logging.config.dictConfig(logging_config("warning"))
    table = Table("id", "name", "status", "pages", "chunks", "size", "created")
    for d in asyncio.run(run()):
        status = d.status if d.status != "failed" else f"failed: {d.error}"
        size = f"{d.size_bytes / 1024:.0f} KiB"
        created = f"{d.created_at:%Y-%m-%d %H:%M}"
        table.add_row(str(d.id), d.name, status, str(d.pages or "-"), str(d.chunks), size, created)
    Console().print(table)


@app.command()
def reindex() -> None:
    """Re-embed every document of the local index with the configured embedding model (after changing it)."""
    from rich.progress import Progress

    from citechat.documents import commands
    from citechat.runtime import open_runtime

    async def run() -> int:
        async with open_runtime(Settings(), resume_ingestion=False) as runtime:
            with Progress() as progress:
                task = progress.add_task("re-indexing", total=None)
                return await commands.reindex(runtime, lambda document: progress.advance(task))

    logging.config.dictConfig(logging_config("warning"))
    try:
        count = asyncio.run(run())
    except CitechatError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{count} documents re-indexed with {Settings().embedding_model}")


@eval_app.command("beir")
def eval_beir(
    path: Annotated[Path, typer.Argument(help="A BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/).")],
    org: Annotated[
        str | None,
        typer.Option(help="Organization to index into (default: eval-<folder name>).", callback=_identifier),
    ] = None,
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
) -> None:
    """nDCG@10, Recall@100 and MRR@10 of the local retriever: hybrid, dense only and full-text only."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from citechat.documents import commands
    from citechat.evaluation import beir
    from citechat.runtime import open_runtime

    if not (path / "corpus.jsonl").is_file():
        raise typer.BadParameter(f"{path} is not a BEIR folder (no corpus.jsonl)", param_hint="PATH")
    dataset = beir.load(path, split)

    async def run() -> list[beir.RetrievalScores]:
        async with open_runtime(Settings()) as runtime:
            organization = await commands.organization(runtime, org or f"eval-{dataset.name}")
            with Progress() as progress:
                indexing = progress.add_task("indexing corpus", total=len(dataset.corpus))
                await beir.index_corpus(runtime, organization, dataset, lambda n: progress.advance(indexing, n))
                modes = ["hybrid", "dense", "lexical"]
                querying = progress.add_task("querying", total=len(dataset.queries) * len(modes))
                return await beir.evaluate(runtime, organization, dataset, modes, lambda: progress.advance(querying))

    logging.config.dictConfig(logging_config("warning"))
    table = Table("retrieval", "nDCG@10", "Recall@100", "MRR@10", "p50 ms", "p95 ms", title=f"BEIR {dataset.name}")
    for s in asyncio.run(run()):
        table.add_row(
            s.mode,
            f"{s.ndcg_at_10:.3f}",
            f"{s.recall_at_100:.3f}",
            f"{s.mrr_at_10:.3f}",
            f"{s.p50_ms:.1f}",
            f"{s.p95_ms:.1f}",
        )
    Console().print(table)


@eval_app.command("run")
def eval_run(
    suite: Annotated[Path, typer.Argument(metavar="SUITE", help="Suite YAML, e.g. evals/suites/smoke.yaml.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: eval-results/<suite name>).")] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="A results.json to compare with: a regression beyond tolerance fails the run.")
    ] = None,
    org: Annotated[
        str | None,
        typer.Option(
            help="Index into (and keep) this organization; default: a fresh one, removed after.", callback=_identifier
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the fresh organization and its index.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
) -> None:
    """Run an evaluation suite through the real pipeline; write results.json, report.md and chart.png.

    Exit 1 when a threshold or the baseline fails, 2 when the suite cannot run."""
    from citechat.evaluation import commands
    from citechat.evaluation.runner import RunOptions

    logging.config.dictConfig(logging_config("warning"))
    raise typer.Exit(commands.run(suite, out, baseline, RunOptions(org=org, keep=keep), limit))


@eval_app.command("compare")
def eval_compare(
    first: Annotated[Path, typer.Argument(metavar="A.json", help="results.json of one run (e.g. the baseline).")],
    second: Annotated[Path, typer.Argument(metavar="B.json", help="results.json of another run.")],
    everything: Annotated[bool, typer.Option("--all", help="Show unchanged figures too.")] = False,
) -> None:
    """Show how two runs differ: every figure that changed, and the answers that changed."""
    from citechat.evaluation import commands

    raise typer.Exit(commands.compare(first, second, everything))


@bench_app.command("retrieval")
def bench_retrieval(
    quick: Annotated[bool, typer.Option(help="A tiny run that proves the benchmark works.")] = False,
    corpus: Annotated[Path, typer.Option(help="BEIR folder whose passages and queries are used.")] = DATASETS
    / "scifact",
    sizes: Annotated[str | None, typer.Option(help="Comma-separated corpus sizes in chunks (10000,100000).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write retrieval.json and retrieval.md.")] = Path("bench-results"),
) -> None:
    """Top-5 hybrid retrieval latency at each corpus size, with and without the query embedding."""
    from citechat.bench import report, retrieval

    options = retrieval.sizes(quick)
    if not quick and sizes:
        options["sizes"] = [int(s) for s in sizes.split(",")]
    logging.config.dictConfig(logging_config("warning"))
    results = asyncio.run(retrieval.run(corpus, **options))
    table = retrieval.markdown(results)
    report.write(results, out, "retrieval", table)
    typer.echo(table)


@bench_app.command("ingest")
def bench_ingest(
    quick: Annotated[bool, typer.Option(help="Two documents only.")] = False,
    folder: Annotated[Path, typer.Option(help="Folder of PDFs.")] = DATASETS / "sec10q" / "docs",
    out: Annotated[Path, typer.Option(help="Where to write ingest.json and ingest.md.")] = Path("bench-results"),
) -> None:
    """Ingestion throughput of the local index: pages/s, chunks/s, and where the time goes."""
    from citechat.bench import ingest, report

    logging.config.dictConfig(logging_config("warning"))
    results = asyncio.run(ingest.run(sorted(folder.glob("*.pdf"))[: 2 if quick else None]))
    table = ingest.markdown(results)
    report.write(results, out, "ingest", table)
    typer.echo(table)


def _serving_bench(name: str, quick: bool, folder: Path, count: int, out: Path, measure) -> None:
    """Runs ``measure(stack)`` on the serving stack (``count`` PDFs of ``folder`` indexed, or, quick or without
    that folder, the built-in text) and writes and prints its report ``name``."""
    from citechat.bench import report
    from citechat.bench.stack import QUICK_PACE, open_stack

    files = sorted(folder.glob("*.pdf"))[:count]

    async def run() -> tuple[dict, str]:
        async with open_stack(None if quick or not files else files, QUICK_PACE if quick else None) as stack:
            return await measure(stack)

    logging.config.dictConfig(logging_config("warning"))
    results, table = asyncio.run(run())
    report.write(results, out, name, table)
    typer.echo(table)


@bench_app.command("overhead")
def bench_overhead(
    quick: Annotated[
        bool, typer.Option(help="A few messages per concurrency, 20-token answers, the built-in document.")
    ] = False,
    folder: Annotated[Path, typer.Option(help="Folder of PDFs to index.")] = DATASETS / "sec10q" / "docs",
    documents: Annotated[int, typer.Option(min=1, help="How many of its PDFs to index.")] = 3,
    out: Annotated[Path, typer.Option(help="Where to write overhead.json and overhead.md.")] = Path("bench-results"),
) -> None:
    """Serving overhead at 1, 16 and 64 streams: citechat next to a bare FastAPI relay and LlamaIndex in-process."""
    from citechat.bench import overhead

    async def measure(stack) -> tuple[dict, str]:
        if quick:
            results = await overhead.run(stack, overhead.QUICK_LEVELS, warm_up=1, rounds=1)
        else:
            results = await overhead.run(stack, overhead.LEVELS)
        return results, overhead.markdown(results)

    _serving_bench("overhead", quick, folder, documents, out, measure)


@bench_app.command("memory")
def bench_memory(
    quick: Annotated[bool, typer.Option(help="The built-in document, 16 streams, 20-token answers.")] = False,
    folder: Annotated[Path, typer.Option(help="Folder of PDFs to index.")] = DATASETS / "sec10q" / "docs",
    documents: Annotated[int, typer.Option(min=1, help="How many of its PDFs to index.")] = 3,
    streams: Annotated[int | None, typer.Option(min=1, help="Concurrent streams for the peak (64; quick: 16).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write memory.json and memory.md.")] = Path("bench-results"),
) -> None:
    """Resident size of the server idle and at its peak under concurrent streams."""
    from citechat.bench import memory

    async def measure(stack) -> tuple[dict, str]:
        results = await memory.run(stack, streams or (16 if quick else 64))
        return results, memory.markdown(results)

    _serving_bench("memory", quick, folder, documents, out, measure)


@bench_app.command("all")
def bench_all(
    quick: Annotated[bool, typer.Option(help="Tiny sizes everywhere.")] = False,
    out: Annotated[Path, typer.Option(help="Where to write all.json and all.md.")] = Path("bench-results"),
) -> None:
    """Every benchmark in one run (retrieval and ingestion need the shared data sets and are skipped without them):
    one JSON file and one Markdown report."""
    from citechat.bench import everything, report

    def save(results: dict) -> None:
        report.write(results, out, "all", everything.markdown(results))

    logging.config.dictConfig(logging_config("warning"))
    results = asyncio.run(everything.run(quick, DATASETS, save))
    typer.echo(everything.markdown(results))


@app.command()
def slo(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """How recent answers did against the targets: latency percentiles, error rate, tokens and cost per message."""
    from pydantic import ValidationError

    from citechat.db.database import open_database
    from citechat.telemetry.slo import parse_window, render, slo_report
    from citechat.telemetry.targets import Targets

    try:
        window = parse_window(since)
    except ValidationError as exc:
        raise typer.BadParameter(exc.errors()[0]["msg"], param_hint="--since") from exc
    settings = Settings()

    async def run():
        async with open_database(settings) as database, database.sessions() as db:
            return await slo_report(
                db, window, Targets.from_settings(settings), settings.model_prices, provider=settings.llm
            )

    logging.config.dictConfig(logging_config("warning"))
    report = asyncio.run(run())
    typer.echo(report.model_dump_json(indent=2) if as_json else render(report))


@prompts_app.command("check")
def prompts_check(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Template folder (default: the configured one).")
    ] = None,
) -> None:
    """Validate the prompt templates and print their version."""
    from citechat.pipeline.prompts import TEMPLATES, PromptError, load

    folder = directory or Settings().prompts_dir
    try:
        prompts = load(folder)
    except PromptError as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{len(TEMPLATES)} templates in {folder} are valid; version {prompts.version}")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="User id (the `sub` claim).")],
    org: Annotated[list[str], typer.Option(help="Organization id; repeat for several.")],
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 12h, 7d.")] = "1d",
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    email: Annotated[str | None, typer.Option(help="E-mail address.")] = None,
    admin: Annotated[bool, typer.Option(help="Grant the admin role (operators' routes: /api/v1/admin).")] = False,
) -> None:
    """Print an HS256 bearer token signed with the service's secret, for local use and scripts."""
    from citechat.auth.tokens import ADMIN_ROLE, auth_secret, issue_token, parse_ttl
    from citechat.errors import AuthenticationError

    try:
        lifetime = parse_ttl(ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from exc
    secret = auth_secret(Settings())
    if secret is None:
        typer.echo("No CITECHAT_AUTH_SECRET is set, and tokens are verified elsewhere (JWKS).", err=True)
        raise typer.Exit(2)
    roles = [ADMIN_ROLE] if admin else None
    try:
        issued = issue_token(secret, user=user, organizations=org, ttl=lifetime, name=name, email=email, roles=roles)
    except AuthenticationError as exc:
        raise typer.BadParameter(exc.detail) from exc
    typer.echo(issued)
