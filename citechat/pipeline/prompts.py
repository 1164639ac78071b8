"""Prompt templates as plain files in ``prompts/``, validated, versioned and reloaded when they change.

Prompt engineers edit the files without touching code. Each file may use only the variables listed for it in
``TEMPLATES``; an unknown or missing variable is a ``PromptError`` naming the file. The version of a set is a hash
of every file's content, recorded with each answer. A set that fails validation after an edit is refused and the
last valid one stays in use, so a typo never takes the service down.
"""

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from citechat.errors import ConfigurationError

log = logging.getLogger(__name__)

# file stem -> (required variables, allowed variables)
TEMPLATES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "system_strict": (frozenset(), frozenset()),
    "system_balanced": (frozenset(), frozenset()),
    "system_creative": (frozenset(), frozenset()),
    "context": (frozenset({"context_str"}), frozenset({"context_str"})),
    "condense": (frozenset({"chat_history", "question"}), frozenset({"chat_history", "question"})),
    "strict_refusal": (frozenset(), frozenset()),
}
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptError(ConfigurationError):
    """A template file is missing or uses variables it may not."""


@dataclass(frozen=True)
class PromptSet:
    texts: dict[str, str]
    version: str

    def system(self, mode: str) -> str:
        return self.texts[f"system_{mode}"]

    @property
    def context(self) -> str:
        return self.texts["context"]

    @property
    def condense(self) -> str:
        return self.texts["condense"]

    @property
    def strict_refusal(self) -> str:
        return self.texts["strict_refusal"].strip()


def load(directory: Path) -> PromptSet:
    """Reads and validates every template; raises ``PromptError`` naming the first bad file."""
    texts = {}
    for name, (required, allowed) in TEMPLATES.items():
        path = directory / f"{name}.txt"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise PromptError(f"{path}: missing (every template in TEMPLATES must exist)") from exc
        except UnicodeDecodeError as exc:
            raise PromptError(f"{path}: not UTF-8 text") from exc
        used = set(_VARIABLE.findall(text))
        if unknown := used - allowed:
            names = ", ".join(f"{{{v}}}" for v in sorted(unknown))
            accepted = ", ".join(f"{{{v}}}" for v in sorted(allowed)) or "none"
            raise PromptError(f"{path}: unknown variable {names} (this file may use: {accepted})")
        if missing := required - used:
            raise PromptError(f"{path}: missing required variable {', '.join(f'{{{v}}}' for v in sorted(missing))}")
        if not text.strip():
            raise PromptError(f"{path}: empty")
        texts[name] = text
    digest = hashlib.sha256("\0".join(f"{k}\0{texts[k]}" for k in sorted(texts)).encode()).hexdigest()
    return PromptSet(texts=texts, version=digest[:12])


class PromptStore:
    """The current prompt set of a process: checks the files' modification times on each use and reloads."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._stamp = self._modified()
        self._current = load(directory)

    def current(self) -> PromptSet:
        stamp = self._modified()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._current = load(self._directory)
                log.info("prompt templates reloaded (version %s)", self._current.version)
            except PromptError as exc:
                log.error("prompt templates not reloaded, keeping version %s: %s", self._current.version, exc)
        return self._current

    def _modified(self) -> tuple:
        return tuple(
            (name, path.stat().st_mtime_ns) if (path := self._directory / f"{name}.txt").exists() else (name, None)
            for name in TEMPLATES
        )
