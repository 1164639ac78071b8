"""Counting a process's database work: statements and transactions, through SQLAlchemy's engine events.

pg_stat_statements needs a preload library the embedded PostgreSQL is not started with, and the totals of
``pg_stat_database`` reach the statistics only up to seconds after a backend goes idle, so the counts are taken
where the statements are sent. Only PostgreSQL's are counted: LlamaIndex's default chat memory keeps its messages
in an in-memory SQLite database through SQLAlchemy too. Connection pings (``db.database._ping_when_idle``) bypass
these events and are not counted. The answer path's statements, sent on asyncpg directly (``db.statements``), are
counted by a query logger on each of that pool's connections; they each commit alone (no transactions).
"""

import threading
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.engine import Engine

from citechat.db.statements import CONNECTION_HOOKS


@dataclass
class QueryCounter:
    """Statements and transactions of every engine in this process, from ``install()`` on."""

    statements: int = 0
    transactions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def install(cls) -> "QueryCounter":
        counter = cls()
        event.listen(Engine, "before_cursor_execute", counter._statement)
        event.listen(Engine, "begin", counter._begin)
        CONNECTION_HOOKS.append(counter._connected)
        return counter

    def uninstall(self) -> None:
        event.remove(Engine, "before_cursor_execute", self._statement)
        event.remove(Engine, "begin", self._begin)
        CONNECTION_HOOKS.remove(self._connected)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"statements": self.statements, "transactions": self.transactions}

    def _statement(self, conn, *args) -> None:
        if conn.dialect.name == "postgresql":
            with self._lock:
                self.statements += 1

    def _connected(self, connection) -> None:
        connection.add_query_logger(self._logged)

    def _logged(self, query) -> None:
        with self._lock:
            self.statements += 1

    def _begin(self, conn) -> None:
        """Transactions sent as BEGIN ... COMMIT: SQLAlchemy announces a "begin" on autocommit connections too,
        where none is sent."""
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if conn.dialect.name == "postgresql" and not autocommit:
            with self._lock:
                self.transactions += 1
