"""A STAND-IN for Ragie's REST API, for tests only: it is not Ragie and has none of its parsing or ranking.

It is a real HTTP server on 127.0.0.1 (Starlette under uvicorn, in a background thread) serving only the endpoints
citechat calls, with the wire format of Ragie's documented API as the official ``ragie`` SDK 2.0.0 models it
(``ragie/models``, ``ragie/retrievals.py``, ``ragie/documents.py``):

- ``POST /retrievals``: JSON ``{query, top_k=8, rerank=false, max_chunks_per_document, partition, filter,
  recency_bias}`` -> 200 ``{scored_chunks: [{text, score, id, index, document_id, document_name, document_metadata,
  links, metadata: {start_page, end_page, ...}}]}``.
- ``POST /documents``: multipart ``file`` (with its file name), ``name``, ``metadata`` (a JSON part), ``partition``,
  ``external_id``, ``mode`` -> 201 Document ``{id, status, created_at, updated_at, name, metadata, partition,
  chunk_count, external_id, page_count}``.
- ``GET /documents`` (``page_size``, ``cursor``, ``filter`` as JSON in the query; ``partition`` header) -> 200
  ``{pagination: {total_count, next_cursor}, documents: [...]}``.
- ``GET /documents/{id}`` (``partition`` header) -> 200 Document plus ``errors``; ``DELETE /documents/{id}`` ->
  200 ``{status}``; 404 ``{detail}`` when the document is not in that partition.
- ``Authorization: Bearer <key>`` on every call (401 ``{detail}`` otherwise); partitions are lowercase ``a-z0-9_-``
  and a missing one means ``default``; 422 errors carry FastAPI's ``{detail: [{loc, msg, type}]}``.

Made up here: plain text is split into pages at form feeds (``\\f``) and into chunks of about ``chunk_words`` words
along paragraphs; retrieval scores chunks by the share of query words they contain, within the requested partition
only, and only once the document is ``ready``. Each ``GET /documents/{id}`` moves a document one step along Ragie's
documented status sequence. Bytes that are not UTF-8 text fail processing, as can ``fail_processing``. Faults:
``fail_next`` (status codes for the next requests), ``delay_s``, ``rerank_finds_nothing``, ``quota_exhausted``.
Every request is kept in ``requests`` so tests can assert what went over the wire.
"""

import asyncio
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.standins.server import BackgroundServer

# The statuses Ragie documents for an ingest, in order (``Documents.create`` in the SDK).
STATUSES = (
    "pending",
    "partitioning",
    "partitioned",
    "refined",
    "chunked",
    "indexed",
    "summary_indexed",
    "keyword_indexed",
    "ready",
)
RESERVED_METADATA = {
    "document_id",
    "document_type",
    "document_source",
    "document_name",
    "document_uploaded_at",
    "start_time",
    "end_time",
    "chunk_content_type",
}
PARTITION = re.compile(r"^[a-z0-9_-]+$")
_STOPWORDS = {"a", "an", "and", "are", "do", "does", "for", "how", "in", "is", "of", "on", "or", "the", "to", "what"}


@dataclass
class Recorded:
    """One request as the stand-in received it."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    json: Any = None
    form: dict[str, str] | None = None
    file: tuple[str, str | None, bytes] | None = None  # file name, content type, bytes


@dataclass
class Chunk:
    id: str
    index: int
    text: str
    start_page: int
    end_page: int


@dataclass
class StoredDocument:
    id: str
    partition: str
    name: str
    metadata: dict[str, Any]
    external_id: str | None
    created_at: str
    chunks: list[Chunk]
    pages: int
    failure: str | None = None
    step: int = 0
    status: str = "pending"
    statuses_served: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _invalid(location: list[str], message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": location, "msg": message, "type": "value_error"}]}, status_code=422)


def _terms(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - _STOPWORDS


def split_into_chunks(text: str, chunk_words: int) -> tuple[list[tuple[str, int, int]], int]:
    """``([(text, start_page, end_page), ...], page_count)``: pages at form feeds, chunks along paragraphs."""
    pages = text.split("\f")
    paragraphs = [
        (number, " ".join(paragraph.split()))
        for number, page in enumerate(pages, start=1)
        for paragraph in re.split(r"\n\s*\n", page)
        if paragraph.strip()
    ]
    chunks: list[tuple[str, int, int]] = []
    current: list[tuple[int, str]] = []
    for paragraph in paragraphs:
        current.append(paragraph)
        if sum(len(text.split()) for _, text in current) >= chunk_words:
            chunks.append(("\n\n".join(text for _, text in current), current[0][0], current[-1][0]))
            current = []
    if current:
        chunks.append(("\n\n".join(text for _, text in current), current[0][0], current[-1][0]))
    return chunks, len(pages)


class RagieStandIn:
    """The stand-in server. ``with RagieStandIn() as ragie:`` runs it; ``ragie.url`` is its base URL."""

    def __init__(self, api_key: str = "ragie-standin-key", *, chunk_words: int = 40) -> None:
        self.api_key = api_key
        self.chunk_words = chunk_words
        self.requests: list[Recorded] = []
        self.documents: dict[str, StoredDocument] = {}
        self.delay_s = 0.0
        self.rerank_finds_nothing = False
        self.quota_exhausted = False
        self.fail_processing: str | None = None
        self._faults: deque[tuple[int, str | None, str]] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/retrievals", self._retrievals, methods=["POST"]),
                Route("/documents", self._documents, methods=["GET", "POST"]),
                Route("/documents/{document_id}", self._document, methods=["GET", "DELETE"]),
            ]
        )
        self._background = BackgroundServer(self.app, name="Ragie stand-in")

    @property
    def url(self) -> str:
        return self._background.url

    @property
    def port(self) -> int:
        return self._background.port

    def fail_next(self, status: int, times: int = 1, *, method: str | None = None, path: str = "/") -> None:
        """Answer the next ``times`` requests (of ``method``, under ``path``) with ``status``: 429 and 500 as
        Ragie's JSON errors, other statuses as a proxy's plain text."""
        with self._lock:
            self._faults.extend([(status, method, path)] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget documents, requests and faults, so one running server can serve many tests."""
        with self._lock:
            self._faults.clear()
        self.requests.clear()
        self.documents.clear()
        self.delay_s = 0.0
        self.rerank_finds_nothing = self.quota_exhausted = False
        self.fail_processing = None

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def start(self) -> "RagieStandIn":
        self._background.start()
        return self

    def stop(self) -> None:
        self._background.stop()

    def __enter__(self) -> "RagieStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _gate(self, request: Request) -> Response | None:
        """Records the request, then applies delay, injected faults, auth and quota; ``None`` lets it through."""
        recorded = Recorded(request.method, request.url.path, dict(request.headers), dict(request.query_params))
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            recorded.form = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            upload = form.get("file")
            if isinstance(upload, UploadFile):
                recorded.file = (upload.filename or "", upload.content_type, await upload.read())
                await upload.seek(0)
        elif content_type.startswith("application/json"):
            recorded.json = await request.json()
        self.requests.append(recorded)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        fault = self._take_fault(request.method, request.url.path)
        if fault is not None:
            if fault == 429:
                return _error(429, "Rate limit exceeded")
            if fault == 500:
                return _error(500, "Internal server error")
            return PlainTextResponse("upstream unavailable", status_code=fault)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Invalid API key")
        if self.quota_exhausted:
            return _error(402, "Your plan's page limit has been reached")
        return None

    def _take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for position, (status, fault_method, prefix) in enumerate(self._faults):
                if fault_method in (None, method) and path.startswith(prefix):
                    del self._faults[position]
                    return status
        return None

    @staticmethod
    def _partition(value: str | None) -> str | Response:
        partition = value if value is not None else "default"
        if not PARTITION.match(partition):
            return _error(400, "Partition must be lowercase alphanumeric and may only include _ and -")
        return partition

    async def _retrievals(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        body = await request.json()
        query = body.get("query")
        if not isinstance(query, str) or not query:
            return _invalid(["body", "query"], "Field required")
        partition = self._partition(body.get("partition"))
        if isinstance(partition, Response):
            return partition
        top_k = body.get("top_k", 8)
        per_document = body.get("max_chunks_per_document")
        conditions = body.get("filter") or {}
        if body.get("rerank", False) and self.rerank_finds_nothing:
            return JSONResponse({"scored_chunks": []})
        wanted = _terms(query)
        scored: list[tuple[float, StoredDocument, Chunk]] = []
        for document in self.documents.values():
            if document.partition != partition or document.status != "ready":
                continue
            if not _matches(document.metadata, conditions):
                continue
            for chunk in document.chunks:
                score = len(wanted & _terms(chunk.text)) / max(len(wanted), 1)
                if score > 0:
                    scored.append((score, document, chunk))
        scored.sort(key=lambda item: -item[0])
        taken: list[tuple[float, StoredDocument, Chunk]] = []
        per_document_taken: dict[str, int] = {}
        for score, document, chunk in scored:
            if per_document is not None and per_document_taken.get(document.id, 0) >= per_document:
                continue
            per_document_taken[document.id] = per_document_taken.get(document.id, 0) + 1
            taken.append((score, document, chunk))
        return JSONResponse({"scored_chunks": [self._scored_chunk(*item) for item in taken[:top_k]]})

    def _scored_chunk(self, score: float, document: StoredDocument, chunk: Chunk) -> dict[str, Any]:
        base = f"{self.url}/documents/{document.id}/chunks/{chunk.id}"
        return {
            "text": chunk.text,
            "score": round(score, 6),
            "id": chunk.id,
            "index": chunk.index,
            "document_id": document.id,
            "document_name": document.name,
            "document_metadata": {**document.metadata, "document_type": "txt", "document_source": "api"},
            "links": {
                "self": {"href": base, "type": "application/json"},
                "self_text": {"href": f"{base}/content?media_type=text/plain", "type": "text/plain"},
            },
            "metadata": {"start_page": chunk.start_page, "end_page": chunk.end_page, "chunk_content_type": "text"},
        }

    async def _documents(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        if request.method == "GET":
            return self._list(request, self._partition(request.headers.get("partition")))
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _invalid(["body", "file"], "Field required")
        partition_field = form.get("partition")
        partition = self._partition(partition_field if isinstance(partition_field, str) else None)
        if isinstance(partition, Response):
            return partition
        metadata = json.loads(str(form.get("metadata") or "{}"))
        if not isinstance(metadata, dict):
            return _error(400, "Metadata must be an object")
        if reserved := sorted(RESERVED_METADATA & set(metadata)):
            return _error(400, f"Metadata keys are reserved: {', '.join(reserved)}")
        content = await upload.read()
        if not content:
            return _error(400, "The file is empty")
        name = str(form.get("name") or upload.filename)
        document_id = str(uuid.uuid4())
        failure, self.fail_processing = self.fail_processing, None
        try:
            pieces, pages = split_into_chunks(content.decode("utf-8"), self.chunk_words)
        except UnicodeDecodeError:
            pieces, pages, failure = [], 0, failure or "Unable to extract text from the file"
        chunks = [
            Chunk(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{i}")), i, text, start, end)
            for i, (text, start, end) in enumerate(pieces)
        ]
        external_id = form.get("external_id")
        document = StoredDocument(
            id=document_id,
            partition=partition,
            name=name,
            metadata=metadata,
            external_id=external_id if isinstance(external_id, str) else None,
            created_at=_now(),
            chunks=chunks,
            pages=pages,
            failure=failure,
        )
        self.documents[document_id] = document
        return JSONResponse(self._document_json(document), status_code=201)

    def _list(self, request: Request, partition: str | Response) -> Response:
        if isinstance(partition, Response):
            return partition
        conditions = json.loads(request.query_params.get("filter") or "{}")
        page_size = int(request.query_params.get("page_size", 10))
        found = [d for d in self.documents.values() if d.partition == partition and _matches(d.metadata, conditions)]
        found.sort(key=lambda d: d.created_at, reverse=True)
        return JSONResponse(
            {
                "pagination": {"total_count": len(found), "next_cursor": None},
                "documents": [self._document_json(d) for d in found[:page_size]],
            }
        )

    async def _document(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        partition = self._partition(request.headers.get("partition"))
        if isinstance(partition, Response):
            return partition
        document = self.documents.get(request.path_params["document_id"])
        if document is None or document.partition != partition:
            return _error(404, "Document not found")
        if request.method == "DELETE":
            del self.documents[document.id]
            return JSONResponse({"status": "ok"})
        self._advance(document)
        document.statuses_served.append(document.status)
        return JSONResponse({**self._document_json(document), "errors": [document.failure] if document.failure else []})

    @staticmethod
    def _advance(document: StoredDocument) -> None:
        if document.status in ("ready", "failed"):
            return
        document.step += 1
        document.status = "failed" if document.failure and document.step >= 2 else STATUSES[document.step]

    @staticmethod
    def _document_json(document: StoredDocument) -> dict[str, Any]:
        reached = STATUSES.index(document.status) if document.status in STATUSES else 0
        return {
            "id": document.id,
            "status": document.status,
            "created_at": document.created_at,
            "updated_at": _now(),
            "name": document.name,
            "metadata": document.metadata,
            "partition": document.partition,
            "chunk_count": len(document.chunks) if reached >= STATUSES.index("chunked") else None,
            "external_id": document.external_id,
            "page_count": float(document.pages) if reached >= STATUSES.index("partitioned") else None,
        }


def _matches(metadata: dict[str, Any], conditions: dict[str, Any]) -> bool:
    """Ragie's metadata filter, as far as citechat uses it: ``{key: value}``, ``$eq``, ``$in``."""
    for key, condition in conditions.items():
        value = metadata.get(key)
        if isinstance(condition, dict):
            if "$eq" in condition and value != condition["$eq"]:
                return False
            if "$in" in condition and value not in condition["$in"]:
                return False
        elif value != condition:
            return False
    return True
