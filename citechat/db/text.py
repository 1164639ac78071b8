"""Text PostgreSQL can store. A NUL character, or half of a UTF-16 surrogate pair (which a JSON ``\\u`` escape can
carry into a Python string), fails the statement that stores it, deep inside a request that was already admitted:
a 500 where the caller deserved to hear what was wrong. So what callers send is checked at the edge (``Storable``:
a 422 naming the field), and what a model writes is cleaned as it streams (``cleaned``)."""

import re

from pydantic import AfterValidator


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None when it can."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds half of a surrogate pair)"
    return None


def _check(text: str | None) -> str | None:
    if text is not None and (why := unstorable(text)) is not None:
        raise ValueError(why)
    return text


Storable = AfterValidator(_check)
"""For a Pydantic field (``Annotated[str, Storable]``): a value that cannot be stored is a validation error."""


MAX_JSON_DEPTH = 32
"""How deep JSON may nest (objects and arrays) to be stored: deeper, Python's parser, then PostgreSQL's, run out of
stack."""
TOO_DEEP = f"is nested more than {MAX_JSON_DEPTH} levels deep"


def unstorable_json(value: object) -> str | None:
    """Why a parsed JSON value cannot be stored (a key or string at any depth, or nesting deeper than
    ``MAX_JSON_DEPTH``), or None when it can. Walked without recursion: it may be deep."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if (why := unstorable(item)) is not None:
                return why
        elif isinstance(item, dict | list):
            if depth == MAX_JSON_DEPTH:
                return TOO_DEEP
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def cleaned(text: str) -> str:
    """``text`` without NUL characters, any half surrogate replaced by U+FFFD: for text nobody can be asked to send
    again (a model's answer)."""
    if unstorable(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


_SURROGATE = re.compile("[\ud800-\udfff]")
