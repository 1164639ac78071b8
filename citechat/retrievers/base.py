"""What every retrieval backend shares: the node shape retrievers return, the backend interface, its errors.

Nodes carry their citation facts in metadata (document id and name, chunk id, page span, page label). Only the
document name and pages are shown to the LLM; ids stay out of the prompt.
"""

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, TextNode

from citechat.errors import CitechatError

_HIDDEN_FROM_LLM = ["document_id", "chunk_id", "backend", "page_label", "start_page", "end_page", "similarity"]


Documents = tuple[uuid.UUID, ...] | None
"""The documents a question is asked about, all of them of its organization; None: every one of them."""


@dataclass(frozen=True)
class Organization:
    """The tenant a retriever or backend call is scoped to: database id, and the id as tokens state it."""

    id: uuid.UUID
    external_id: str


@dataclass(frozen=True)
class Ingested:
    """What a backend reports once a document is indexed."""

    pages: int | None
    chunks: int
    external_id: str | None = None
    backend_status: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, where the backend measures them


def make_node(
    *,
    chunk_id: str,
    text: str,
    score: float,
    document_id: str,
    document_name: str,
    start_page: int | None,
    end_page: int | None,
    page_label: str | None = None,
    similarity: float | None = None,
    backend: str,
) -> NodeWithScore:
    """A retrieved passage in the one shape the pipeline reads, whichever backend found it."""
    pages = (
        None
        if start_page is None
        else (f"{start_page}" if end_page in (None, start_page) else f"{start_page}-{end_page}")
    )
    metadata = {
        "document_id": document_id,
        "document_name": document_name,
        "chunk_id": chunk_id,
        "start_page": start_page,
        "end_page": end_page,
        "page_label": page_label,
        "pages": pages,
        "similarity": similarity,
        "backend": backend,
    }
    node = TextNode(
        id_=chunk_id,
        text=text,
        metadata={k: v for k, v in metadata.items() if v is not None},
        excluded_llm_metadata_keys=_HIDDEN_FROM_LLM,
        excluded_embed_metadata_keys=list(metadata),
    )
    return NodeWithScore(node=node, score=score)


class IndexBackend(Protocol):
    """Where an organization's documents are indexed and searched. ``citechat.documents`` drives it."""

    name: str
    # A search costs nothing but this machine's work (no paid call: Ragie's retrievals, OpenAI's embeddings are
    # paid), so a question may be searched before it is admitted (``Answering.begin``), at the risk of nothing.
    free_search: bool

    async def ingest(
        self,
        organization: Organization,
        document_id: uuid.UUID,
        name: str,
        content_type: str,
        content: bytes,
        metadata: dict | None,
    ) -> Ingested:
        """Index one document (runs in the background). Raises ``IngestError`` with a reason users can read."""
        ...

    async def delete(self, organization: Organization, document_id: uuid.UUID, external_id: str | None) -> None:
        """Remove a document from the index; afterwards no retrieval returns its chunks."""
        ...

    def retriever(self, organization: Organization, top_k: int, documents: Documents = None) -> BaseRetriever:
        """A retriever over this organization's documents only; ``documents``: only these of them (None: all)."""
        ...

    async def aclose(self) -> None: ...


class IngestError(CitechatError):
    """A document could not be indexed; ``detail`` says why in words a user can act on (stored as its error)."""

    status_code = 422


class RetrievalError(CitechatError):
    """Retrieval failed. ``retryable`` tells the client whether trying again may help."""

    status_code = 502
    retryable = False


class RetrievalUnavailable(RetrievalError):
    """The backend could not be reached, timed out, or kept failing after retries."""

    status_code = 503
    retryable = True


class RetrievalRejected(RetrievalError):
    """The backend refused the request: bad credentials, exhausted quota, or an invalid request."""


class IndexMismatch(RetrievalError):
    """The local index was built with another embedding model than the one configured."""

    status_code = 503
