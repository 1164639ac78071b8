"""The answer path's statements: SQLAlchemy Core constructs compiled once for PostgreSQL, sent on asyncpg.

Every question sends a handful of statements on its critical path (admitting it, and the final write before
``done``). Through SQLAlchemy's async engine each one also takes a pool checkout and check-in, a greenlet switch
per call, and its parameter and result processing: ~160 us of CPU per statement more than asyncpg itself, and,
measured under 16 concurrent answers, a ``SELECT 1`` took 1.3 ms (p50) and 4.5 ms (p90) that way against 0.27 and
1.4 ms on asyncpg directly (README, Performance). So these statements are still written with SQLAlchemy (the
models' tables and columns, one place for the schema), compiled once at import into PostgreSQL's text with
``$n`` parameters, and run on a plain asyncpg pool (``Database.pool``), as is the local index's search (one call of
a database function); everything else (the API's reads and writes, migrations, indexing) goes through SQLAlchemy's
engine and sessions as before.

``Statement`` keeps what SQLAlchemy would do per execution, done once: the text, the order of the parameters,
the values written into the construct (``status = 'completed'``), ``IN`` lists of constants written out, and
the parameters' type processors (JSON is serialized by SQLAlchemy's own processor, so the pool's codec takes text).
"""

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from opentelemetry.trace import NoOpTracer, SpanKind, Tracer
from sqlalchemy import func, literal, select, true
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql import ClauseElement

_DIALECT = PGDialect_asyncpg()

# What a connection failing, or the server being away, raises from asyncpg (besides OSError): the writes that must
# not be lost retry on these.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08xxx
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: shutting down, starting up
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # the connection was closed under it
    OSError,  # refused: nothing listening
)


class Statement:
    """One statement, compiled once: its text (``sql``) and, for named parameters, its arguments in order
    (``arguments``); ``Runner`` sends it."""

    def __init__(self, construct: ClauseElement) -> None:
        compiled = construct.compile(dialect=_DIALECT)
        if defaults := [column.key for column in (*compiled.insert_prefetch, *compiled.update_prefetch)]:
            # SQLAlchemy computes these per execution (``onupdate=utcnow``); a statement sent as text must say them
            raise ValueError(f"give {defaults} a value of their own: their Python-side defaults are not applied here")
        given = {bind.key: None for bind in compiled.binds.values() if bind.required}
        expanded = compiled.construct_expanded_state(given)  # IN lists of constants written out as $n each
        self.sql: str = expanded.statement
        self._names: tuple[str, ...] = tuple(expanded.positiontup or ())
        self._constants = {k: v for k, v in expanded.parameters.items() if k not in given}
        self._processors: Mapping[str, Callable[[Any], Any]] = dict(expanded.processors) | {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)) is not None
        }
        self.operation = self.sql.split(None, 1)[0].upper()

    def arguments(self, params: Mapping[str, Any]) -> list:
        values, processors = self._constants | dict(params), self._processors
        try:
            return [processors[name](values[name]) if name in processors else values[name] for name in self._names]
        except KeyError as missing:
            raise KeyError(f"missing parameter {missing} for: {self.sql[:80]}") from None


def committed_asynchronously(construct):
    """``construct`` (a SELECT or an UPDATE) committing without waiting for its WAL to reach the disk: PostgreSQL's
    asynchronous commit (``synchronous_commit`` off), for the statement's own transaction only.

    For writes whose loss in a crash of the database itself costs nothing that matters: an answer's progress, which
    its final write repeats, and quota hits. Such a crash loses at most the last ~0.6 s of them (three
    ``wal_writer_delay``), never consistency; and the next synchronous commit of any session (a question stored, an
    answer's final write) flushes them with its own, as the WAL is flushed in order. Waiting for the flush costs
    ~0.15 ms per statement idle; under 16 concurrent answers each flush queued behind the others' (commits' p90
    1.7 ms), on the critical path for the admission's quota hits."""
    setting = func.set_config("synchronous_commit", "off", true()).label("synchronous_commit")
    relaxed = select(setting).subquery("asynchronous_commit")
    return construct.where(relaxed.c.synchronous_commit == literal("off"))


class PoolBusy(Exception):
    """No connection of the pool came free in time (``Runner.wait_s``): the service is busier than its pool."""


class Runner:
    """Sends statements on the pool, each on a connection of its own for as long as it runs, in a database span when
    ``tracer`` records one (as OpenTelemetry's SQLAlchemy instrumentation gives the engine's statements: the text
    with its placeholders, never the values). A statement waits at most ``wait_s`` for a connection, as the
    engine's pool does (``PoolBusy``, a 503, rather than a request left waiting)."""

    def __init__(self, pool: asyncpg.Pool, tracer: Tracer | None = None, *, wait_s: float = 30.0) -> None:
        self.pool = pool
        self.wait_s = wait_s
        self._tracer = None if tracer is None or isinstance(tracer, NoOpTracer) else tracer

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> list[asyncpg.Record]:
        async with self._connection(statement) as connection:
            return await connection.fetch(statement.sql, *statement.arguments(params))

    async def fetchrow(self, statement: Statement, params: Mapping[str, Any]) -> asyncpg.Record | None:
        async with self._connection(statement) as connection:
            return await connection.fetchrow(statement.sql, *statement.arguments(params))

    async def fetchval(self, statement: Statement, params: Mapping[str, Any]) -> Any:
        async with self._connection(statement) as connection:
            return await connection.fetchval(statement.sql, *statement.arguments(params))

    async def execute(self, statement: Statement, params: Mapping[str, Any]) -> None:
        async with self._connection(statement) as connection:
            await connection.execute(statement.sql, *statement.arguments(params))

    @asynccontextmanager
    async def _connection(self, statement: Statement) -> AsyncIterator[asyncpg.Connection]:
        with self._span(statement):
            try:
                connection = await self.pool.acquire(timeout=self.wait_s)
            except TimeoutError:
                raise PoolBusy(f"no database connection came free in {self.wait_s:g} s") from None
            try:
                yield connection
            finally:
                await self.pool.release(connection)

    @contextmanager
    def _span(self, statement: Statement) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        attributes = {"db.system": "postgresql", "db.operation": statement.operation, "db.statement": statement.sql}
        with self._tracer.start_as_current_span(statement.operation, kind=SpanKind.CLIENT, attributes=attributes):
            yield


class _Connection(asyncpg.Connection):
    """A pooled connection that is not reset when it goes back to the pool: the statements sent on it are single
    autocommit statements that leave no session state behind (asyncpg's reset is one more round trip per use)."""

    def get_reset_query(self) -> str:
        return ""


# Instrumentation, like SQLAlchemy's engine events: called with every connection a pool opens (the benchmark's
# statement counter adds a query logger to each).
CONNECTION_HOOKS: list[Callable[[asyncpg.Connection], None]] = []


async def _setup(connection: asyncpg.Connection) -> None:
    # JSON parameters arrive serialized (SQLAlchemy's processors); results are parsed as SQLAlchemy would.
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=json.loads, format="text")
    for hook in CONNECTION_HOOKS:
        hook(connection)


async def create_pool(connect_kwargs: dict, size: int) -> asyncpg.Pool:
    """``connect_kwargs``: asyncpg's, as SQLAlchemy derives them from the database URL."""
    return await asyncpg.create_pool(
        min_size=0, max_size=size, init=_setup, connection_class=_Connection, **connect_kwargs
    )
