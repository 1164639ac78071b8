"""The documents API with Ragie as the backend (``CITECHAT_RETRIEVER=ragie``), against the Ragie stand-in.

Uploads travel through citechat's API to the organization's Ragie partition; status, pages and chunks mirror
Ragie's; retrieval and deletion never cross organizations.
"""

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from citechat.api.app import create_app
from citechat.retrievers.base import Organization
from citechat.retrievers.ragie import partition_for
from citechat.settings import Settings
from tests.conftest import client_for, derive, running
from tests.standins.ragie import RagieStandIn
from tests.test_documents import DOCS, org_of, upload, wait_done

KEY = "ragie-key-for-api-tests-0123456789"
HANDBOOK = (
    "Travel budget approval is needed for trips abroad. Book economy class for short flights.\f"
    "Receipts are kept for seven years by the finance team.\f"
    "Office plants are watered on Mondays by the facilities team."
)


@pytest.fixture(scope="module")
def ragie_server() -> Iterator[RagieStandIn]:
    with RagieStandIn(api_key=KEY, chunk_words=12) as server:
        yield server


@pytest.fixture
async def ragie_app(settings: Settings, ragie_server: RagieStandIn) -> AsyncIterator[FastAPI]:
    ragie_server.reset()
    configured = derive(
        settings,
        retriever="ragie",
        ragie_api_key=KEY,
        ragie_base_url=ragie_server.url,
        ragie_poll_interval_s=0.01,
        ragie_timeout_s=2,
    )
    application = create_app(configured)
    async with running(application):
        yield application


@pytest.fixture
async def ragie_client(ragie_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ragie_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_upload_goes_to_the_organizations_partition(ragie_client, ragie_app, ragie_server, identity, db):
    org = f"acme-{uuid.uuid4().hex[:6]}"
    headers = identity(org=org)
    accepted = await upload(ragie_client, headers, HANDBOOK.encode(), "handbook.txt", name="Travel handbook")
    assert accepted.status_code == 202
    document = await wait_done(ragie_client, headers, accepted.json()["id"])
    assert (document["status"], document["backend"]) == ("ready", "ragie")
    assert document["pages"] == 3 and document["chunks"] >= 2  # Ragie's own counts
    original = await ragie_client.get(f"{DOCS}/{document['id']}/file", headers=headers)
    assert (original.status_code, original.text) == (200, HANDBOOK)  # citations to Ragie's passages open it too

    organization = await org_of(db, org)
    [create] = ragie_server.requests_to("POST", "/documents")
    assert create.form["partition"] == partition_for(organization)
    assert create.form["name"] == "Travel handbook"

    nodes = await ragie_app.state.index.retriever(organization, 5).aretrieve("how long are receipts kept")
    top = nodes[0].node.metadata
    assert top["document_id"] == document["id"] and top["document_name"] == "Travel handbook"
    assert top["start_page"] <= 2 <= top["end_page"]


async def test_organizations_never_see_each_others_ragie_documents(ragie_client, ragie_app, identity, db):
    org_a, org_b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    a, b = identity(org=org_a), identity(org=org_b)
    doc_a = await wait_done(ragie_client, a, (await upload(ragie_client, a, HANDBOOK.encode(), "a.txt")).json()["id"])
    assert doc_a["status"] == "ready"

    assert (await ragie_client.get(DOCS, headers=b)).json() == []
    for method in ("GET", "DELETE"):
        assert (await ragie_client.request(method, f"{DOCS}/{doc_a['id']}", headers=b)).status_code == 404
    org_b_view = Organization(uuid.uuid4(), org_b)
    assert await ragie_app.state.index.retriever(org_b_view, 10).aretrieve("receipts finance travel budget") == []
    assert await ragie_app.state.index.retriever(await org_of(db, org_a), 10).aretrieve("receipts finance")


async def test_delete_removes_the_document_from_ragie(ragie_client, ragie_app, ragie_server, identity, db):
    org = f"del-{uuid.uuid4().hex[:6]}"
    headers = identity(org=org)
    document = await wait_done(
        ragie_client, headers, (await upload(ragie_client, headers, HANDBOOK.encode(), "h.txt")).json()["id"]
    )
    assert (await ragie_client.delete(f"{DOCS}/{document['id']}", headers=headers)).status_code == 204
    assert any(r.method == "DELETE" for r in ragie_server.requests)
    organization = await org_of(db, org)
    assert await ragie_app.state.index.retriever(organization, 5).aretrieve("receipts finance") == []


@pytest.mark.parametrize("moment", ["before Ragie has its copy", "while Ragie processes its copy"])
async def test_a_document_deleted_while_ragie_indexes_it_leaves_nothing_in_ragie(
    ragie_client, ragie_app, ragie_server, identity, db, monkeypatch, caplog, moment
):
    """Deleted before Ragie had its copy (nothing there to delete yet), the copy Ragie then makes is removed once
    indexing ends; deleted while Ragie processes its copy (which citechat has not recorded yet), the delete finds
    it by citechat's id. Otherwise a deleted document's passages would go on answering questions."""
    caplog.set_level(logging.INFO, logger="citechat")
    org = f"gone-{uuid.uuid4().hex[:6]}"
    headers = identity(org=org)
    index = ragie_app.state.index
    step = "ingest" if moment.startswith("before") else "_wait_until_ready"
    as_before = getattr(index, step)

    async def deleted_first(*args):
        document_id = args[1] if step == "ingest" else ragie_server.documents[args[1]].external_id
        assert (await ragie_client.delete(f"{DOCS}/{document_id}", headers=headers)).status_code == 204
        if step == "_wait_until_ready":
            assert args[1] not in ragie_server.documents  # the delete itself found Ragie's copy
        return await as_before(*args)

    monkeypatch.setattr(index, step, deleted_first)
    response = await upload(ragie_client, headers, HANDBOOK.encode(), "h.txt")
    assert response.status_code == 202
    await ragie_app.state.ingestion.wait([uuid.UUID(response.json()["id"])])
    organization = await org_of(db, org)
    assert [d for d in ragie_server.documents.values() if d.partition == partition_for(organization)] == []
    assert await index.retriever(organization, 5).aretrieve("receipts finance") == []
    assert (await ragie_client.get(f"{DOCS}/{response.json()['id']}", headers=headers)).status_code == 404
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_failed_processing_is_reported_and_reupload_retries(ragie_client, ragie_server, identity):
    headers = identity()
    ragie_server.fail_processing = "the file could not be partitioned"
    first = await upload(ragie_client, headers, HANDBOOK.encode(), "h.txt")
    failed = await wait_done(ragie_client, headers, first.json()["id"])
    assert failed["status"] == "failed" and "could not be partitioned" in failed["error"]

    again = await upload(ragie_client, headers, HANDBOOK.encode(), "h.txt")
    assert again.status_code == 202 and again.json()["id"] == failed["id"] and again.json()["status"] == "pending"
    assert (await wait_done(ragie_client, headers, failed["id"]))["status"] == "ready"


async def test_unreachable_ragie_fails_the_document_with_a_retryable_reason(settings, identity):
    application = create_app(
        derive(settings, retriever="ragie", ragie_api_key=KEY, ragie_base_url="http://127.0.0.1:9", ragie_timeout_s=1)
    )
    async with client_for(application) as client:
        headers = identity()
        document = await wait_done(client, headers, (await upload(client, headers, b"text", "t.txt")).json()["id"])
    assert document["status"] == "failed" and "could not be reached" in document["error"]
