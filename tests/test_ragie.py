"""The Ragie backend end to end: the official SDK talking HTTP to a local stand-in for Ragie's API.

The stand-in (``tests/standins/ragie.py``) follows Ragie's documented wire format, so these tests check what
citechat sends and how it reads the answers, without an account or network access.
"""

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from llama_index.core.schema import QueryBundle

from citechat.errors import ConfigurationError
from citechat.retrievers.base import (
    Ingested,
    IngestError,
    Organization,
    RetrievalRejected,
    RetrievalUnavailable,
)
from citechat.retrievers.ragie import DOCUMENT_KEY, RagieIndex, RagieRetry, partition_for
from citechat.settings import Settings
from tests.standins.ragie import STATUSES, RagieStandIn

KEY = "ragie-test-key-0123456789"
FAST_RETRY = RagieRetry(initial_interval_ms=5, max_interval_ms=20, exponent=2, max_elapsed_ms=300)

# Three pages; with the stand-in at 12 words a chunk: chunk 0 on page 1, chunk 1 on pages 1-2, chunk 2 on pages 2-3.
HANDBOOK = (
    "Travel budget approval is needed for trips abroad.\n\nBook economy class for flights under six hours."
    "\n\nTaxis need approval.\fThe travel budget is reviewed every quarter by finance."
    "\n\nReceipts are kept for seven years.\fOffice plants are watered on Mondays."
)


def org(name: str | None = None) -> Organization:
    return Organization(id=uuid.uuid4(), external_id=name or f"org-{uuid.uuid4().hex[:8]}")


def ragie_settings(url: str, api_key: str = KEY, **changes: object) -> Settings:
    return Settings(_env_file=None, RAGIE_API_KEY=api_key, ragie_base_url=url, **({"ragie_timeout_s": 2} | changes))


@pytest.fixture(scope="module")
def ragie_server() -> Iterator[RagieStandIn]:
    with RagieStandIn(api_key=KEY, chunk_words=12) as server:
        yield server


@pytest.fixture
def ragie(ragie_server: RagieStandIn) -> RagieStandIn:
    """The stand-in, emptied for this test."""
    ragie_server.reset()
    return ragie_server


IndexFactory = Callable[..., RagieIndex]


@pytest.fixture
async def make_index(ragie: RagieStandIn) -> AsyncIterator[IndexFactory]:
    """``make_index(**settings)``: a ``RagieIndex`` on the stand-in with fast retries and polling."""
    made: list[RagieIndex] = []

    def make(api_key: str = KEY, url: str | None = None, deadline_s: float = 5, **changes: object) -> RagieIndex:
        settings = ragie_settings(url or ragie.url, api_key, **changes)
        index = RagieIndex.from_settings(
            settings, retry=FAST_RETRY, poll_interval_s=0.001, ingest_deadline_s=deadline_s
        )
        made.append(index)
        return index

    yield make
    for index in made:
        await index.aclose()


@pytest.fixture
def index(make_index: IndexFactory) -> RagieIndex:
    return make_index()


async def ingest(
    index: RagieIndex, organization: Organization, text: str = HANDBOOK, **kw
) -> tuple[uuid.UUID, Ingested]:
    document_id = uuid.uuid4()
    options = {"name": "handbook.txt", "content_type": "text/plain", "metadata": None} | kw
    ingested = await index.ingest(organization, document_id, content=text.encode(), **options)
    return document_id, ingested


# --- partitions ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "external_id", ["acme", "Acme Corp", "acme!", "org_42-x", "Ünïcödé/ID with spaces", "---", "", "a" * 500, "é"]
)
def test_partition_for_gives_a_valid_ragie_partition(external_id: str):
    partition = partition_for(Organization(uuid.uuid4(), external_id))
    assert re.fullmatch(r"[a-z0-9_-]+", partition), partition
    assert len(partition) <= 57
    assert partition == partition_for(Organization(uuid.uuid4(), external_id)), "depends on the external id only"


def test_partition_for_is_readable_and_keeps_distinct_ids_apart():
    assert partition_for(org("Acme Corp")).startswith("acme-corp-")
    ids = ["acme", "Acme", "ACME", "acme!", "acme-", "acme ", "-acme", "ab" * 30, "ab" * 31]
    assert len({partition_for(org(i)) for i in ids}) == len(ids)
    assert partition_for(org("default")) != "default", "never Ragie's shared default partition"


# --- ingest -------------------------------------------------------------------------------------------------------


async def test_ingest_uploads_to_the_partition_and_waits_until_ready(ragie: RagieStandIn, index: RagieIndex):
    organization = org("Acme Corp")
    metadata = {"team": "finance", "tags": ["travel", "policy"], "document_name": "reserved", "nested": {"a": 1}}
    document_id, ingested = await ingest(index, organization, metadata=metadata)

    stored = ragie.documents[ingested.external_id]
    assert ingested == Ingested(pages=3, chunks=len(stored.chunks), external_id=stored.id, backend_status="ready")
    assert ingested.chunks >= 3
    assert stored.statuses_served == list(STATUSES[1:]), "polled through Ragie's documented status sequence"

    [upload] = ragie.requests_to("POST", "/documents")
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert upload.file == ("handbook.txt", "text/plain", HANDBOOK.encode())
    assert upload.form["name"] == "handbook.txt"
    assert upload.form["partition"] == partition_for(organization)
    assert upload.form["external_id"] == str(document_id)
    assert json.loads(upload.form["metadata"]) == {
        "team": "finance",
        "tags": ["travel", "policy"],
        "nested": '{"a": 1}',
        DOCUMENT_KEY: str(document_id),
    }, "reserved keys dropped, other values made acceptable to Ragie"
    polls = ragie.requests_to("GET", f"/documents/{stored.id}")
    assert {poll.headers["partition"] for poll in polls} == {partition_for(organization)}


async def test_an_interrupted_ingest_resumes_on_the_document_ragie_already_has(ragie: RagieStandIn, index: RagieIndex):
    organization = org()
    ragie.fail_next(503, times=10_000, method="GET", path="/documents/")
    document_id = uuid.uuid4()
    with pytest.raises(RetrievalUnavailable):
        await index.ingest(organization, document_id, "a.txt", "text/plain", HANDBOOK.encode(), None)
    ragie.clear_faults()

    ingested = await index.ingest(organization, document_id, "a.txt", "text/plain", HANDBOOK.encode(), None)
    assert ingested.backend_status == "ready"
    assert len(ragie.requests_to("POST", "/documents")) == 1, "no duplicate upload"
    assert list(ragie.documents) == [ingested.external_id]


@pytest.mark.parametrize(
    ("setup", "content", "reason"),
    [
        (lambda r: setattr(r, "fail_processing", "File is corrupted"), HANDBOOK.encode(), "File is corrupted"),
        (lambda r: None, b"\xff\xfe\x00binary", "Unable to extract text"),
    ],
)
async def test_a_document_ragie_fails_to_process_raises_ingest_error(
    ragie: RagieStandIn, index: RagieIndex, setup, content: bytes, reason: str
):
    setup(ragie)
    with pytest.raises(IngestError, match=f"Ragie could not process the document: {reason}"):
        await index.ingest(org(), uuid.uuid4(), "a.txt", "text/plain", content, None)
    assert ragie.documents == {}, "the failed document is withdrawn from Ragie"


async def test_a_document_ragie_refuses_raises_ingest_error(index: RagieIndex):
    with pytest.raises(IngestError, match=r"Ragie refused the document \(HTTP 400\): The file is empty"):
        await index.ingest(org(), uuid.uuid4(), "empty.txt", "text/plain", b"", None)


async def test_an_ingest_still_processing_at_the_deadline_is_withdrawn(ragie: RagieStandIn, make_index):
    index = make_index(deadline_s=0)
    with pytest.raises(IngestError, match="still processing at Ragie"):
        await ingest(index, org())
    assert ragie.documents == {}


# --- retrieval ----------------------------------------------------------------------------------------------------


async def test_retrieval_sends_ragies_parameters_and_maps_chunks_to_nodes(ragie: RagieStandIn, make_index):
    index = make_index(ragie_max_chunks_per_document=2)
    organization = org()
    document_id, ingested = await ingest(index, organization)

    nodes = await index.retriever(organization, top_k=3).aretrieve("travel budget receipts")

    [request] = ragie.requests_to("POST", "/retrievals")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json == {
        "query": "travel budget receipts",
        "partition": partition_for(organization),
        "top_k": 3,
        "rerank": True,
        "max_chunks_per_document": 2,
        "recency_bias": False,
    }
    assert len(nodes) == 2, "max_chunks_per_document applies (three chunks match)"
    first = nodes[0]
    stored = ragie.documents[ingested.external_id]
    chunk = next(c for c in stored.chunks if c.id == first.node.node_id)
    assert first.score == pytest.approx(2 / 3)
    assert first.node.get_content() == chunk.text
    assert first.node.metadata == {
        "document_id": str(document_id),
        "document_name": "handbook.txt",
        "chunk_id": chunk.id,
        "start_page": 1,
        "end_page": 1,
        "pages": "1",
        "backend": "ragie",
    }
    assert [n.node.metadata["pages"] for n in nodes] == ["1", "1-2"]


async def test_retrieval_without_rerank_and_without_chunk_cap(ragie: RagieStandIn, make_index):
    index = make_index(ragie_rerank=False)
    organization = org()
    await ingest(index, organization)
    nodes = await index.retriever(organization, top_k=8).aretrieve("travel budget receipts")
    [request] = ragie.requests_to("POST", "/retrievals")
    assert request.json["rerank"] is False
    assert "max_chunks_per_document" not in request.json
    assert [n.node.metadata["pages"] for n in nodes] == ["1", "1-2", "2-3"]


async def test_a_search_within_some_documents_filters_on_citechats_ids(ragie: RagieStandIn, index: RagieIndex):
    """Asked about some documents, Ragie is sent a metadata filter on the id citechat gave each (``$in``)."""
    organization = org()
    handbook, _ = await ingest(index, organization)
    memo, _ = await ingest(index, organization, "Travel budget memo: receipts go to the travel desk.", name="memo.txt")
    everywhere = await index.retriever(organization, top_k=8).aretrieve("travel budget receipts")
    assert {n.node.metadata["document_id"] for n in everywhere} == {str(handbook), str(memo)}
    nodes = await index.retriever(organization, top_k=8, documents=(memo,)).aretrieve("travel budget receipts")
    assert nodes and {n.node.metadata["document_id"] for n in nodes} == {str(memo)}
    request = ragie.requests_to("POST", "/retrievals")[-1]
    assert request.json["filter"] == {"citechat_document_id": {"$in": [str(memo)]}}


async def test_when_rerank_finds_nothing_the_search_runs_once_without_it(ragie: RagieStandIn, index: RagieIndex):
    organization = org()
    await ingest(index, organization)
    ragie.rerank_finds_nothing = True
    nodes = await index.retriever(organization, top_k=5).aretrieve("receipts")
    assert [r.json["rerank"] for r in ragie.requests_to("POST", "/retrievals")] == [True, False]
    assert [n.node.metadata["start_page"] for n in nodes] == [2]


async def test_no_retry_without_rerank_when_rerank_found_something_or_nothing_matches(
    ragie: RagieStandIn, index: RagieIndex
):
    organization = org()
    await ingest(index, organization)
    assert await index.retriever(organization, top_k=5).aretrieve("receipts")
    assert await index.retriever(organization, top_k=5).aretrieve("   ") == []
    assert len(ragie.requests_to("POST", "/retrievals")) == 1


async def test_an_organization_never_retrieves_another_organizations_chunks(ragie: RagieStandIn, index: RagieIndex):
    alpha, beta = org("alpha"), org("beta")
    _, alpha_doc = await ingest(index, alpha, "The alpha budget pays for robots.", name="alpha.txt")
    _, beta_doc = await ingest(index, beta, "The beta budget pays for rockets.", name="beta.txt")

    alpha_nodes = await index.retriever(alpha, top_k=10).aretrieve("budget rockets robots")
    beta_nodes = await index.retriever(beta, top_k=10).aretrieve("budget rockets robots")

    assert {n.node.metadata["document_name"] for n in alpha_nodes} == {"alpha.txt"}
    assert {n.node.metadata["document_name"] for n in beta_nodes} == {"beta.txt"}
    assert alpha_doc.external_id != beta_doc.external_id
    assert [r.json["partition"] for r in ragie.requests_to("POST", "/retrievals")] == [
        partition_for(alpha),
        partition_for(beta),
    ]


async def test_a_deleted_document_is_no_longer_retrieved(ragie: RagieStandIn, index: RagieIndex):
    organization = org()
    document_id, ingested = await ingest(index, organization)
    kept_id, _ = await ingest(index, organization, "Travel budget for interns.", name="interns.txt")

    await index.delete(organization, document_id, ingested.external_id)
    [request] = ragie.requests_to("DELETE", f"/documents/{ingested.external_id}")
    assert request.headers["partition"] == partition_for(organization)
    nodes = await index.retriever(organization, top_k=10).aretrieve("travel budget")
    assert {n.node.metadata["document_id"] for n in nodes} == {str(kept_id)}

    await index.delete(organization, document_id, ingested.external_id)  # Ragie's 404: already gone
    await index.delete(organization, kept_id, None)  # found through its metadata
    assert ragie.documents == {}
    assert await index.retriever(organization, top_k=10).aretrieve("travel budget") == []


async def test_delete_in_another_organization_does_not_touch_the_document(ragie: RagieStandIn, index: RagieIndex):
    owner = org()
    document_id, ingested = await ingest(index, owner)
    await index.delete(org(), document_id, ingested.external_id)
    assert ingested.external_id in ragie.documents


def test_the_sync_path_says_citechat_retrievers_are_async(index: RagieIndex):
    with pytest.raises(NotImplementedError, match="async"):
        index.retriever(org(), top_k=3).retrieve(QueryBundle("anything"))


# --- failures -----------------------------------------------------------------------------------------------------


async def test_a_wrong_api_key_is_rejected_without_leaking_it(make_index):
    wrong = "wrong-key-should-not-leak"
    index = make_index(api_key=wrong)
    with pytest.raises(RetrievalRejected, match="Ragie rejected the API key") as raised:
        await index.retriever(org(), top_k=3).aretrieve("budget")
    assert not raised.value.retryable
    assert wrong not in raised.value.detail
    with pytest.raises(RetrievalRejected, match="Ragie rejected the API key"):
        await ingest(index, org())


async def test_an_exhausted_quota_is_rejected(ragie: RagieStandIn, index: RagieIndex):
    ragie.quota_exhausted = True
    with pytest.raises(RetrievalRejected, match="Ragie quota exhausted"):
        await index.retriever(org(), top_k=3).aretrieve("budget")
    with pytest.raises(RetrievalRejected, match="Ragie quota exhausted"):
        await ingest(index, org())


async def test_rate_limits_and_unavailability_are_retried(ragie: RagieStandIn, index: RagieIndex):
    organization = org()
    ragie.fail_next(429)
    ragie.fail_next(503)
    await ingest(index, organization)  # the first two calls (look-up, upload) were retried

    ragie.fail_next(429)
    ragie.fail_next(503)
    nodes = await index.retriever(organization, top_k=3).aretrieve("receipts")
    assert nodes
    assert len(ragie.requests_to("POST", "/retrievals")) == 3


async def test_a_persistent_server_error_is_unavailable(ragie: RagieStandIn, index: RagieIndex):
    ragie.fail_next(500, times=10_000)
    with pytest.raises(RetrievalUnavailable, match=r"HTTP 500") as raised:
        await index.retriever(org(), top_k=3).aretrieve("budget")
    assert raised.value.retryable
    assert len(ragie.requests) > 1, "retried before giving up"


async def test_a_stopped_server_is_unavailable(make_index):
    with RagieStandIn(api_key=KEY) as server:
        index = make_index(url=server.url)
    with pytest.raises(RetrievalUnavailable, match="could not be reached"):
        await index.retriever(org(), top_k=3).aretrieve("budget")
    with pytest.raises(RetrievalUnavailable, match="could not be reached"):
        await ingest(index, org())


async def test_a_slow_server_times_out_as_unavailable(ragie: RagieStandIn, make_index):
    index = make_index(ragie_timeout_s=0.2)
    ragie.delay_s = 1
    started = time.monotonic()
    with pytest.raises(RetrievalUnavailable, match="did not answer in time"):
        await index.retriever(org(), top_k=3).aretrieve("budget")
    assert time.monotonic() - started < 3


def test_the_ragie_backend_needs_an_api_key():
    with pytest.raises(ConfigurationError, match="RAGIE_API_KEY"):
        RagieIndex.from_settings(Settings(_env_file=None))
