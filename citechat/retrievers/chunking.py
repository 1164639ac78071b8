"""Splitting parsed documents into passages that know exactly which page they came from.

Each page of a paged document is split on its own (LlamaIndex's ``SentenceSplitter``), so every passage lies on
exactly one page and its citation names the page to check. A sentence that runs over a page break becomes two
passages; that costs little, and a citation that points at the wrong page costs trust.
"""

from dataclasses import dataclass

from llama_index.core.node_parser import SentenceSplitter

from citechat.documents.parsing import Parsed


@dataclass(frozen=True)
class Passage:
    index: int
    text: str
    start_page: int | None
    end_page: int | None
    page_label: str | None


def split(parsed: Parsed, *, chunk_size: int, chunk_overlap: int) -> list[Passage]:
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=min(chunk_overlap, chunk_size // 2))
    passages: list[Passage] = []
    for page in parsed.pages:
        if not page.text:
            continue
        for piece in splitter.split_text(page.text):
            passages.append(Passage(len(passages), piece, page.number, page.number, page.label))
    return passages
