"""Server-side checks of an answer's inline citations, run before the answer is final.

An answer cites its sources, numbered 1..N as in the prompt, with markers such as ``[1]``, ``[1, 3]``, ``[1,3]`` or
``[1][3]``. A model can cite a source that does not exist or one that does not say what it is cited for, so:

- ``verify(answer, sources) -> CitationReport`` removes markers naming no source (0, negative, above N) and tidies
  the spacing they leave, records which sources were cited, and scores every citing sentence against the text it
  cites. Unsupported citations are flagged in the report, never hidden from the answer.
  ``sources`` may be ``Passages``: the sources with their terms found ahead, so that the check after the answer's
  last token reads only the answer (citechat finds them while the model thinks of its first token).
  ``claims`` may be a ``Claims`` noted while the answer streamed: the check after the last token then finds the
  terms of its last sentences only.
- ``support(sentence, passage) -> float`` is that score: how much of what the sentence says the passage contains.
- ``split_sentences(text) -> list[str]`` splits an answer (Markdown) into the sentences that are scored.
- ``markers(text) -> list[int]`` lists every cited number in order of appearance, repeats included.
- ``split_pending(text) -> tuple[str, str]`` holds back an unfinished trailing marker while streaming.

Only brackets holding nothing but (possibly negative) integers are markers. Other brackets (``[note]``, ``[a]``,
``[1-3]``), Markdown links (``[text](url)``, even ``[1](url)``) and anything inside inline code or fenced code
blocks (``x[0]``) are left untouched.

Everything here is pure and offline: lexical overlap, no model, microseconds per sentence.
"""

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from citechat.pipeline.terms import content_terms, is_number

SUPPORT_THRESHOLD = 0.5
"""The support at or above which a citing sentence counts as supported: at least half of what it says (by content
words and numbers, any wrong number counting twice) is in the cited text. The measure is lexical, so a faithful
paraphrase loses the words it replaces with synonyms; a stricter bar would flag honest answers, while text that
does not say what it is cited for rarely shares more than a few of the sentence's content words."""


@dataclass(frozen=True)
class SentenceCheck:
    text: str  # as it appears in the cleaned answer, markers included
    sources: tuple[int, ...]  # numbers it cites, in order of first citation; empty when it cites nothing
    support: float | None  # against the union of the cited texts; None when it cites nothing
    supported: bool | None  # support >= SUPPORT_THRESHOLD; None when it cites nothing


@dataclass(frozen=True)
class SourceCheck:
    number: int  # 1-based, as in the prompt
    cited: bool
    support: float | None  # best support by this source alone over the sentences citing it; None when not cited


@dataclass(frozen=True)
class CitationReport:
    text: str  # the answer with markers naming no source removed
    sources: tuple[SourceCheck, ...]  # one per source, in order
    sentences: tuple[SentenceCheck, ...]  # every sentence of the cleaned answer, in order
    removed_markers: tuple[int, ...]  # distinct numbers removed, in order of first appearance

    @property
    def unsupported(self) -> tuple[SentenceCheck, ...]:
        """Citing sentences whose cited texts do not support them."""
        return tuple(sentence for sentence in self.sentences if sentence.supported is False)


def _words(text: str) -> frozenset[str]:
    """A word list written as text: as a list literal (one word per formatted line) it would be unreadable."""
    return frozenset(text.split())


# Closes no sentence even when a capital follows ("Dr. Smith", "p. 12"); "etc." and "Inc." often do, so they are
# not listed. Dotted acronyms ("e.g.", "U.S.") and single-letter initials are recognised by shape.
_ABBREVIATIONS = _words(
    "mr mrs ms dr prof sr jr st vs cf al approx ca fig figs no nos vol pp para sec ch art dept est"
    " jan feb mar apr jun jul aug sep sept oct nov dec"
)

_GROUP = r"\[[ \t]*-?\d+(?:[ \t]*,[ \t]*-?\d+)*[ \t]*\](?!\()"  # "[1]", "[1, 3]"; not a link "[1](url)"
_GROUP_RE = re.compile(rf"(?P<sep>[ \t]*)(?P<group>{_GROUP})")
_INTEGER = re.compile(r"-?\d+")
# A run of adjacent marker groups with the blanks around it, or what to step over (checked first at each position):
# code, and the target of a Markdown link, which may hold brackets ("](https://host/a[1])"). The lead starts only
# where a run of blanks starts, so a long run costs one attempt, not one per blank.
_CLUSTER_OR_SKIP = re.compile(
    r"(?=[`\][ \t])"  # where neither can start, fail at once (a third less time on an answer's plain words)
    rf"(?:(?P<skip>```.*?(?:```|\Z)|`[^`\n]*`|\]\([^)\s]*\))"
    rf"|(?P<lead>(?<![ \t])[ \t]*)(?P<cluster>{_GROUP}(?:[ \t]*{_GROUP})*)(?P<trail>[ \t]*))",
    re.DOTALL,
)
_PENDING = re.compile(r"\[[ \t\d,-]*\Z")
_FENCE = re.compile(r"[ \t]*(?:```|~~~)")
_LINE_PREFIX = re.compile(r"[ \t]*(?:[-*+•]|\d{1,3}[.)]|#{1,6}|>)[ \t]+")  # bullet, list number, heading, quote
# A candidate sentence end: terminal punctuation, closing quotes/parentheses, then the markers that cite it.
_END = re.compile(rf"[.!?]+[\"'”’)]*(?:[ \t]*{_GROUP})*")
_MARKERS_ONLY = re.compile(rf"(?:[ \t]*{_GROUP})+[ \t]*[.!?]*")
_INITIALISM = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")  # "U.S", "e.g", "J" (before the final dot)
_URL = re.compile(r"\]\([^)\s]*\)|https?://\S+")


class Passages:
    """The content terms of sources' texts (``terms[i]``: source number ``i + 1``'s), found once, when made."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.terms = tuple(_content(text) for text in texts)


class Claims:
    """What an answer's sentences claim (their content terms), noted while it streams (``note``), so that
    ``verify`` after the last token finds the terms of the sentences noted since only. A pure cache: a sentence
    not noted, or noted in another form (an invalid marker ``verify`` removes), is read when it is verified."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[set[str], set[str]]] = {}
        self._upto = 0  # where the sentence that may still go on starts

    def note(self, text: str) -> None:
        """Notes the complete sentences of ``text`` (the answer so far) that were not noted yet."""
        spans = _sentence_spans(text[self._upto :])
        for start, end in spans[:-1]:  # the last one may go on
            sentence = text[self._upto + start : self._upto + end]
            self._found[sentence] = _claims(sentence)
        if len(spans) > 1:
            self._upto += spans[-1][0]

    def of(self, sentence: str) -> tuple[set[str], set[str]]:
        found = self._found.get(sentence)
        return _claims(sentence) if found is None else found


def verify(answer: str, sources: Sequence[str] | Passages, claims: Claims | None = None) -> CitationReport:
    """Checks every marker of ``answer``; ``sources[i]`` is the text of source number ``i + 1``.

    A sentence is scored against the union of the texts it cites, because one sentence may join facts from
    several sources ("A rose [1] while B fell [2]."). A source is scored by itself against each sentence citing
    it, keeping the best, so a source cited alongside the one that really says it does not borrow that support.
    """
    terms = (sources if isinstance(sources, Passages) else Passages(sources)).terms
    text, removed = _remove_invalid(answer, len(terms))
    groups = list(_groups(text))
    best: dict[int, float] = {}
    sentences = []
    for start, end in _sentence_spans(text):
        sentence = text[start:end]
        cited = tuple(dict.fromkeys(n for position, numbers in groups if start <= position < end for n in numbers))
        if not cited:
            sentences.append(SentenceCheck(sentence, (), None, None))
            continue
        claimed = _claims(sentence) if claims is None else claims.of(sentence)
        together = (set().union(*(terms[n - 1][0] for n in cited)), set().union(*(terms[n - 1][1] for n in cited)))
        score = _support(claimed, together)
        sentences.append(SentenceCheck(sentence, cited, score, score >= SUPPORT_THRESHOLD))
        for n in cited:
            alone = score if len(cited) == 1 else _support(claimed, terms[n - 1])
            best[n] = max(best.get(n, 0.0), alone)
    cited_anywhere = {n for _, numbers in groups for n in numbers}
    return CitationReport(
        text=text,
        sources=tuple(
            SourceCheck(number, number in cited_anywhere, best.get(number)) for number in range(1, len(terms) + 1)
        ),
        sentences=tuple(sentences),
        removed_markers=removed,
    )


def support(sentence: str, passage: str) -> float:
    """How much of what ``sentence`` says ``passage`` contains, in [0, 1]; markers in the sentence are ignored.

    The share of the sentence's distinct content tokens found in the passage, multiplied by the share of its
    numbers found there. Content tokens are lower-cased words without stop words, lightly stemmed ("reported" and
    "reports" meet), and numbers kept exactly ("7.4" is not "7.40"; "1,200" is "1200"). Numbers count twice
    because they are the facts readers copy and the ones a model most often gets wrong while every word around
    them matches: "revenue rose to 9.9 million" against a passage saying 7.4 million scores 0, not 0.75.
    A sentence with no content tokens claims nothing to check and scores 1.0. Lexical overlap cannot see
    negation or synonyms: "did not rise" matches "rose" as well as "rose" does.
    """
    return _support(_claims(sentence), _content(passage))


def _claims(sentence: str) -> tuple[set[str], set[str]]:
    return _content(_GROUP_RE.sub(" ", sentence))


def _support(claimed: tuple[set[str], set[str]], found: tuple[set[str], set[str]]) -> float:
    """``support`` on terms already found (``_content``): a passage's are found once however many sentences cite it."""
    (words, numbers), (found_words, found_numbers) = claimed, found
    if not words and not numbers:
        return 1.0
    number_share = len(numbers & found_numbers) / len(numbers) if numbers else 1.0
    token_share = (len(words & found_words) + len(numbers & found_numbers)) / (len(words) + len(numbers))
    return token_share * number_share


def split_sentences(text: str) -> list[str]:
    """The sentences of an answer, stripped, in order; each is a substring of ``text``.

    Every line is split on its own: Markdown bullets, numbered items, headings and table rows are sentences even
    without a full stop, and the list marker is not part of the sentence. A sentence ends at ``.``, ``!`` or ``?``
    followed by a blank and anything but a lower-case letter, not after an abbreviation ("e.g.", "Dr.", "p. 12"),
    a dotted acronym ("U.S.") or an initial; decimals ("7.4") never end one. Markers right after the end
    ("... rose. [2] Next") and lines holding only markers belong to the sentence before. A fenced code block is
    one sentence.
    """
    return [text[start:end] for start, end in _sentence_spans(text)]


def markers(text: str) -> list[int]:
    """Every cited number in order of appearance, repeats and invalid numbers included."""
    return [n for _, numbers in _groups(text) for n in numbers]


def split_pending(text: str) -> tuple[str, str]:
    """``text`` as (safe to send, held back) while streaming: a trailing "[" or "[1, " may still become a marker,
    so sending it would show the reader a fragment that ``verify`` could later remove."""
    pending = _PENDING.search(text)
    return (text, "") if pending is None else (text[: pending.start()], text[pending.start() :])


def _groups(text: str) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(position, numbers) of every marker group outside code and link targets."""
    for cluster in _CLUSTER_OR_SKIP.finditer(text):
        if cluster["skip"] is None:
            for group in _GROUP_RE.finditer(text, cluster.start("cluster"), cluster.end("cluster")):
                yield group.start("group"), tuple(int(n) for n in _INTEGER.findall(group["group"]))


def _remove_invalid(answer: str, count: int) -> tuple[str, tuple[int, ...]]:
    """``answer`` without numbers outside 1..count, and those numbers (distinct, in order)."""
    removed: dict[int, None] = {}

    def rewrite(match: re.Match[str]) -> str:
        if match["skip"] is not None:
            return match[0]
        kept = []
        for group in _GROUP_RE.finditer(match["cluster"]):
            numbers = [int(n) for n in _INTEGER.findall(group["group"])]
            valid = [n for n in numbers if 1 <= n <= count]
            removed.update(dict.fromkeys(n for n in numbers if not 1 <= n <= count))
            if len(valid) == len(numbers):
                kept.append(group[0])
            elif valid:
                kept.append(f"{group['sep']}[{', '.join(map(str, valid))}]")
        if kept:
            return match["lead"] + "".join(kept).lstrip(" \t") + match["trail"]
        return _gap(match)

    # Removing a marker can join the brackets around it into a new one ("[[9]5]" -> "[5]"), so repeat until stable.
    text = answer
    while (cleaned := _CLUSTER_OR_SKIP.sub(rewrite, text)) != text:
        text = cleaned
    return text, tuple(removed)


def _gap(match: re.Match[str]) -> str:
    """What replaces a wholly removed run of markers: "word [7]." -> "word.", "a [7] b" -> "a b", "[7] A" -> "A"."""
    text, start, end = match.string, match.start(), match.end()
    following = text[end : end + 1]
    at_line_start = start == 0 or text[start - 1] == "\n"
    if not following or following in "\n.,;:!?)" or at_line_start:
        return ""
    return " " if match["lead"] or match["trail"] else ""


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    fence_start: int | None = None
    line_start = 0
    for line in text.split("\n"):
        start, end = line_start, line_start + len(line)
        line_start = end + 1
        if _FENCE.match(line):
            if fence_start is None:
                fence_start = start
            else:
                spans.append((fence_start, end))
                fence_start = None
        elif fence_start is None:
            prefix = _LINE_PREFIX.match(line)
            for span in _line_spans(text, start + (prefix.end() if prefix else 0), end):
                if spans and _MARKERS_ONLY.fullmatch(text, *span):
                    spans[-1] = (spans[-1][0], span[1])
                else:
                    spans.append(span)
    if fence_start is not None:
        spans.append((fence_start, len(text)))
    return [(start, end) for start, end in (_strip(text, *span) for span in spans) if start < end]


def _line_spans(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Stripped sentence spans of one line, ``text[start:end]``."""
    for stop in _line_ends(text, start, end):
        yield _strip(text, start, stop)
        start = stop
    yield _strip(text, start, end)


def _line_ends(text: str, start: int, end: int) -> Iterator[int]:
    line_start = start
    for candidate in _END.finditer(text, start, end):
        following = text[candidate.end() : end]
        if not following[:1].isspace() or not following.strip() or following.lstrip()[0].islower():
            continue  # "7.4", the end of the line, or "e.g. the"
        single_dot = candidate[0].startswith(".") and not candidate[0].startswith("..")
        if candidate.start() == start or (single_dot and _abbreviated(text, line_start, candidate.start())):
            continue
        yield candidate.end()
        start = candidate.end()


def _abbreviated(text: str, line_start: int, dot: int) -> bool:
    """Whether the dot at ``dot`` closes an abbreviation, dotted acronym or initial rather than a sentence."""
    start = dot
    while start > line_start and not text[start - 1].isspace():
        start -= 1
    word = text[start:dot].lstrip("([{\"'“‘*_")
    return word.lower() in _ABBREVIATIONS or bool(_INITIALISM.fullmatch(word))


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _content(text: str) -> tuple[set[str], set[str]]:
    """(stemmed content words, numbers) of ``text``."""
    terms = content_terms(text)
    return {t for t in terms if not is_number(t)}, {t for t in terms if is_number(t)}
