"""Scores of one answer against its gold record: answer overlap, citations, faithfulness, refusal.

Pure functions over the stored message (the ``done`` event's JSON: text, sources with page spans and ``cited``
flags, and the citation check in ``metadata``), so a report can be recomputed from ``results.json`` alone.

- Token F1 and exact match follow SQuAD's normalisation (lower case, no punctuation or articles); citation markers
  are removed first. ``answer_recall`` (share of gold tokens the answer contains) is reported beside them because
  quoting answerers are verbose: a right answer inside a full sentence scores low F1 but full recall.
- A cited source holds gold evidence when it comes from a gold document and, where gold pages are known, its page
  span meets them. Citation precision: cited sources holding gold evidence / cited sources. Recall: gold evidence
  units (document pages, or whole documents) cited / gold units. Page accuracy: of cited sources from gold documents
  with gold pages, those on a right page.
- Offline faithfulness: share of the answer's sentences that cite a source and are supported by it (citechat's own
  lexical ``support`` >= 0.5). A sentence citing nothing counts as unsupported.
- A refusal is the Strict gate's fixed answer, an answer equal to a known refusal sentence, or an answer that cites
  nothing and says it cannot answer. An answer to an unanswerable question that is not a refusal is invented.
"""

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from citechat.pipeline import citations

REFUSAL_PHRASES = (
    "don't have enough information",
    "do not have enough information",
    "not enough information",
    "could not find",
    "couldn't find",
    "cannot answer",
    "can't answer",
    "unable to answer",
    "no information",
    "do not contain",
    "don't contain",
    "does not contain",
    "doesn't contain",
    "not mentioned",
    "not specified",
    "not provided",
    "no relevant",
)
_MARKER = re.compile(r"\[\s*-?\d+(?:\s*,\s*-?\d+)*\s*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "‘’“”")


def normalize(text: str) -> str:
    """SQuAD's answer normalisation, after removing citation markers."""
    text = _MARKER.sub(" ", text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(answer: str, gold: str) -> float:
    predicted, wanted = normalize(answer).split(), normalize(gold).split()
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if not predicted or not wanted or not common:
        return float(predicted == wanted)
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def exact_match(answer: str, gold: str) -> float:
    return float(normalize(answer) == normalize(gold))


def answer_recall(answer: str, gold: str) -> float:
    """Share of the gold answer's tokens (with repeats) found in the answer."""
    predicted, wanted = Counter(normalize(answer).split()), Counter(normalize(gold).split())
    total = sum(wanted.values())
    return sum((predicted & wanted).values()) / total if total else 0.0


def is_refusal(text: str, *, refused_flag: bool, known: Iterable[str], cited: bool) -> bool:
    if refused_flag:
        return True
    plain = normalize(text)
    if any(plain == normalize(sentence) for sentence in known):
        return True
    lowered = text.lower().replace("’", "'")
    return not cited and any(phrase in lowered for phrase in REFUSAL_PHRASES)


Unit = tuple[str, int | None]  # (document key, page) or (document key, None) for a whole document


def gold_units(evidence: Sequence[tuple[str, Sequence[int]]]) -> set[Unit]:
    units: set[Unit] = set()
    for document, pages in evidence:
        units |= {(document, page) for page in pages} if pages else {(document, None)}
    return units


def source_pages(source: Mapping) -> set[int]:
    first = source.get("page_number")
    if first is None:
        return set()
    return set(range(first, (source.get("end_page") or first) + 1))


def citation_scores(cited: Sequence[tuple[str, set[int]]], evidence: Sequence[tuple[str, Sequence[int]]]) -> dict:
    """``cited``: (document key, pages) of each cited source; ``evidence``: (document key, gold pages)."""
    gold_pages = {document: set(pages) for document, pages in evidence}

    def holds_gold(document: str, pages: set[int]) -> bool:
        return document in gold_pages and (not gold_pages[document] or bool(pages & gold_pages[document]))

    units = gold_units(evidence)
    covered = {
        (document, page)
        for document, page in units
        if any(key == document and (page is None or page in pages) for key, pages in cited)
    }
    paged = [(key, pages) for key, pages in cited if gold_pages.get(key)]
    return {
        "citation_precision": sum(holds_gold(*c) for c in cited) / len(cited) if cited else None,
        "citation_recall": len(covered) / len(units) if units else None,
        "page_accuracy": sum(bool(p & gold_pages[k]) for k, p in paged) / len(paged) if paged else None,
    }


def faithfulness(text: str, checked_sentences: Sequence[Mapping]) -> float | None:
    """Share of the answer's sentences that are supported by the sources they cite (None for an empty answer)."""
    total = len(citations.split_sentences(text))
    if not total:
        return None
    return min(1.0, sum(1 for s in checked_sentences if s.get("supported")) / total)
