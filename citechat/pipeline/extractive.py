"""The extractive answerer: citechat's default "model" when no LLM is configured.

It answers only with sentences copied from the retrieved passages, each followed by its source marker ``[n]``
(sources numbered 1..N in retrieval order), so a deployment without a model still gives grounded, cited answers
and can never invent a claim. When no sentence is relevant enough it says so with ``NOTHING_FOUND``.

Scoring is lexical on purpose: it needs no model, is deterministic and costs microseconds per sentence. Question
terms are weighted by IDF over the candidate sentences (a rare term such as a product name decides more than a
common one such as "company"), numbers count double and only match exactly ("7.4" is not "7.45"), and a sentence's
score is the share of the question's total weight it covers, so one fixed threshold works for short and long
questions alike. Terms of the question found in no candidate keep their full weight, which is what makes an
unrelated question fall below the threshold instead of matching on a single generic word.
"""

import asyncio
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from pydantic import Field

from citechat.pipeline.terms import content_terms, is_number

NOTHING_FOUND = "I could not find anything relevant to that question in your documents."

MIN_RELEVANCE = 0.25  # share of the question's weight a sentence must cover to be quoted at all
NUMBER_WEIGHT = 2.0  # a number the question names is the strongest evidence a sentence answers it
RANK_BONUS = 0.05  # divided by the source number: breaks near-ties in favour of the retriever's order
RELATIVE_CUT = 0.5  # a sentence scoring under half the best one adds noise, not support
DUPLICATE_OVERLAP = 0.8  # word-set Jaccard above which a sentence repeats one already chosen


def _words(text: str) -> frozenset[str]:
    """A word list written as text: as a list literal (one word per formatted line) it would be unreadable."""
    return frozenset(text.split())


_ABBREVIATIONS = _words(
    "e.g i.e etc vs cf al approx ca inc ltd co corp llc plc mr mrs ms dr prof st jr sr no nos fig figs vol pp"
    " jan feb mar apr jun jul aug sep sept oct nov dec dept est"
)
_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:'[^\W\d_]+)?")  # words as written, for counts and overlap
# A candidate sentence end: terminal punctuation, optional closing quotes/brackets, whitespace, then a capital,
# a digit or an opening quote/bracket.
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_LAST_TOKEN = re.compile(r"(\S+)$")
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.){2,}$")  # U.S., U.K., e.g., a.m.
_BULLET = re.compile(r"^(?:[-*•▪‣◦–—]|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")
_TABLE_LINE = re.compile(r"\t|\||\S {3,}\S.* {3,}\S")  # PDF prose has stray double spaces, columns more
_TERMINAL = re.compile(r"[.!?]+$")


class ExtractedSentence(NamedTuple):
    text: str  # verbatim from the passage, whitespace normalised
    source: int  # 1-based position of the passage in retrieval order
    score: float


@dataclass(frozen=True, slots=True)
class ExtractiveAnswer:
    """``text`` is what the user reads; ``sentences`` are its quotes, for callers that map markers to sources."""

    text: str
    sentences: tuple[ExtractedSentence, ...]
    found: bool


def answer(question: str, passages: Sequence[str], *, max_sentences: int = 3) -> ExtractiveAnswer:
    """The best ``max_sentences`` sentences of ``passages`` for ``question``, each cited, most relevant first.

    A sentence is quoted only if it covers ``MIN_RELEVANCE`` of the question's weight, scores at least
    ``RELATIVE_CUT`` of the best sentence, does not repeat a sentence already quoted and is not a heading: a
    heading names a topic and states nothing, so quoting one ("Orbital Bakery Annual Report 2023") answered
    questions the documents cannot answer. Headings still count when weighing the question's terms (a term only a
    heading holds is not one the passages never mention). Output is ordered by score rather than by document
    position: the sentences usually come from different sources, so there is no shared reading order to keep, and
    the reader should meet the most direct answer first.
    """
    candidates = [
        (sentence, source, position, heading)
        for source, passage in enumerate(passages, start=1)
        for position, (sentence, heading) in enumerate(_sentences(passage))
        if len(_WORD.findall(sentence)) >= 2
    ]
    query = set(content_terms(question))
    if not candidates or not query or max_sentences < 1:
        return ExtractiveAnswer(NOTHING_FOUND, (), found=False)

    sentence_terms = [set(content_terms(sentence)) for sentence, *_ in candidates]
    document_frequency = Counter(term for terms in sentence_terms for term in terms & query)
    total = len(candidates)
    weight = {
        term: math.log(1 + (total - document_frequency[term] + 0.5) / (document_frequency[term] + 0.5))
        * (NUMBER_WEIGHT if is_number(term) else 1.0)
        for term in query
    }
    # math.fsum: the sum of a set's weights must not depend on the set's (hash-seeded) order, or a sentence on the
    # RELATIVE_CUT boundary is quoted by one process and not by the next.
    query_weight = math.fsum(weight.values())

    scored = []
    for (sentence, source, position, heading), terms in zip(candidates, sentence_terms, strict=True):
        relevance = math.fsum(weight[term] for term in terms & query) / query_weight
        if relevance >= MIN_RELEVANCE and not heading:
            scored.append((relevance + RANK_BONUS / source, source, position, sentence))
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    best = scored[0][0] if scored else 0.0

    chosen: list[ExtractedSentence] = []
    chosen_words: list[set[str]] = []
    for score, source, _, sentence in scored:
        if score < RELATIVE_CUT * best:
            break
        words = {word.lower() for word in _WORD.findall(sentence)}
        if any(_overlap(words, other) >= DUPLICATE_OVERLAP for other in chosen_words):
            continue
        chosen.append(ExtractedSentence(sentence, source, round(score, 4)))
        chosen_words.append(words)
        if len(chosen) == max_sentences:
            break
    if not chosen:
        return ExtractiveAnswer(NOTHING_FOUND, (), found=False)
    return ExtractiveAnswer(" ".join(_cite(s) for s in chosen), tuple(chosen), found=True)


def split_sentences(passage: str) -> list[str]:
    """Sentences of ``passage``, whitespace normalised, in order.

    PDF text breaks lines mid-sentence, so single line breaks are joined; blank lines, bullets, table rows and
    short headings end a unit because they never continue a sentence. Within a unit a sentence ends at ``.!?``
    followed by a capital or digit, unless the dot belongs to an abbreviation ("e.g.", "Inc.", "U.S."): merging
    two sentences quotes a little too much, splitting one quotes a fragment.
    """
    return [sentence for sentence, _ in _sentences(passage)]


def _sentences(passage: str) -> list[tuple[str, bool]]:
    """``split_sentences``, each sentence with whether it is a heading."""
    sentences: list[tuple[str, bool]] = []
    for unit, heading in _units(passage):
        start = 0
        for match in _BOUNDARY.finditer(unit):
            end = match.start() + 1
            if _is_abbreviation(unit[start:end]):
                continue
            sentences.append((unit[start : match.end()].strip(), heading))
            start = match.end()
        sentences.append((unit[start:].strip(), heading))
    return [(sentence, heading) for sentence, heading in sentences if sentence]


def _units(passage: str) -> list[tuple[str, bool]]:
    """Blocks of text no sentence crosses, each on one line, with whether it is a heading."""
    units: list[tuple[str, bool]] = []
    current: list[str] = []
    lines = [line.strip() for line in passage.splitlines()]
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        table = bool(_TABLE_LINE.search(line))
        heading = not table and _is_heading(line, current, following)
        standalone = table or heading
        if not line or standalone or _BULLET.match(line):
            units.append((" ".join(current), False))
            current = []
        if standalone:
            units.append((line, heading))
        elif line:
            current.append(_BULLET.sub("", line))
    units.append((" ".join(current), False))
    return [(" ".join(unit.split()), heading) for unit, heading in units if unit.strip()]


def _is_heading(line: str, current: list[str], following: str) -> bool:
    """A short unpunctuated line between a finished sentence (or nothing) and a capitalised line."""
    previous_done = not current or current[-1].rstrip("\"')”’").endswith((".", "!", "?", ":"))
    return (
        bool(line)
        and previous_done
        and len(line.split()) <= 8
        and not line.endswith((".", "!", "?", ":", ";", ","))
        and following[:1].isupper()
    )


def _is_abbreviation(text: str) -> bool:
    """Whether the dot ending ``text`` closes an abbreviation or initial rather than a sentence."""
    token = _LAST_TOKEN.search(text)
    if token is None:
        return False
    word = token.group(1).lstrip("(\"'“‘[").rstrip(".")
    return (
        word.lower() in _ABBREVIATIONS
        or bool(_DOTTED_ACRONYM.search(token.group(1)))
        or (len(word) == 1 and word.isupper())
    )


def _overlap(first: set[str], second: set[str]) -> float:
    return len(first & second) / len(first | second) if first or second else 1.0


def _cite(sentence: ExtractedSentence) -> str:
    """The sentence with its marker before the final punctuation: "... dollars [2]."."""
    marker = f" [{sentence.source}]"
    if _is_abbreviation(sentence.text):  # "... in the U.S. [1]", not "... in the U.S [1]."
        return sentence.text + marker
    if terminal := _TERMINAL.search(sentence.text):
        return sentence.text[: terminal.start()] + marker + terminal.group()
    return sentence.text + marker + ("." if sentence.text[-1].isalnum() else "")


def _pieces(text: str) -> list[str]:
    """Word-sized stream deltas, each with its trailing space, so that they concatenate back to ``text``."""
    return re.findall(r"\S+\s*", text)


class ExtractiveLLM(CustomLLM):
    """``answer`` behind LlamaIndex's LLM interface, so the chat pipeline uses it like any configured model.

    Built per request with the question and the retrieved passages. Every prompt it receives is ignored: the
    passages inside a formatted prompt cannot be recovered reliably (templates are edited by prompt engineers),
    so the pipeline hands them over directly. Consequently every call, including a "condense the question" call,
    returns the extractive answer. It uses no tokens, so responses carry no usage.

    The async methods are overridden because ``CustomLLM``'s defaults route ``achat`` and ``astream_chat`` through
    the synchronous methods and a synchronous generator; here the async paths yield to the event loop between
    stream pieces. Chat calls are answered directly rather than through ``messages_to_prompt``.
    """

    question: str = ""
    passages: list[str] = Field(default_factory=list)
    max_sentences: int = 3

    @classmethod
    def class_name(cls) -> str:
        return "extractive_llm"

    @property
    def metadata(self) -> LLMMetadata:
        # The context window only bounds how the synthesizer packs passages into prompts, which are ignored;
        # a large one keeps LlamaIndex to one call per answer.
        return LLMMetadata(context_window=1_000_000, num_output=1024, is_chat_model=False, model_name="extractive")

    def _text(self) -> str:
        return answer(self.question, self.passages, max_sentences=self.max_sentences).text

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._text())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            text = ""
            for piece in _pieces(self._text()):
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._text())

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            for piece in _pieces(self._text()):
                text += piece
                yield CompletionResponse(text=text, delta=piece)
                await asyncio.sleep(0)  # let other requests run between pieces

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self._text()))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        async def gen() -> ChatResponseAsyncGen:
            text = ""
            for piece in _pieces(self._text()):
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
                await asyncio.sleep(0)

        return gen()
