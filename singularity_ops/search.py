"""search: semantic search over the artifacts embedded with the configured model.

The query is embedded with the same provider. Filters run inside the nearest-neighbour query
(with pgvector 0.8's iterative index scans, so a selective filter still fills top_k), and the
similarity cut-off is applied in SQL on the ordered candidates, as pgvector documents:

    WITH nearest AS MATERIALIZED (SELECT ... WHERE <filters> ORDER BY distance LIMIT k)
    SELECT ... FROM nearest WHERE distance <= 1 - min_similarity ORDER BY distance

Because candidates come nearest first, dropping those under the cut-off after the LIMIT
returns exactly the artifacts that pass both, up to top_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from pgvector import Vector
from psycopg import sql

from .embed import TEXT_VERSION
from .errors import ConfigError
from .providers import EmbeddingConfig, Provider, model_key


@dataclass(frozen=True)
class SearchHit:
    """One result, most similar first."""

    artifact_type: str
    artifact_id: str
    version: str
    similarity: float
    name: str | None
    description: str | None
    language: str | None
    tags: list[str]
    stale: bool  # the content changed since it was embedded


def search_sql(
    dimensions: int, key: str, *, types: bool, language: bool, tags: bool
) -> sql.Composed:
    """The search statement (exposed so tests can EXPLAIN exactly what runs)."""
    vector_type = sql.SQL("vector({})").format(sql.Literal(dimensions))
    distance = sql.SQL("(embedding::{t} <=> %(q)s::{t})").format(t=vector_type)
    # The model is a literal so the planner can match the model's partial HNSW index.
    where = [sql.SQL("embedding_model = {}").format(sql.Literal(key))]
    if types:
        where.append(sql.SQL("artifact_type = ANY(%(types)s)"))
    if language:
        where.append(sql.SQL("language = %(language)s"))
    if tags:
        where.append(sql.SQL("tags @> %(tags)s::text[]"))
    return sql.SQL(
        """
        WITH nearest AS MATERIALIZED (
            SELECT artifact_type, artifact_id, version, language, tags,
                   coalesce(content->>'name', content->'metadata'->>'name') AS name,
                   coalesce(content->>'description', content->'metadata'->>'description') AS description,
                   embedded_hash IS DISTINCT FROM content_hash AS stale,
                   {distance} AS distance
            FROM knowledge_artifacts
            WHERE {where}
            ORDER BY {distance}
            LIMIT %(k)s
        )
        SELECT artifact_type, artifact_id, version, 1 - distance AS similarity, name, description,
               language, tags, stale
        FROM nearest
        WHERE distance <= %(max_distance)s
        ORDER BY distance, artifact_type, artifact_id
        """
    ).format(distance=distance, where=sql.SQL(" AND ").join(where))


def search_vector(
    conn: psycopg.Connection,
    vector: Sequence[float],
    config: EmbeddingConfig,
    *,
    types: Sequence[str] = (),
    language: str | None = None,
    tags: Sequence[str] = (),
    top_k: int = 10,
    min_similarity: float | None = None,
    ef_search: int | None = None,
) -> list[SearchHit]:
    """The nearest artifacts to an already-embedded query (the database part of search).

    `ef_search` (default: embedding.ef_search, at least 2 * top_k) trades latency for recall.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if min_similarity is not None and not -1 <= min_similarity <= 1:
        raise ConfigError(f"--min-similarity must be between -1 and 1, got {min_similarity}")
    key = model_key(config, TEXT_VERSION)
    statement = search_sql(
        config.dimensions, key, types=bool(types), language=bool(language), tags=bool(tags)
    )
    params = {
        "q": Vector(list(vector)),
        "k": top_k,
        "types": list(types),
        "language": language,
        "tags": list(tags),
        "max_distance": 2.0
        if min_similarity is None
        else 1 - min_similarity,  # cosine distance <= 2
    }
    with conn.transaction():
        # Enough candidates for top_k, and keep scanning the index while filters reject rows.
        candidates = max(ef_search or config.ef_search, 2 * top_k)
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(candidates, 1000)),))
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        rows = conn.execute(statement, params).fetchall()
    return [SearchHit(*row) for row in rows]


def search(
    conn: psycopg.Connection,
    provider: Provider,
    config: EmbeddingConfig,
    query: str,
    **filters,
) -> list[SearchHit]:
    """Embed `query` with the configured model and return the nearest artifacts."""
    if not query or not query.strip():
        raise ConfigError("the search query is empty; say what you are looking for")
    [vector] = provider.embed([query.strip()])
    return search_vector(conn, vector, config, **filters)
