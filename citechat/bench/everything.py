"""``citechat bench all``: every benchmark in one run, one JSON report and one Markdown report.

Memory is measured first, on a server that has answered one question only, then overhead on the same servers.
Retrieval and ingestion read the shared data sets and are skipped (and said to be) where those are missing. The
report is written again after each benchmark, so a run that fails late keeps what it measured.
"""

from collections.abc import Callable
from pathlib import Path

from citechat.bench import ingest, memory, overhead, retrieval
from citechat.bench.stack import QUICK_PACE, open_stack

SERVING_DOCUMENTS = 3  # 10-Q filings indexed for the serving benchmarks


async def run(quick: bool, datasets: Path, save: Callable[[dict], object]) -> dict:
    results: dict = {"quick": quick, "skipped": {}}
    corpus = datasets / "scifact"
    if (corpus / "corpus.jsonl").is_file():
        results["retrieval"] = await retrieval.run(corpus, **retrieval.sizes(quick))
    else:
        results["skipped"]["retrieval"] = f"no BEIR corpus at {corpus}"
    save(results)
    pdfs = sorted((datasets / "sec10q" / "docs").glob("*.pdf"))
    if pdfs:
        results["ingest"] = await ingest.run(pdfs[:2] if quick else pdfs)
    else:
        results["skipped"]["ingest"] = f"no PDFs in {datasets / 'sec10q' / 'docs'}"
    save(results)
    serving_documents = None if quick or not pdfs else pdfs[:SERVING_DOCUMENTS]
    async with open_stack(serving_documents, QUICK_PACE if quick else None) as stack:
        results["memory"] = await memory.run(stack, 16 if quick else 64)
        save(results)
        if quick:
            results["overhead"] = await overhead.run(stack, overhead.QUICK_LEVELS, warm_up=1, rounds=1)
        else:
            results["overhead"] = await overhead.run(stack, overhead.LEVELS)
    save(results)
    return results


def markdown(results: dict) -> str:
    sections = [("Serving overhead", "overhead", overhead.markdown), ("Memory", "memory", memory.markdown)]
    sections += [("Retrieval", "retrieval", retrieval.markdown), ("Ingestion", "ingest", ingest.markdown)]
    parts = []
    for title, key, render in sections:
        if key in results:
            parts.append(f"### {title}\n\n{render(results[key])}")
        elif key in results["skipped"]:
            parts.append(f"### {title}\n\nSkipped: {results['skipped'][key]}.\n")
    return "\n".join(parts)
