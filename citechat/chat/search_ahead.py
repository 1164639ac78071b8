"""Whether a question is searched while it is admitted, before the database has said it will be answered.

Searching ahead brings the answer's first token a database round trip sooner, and is done only when a search costs
nothing but this machine's work (``IndexBackend.free_search``: no paid call) and is likely to be used:

- not for a caller refused lately: refusals cost no quota, so a caller who keeps being refused (a spent quota, an
  archived or unknown session) would keep the embedder busy for nothing. After a refusal, their questions wait for
  admission for ``refusal_s`` seconds;
- not in a session already asked in: a follow-up may be searched condensed (rewritten by the model, or, when
  there is none, joined to the question before it if it refers back), not as asked. Only sessions this process
  has admitted a question in are known;
- not beyond ``at_once`` searches ahead under way: when many questions arrive together, the rest wait for their
  admission, as every question did before. Uncapped, 16 questions sent at the same moment got their first token
  later than without searching ahead (median of four bursts 511 against 378 ms; cause not pinned down: all the
  searches start together where admissions would have spread them out, on the engine's few kept connections and
  the one-at-a-time embedder); capped at 2, no later (344 against 348 ms, the median of 12 bursts).

Kept per process, in the app's lifespan (``Answering``), bounded: a few bytes per user and per session.
"""

import asyncio
import time
import uuid
from collections import OrderedDict


class SearchAhead:
    def __init__(self, *, refusal_s: float = 60.0, capacity: int = 10_000, at_once: int = 2) -> None:
        self._refusal_s, self._capacity, self._at_once = refusal_s, capacity, at_once
        self._under_way = 0
        self._refused: OrderedDict[uuid.UUID, float] = OrderedDict()  # user -> monotonic time it is forgotten
        self._asked: OrderedDict[uuid.UUID, None] = OrderedDict()  # sessions with a question admitted

    def worth_it(self, user_id: uuid.UUID, session_id: uuid.UUID) -> bool:
        """Whether to search this question ahead."""
        if self._under_way >= self._at_once or session_id in self._asked:
            return False
        until = self._refused.get(user_id)
        if until is not None and until <= time.monotonic():
            del self._refused[user_id]
            until = None
        return until is None

    def track(self, search: asyncio.Future) -> None:
        """A search ahead under way: it counts against ``at_once`` until it ends (taken or cancelled)."""
        self._under_way += 1
        search.add_done_callback(self._ended)

    def _ended(self, _: asyncio.Future) -> None:
        self._under_way -= 1

    def refused(self, user_id: uuid.UUID) -> None:
        _remember(self._refused, user_id, time.monotonic() + self._refusal_s, self._capacity)

    def asked(self, session_id: uuid.UUID) -> None:
        """A question was admitted in the session: the next one is a follow-up."""
        _remember(self._asked, session_id, None, self._capacity)


def _remember(memory: OrderedDict, key: uuid.UUID, value: float | None, capacity: int) -> None:
    memory[key] = value
    memory.move_to_end(key)
    if len(memory) > capacity:  # the oldest goes first: the least likely to matter
        memory.popitem(last=False)
