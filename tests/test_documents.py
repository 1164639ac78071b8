"""Documents through the real API and the local index: formats, pages, bad input, dedupe, delete, tenancy."""

import asyncio
import logging
import uuid

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from citechat.api.app import create_app
from citechat.documents import models
from citechat.retrievers.base import IndexMismatch, Organization
from tests import samples
from tests.conftest import client_for, derive

DOCS = "/api/v1/documents"


async def upload(client, headers, content: bytes, filename: str, **form) -> httpx.Response:
    return await client.post(DOCS, headers=headers, files={"file": (filename, content)}, data=form)


async def wait_done(client, headers, document_id: str) -> dict:
    async with asyncio.timeout(60):
        while True:
            document = (await client.get(f"{DOCS}/{document_id}", headers=headers)).json()
            if document["status"] in ("ready", "failed"):
                return document
            await asyncio.sleep(0.05)


async def ingest(client, headers, content: bytes, filename: str, **form) -> dict:
    response = await upload(client, headers, content, filename, **form)
    assert response.status_code == 202, response.text
    return await wait_done(client, headers, response.json()["id"])


async def org_of(db, headers_org: str) -> Organization:
    from citechat.auth.models import Organization as Row

    row = (await db.execute(select(Row).where(Row.external_id == headers_org))).scalar_one()
    return Organization(row.id, row.external_id)


async def retrieve(app, organization: Organization, query: str, top_k: int = 5):
    return await app.state.index.retriever(organization, top_k).aretrieve(query)


@pytest.fixture
def org_headers(identity):
    def make() -> tuple[str, dict]:
        org = f"org-{uuid.uuid4().hex[:8]}"
        return org, identity(org=org)

    return make


async def test_pdf_pages_are_cited_exactly(client, app, db, org_headers):
    org, headers = org_headers()
    pages = [f"{topic} " + " ".join([topic] * 3) for topic in samples.TOPICS]
    content = samples.pdf(pages, header="Confidential - Annual Report 2024")  # the same header on every page
    document = await ingest(client, headers, content, "report.pdf", name="Annual Report", metadata='{"year": 2024}')
    assert document["status"] == "ready", document
    assert (document["name"], document["pages"], document["content_type"]) == ("Annual Report", 4, "application/pdf")
    assert document["chunks"] >= 4 and document["metadata"] == {"year": 2024}  # passages never straddle pages

    organization = await org_of(db, org)
    for page, question in [
        (1, "lighthouse keeper storms"),
        (2, "bakery revenue sourdough"),
        (3, "glacier retreat survey"),
        (4, "enzyme clot reduction"),
    ]:
        nodes = await retrieve(app, organization, question)
        top = nodes[0].node
        assert top.metadata["start_page"] == page, (question, top.metadata)
        assert top.metadata["document_name"] == "Annual Report"
        for node in nodes:  # every passage lies on the pages it claims
            start, end = node.node.metadata["start_page"], node.node.metadata["end_page"]
            claimed = " ".join(" ".join(pages[p - 1].split()) for p in range(start, end + 1))
            for sentence in node.node.text.replace("Confidential - Annual Report 2024", "").split(". "):
                assert " ".join(sentence.split()).strip(". ") in claimed + " ", (sentence, start, end)


async def test_page_labels_are_kept(client, app, db, org_headers):
    org, headers = org_headers()
    content = samples.pdf(samples.TOPICS[:3], labels=[(0, "ROMAN_LOWER", 1), (2, "ARABIC", 1)])  # i, ii, then 1
    document = await ingest(client, headers, content, "labelled.pdf")
    assert document["status"] == "ready"
    nodes = await retrieve(app, await org_of(db, org), "glacier retreat")
    assert nodes[0].node.metadata["start_page"] == 3
    assert nodes[0].node.metadata["page_label"] == "1"
    nodes = await retrieve(app, await org_of(db, org), "bakery sourdough revenue")
    assert (nodes[0].node.metadata["start_page"], nodes[0].node.metadata["page_label"]) == (2, "ii")


@pytest.mark.parametrize(
    ("filename", "content", "content_type"),
    [
        ("notes.md", b"# Glacier notes\n\nThe glacier survey measured a retreat of 312 metres.", "text/markdown"),
        ("notes.txt", "The glacier survey measured a retreat of 312 metres. Æ ø".encode(), "text/plain"),
        (
            "page.html",
            b"<!DOCTYPE html><html><head><title>t</title><script>var x=1</script></head>"
            b"<body><p>The glacier survey measured a retreat of 312 metres.</p></body></html>",
            "text/html",
        ),
        (
            "survey.docx",
            samples.docx_file(["Glacier survey", "The glacier survey measured a retreat of 312 metres."]),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
    ],
)
async def test_formats_without_pages_cite_no_page(client, app, db, org_headers, filename, content, content_type):
    org, headers = org_headers()
    document = await ingest(client, headers, content, filename)
    assert (document["status"], document["content_type"], document["pages"]) == ("ready", content_type, None)
    nodes = await retrieve(app, await org_of(db, org), "how far did the glacier retreat")
    assert "312 metres" in nodes[0].node.text
    assert "start_page" not in nodes[0].node.metadata
    assert "var x" not in nodes[0].node.text


async def test_type_is_judged_from_content(client, org_headers):
    _, headers = org_headers()
    pdf_named_txt = await ingest(client, headers, samples.pdf(["A PDF in disguise about lighthouses."]), "notes.txt")
    assert pdf_named_txt["content_type"] == "application/pdf"
    text_named_pdf = await ingest(client, headers, b"Plain words about lighthouses, named like a PDF.", "fake.pdf")
    assert text_named_pdf["content_type"] == "text/plain"


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("broken.pdf", samples.pdf(["Some text that will be cut off."])[:400], "could not be read"),
        ("locked.pdf", samples.pdf(["Secret lighthouse logs."], password="hunter2"), "encrypted"),
        ("scan.pdf", samples.image_only_pdf(), "no extractable text"),
        ("blank.txt", b"   \n\n\t  \n", "no text"),
    ],
)
async def test_unreadable_documents_fail_with_a_reason_and_nothing_indexed(
    client, db, org_headers, filename, content, reason
):
    _, headers = org_headers()
    document = await ingest(client, headers, content, filename)
    assert document["status"] == "failed"
    assert reason in document["error"]
    assert document["chunks"] == 0
    count = await db.scalar(select(func.count()).where(models.Chunk.document_id == uuid.UUID(document["id"])))
    assert count == 0


@pytest.mark.parametrize(
    ("filename", "content", "status", "detail"),
    [
        ("empty.pdf", b"", 422, "empty"),
        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 415, "unsupported"),
        ("archive.zip", samples.docx_file(["x"]).replace(b"word/document.xml", b"word/documenX.xml"), 415, "ZIP"),
    ],
)
async def test_rejected_uploads(client, org_headers, filename, content, status, detail):
    _, headers = org_headers()
    response = await upload(client, headers, content, filename)
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert (await client.get(DOCS, headers=headers)).json() == []


async def test_bad_metadata_and_missing_file(client, org_headers):
    _, headers = org_headers()
    for metadata, message in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"note": ["a\\u0000b"]}', "NUL"),  # PostgreSQL stores neither (a 500 before)
        ('{"\\ud800": 1}', "surrogate"),
        ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nested more than 32"),  # a 500 before (recursion)
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 32"),
    ]:
        response = await upload(client, headers, b"text", "a.txt", metadata=metadata)
        assert response.status_code == 422 and message in response.json()["detail"]
    response = await upload(client, headers, b"text", "a.txt", name="a\x00b")
    assert response.status_code == 422 and "NUL" in str(response.json()["detail"])
    assert (await client.get(DOCS, headers=headers)).json() == []
    response = await client.post(DOCS, headers=headers, data={"name": "no file"})
    assert response.status_code == 422


async def test_oversized_upload_is_413(settings, identity):
    application = create_app(derive(settings, max_upload_mb=0.01))
    async with client_for(application) as client:
        headers = identity()
        response = await upload(client, headers, b"x" * 20_000, "big.txt")
        assert response.status_code == 413 and "limit is" in response.json()["detail"]
        assert (await client.get(DOCS, headers=headers)).json() == []


async def test_identical_reupload_returns_the_existing_document(client, org_headers):
    _, headers = org_headers()
    content = samples.pdf(["Unique content for deduplication: lighthouse 4471."])
    first = await ingest(client, headers, content, "a.pdf")
    again = await upload(client, headers, content, "renamed.pdf")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    _, other_headers = org_headers()
    elsewhere = await upload(client, other_headers, content, "a.pdf")
    assert elsewhere.status_code == 202 and elsewhere.json()["id"] != first["id"]


async def test_list_paginates_newest_first(client, org_headers):
    _, headers = org_headers()
    ids = [(await upload(client, headers, f"document number {i}".encode(), f"{i}.txt")).json()["id"] for i in range(5)]
    page1 = (await client.get(DOCS, params={"limit": 2}, headers=headers)).json()
    page2 = (await client.get(DOCS, params={"limit": 3, "before": page1[-1]["id"]}, headers=headers)).json()
    assert [d["id"] for d in page1 + page2] == list(reversed(ids))
    assert set(page1[0]) >= {
        "id",
        "name",
        "content_type",
        "size_bytes",
        "pages",
        "chunks",
        "status",
        "error",
        "created_at",
    }


async def test_delete_removes_chunks_at_once(client, app, db, org_headers):
    org, headers = org_headers()
    document = await ingest(client, headers, samples.pdf([samples.TOPICS[0]]), "keeper.pdf")
    organization = await org_of(db, org)
    assert await retrieve(app, organization, "lighthouse keeper")
    assert (await client.delete(f"{DOCS}/{document['id']}", headers=headers)).status_code == 204
    assert await retrieve(app, organization, "lighthouse keeper") == []
    assert await db.scalar(select(func.count()).where(models.Chunk.document_id == uuid.UUID(document["id"]))) == 0
    assert (await client.get(f"{DOCS}/{document['id']}", headers=headers)).status_code == 404


async def test_a_document_deleted_while_it_is_indexed_stops_without_an_error(
    client, app, db, org_headers, monkeypatch, caplog
):
    """Deleted after indexing began (an upload regretted at once), its chunks have nothing to belong to: indexing
    stops there, logged as what happened, not as an error with a traceback (a schema fuzzer's deletes found it)."""
    caplog.set_level(logging.INFO, logger="citechat.documents.ingestion")
    _, headers = org_headers()
    index, started = app.state.index, asyncio.Event()
    ingest_as_before = index.ingest

    async def deleted_first(organization, document_id, *args):
        assert (await client.delete(f"{DOCS}/{document_id}", headers=headers)).status_code == 204
        started.set()
        return await ingest_as_before(organization, document_id, *args)

    monkeypatch.setattr(index, "ingest", deleted_first)
    response = await upload(client, headers, samples.pdf([samples.TOPICS[0]]), "keeper.pdf")
    assert response.status_code == 202
    document_id = uuid.UUID(response.json()["id"])
    await app.state.ingestion.wait([document_id])
    assert started.is_set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("deleted while it was being indexed" in r.getMessage() for r in caplog.records)
    assert await db.scalar(select(func.count()).where(models.Chunk.document_id == document_id)) == 0
    assert (await client.get(f"{DOCS}/{document_id}", headers=headers)).status_code == 404


async def test_the_file_is_served_as_uploaded_to_check_a_citation_against(client, org_headers):
    """The original bytes, with what a browser needs to show a PDF at a cited page (inline) and to revalidate its
    copy (ETag), and to never render an uploaded HTML page as one of citechat's own (attachment, nosniff)."""
    _, headers = org_headers()
    notes = samples.pdf(samples.TOPICS[:3])
    document = await ingest(client, headers, notes, "field notes.pdf", name="Field notes: Skerryvore, été 1911")
    response = await client.get(f"{DOCS}/{document['id']}/file", headers=headers)
    assert response.status_code == 200
    assert response.content == notes
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == (
        'inline; filename="Field notes: Skerryvore, _t_ 1911.pdf";'
        " filename*=UTF-8''Field%20notes%3A%20Skerryvore%2C%20%C3%A9t%C3%A9%201911.pdf"
    )
    etag = response.headers["etag"]
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get(f"{DOCS}/{document['id']}/file", headers=headers | {"If-None-Match": if_none_match})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    changed = await client.get(f"{DOCS}/{document['id']}/file", headers=headers | {"If-None-Match": '"other"'})
    assert (changed.status_code, changed.content) == (200, notes)

    page = b"<!DOCTYPE html><html><body><script>alert(1)</script><p>Lighthouse keepers.</p></body></html>"
    html = await ingest(client, headers, page, "keepers.html")
    response = await client.get(f"{DOCS}/{html['id']}/file", headers=headers)
    assert (response.status_code, response.content) == (200, page)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-disposition"].startswith('attachment; filename="keepers.html"')
    text = await ingest(client, headers, "Notes on the lighthouse keepers. Æ ø".encode(), "notes.txt")
    response = await client.get(f"{DOCS}/{text['id']}/file", headers=headers)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Notes on the lighthouse keepers. Æ ø"
    assert response.headers["content-disposition"].startswith('inline; filename="notes.txt"')

    scan = samples.image_only_pdf()
    failed = await ingest(client, headers, scan, "scan.pdf")
    assert failed["status"] == "failed"  # nothing indexed, but the user's file is still theirs to open
    assert (await client.get(f"{DOCS}/{failed['id']}/file", headers=headers)).content == scan

    assert (await client.delete(f"{DOCS}/{document['id']}", headers=headers)).status_code == 204
    gone = await client.get(f"{DOCS}/{document['id']}/file", headers=headers)
    assert (gone.status_code, gone.json()) == (404, {"detail": "document not found"})
    missing = await client.get(f"{DOCS}/{uuid.uuid4()}/file", headers=headers)
    assert (missing.status_code, missing.json()) == (404, {"detail": "document not found"})
    assert (await client.get(f"{DOCS}/not-an-id/file", headers=headers)).status_code == 422
    assert (await client.get(f"{DOCS}/{text['id']}/file")).status_code == 401


async def test_organizations_never_see_each_others_documents(client, app, db, org_headers):
    _, a = org_headers()
    org_b, b = org_headers()
    doc_a = await ingest(client, a, samples.pdf([samples.TOPICS[1]]), "bakery.pdf")
    await ingest(client, b, samples.pdf([samples.TOPICS[2]]), "glacier.pdf")

    assert [d["id"] for d in (await client.get(DOCS, headers=b)).json()] != [doc_a["id"]]
    assert doc_a["id"] not in [d["id"] for d in (await client.get(DOCS, headers=b)).json()]
    for method, path in (("GET", ""), ("GET", "/file"), ("DELETE", "")):
        response = await client.request(method, f"{DOCS}/{doc_a['id']}{path}", headers=b)
        assert response.status_code == 404
    assert (await client.get(DOCS, params={"before": doc_a["id"]}, headers=b)).status_code == 404
    nodes_b = await retrieve(app, await org_of(db, org_b), "bakery revenue sourdough Norway", top_k=20)
    assert all(n.node.metadata["document_id"] != doc_a["id"] for n in nodes_b)
    assert (await client.get(f"{DOCS}/{doc_a['id']}", headers=a)).json()["status"] == "ready"


async def test_pending_documents_resume_after_restart(settings, identity, org_headers):
    """A document accepted but not indexed when the process stopped is indexed on the next start."""
    _, headers = org_headers()
    application = create_app(settings)
    async with client_for(application) as client:
        application.state.ingestion.submit = lambda document_id: None  # the process "dies" before indexing
        accepted = await upload(client, headers, b"Resumable lighthouse document.", "resume.txt")
        assert accepted.json()["status"] == "pending"
    restarted = create_app(settings)
    async with client_for(restarted) as client:
        assert (await wait_done(client, headers, accepted.json()["id"]))["status"] == "ready"


async def test_embedding_model_mismatch_asks_for_reindex(app, db, org_headers):
    org, _ = org_headers()
    await app.state.index.check_model()
    await db.execute(update(models.EmbeddingIndex).values(model="some-other-model"))
    await db.commit()
    try:
        with pytest.raises(IndexMismatch, match="citechat reindex"):
            await retrieve(app, Organization(uuid.uuid4(), org), "anything")
    finally:
        await app.state.index.adopt_model()


async def test_first_documents_indexed_at_once_record_the_model_once(app, db):
    """Documents are indexed two at a time: on an empty index the first ones race to record the model."""
    await db.execute(delete(models.EmbeddingIndex))
    await db.commit()
    try:
        await asyncio.gather(*(app.state.index.check_model() for _ in range(8)))
        assert (await db.execute(select(models.EmbeddingIndex.model))).scalars().all() == [
            app.state.index.embedder.model_name
        ]
    finally:
        await app.state.index.adopt_model()


def test_pdfs_parsed_from_several_threads_at_once_do_not_crash_the_process():
    """Documents are indexed two at a time, each parsed in a worker thread; pdfium is not thread-safe. In a child
    process, because without the lock the process dies (SIGSEGV or a heap abort), taking pytest with it."""
    import subprocess
    import sys

    script = (
        "import concurrent.futures as cf\n"
        "from tests import samples\n"
        "from citechat.documents import formats, parsing\n"
        "pdfs = [samples.pdf(samples.TOPICS), samples.pdf(list(reversed(samples.TOPICS)))] * 20\n"
        "with cf.ThreadPoolExecutor(4) as pool:\n"
        "    parsed = list(pool.map(lambda content: parsing.parse(content, formats.PDF), pdfs))\n"
        "assert all(len(p.pages) == 4 for p in parsed)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)  # noqa: S603
    assert child.returncode == 0, child.stderr[-2000:]


async def test_an_organization_with_a_share_of_the_index_gets_its_whole_dense_ranking(tmp_path):
    """One HNSW index holds every organization's chunks, and pgvector filters what the scan found by organization
    afterwards: an organization with a fifth of the chunks got about 20 of its 100 dense candidates, until the scan
    went deeper in proportion to its share (and each search was planned for its organization, not by a prepared
    statement's generic plan, which a connection may take after five runs)."""
    import numpy as np

    from citechat.bench.retrieval import load_synthetic
    from citechat.documents.commands import organization
    from citechat.runtime import open_runtime
    from citechat.settings import Settings

    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(2000)]
    passages = [" ".join(rng.choice(words, 60)) for _ in range(500)]
    vectors = rng.normal(size=(500, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    async with open_runtime(Settings(_env_file=None, data_dir=tmp_path), resume_ingestion=False) as runtime:
        big, small = await organization(runtime, "big"), await organization(runtime, "small")
        await load_synthetic(runtime.database, big, passages, vectors, start=0, stop=8000)
        await load_synthetic(runtime.database, small, passages, vectors, start=8000, stop=10000)
        async with runtime.database.sessions() as db:  # one of the small organization's documents (100 chunks)
            [document] = await db.scalars(
                select(models.Document.id).where(models.Document.organization_id == small.id).limit(1)
            )
        found, scoped = [], []
        for _ in range(8):  # past the five runs after which a connection may plan a prepared statement generically
            query = rng.normal(size=384).astype(np.float32)
            query /= np.linalg.norm(query)
            ranked = await runtime.index.search_vector(small, "w1 w2", query.tolist(), 100, mode="dense")
            found.append(len(ranked))
            # Asked about one document, every one of its chunks is ranked (not what the HNSW scan happened to find).
            within = await runtime.index.search_vector(
                small, "w1 w2", query.tolist(), 100, mode="dense", documents=(document,)
            )
            scoped.append({n.node.metadata["document_id"] for n in within} == {str(document)} and len(within))
        # The deeper scan and the planning are the search's own: the pooled connections keep the defaults.
        pool = runtime.database.pool
        connections = [await pool.acquire() for _ in range(pool.get_size())]
        try:
            settings = [
                await c.fetchrow("SELECT current_setting('hnsw.ef_search', true), current_setting('plan_cache_mode')")
                for c in connections
            ]
        finally:
            for connection in connections:
                await pool.release(connection)
    assert found == [100] * 8 and scoped == [100] * 8
    assert connections and all(tuple(row) in {(None, "auto"), ("40", "auto")} for row in settings), settings
