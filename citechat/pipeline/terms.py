"""Content terms of a text, the one way citechat compares wording: the extractive answerer ranks sentences with
them and the citation check measures support with them, so both agree on what "the same word" means.

Lower-cased, URLs dropped, stop words dropped (function words, plus question phrasing such as "tell me" and answer
filler such as "according to the documents"), light suffix stemming so "reports", "reported" and "reporting" meet;
numbers kept exactly ("1,200" is 1200, but "7.4" is not "7.45"). No dictionary, no model.
"""

import functools
import re


def _words(text: str) -> frozenset[str]:
    """A word list written as text: as a list literal (one word per formatted line) it would be unreadable."""
    return frozenset(text.split())


STOP_WORDS = _words(
    "a about above after again against all also am an and any are as at be because been before being below between"
    " both but by can could did do does doing down during each few for from further had has have having he her here"
    " hers him his how however i if in into is it its itself just may me might more most must my no nor not now of"
    " off on once only or other our out over own per same she should so some such than that the their them then"
    " there these they this those through to too under until up very via was we were what when where which while"
    " who whom why will with would you your yours don doesn didn isn aren wasn weren won"
    " tell give show list describe explain please much many say says"  # question phrasing
    " according source sources document documents context provided mentioned see"  # answer filler
)
_URL = re.compile(r"\]\([^)\s]*\)|https?://\S+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TOKEN = re.compile(r"\d+(?:\.\d+)*|[^\W\d_]+(?:'[^\W\d_]+)?")
_SUFFIXES = (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""))


def content_terms(text: str) -> list[str]:
    """The text's content terms in order (repeats kept: callers that weigh frequency need them)."""
    terms = []
    for token in _TOKEN.findall(_THOUSANDS.sub("", _URL.sub(" ", text.lower()))):
        if is_number(token):
            terms.append(token)
        elif len(token) > 1 and token not in STOP_WORDS:
            terms.append(stem(token))
    return terms


def is_number(term: str) -> bool:
    return term[0].isdigit()


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """Enough stemming that "exports", "exported" and "exporting" meet. Remembered: a text's words repeat, and the
    suffix checks were most of the time spent finding a passage's terms."""
    word = word.removesuffix("'s")
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and not word.endswith(("ss", "us", "is")) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]  # "stopped" -> "stopp" -> "stop"
    return word.removesuffix("e") if len(word) > 3 else word
