"""``citechat bench all``: every benchmark in one run, one JSON report and one Markdown report.

Memory is measured first, on a server that has answered one question only, then overhead on the same servers.
Retrieval and ingestion read the shared data sets and are skipped (and said to be) where those are missing.
"""

from pathlib import Path

from citechat.bench import ingest, memory, overhead, retrieval
from citechat.bench.stack import QUICK_PACE, open_stack

SERVING_DOCUMENTS = 3  # 10-Q filings indexed for the serving benchmarks


async def run(quick: bool, datasets: Path) -> dict:
    results: dict = {"quick": quick, "skipped": {}}
    corpus = datasets / "scifact"
    if (corpus / "corpus.jsonl").is_file():
        results["retrieval"] = await retrieval.run(corpus, **retrieval.sizes(quick))
    else:
        results["skipped"]["retrieval"] = f"no BEIR corpus at {corpus}"
    pdfs = sorted((datasets / "sec10q" / "docs").glob("*.pdf"))
    if pdfs:
        results["ingest"] = await ingest.run(pdfs[:2] if quick else pdfs)
    else:
        results["skipped"]["ingest"] = f"no PDFs in {datasets / 'sec10q' / 'docs'}"
    serving_documents = None if quick or not pdfs else pdfs[:SERVING_DOCUMENTS]
    async with open_stack(serving_documents, QUICK_PACE if quick else None) as stack:
        results["memory"] = await memory.run(stack, 16 if quick else 64)
        if quick:
            results["overhead"] = await overhead.run(stack, overhead.QUICK_LEVELS, warm_up=1)
        else:
            results["overhead"] = await overhead.run(stack, overhead.LEVELS)
    return results


def markdown(results: dict) -> str:
    sections = [("Serving overhead", "overhead", overhead.markdown), ("Memory", "memory", memory.markdown)]
    sections += [("Retrieval", "retrieval", retrieval.markdown), ("Ingestion", "ingest", ingest.markdown)]
    parts = []
    for title, key, render in sections:
        body = render(results[key]) if key in results else f"Skipped: {results['skipped'][key]}.\n"
        parts.append(f"### {title}\n\n{body}")
    return "\n".join(parts)
