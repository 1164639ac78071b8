"""search in one call

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 01:30:00

``citechat_search`` is the local index's hybrid search (``citechat.retrievers.local`` describes the ranking) as one
function call. The search used to be four round trips (BEGIN; a statement checking the index's model and setting
how deep the HNSW scan goes for the transaction; the search; COMMIT), each ~1.3-1.7 ms under 16 concurrent answers,
all before the model is asked. As one call on an autocommit connection it is one round trip, and still:

- refuses an index built by another embedding model (SQLSTATE ``CC001``, the recorded model in DETAIL);
- scans HNSW deeper in proportion to how small the organization's share of the index is: pgvector (0.6) filters
  the scan's nearest ``hnsw.ef_search`` by organization afterwards, so an organization with a fifth of the chunks
  got ~20 of its 100 candidates; the setting is local to the call's transaction;
- plans every search for its organization's parameters (``plan_cache_mode``, set for the call only): a cached
  generic plan would not know whose chunks it reads, and small organizations are ranked exactly only when the
  planner reads their chunks through the organization index.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEARCH = """
CREATE FUNCTION citechat_search(
    search_org uuid, search_query text, search_vector text, search_model text, candidates integer,
    dense_candidates integer, lexical_candidates integer, lexical_pool integer, match_terms integer,
    match_budget integer, dense_weight double precision, top_k integer)
RETURNS TABLE (id uuid, document_id uuid, text text, start_page integer, end_page integer, page_label text,
               document_name text, score double precision, similarity double precision)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    recorded text := (SELECT model FROM embedding_index WHERE embedding_index.id = 1);
    query_vector vector := CAST(search_vector AS vector);
BEGIN
    IF recorded <> search_model THEN  -- none recorded yet: the first document's indexing records it
        RAISE EXCEPTION 'the index was built with another embedding model'
            USING ERRCODE = 'CC001', DETAIL = recorded;
    END IF;
    PERFORM set_config('hnsw.ef_search', (
            CASE WHEN own.chunks >= total.chunks THEN candidates
                 ELSE least(1000, ceil(1.25 * candidates * total.chunks / greatest(own.chunks, 1))) END
        )::int::text, true)
    FROM (SELECT greatest(coalesce(sum(chunks), 0), 1) AS chunks FROM index_stats) AS total,
         (SELECT coalesce(max(chunks), 0) AS chunks FROM index_stats WHERE organization_id = search_org) AS own;
    RETURN QUERY
    WITH stats AS (
        SELECT s.chunks::float8 AS n, greatest(s.total_length::float8 / greatest(s.chunks, 1), 1) AS avgdl
        FROM index_stats s WHERE s.organization_id = search_org
    ), terms AS (
        SELECT l.lexeme, l.df, ln(1 + (stats.n - l.df + 0.5) / (l.df + 0.5)) AS idf
        FROM lexicon l, stats
        WHERE l.organization_id = search_org AND l.df > 0
          AND l.lexeme = ANY(tsvector_to_array(to_tsvector('english', search_query)))
    ), rarest AS (
        SELECT t.lexeme, sum(t.df) OVER (ORDER BY t.df, t.lexeme) AS matches,
               row_number() OVER (ORDER BY t.df, t.lexeme) AS n
        FROM terms t
    ), matching AS (  -- the rarest terms whose matches fit the budget (at least one term)
        SELECT string_agg(quote_literal(r.lexeme), ' | ')::tsquery AS q
        FROM rarest r WHERE r.n = 1 OR (r.matches <= match_budget AND r.n <= match_terms)
    ), pool AS (
        SELECT c.id, c.search, c.length
        FROM chunks c JOIN documents d ON d.id = c.document_id AND d.status = 'ready', matching
        WHERE c.organization_id = search_org AND c.search @@ matching.q
        ORDER BY ts_rank(c.search, matching.q, 1) DESC
        LIMIT lexical_pool
    ), lexical AS (
        SELECT pool.id, sum(
            terms.idf * counted.tf * (1.2 + 1) / (counted.tf + 1.2 * (0.25 + 0.75 * pool.length / stats.avgdl))
        ) AS score
        FROM pool
        CROSS JOIN LATERAL (
            SELECT u.lexeme, (cardinality(u.positions) + cardinality(array_positions(u.weights, 'A')))::float8 AS tf
            FROM unnest(pool.search) u
        ) counted
        JOIN terms ON terms.lexeme = counted.lexeme, stats
        GROUP BY pool.id
        ORDER BY score DESC
        LIMIT lexical_candidates
    ), dense AS (
        SELECT c.id, 1 - (c.embedding <=> query_vector) AS score
        FROM chunks c JOIN documents d ON d.id = c.document_id AND d.status = 'ready'
        WHERE c.organization_id = search_org
        ORDER BY c.embedding <=> query_vector
        LIMIT dense_candidates
    ), dense_scaled AS (  -- min-max to [0, 1]; a ranking whose scores are all equal scales to 1
        SELECT dense.id, dense.score AS similarity,
               coalesce((dense.score - min(dense.score) OVER ())
                        / nullif(max(dense.score) OVER () - min(dense.score) OVER (), 0), 1) AS s
        FROM dense
    ), lexical_scaled AS (
        SELECT lexical.id,
               coalesce((lexical.score - min(lexical.score) OVER ())
                        / nullif(max(lexical.score) OVER () - min(lexical.score) OVER (), 0), 1) AS s
        FROM lexical
    ), fused AS (
        SELECT id, dense_scaled.similarity,
               dense_weight * coalesce(dense_scaled.s, 0) + (1 - dense_weight) * coalesce(lexical_scaled.s, 0) AS score
        FROM dense_scaled FULL JOIN lexical_scaled USING (id)
    )
    SELECT c.id, c.document_id, c.text, c.start_page, c.end_page, c.page_label::text, d.name::text,
           fused.score, fused.similarity
    FROM fused
    JOIN chunks c ON c.id = fused.id
    JOIN documents d ON d.id = c.document_id
    ORDER BY fused.score DESC, c.id
    LIMIT top_k;
END
$$
"""


def upgrade() -> None:
    op.execute(_SEARCH)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION citechat_search(uuid, text, text, text, integer, integer, integer, integer, integer, integer,"
        " double precision, integer)"
    )
