"""Ragie.ai as the retrieval backend: Ragie parses, chunks, embeds and searches; citechat keeps the documents' rows.

Each organization gets its own Ragie partition (``partition_for``), so one Ragie account serves every tenant and a
retrieval never crosses organizations. Every call goes through the official ``ragie`` SDK, and every SDK or network
failure is turned into citechat's typed errors here: callers never see ``ragie`` or ``httpx`` exceptions.
"""

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from ragie import Ragie, models
from ragie.utils import BackoffStrategy, RetryConfig

from citechat.errors import CitechatError, ConfigurationError
from citechat.retrievers.base import (
    Documents,
    Ingested,
    IngestError,
    Organization,
    RetrievalError,
    RetrievalRejected,
    RetrievalUnavailable,
    make_node,
)
from citechat.settings import Settings

T = TypeVar("T")

BACKEND = "ragie"
READY = "ready"
FAILED = "failed"
# Metadata key that finds our document at Ragie again (``document_id`` itself is reserved by Ragie).
DOCUMENT_KEY = "citechat_document_id"
# Keys Ragie reserves for itself in document metadata; a caller's metadata must not set them.
_RESERVED_METADATA = frozenset(
    {
        "document_id",
        "document_type",
        "document_source",
        "document_name",
        "document_uploaded_at",
        "start_time",
        "end_time",
        "chunk_content_type",
    }
)
_PARTITION_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_PARTITION_SLUG_MAX = 40
_DETAIL_MAX = 300


def partition_for(organization: Organization) -> str:
    """The Ragie partition holding this organization's documents. Never change the scheme: documents live under it.

    Ragie partitions are lowercase ASCII letters, digits, ``_`` and ``-``. A readable slug of the organization's id
    comes first; a hash of the exact id follows, so ids that slug alike ("Acme", "acme", "acme!") stay apart.
    """
    slug = _PARTITION_UNSAFE.sub("-", organization.external_id.lower()).strip("-_")
    slug = slug[:_PARTITION_SLUG_MAX].rstrip("-_") or "org"
    digest = hashlib.sha256(organization.external_id.encode()).hexdigest()[:16]
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class RagieRetry:
    """How the SDK retries 429, 5xx and network failures: exponential backoff, bounded by total elapsed time.

    The SDK adds up to a second of jitter per wait but never waits longer than ``max_interval_ms``.
    """

    initial_interval_ms: int = 500
    max_interval_ms: int = 4_000
    exponent: float = 2.0
    max_elapsed_ms: int = 10_000

    def config(self, *, connection_errors: bool = True) -> RetryConfig:
        backoff = BackoffStrategy(self.initial_interval_ms, self.max_interval_ms, self.exponent, self.max_elapsed_ms)
        return RetryConfig("backoff", backoff, connection_errors)

    @property
    def window_s(self) -> float:
        """Longest the retries themselves can add to one call (the last wait included)."""
        return (self.max_elapsed_ms + self.max_interval_ms) / 1000


class _Calls:
    """Runs SDK calls under an overall deadline and translates their failures into citechat's errors.

    The deadline also caps a server's ``Retry-After``, which the SDK would otherwise honour however long it is.
    """

    def __init__(self, client: Ragie, *, timeout_s: float, retry: RagieRetry, secret: str | None) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.retry = retry
        self._secret = secret

    async def run(
        self,
        action: str,
        call: Callable[[], Awaitable[T]],
        *,
        timeout_s: float | None = None,
        about_document: bool = False,
    ) -> T:
        """``call()``'s result. ``about_document``: a 4xx other than auth, quota or rate limit is the document's
        fault (``IngestError``) rather than a refused request."""
        budget = self.retry.window_s + (timeout_s or self.timeout_s) + 1
        try:
            async with asyncio.timeout(budget):
                return await call()
        except models.RagieError as error:
            raise self._for_status(error, action, about_document=about_document) from error
        except (httpx.TimeoutException, TimeoutError) as error:
            raise RetrievalUnavailable(f"Ragie did not answer in time ({action}); try again shortly") from error
        except (httpx.TransportError, models.NoResponseError) as error:
            raise RetrievalUnavailable(f"Ragie could not be reached ({action}); try again shortly") from error

    async def run_unless_missing(self, action: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Like ``run``, but a 404 from Ragie gives ``None``."""
        try:
            return await self.run(action, call)
        except RetrievalRejected as error:
            if isinstance(error.__cause__, models.RagieError) and error.__cause__.status_code == 404:
                return None
            raise

    def _for_status(self, error: models.RagieError, action: str, *, about_document: bool) -> CitechatError:
        status = error.status_code
        if status < 400:  # a success whose body does not match Ragie's schema (ResponseValidationError)
            return RetrievalError(f"Ragie answered in an unexpected format ({action})")
        if status in (401, 403):
            return RetrievalRejected("Ragie rejected the API key; check RAGIE_API_KEY")
        if status == 402:
            return RetrievalRejected("Ragie quota exhausted: the Ragie account's plan allows no more usage")
        if status == 429:
            return RetrievalUnavailable(f"Ragie kept rate limiting requests ({action}); try again shortly")
        if status >= 500:
            return RetrievalUnavailable(f"Ragie failed to {action} (HTTP {status}); try again shortly")
        detail = self._detail(error)
        reason = f": {detail}" if detail else ""
        if about_document:
            return IngestError(f"Ragie refused the document (HTTP {status}){reason}")
        return RetrievalRejected(f"Ragie refused to {action} (HTTP {status}){reason}")

    def _detail(self, error: models.RagieError) -> str | None:
        """Ragie's own explanation when it sent a structured one; never the raw body, never the key."""
        if isinstance(error, models.ErrorMessage):
            detail = error.data.detail
        elif isinstance(error, models.HTTPValidationError) and error.data.detail:
            detail = "; ".join(f"{'.'.join(map(str, item.loc))}: {item.msg}" for item in error.data.detail)
        else:
            return None
        if self._secret:
            detail = detail.replace(self._secret, "[redacted]")
        return detail[:_DETAIL_MAX] or None


def _int(value: Any) -> int | None:
    """A page number or count from Ragie (a JSON number, or null, missing, or the SDK's UNSET) as an int or None."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class RagieRetriever(BaseRetriever):
    """Passages from one organization's Ragie partition, as citechat nodes with their page spans.

    A node's ``document_id`` is citechat's id of the document (carried in Ragie's document metadata), like the local
    backend's; a document put into the partition by something other than citechat keeps Ragie's id.

    With rerank on, Ragie may filter every chunk out as irrelevant; then the search runs once more without rerank,
    as Ragie's own chat app does, so a question is never left without context merely because reranking was strict.
    """

    def __init__(
        self,
        calls: _Calls,
        *,
        partition: str,
        top_k: int,
        rerank: bool,
        max_chunks_per_document: int | None,
        documents: Documents = None,
    ) -> None:
        super().__init__()
        self._calls = calls
        self.partition = partition
        self.top_k = top_k
        self.rerank = rerank
        self.max_chunks_per_document = max_chunks_per_document
        self.documents = documents

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise NotImplementedError("citechat retrievers are async: use aretrieve")

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str.strip()
        if not query:
            return []
        chunks = await self._search(query, rerank=self.rerank)
        if not chunks and self.rerank:
            chunks = await self._search(query, rerank=False)
        return [
            make_node(
                chunk_id=chunk.id,
                text=chunk.text,
                score=chunk.score,
                document_id=str(chunk.document_metadata.get(DOCUMENT_KEY) or chunk.document_id),
                document_name=chunk.document_name,
                start_page=_int((chunk.metadata or {}).get("start_page")),
                end_page=_int((chunk.metadata or {}).get("end_page")),
                backend=BACKEND,
            )
            for chunk in chunks
        ]

    async def _search(self, query: str, *, rerank: bool) -> list[models.ScoredChunk]:
        request: models.RetrieveParamsTypedDict = {
            "query": query,
            "partition": self.partition,
            "top_k": self.top_k,
            "rerank": rerank,
        }
        if self.max_chunks_per_document is not None:
            request["max_chunks_per_document"] = self.max_chunks_per_document
        if self.documents is not None:  # Ragie's metadata filter, on the id citechat gave each document
            request["filter_"] = {DOCUMENT_KEY: {"$in": [str(document) for document in self.documents]}}
        retrieval = await self._calls.run(
            "search documents", lambda: self._calls.client.retrievals.retrieve_async(request=request)
        )
        return retrieval.scored_chunks


class RagieIndex:
    """The ``IndexBackend`` on Ragie: uploads go to the organization's partition and are polled until Ragie is ready.

    Our document id travels as Ragie's ``external_id`` and as the metadata key ``citechat_document_id``; the latter
    lets an interrupted ingest resume on the document Ragie already has instead of uploading a duplicate, and lets
    ``delete`` find a document whose Ragie id was never recorded.
    """

    name = BACKEND
    free_search = False  # each retrieval is a billed Ragie call

    def __init__(
        self,
        client: Ragie,
        *,
        timeout_s: float = 20,
        retry: RagieRetry | None = None,
        rerank: bool = True,
        max_chunks_per_document: int | None = None,
        upload_timeout_s: float = 120,
        poll_interval_s: float = 2,
        ingest_deadline_s: float = 1800,
        api_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        """``http_client``: the SDK's async client when this index owns it (``aclose`` closes it).
        ``api_key`` is only used to keep it out of error messages."""
        self._calls = _Calls(client, timeout_s=timeout_s, retry=retry or RagieRetry(), secret=api_key)
        self._rerank = rerank
        self._max_chunks_per_document = max_chunks_per_document
        self._upload_timeout_s = upload_timeout_s
        self._poll_interval_s = poll_interval_s
        self._ingest_deadline_s = ingest_deadline_s
        self._http_client = http_client

    @classmethod
    def from_settings(cls, settings: Settings, *, retry: RagieRetry | None = None, **options: Any) -> "RagieIndex":
        """The index configured by ``settings``; ``options`` are the constructor's polling and upload knobs."""
        if settings.ragie_api_key is None:
            raise ConfigurationError("The Ragie backend needs RAGIE_API_KEY")
        api_key = settings.ragie_api_key.get_secret_value()
        retry = retry or RagieRetry()
        http_client = httpx.AsyncClient(follow_redirects=True, timeout=settings.ragie_timeout_s)
        client = Ragie(
            auth=api_key,
            server_url=settings.ragie_base_url,
            async_client=http_client,
            retry_config=retry.config(),
            timeout_ms=round(settings.ragie_timeout_s * 1000),
        )
        options.setdefault("upload_timeout_s", max(settings.ragie_timeout_s, 120))
        options.setdefault("poll_interval_s", settings.ragie_poll_interval_s)
        options.setdefault("ingest_deadline_s", settings.ragie_ingest_timeout_s)
        return cls(
            client,
            timeout_s=settings.ragie_timeout_s,
            retry=retry,
            rerank=settings.ragie_rerank,
            max_chunks_per_document=settings.ragie_max_chunks_per_document,
            api_key=api_key,
            http_client=http_client,
            **options,
        )

    def retriever(self, organization: Organization, top_k: int, documents: Documents = None) -> RagieRetriever:
        return RagieRetriever(
            self._calls,
            partition=partition_for(organization),
            top_k=top_k,
            rerank=self._rerank,
            max_chunks_per_document=self._max_chunks_per_document,
            documents=documents,
        )

    async def ingest(
        self,
        organization: Organization,
        document_id: uuid.UUID,
        name: str,
        content_type: str,
        content: bytes,
        metadata: dict | None,
    ) -> Ingested:
        """Upload (or resume an earlier upload of) the document, then wait until Ragie has indexed it.

        Raises ``IngestError`` when Ragie refuses or fails the document or is still processing it at the deadline,
        ``RetrievalUnavailable`` when Ragie is unreachable (the document may then be resumed later), and
        ``RetrievalRejected`` when the API key or quota is the problem rather than the document.
        """
        partition = partition_for(organization)
        existing = await self._find(partition, document_id)
        if existing is not None and existing.status == FAILED:
            await self._remove(partition, existing.id)
            existing = None
        ragie_id = (
            existing.id
            if existing is not None
            else await self._upload(partition, document_id, name, content_type, content, metadata)
        )
        return await self._wait_until_ready(partition, ragie_id)

    async def delete(self, organization: Organization, document_id: uuid.UUID, external_id: str | None) -> None:
        """Remove the document from its partition; a document Ragie no longer has is already deleted."""
        partition = partition_for(organization)
        if external_id is None:
            found = await self._find(partition, document_id)
            if found is None:
                return
            external_id = found.id
        await self._remove(partition, external_id)

    async def aclose(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()

    async def _upload(
        self,
        partition: str,
        document_id: uuid.UUID,
        name: str,
        content_type: str,
        content: bytes,
        metadata: dict | None,
    ) -> str:
        request: models.CreateDocumentParamsTypedDict = {
            "file": {"file_name": name, "content": content, "content_type": content_type},
            "name": name,
            "metadata": _ragie_metadata(metadata, document_id),
            "partition": partition,
            "external_id": str(document_id),
        }
        # No retry on a lost connection: Ragie may have created the document, and a second POST would duplicate it.
        retries = self._calls.retry.config(connection_errors=False)
        timeout_ms = round(self._upload_timeout_s * 1000)
        document = await self._calls.run(
            "upload the document",
            lambda: self._calls.client.documents.create_async(request=request, retries=retries, timeout_ms=timeout_ms),
            timeout_s=self._upload_timeout_s,
            about_document=True,
        )
        return document.id

    async def _wait_until_ready(self, partition: str, ragie_id: str) -> Ingested:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ingest_deadline_s
        while True:
            document = await self._calls.run_unless_missing(
                "check the document's status",
                lambda: self._calls.client.documents.get_async(document_id=ragie_id, partition=partition),
            )
            if document is None:
                raise IngestError("Ragie no longer has the document: it was deleted while being processed")
            if document.status == READY:
                return Ingested(
                    pages=_int(document.page_count),
                    chunks=_int(document.chunk_count) or 0,
                    external_id=document.id,
                    backend_status=document.status,
                )
            if document.status == FAILED:
                await self._withdraw(partition, ragie_id)
                reasons = "; ".join(document.errors)[:_DETAIL_MAX] or "no reason given"
                raise IngestError(f"Ragie could not process the document: {reasons}")
            if loop.time() >= deadline:
                # Withdrawn so that a document citechat reports as failed never turns up in answers later.
                await self._withdraw(partition, ragie_id)
                raise IngestError(
                    f"The document was still processing at Ragie (status {document.status!r}) after "
                    f"{self._ingest_deadline_s:g} s; it was withdrawn, upload it again to retry"
                )
            await asyncio.sleep(self._poll_interval_s)

    async def _find(self, partition: str, document_id: uuid.UUID) -> models.Document | None:
        """The newest Ragie document in the partition carrying our id, if an earlier ingest created one."""
        request: models.ListDocumentsRequestTypedDict = {
            "partition": partition,
            "filter_": json.dumps({DOCUMENT_KEY: {"$eq": str(document_id)}}),
            "page_size": 1,
        }
        page = await self._calls.run(
            "look up the document", lambda: self._calls.client.documents.list_async(request=request)
        )
        documents = page.result.documents if page is not None else []
        return documents[0] if documents else None

    async def _remove(self, partition: str, ragie_id: str) -> None:
        await self._calls.run_unless_missing(
            "delete the document",
            lambda: self._calls.client.documents.delete_async(document_id=ragie_id, partition=partition),
        )

    async def _withdraw(self, partition: str, ragie_id: str) -> None:
        """Best-effort removal after a failed ingest; the ingest's own error is the one worth reporting."""
        with contextlib.suppress(RetrievalError):
            await self._remove(partition, ragie_id)


def _ragie_value(value: Any) -> bool:
    return isinstance(value, str | bool | int | float) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


def _ragie_metadata(metadata: dict | None, document_id: uuid.UUID) -> dict[str, str | float | bool | list[str]]:
    """Metadata Ragie accepts: no reserved keys; values strings, numbers, booleans or lists of strings."""
    accepted: dict[str, str | float | bool | list[str]] = {}
    for key, value in (metadata or {}).items():
        if key in _RESERVED_METADATA or value is None:
            continue
        if _ragie_value(value):
            accepted[key] = value
        else:
            accepted[key] = json.dumps(value, default=str)
    accepted[DOCUMENT_KEY] = str(document_id)
    return accepted
