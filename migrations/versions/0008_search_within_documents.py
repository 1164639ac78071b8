"""search within chosen documents

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 06:30:00

``citechat_search`` takes the documents a question is asked about (``search_documents``, NULL for all of the
organization's): both rankings keep only their chunks. As for an organization's share of the index, the HNSW scan
goes deeper in proportion to how small the documents' share is, and each call is planned for its own parameters:
for a few documents the planner reads their chunks through ``ix_chunks_document_index`` and ranks every one of them
exactly (a document of 100 chunks among 10,000 gets its whole dense ranking: ``tests/test_documents.py``); for all
documents the NULL folds the filter away and the plan is the one 0007 had.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_SIGNATURE = (
    "citechat_search(uuid, text, text, text, integer, integer, integer, integer, integer, integer, double precision,"
    " integer"
)
# 0007's function with these changes (old, new): ``_search`` applies them, and checks that each applies once.
_CHANGES = (
    (  # the new parameter
        "dense_weight double precision, top_k integer)",
        "dense_weight double precision, top_k integer, search_documents uuid[] DEFAULT NULL)",
    ),
    (  # the HNSW scan goes deeper in proportion to the searched documents' share, when some are chosen
        "(SELECT coalesce(max(chunks), 0) AS chunks FROM index_stats WHERE organization_id = search_org) AS own;",
        """(SELECT CASE WHEN search_documents IS NULL
                      THEN (SELECT coalesce(max(s.chunks), 0) FROM index_stats s WHERE s.organization_id = search_org)
                      ELSE (SELECT coalesce(sum(d.chunks), 0) FROM documents d
                            WHERE d.organization_id = search_org AND d.id = ANY(search_documents)) END AS chunks) AS own;""",
    ),
    (  # both rankings keep only the chosen documents' chunks
        "WHERE c.organization_id = search_org AND c.search @@ matching.q",
        "WHERE c.organization_id = search_org AND c.search @@ matching.q\n"
        "          AND (search_documents IS NULL OR c.document_id = ANY(search_documents))",
    ),
    (
        "WHERE c.organization_id = search_org\n        ORDER BY c.embedding <=> query_vector",
        "WHERE c.organization_id = search_org AND (search_documents IS NULL OR c.document_id = ANY(search_documents))\n"
        "        ORDER BY c.embedding <=> query_vector",
    ),
)


def _search() -> str:
    search = _revision_0007()._SEARCH
    for old, new in _CHANGES:
        if search.count(old) != 1:
            raise RuntimeError(f"0007's function no longer holds, once: {old!r}")
        search = search.replace(old, new)
    return search


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {_OLD_SIGNATURE})")
    op.execute(_search())


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {_OLD_SIGNATURE}, uuid[])")
    op.execute(_revision_0007()._SEARCH)


def _revision_0007():
    """0007's module, whose function this one replaced (read from its file: revision files are not a package)."""
    path = Path(__file__).with_name("0007_search_in_one_call.py")
    spec = importlib.util.spec_from_file_location("citechat_revision_0007", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
