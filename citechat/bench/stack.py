"""Everything the serving benchmarks (overhead, memory) run against, started once and stopped together.

- a throwaway embedded PostgreSQL, and a local index with real documents in it, indexed by this process through
  the ingestion runner (the 10-Q filings of the shared data set, or a built-in text in quick runs);
- the paced generator (``generator.py``), the floor (``floor.py``) and citechat itself (``server.py``: the real app
  under uvicorn, ``CITECHAT_LLM=openai-compatible`` pointed at the generator), each a process of its own;
- this process's own runtime on the same database, for the in-process LlamaIndex peer (same retriever, same
  generator).

citechat's users each get a token of their own, and the rate limits are set high (still checked), so the
benchmark measures serving, not the limiter refusing it.
"""

import asyncio
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from citechat.auth.tokens import issue_token
from citechat.bench.generator import MODEL, Pace
from citechat.bench.processes import Launched, Service, child_env, free_port, launch, ready, stop
from citechat.documents import commands
from citechat.retrievers.base import Organization
from citechat.runtime import Runtime, open_runtime
from citechat.settings import Settings

ORGANIZATION = "bench"
# Rate limits high enough never to refuse the benchmark (they are still checked and counted for every message).
GENEROUS_LIMITS = {"CITECHAT_RATELIMIT_USER_PER_HOUR": str(10**9), "CITECHAT_RATELIMIT_ORG_PER_DAY": str(10**9)}
QUICK_PACE = Pace(tokens=20)  # smoke runs: the same first-token wait, a tenth of the answer
QUESTIONS = (
    "What were total net sales this quarter?",
    "How did operating income change compared with the prior year?",
    "What risks from foreign exchange rates does the company describe?",
    "How much cash was returned to shareholders through repurchases and dividends?",
    "What does the filing say about research and development expenses?",
    "What legal proceedings are disclosed?",
    "How did gross margin develop?",
    "What is the outlook on liquidity and capital resources?",
)


@dataclass(frozen=True)
class Stack:
    generator: Service
    server: Service  # citechat
    floor: Service
    runtime: Runtime  # this process's, on the same database
    organization: Organization
    secret: str
    pace: Pace
    corpus: dict  # documents, pages and chunks indexed

    def token(self, user: str) -> str:
        return issue_token(self.secret, user=user, organizations=[ORGANIZATION], ttl=timedelta(hours=2))


@asynccontextmanager
async def open_stack(documents: list[Path] | None, pace: Pace | None = None) -> AsyncIterator[Stack]:
    """``documents``: files to index (None: the built-in text); ``pace``: the generator's (default: 200 tokens).

    The generator and the floor start while this process indexes; citechat only once the documents are indexed,
    or its start-up would resume the indexing of documents it finds unfinished, alongside this process."""
    pace = pace or Pace()
    with tempfile.TemporaryDirectory(prefix="citechat-bench-") as work:
        work_dir = Path(work)
        data_dir = work_dir / "data"
        secret = secrets.token_urlsafe(32)
        async with AsyncExitStack() as stack:
            settings = Settings(_env_file=None, data_dir=data_dir, auth_secret=secret)
            runtime = await stack.enter_async_context(open_runtime(settings))  # the database, migrated
            organization = await commands.organization(runtime, ORGANIZATION)
            running: list[Launched] = []
            stack.push_async_callback(lambda: asyncio.gather(*(stop(launched) for launched in running)))

            def start(name: str, module: str, args: list[str], env: dict[str, str], port: int) -> Launched:
                running.append(launch(name, module, args, env=env, log=work_dir / f"{module}.log", port=port))
                return running[-1]

            generator_port = free_port()
            generator_url = f"http://127.0.0.1:{generator_port}"
            helpers = [
                start("paced generator", "citechat.bench.generator", _pace_args(pace), child_env(), generator_port),
                start("floor", "citechat.bench.floor", ["--generator", generator_url], child_env(), free_port()),
            ]
            corpus = await _index(runtime, organization, documents or [_builtin_document(work_dir)])
            server_env = child_env(
                CITECHAT_DATA_DIR=str(data_dir),
                CITECHAT_AUTH_SECRET=secret,
                CITECHAT_LLM="openai-compatible",
                CITECHAT_LLM_BASE_URL=f"{generator_url}/v1",
                CITECHAT_LLM_MODEL=MODEL,
                **GENEROUS_LIMITS,
            )
            citechat = start("citechat", "citechat.bench.server", [], server_env, free_port())
            async with asyncio.TaskGroup() as starting:  # a failure cancels the other waits
                waits = [starting.create_task(ready(helper, "/healthz")) for helper in helpers]
                waits.append(starting.create_task(ready(citechat, "/readyz")))
            generator, floor, server = (wait.result() for wait in waits)
            yield Stack(generator, server, floor, runtime, organization, secret, pace, corpus)


def _pace_args(pace: Pace) -> list[str]:
    return [
        "--first-token-ms",
        str(pace.first_token_ms),
        "--tokens",
        str(pace.tokens),
        "--token-ms",
        str(pace.token_ms),
    ]


async def _index(runtime: Runtime, organization: Organization, files: list[Path]) -> dict:
    report = await commands.ingest_files(runtime, organization, files, lambda path, document: None)
    if report.failures or not report.chunks:
        raise RuntimeError(f"indexing the benchmark's documents failed: {report.failures}")
    return {"documents": report.documents, "pages": report.pages, "chunks": report.chunks}


def _builtin_document(folder: Path) -> Path:
    """A short quarterly report in plain text (a few dozen chunks), for quick runs and machines without the data
    set."""
    topics = [
        ("Net sales", "Net sales for the quarter increased eight percent to 41.2 billion dollars, driven by services"),
        ("Operating income", "Operating income rose to 9.8 billion dollars as operating expenses grew more slowly"),
        ("Foreign exchange", "A stronger dollar reduced reported revenue; the company hedges part of this exposure"),
        ("Capital return", "The company repurchased 6.1 billion dollars of common stock and paid 3.7 billion in"),
        ("Research and development", "Research and development expenses increased eleven percent on headcount"),
        ("Legal proceedings", "The company is party to patent and antitrust cases whose outcome is uncertain"),
        ("Gross margin", "Gross margin was 43.5 percent, up from 42.1 percent, on a richer product and services mix"),
        ("Liquidity", "Cash, equivalents and marketable securities of 166 billion dollars cover planned spending"),
    ]
    paragraphs = []
    for title, fact in topics:
        body = " ".join(f"{fact} (note {n})." for n in range(1, 13))
        paragraphs.append(f"{title}\n\n{body}")
    path = folder / "quarterly-report.txt"
    path.write_text("\n\n".join(paragraphs))
    return path
