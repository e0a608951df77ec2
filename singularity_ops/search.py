"""search: find artifacts by meaning (vector), by words (text), or both fused (hybrid).

- vector: the query is embedded with the configured model and compared by cosine distance
  through the model's HNSW index. Filters run inside the nearest-neighbour query (pgvector
  0.8's iterative index scans keep a selective filter filling top_k).
- text: PostgreSQL full text over `search_document` (migration 0004: name and id weighted A,
  description, tags and the glossary's line for a thin artifact B (0012), every other
  string D): rows holding every query word first, then
  rows holding some, each group by ts_rank_cd. Needs no model at all.
- hybrid: weighted reciprocal rank fusion (sum of weight / (60 + rank); Cormack et al.) of the
  vector ranking (weight 2) and the rows holding every query word (weight 1), in one
  statement with the same filters
  in both halves. `Fusion` holds the alternatives measured in bench/relevance_eval.py
  (relative score fusion, AND-then-OR text, weights).

Before any model is loaded, `check_search` makes the cheap checks (schema migrated, filters
name values that exist, rows embedded with the configured model): a wrong `--type` fails in
milliseconds instead of after a model load.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import psycopg
from pgvector import Vector
from psycopg import sql

from .embed import TEXT_VERSION
from .errors import ConfigError, SearchUnavailable
from .lines import BadLine
from .providers import EmbeddingConfig, Provider, make_provider, model_key
from .ranking import (
    DEFAULT_RANKING,
    POOL_FACTOR,
    RANKINGS,
    UsageEvidence,
    rerank_proven,
    usage_evidence,
)
from .search_log import log_search, new_search_id

MODES = ("hybrid", "vector", "text")
# Input bounds (issue: a 100 KB query took 11 s and ~1 GB in the backend, growing with the
# square of its length). Each has a singularity.yaml setting: search.max_query_chars,
# search.max_query_words, search.max_top_k, search.statement_timeout_ms.
MAX_QUERY_CHARS = 2000
MAX_QUERY_WORDS = 64
MAX_TOP_K = 200
STATEMENT_TIMEOUT_MS = 5000
_WORD = re.compile(r"\w+")
# bench/results: on the relevance set over the starter corpus hybrid has the best MRR@10.
DEFAULT_MODE = "hybrid"
RRF_K = 60
# Candidates each ranking contributes to the fusion.
FUSION_POOL = 50


@dataclass(frozen=True)
class SearchLimits:
    """Bounds on what one search may ask of the database."""

    max_query_chars: int = MAX_QUERY_CHARS
    max_query_words: int = MAX_QUERY_WORDS
    max_top_k: int = MAX_TOP_K
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS


@dataclass(frozen=True)
class SearchQuery:
    """How to search: the mode, the filters, how many hits and how to rank them. One value
    serves every query text searched with it; the CLI's options, the server's tool arguments
    and Python callers all build one."""

    mode: str = DEFAULT_MODE
    types: Sequence[str] = ()
    language: str | None = None
    tags: Sequence[str] = ()
    top_k: int = 10
    min_similarity: float | None = None
    rank_by: str = DEFAULT_RANKING

    def __post_init__(self) -> None:
        # Lists from callers become tuples: the value stays hashable and unchanged.
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "tags", tuple(self.tags))

    def check(self, limits: SearchLimits | None = None) -> None:
        """The arguments alone: ConfigError (exit 2) naming the option at fault."""
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.rank_by not in RANKINGS:
            raise ConfigError(
                f"--rank-by must be one of {', '.join(RANKINGS)}, got {self.rank_by!r}"
            )
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")
        max_top_k = (limits or SearchLimits()).max_top_k
        if self.top_k > max_top_k:
            raise ConfigError(
                f"--top-k {self.top_k} is more than the limit of {max_top_k} "
                "(search.max_top_k in singularity.yaml)"
            )
        if self.min_similarity is not None:
            if not -1 <= self.min_similarity <= 1:
                raise ConfigError(
                    f"--min-similarity must be between -1 and 1, got {self.min_similarity}"
                )
            if self.mode == "text":
                raise ConfigError(
                    "--min-similarity needs --mode vector or hybrid (text has no similarity)"
                )


def query_problem(query: str, limits: SearchLimits | None = None) -> str | None:
    """Why a query cannot be searched (a message naming the limit and its setting), or None."""
    limits = limits or SearchLimits()
    if not query.strip():
        return "the search query is empty; say what you are looking for"
    if "\x00" in query:
        return "the search query contains a NUL character; remove it"
    if any("\udc80" <= c <= "\udcff" for c in query):
        return "the search query is not valid UTF-8; send UTF-8 text"
    if len(query) > limits.max_query_chars:
        return (
            f"the search query has {len(query):,} characters, more than the limit of "
            f"{limits.max_query_chars:,} (search.max_query_chars in singularity.yaml); "
            "search with the words that matter"
        )
    words = len(_WORD.findall(query))
    if words > limits.max_query_words:
        return (
            f"the search query has {words} words, more than the limit of "
            f"{limits.max_query_words} (search.max_query_words in singularity.yaml); "
            "search with the words that matter"
        )
    return None


@dataclass(frozen=True)
class SearchFailure:
    """One query of a stream that could not be searched (search_many with on_error="yield")."""

    query: str
    error: str


@dataclass(frozen=True)
class Fusion:
    """How hybrid combines its two rankings, and how the text side matches.

    - method "rrf": weighted reciprocal rank fusion, sum of weight / (rrf_k + rank).
    - method "rsf": relative score fusion (Weaviate's): each list's scores min-max normalised
      to [0, 1] over its candidates, then weighted and summed.
    - method "boost": cosine similarity, plus text_weight for rows of the text ranking: the
      vector order, with text breaking near-ties only.
    - text_match "and": artifacts holding every query word rank above those holding only some
      (the OR matches still count, below); "or": any word, ranked by ts_rank_cd alone.
    """

    method: str = "rrf"
    vector_weight: float = 1.0
    text_weight: float = 1.0
    text_match: str = "or"
    rrf_k: int = RRF_K


# Chosen on the tuning half of bench/relevance_eval.json (README, "How the default was
# chosen"): text joins the fusion only with rows that hold every query word, so partial
# matches of a long paraphrase cannot outrank a strong vector hit; short and named queries
# keep their text boost. The tune half is flat from 1:1 to 4:1 (with and without the
# glossary); 2:1 is the middle of that plateau.
DEFAULT_FUSION = Fusion(method="rrf", vector_weight=2.0, text_weight=1.0, text_match="all")
# --mode text alone: rows with every word first, then rows with some (it has no other signal).
TEXT_FUSION = Fusion(text_match="and")


@dataclass(frozen=True)
class SearchHit:
    """One result, best first."""

    artifact_type: str
    artifact_id: str
    version: str
    similarity: float | None  # cosine similarity to the query; None in text mode
    name: str | None
    description: str | None
    language: str | None
    tags: list[str]
    stale: bool  # embedded, but the content changed since
    embedded: bool  # has a vector of the configured model (False: `embed` has not reached it)
    score: float  # what the order follows: similarity, ts_rank_cd, or the fused RRF score
    vector_rank: int | None  # 1-based rank in the vector ranking (None: not among its candidates)
    text_rank: int | None  # 1-based rank in the full-text ranking (None: no query word matched)
    artifact_pk: str  # knowledge_artifacts.id: what the search log and record-usage refer to
    source_path: str | None  # the file under the import root it came from (None: not from git)
    # The glossary's line standing in for a missing description (embedded and indexed for
    # it); None when the artifact describes itself or the glossary does not know it.
    glossary_note: str | None
    evidence: UsageEvidence | None = None  # with --rank-by proven: what the boost knew


@dataclass(frozen=True)
class SearchResult:
    """One answered search: its hits, best first, and the id that ties outcomes to it."""

    search_id: str | None  # None when the search could not be logged (read-only, old schema)
    query: str
    mode: str
    rank_by: str
    hits: list[SearchHit]
    # vector and hybrid: artifacts without a vector of the configured model, which only the
    # text ranking can find (run `embed`)
    unembedded: int = 0
    # no hit passed --min-similarity: the best similarity there was, to say how far off it was
    best_similarity: float | None = None


def _filters(types: bool, language: bool, tags: bool) -> list[sql.Composable]:
    where: list[sql.Composable] = []
    if types:
        where.append(sql.SQL("artifact_type = ANY(%(types)s)"))
    if language:
        where.append(sql.SQL("language = %(language)s"))
    if tags:
        where.append(sql.SQL("tags @> %(tags)s::text[]"))
    return where


def search_sql(
    dimensions: int,
    key: str,
    *,
    mode: str = DEFAULT_MODE,
    types: bool = False,
    language: bool = False,
    tags: bool = False,
    min_similarity: bool = False,
    fusion: Fusion | None = None,
) -> sql.Composed:
    """The search statement of a mode (exposed so tests can EXPLAIN exactly what runs).

    Parameters: %(q)s the query vector (vector, hybrid), %(query)s the query text (text,
    hybrid), %(pool)s candidates per ranking, %(k)s results, %(min_similarity)s the cut-off.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    fusion = fusion or (TEXT_FUSION if mode == "text" else DEFAULT_FUSION)
    vector_type = sql.SQL("vector({})").format(sql.Literal(dimensions))
    filters = _filters(types, language, tags)
    ctes = []
    if mode in ("vector", "hybrid"):
        ctes.append(_vector_cte(key, vector_type, filters))
    if mode in ("text", "hybrid"):
        ctes.append(_text_cte(fusion, filters))
    if mode == "text":
        similarity = sql.SQL("NULL::float8")
    else:
        # Recomputed for the k rows returned: text-only hits of the fusion get one too.
        similarity = sql.SQL(
            "CASE WHEN a.embedding_model = {key} THEN 1 - (a.embedding::{t} <=> %(q)s::{t}) END"
        ).format(key=sql.Literal(key), t=vector_type)
    cutoff = sql.SQL("s.similarity >= %(min_similarity)s" if min_similarity else "TRUE")
    return sql.SQL(
        """
        WITH {ctes},
        ranked AS ({ranked})
        SELECT a.artifact_type, a.artifact_id, a.version, s.similarity,
               coalesce(a.content->>'name', a.content->'metadata'->>'name') AS name,
               coalesce(a.content->>'description', a.content->'metadata'->>'description') AS description,
               a.language, a.tags,
               a.embedded_hash IS NOT NULL AND a.embedded_hash IS DISTINCT FROM a.embedding_source_hash AS stale,
               coalesce(a.embedding_model = {key}, false) AS embedded,
               r.score, r.vector_rank, r.text_rank, a.id::text, a.source_path, a.glossary_note
        FROM ranked r JOIN knowledge_artifacts a USING (id)
        CROSS JOIN LATERAL (SELECT {similarity} AS similarity) s
        WHERE {cutoff}
        ORDER BY r.score DESC, coalesce(r.vector_rank, r.text_rank), a.artifact_type, a.artifact_id
        LIMIT %(k)s
        """
    ).format(
        ctes=sql.SQL(",").join(ctes),
        ranked=_ranked(mode, fusion, key, vector_type),
        similarity=similarity,
        cutoff=cutoff,
        key=sql.Literal(key),
    )


def _vector_cte(key: str, vector_type: sql.Composable, filters: list) -> sql.Composable:
    """vector_hits: the pool nearest rows embedded with the model."""
    distance = sql.SQL("(embedding::{t} <=> %(q)s::{t})").format(t=vector_type)
    # The model is a literal so the planner can match the model's partial HNSW index.
    where = sql.SQL(" AND ").join(
        [sql.SQL("embedding_model = {}").format(sql.Literal(key)), *filters]
    )
    return sql.SQL(
        """
        vector_hits AS MATERIALIZED (
            SELECT id, distance,
                   row_number() OVER (ORDER BY distance, artifact_type, artifact_id, version) AS rank
            FROM (SELECT id, artifact_type, artifact_id, version, {distance} AS distance
                  FROM knowledge_artifacts
                  WHERE {where} ORDER BY {distance} LIMIT %(pool)s) nearest
        )"""
    ).format(distance=distance, where=where)


def _text_where(fusion: Fusion, filters: list) -> sql.Composable:
    """The rows the text ranking may return, by the fusion's text_match: any query word (or,
    "and"), every word (all), or every word when some row holds them all (strict)."""
    if fusion.text_match == "all":
        return sql.SQL(" AND ").join([sql.SQL("search_document @@ tsq_all"), *filters])
    if fusion.text_match == "strict":
        all_where = sql.SQL(" AND ").join([sql.SQL("search_document @@ tsq_all"), *filters])
        strict = sql.SQL(
            "search_document @@ (CASE WHEN EXISTS (SELECT 1 FROM knowledge_artifacts"
            " WHERE {all_where}) THEN tsq_all ELSE tsq END)"
        ).format(all_where=all_where)
        return sql.SQL(" AND ").join([strict, *filters])
    return sql.SQL(" AND ").join([sql.SQL("search_document @@ tsq"), *filters])


def _text_cte(fusion: Fusion, filters: list) -> sql.Composable:
    """text_query and text_hits: the pool best text matches. Words only in stop lists leave
    no lexeme and match nothing. ts_rank_cd is normalised to [0, 1) (flag 32); with
    text_match "and", holding every query word adds 1, so those rows come first and partial
    matches follow."""
    all_words = (
        sql.SQL(" + CASE WHEN search_document @@ tsq_all THEN 1 ELSE 0 END")
        if fusion.text_match == "and"
        else sql.SQL("")
    )
    return sql.SQL(
        """
        text_query AS (
            SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS tsq,
                   string_agg(quote_literal(lexeme), ' & ')::tsquery AS tsq_all
            FROM unnest(to_tsvector('english'::regconfig, %(query)s))
        ),
        text_hits AS MATERIALIZED (
            SELECT id, score,
                   row_number() OVER (ORDER BY score DESC, artifact_type, artifact_id, version) AS rank
            FROM (SELECT id, artifact_type, artifact_id, version,
                         ts_rank_cd(search_document, tsq, 32){all_words} AS score
                  FROM knowledge_artifacts, text_query
                  WHERE {where}
                  ORDER BY score DESC, artifact_type, artifact_id, version LIMIT %(pool)s) matched
        )"""
    ).format(where=_text_where(fusion, filters), all_words=all_words)


def _ranked(mode: str, fusion: Fusion, key: str, vector_type: sql.Composable) -> sql.Composable:
    """`ranked`: (id, score, vector_rank, text_rank) of one ranking, or of the fusion of both."""
    if mode == "vector":
        return sql.SQL(
            "SELECT id, 1 - distance AS score, rank AS vector_rank,"
            " NULL::bigint AS text_rank FROM vector_hits"
        )
    if mode == "text":
        return sql.SQL(
            "SELECT id, score::float8 AS score, NULL::bigint AS vector_rank,"
            " rank AS text_rank FROM text_hits"
        )
    weights = {
        "wv": sql.Literal(float(fusion.vector_weight)),
        "wt": sql.Literal(float(fusion.text_weight)),
    }
    if fusion.method == "rrf":
        return sql.SQL(
            "SELECT id, (coalesce({wv} / ({k} + v.rank), 0)"
            " + coalesce({wt} / ({k} + t.rank), 0))::float8"
            " AS score, v.rank AS vector_rank, t.rank AS text_rank"
            " FROM vector_hits v FULL JOIN text_hits t USING (id)"
        ).format(k=sql.Literal(fusion.rrf_k), **weights)
    if fusion.method == "boost":
        # The vector order, with a bounded lift for rows holding every query word: a text
        # match reorders only artifacts whose similarities are within text_weight of each
        # other, so it can break near-ties but never bury a clearly better vector match.
        return sql.SQL(
            "SELECT id, (coalesce(1 - v.distance,"
            " CASE WHEN a.embedding_model = {key} THEN 1 - (a.embedding::{t} <=> %(q)s::{t}) END,"
            " 0) + CASE WHEN t.id IS NULL THEN 0 ELSE {wt} END)::float8 AS score,"
            " v.rank AS vector_rank, t.rank AS text_rank"
            " FROM vector_hits v FULL JOIN text_hits t USING (id)"
            " JOIN knowledge_artifacts a USING (id)"
        ).format(key=sql.Literal(key), t=vector_type, wt=weights["wt"])
    # Min-max over each list's own candidates; a list of one (or of equal scores) gives 1.
    return sql.SQL(
        "SELECT id, (coalesce({wv} * v.norm, 0) + coalesce({wt} * t.norm, 0))::float8"
        " AS score, v.rank AS vector_rank, t.rank AS text_rank"
        " FROM (SELECT id, rank, coalesce((max(distance) OVER () - distance)"
        "        / nullif(max(distance) OVER () - min(distance) OVER (), 0), 1) AS norm"
        "       FROM vector_hits) v"
        " FULL JOIN (SELECT id, rank, coalesce((score - min(score) OVER ())"
        "        / nullif(max(score) OVER () - min(score) OVER (), 0), 1) AS norm"
        "       FROM text_hits) t USING (id)"
    ).format(**weights)


def _missing(conn: psycopg.Connection, query: str, values: Sequence[str]) -> list[str]:
    return [row[0] for row in conn.execute(query, (list(values),))]


def _known(conn: psycopg.Connection, query: str) -> str:
    values = [row[0] for row in conn.execute(query)]
    shown = ", ".join(values[:30]) + (f", ... ({len(values)} in all)" if len(values) > 30 else "")
    return shown or "none"


def check_search(
    conn: psycopg.Connection,
    config: EmbeddingConfig,
    options: SearchQuery | None = None,
    limits: SearchLimits | None = None,
) -> None:
    """The checks that need no model, in milliseconds: arguments, schema, filter values, and
    (for vector and hybrid) rows embedded with the configured model."""
    options = options or SearchQuery()
    options.check(limits)
    _check_schema(conn)
    _check_filter_values(conn, options.types, options.language, options.tags)
    if options.mode != "text":
        _check_embedded(conn, config)


def _check_schema(conn: psycopg.Connection) -> None:
    """The table and the columns search reads exist (one round trip)."""
    table, columns = conn.execute(
        "SELECT to_regclass('knowledge_artifacts') IS NOT NULL, ARRAY(SELECT attname::text"
        " FROM pg_attribute WHERE attrelid = to_regclass('knowledge_artifacts')"
        " AND attname IN ('search_document', 'glossary_note') AND NOT attisdropped)"
    ).fetchone()  # type: ignore[misc]
    if not table:
        raise SearchUnavailable(
            f"database {conn.info.dbname!r} has no knowledge schema; run `singularity-ops migrate`"
        )
    for column, migration in (("search_document", "0004"), ("glossary_note", "0012")):
        if column not in columns:
            raise SearchUnavailable(
                f"database {conn.info.dbname!r} lacks migration {migration} ({column}), which "
                "search needs; run `singularity-ops migrate`"
            )


def _check_filter_values(
    conn: psycopg.Connection, types: Sequence[str], language: str | None, tags: Sequence[str]
) -> None:
    """Every --type, --language and --tag names a value some artifact has (else the list)."""
    unknown = []
    if types:
        missing = _missing(
            conn,
            "SELECT t FROM unnest(%s::text[]) t WHERE NOT EXISTS"
            " (SELECT 1 FROM knowledge_artifacts WHERE artifact_type = t)",
            types,
        )
        if missing:
            known = _known(
                conn, "SELECT DISTINCT artifact_type FROM knowledge_artifacts ORDER BY 1"
            )
            unknown.append(f"no artifact has type {', '.join(map(repr, missing))} (types: {known})")
    if language and _missing(
        conn,
        "SELECT l FROM unnest(%s::text[]) l WHERE NOT EXISTS"
        " (SELECT 1 FROM knowledge_artifacts WHERE language = l)",
        [language],
    ):
        known = _known(
            conn,
            "SELECT DISTINCT language FROM knowledge_artifacts WHERE language IS NOT NULL ORDER BY 1",
        )
        unknown.append(f"no artifact has language {language!r} (languages: {known})")
    if tags:
        missing = _missing(
            conn,
            "SELECT t FROM unnest(%s::text[]) t WHERE NOT EXISTS"
            " (SELECT 1 FROM knowledge_artifacts WHERE tags @> ARRAY[t])",
            tags,
        )
        if missing:
            known = _known(conn, "SELECT DISTINCT unnest(tags) FROM knowledge_artifacts ORDER BY 1")
            unknown.append(f"no artifact has tag {', '.join(map(repr, missing))} (tags: {known})")
    if unknown:
        raise ConfigError("; ".join(unknown))


def _check_embedded(conn: psycopg.Connection, config: EmbeddingConfig) -> None:
    """Rows embedded with the configured model and text version exist (else what to run)."""
    key = model_key(config, TEXT_VERSION)
    embedded = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM knowledge_artifacts WHERE embedding_model = %s)", (key,)
    ).fetchone()[0]  # type: ignore[index]
    if embedded:
        return
    others = conn.execute(
        "SELECT embedding_model, count(*) FROM knowledge_artifacts WHERE embedding_model IS NOT NULL"
        " GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    same_model = key.rsplit(":", 1)[0] + ":"
    if others and all(m.startswith(same_model) for m, _n in others):
        found = ", ".join(f"{n} with {m}" for m, n in others)
        raise SearchUnavailable(
            f"the artifacts were embedded by an older version of the embedded text ({found}; "
            f"this toolkit uses {key}); run `singularity-ops embed` to bring them up to date "
            "(same model, no --rebuild needed), or search with --mode text meanwhile"
        )
    if others:
        found = ", ".join(f"{n} with {m}" for m, n in others)
        raise SearchUnavailable(
            f"no artifact is embedded with the configured model {key} (found {found}); run "
            "`singularity-ops embed --rebuild`, or search with --mode text meanwhile"
        )
    raise SearchUnavailable(
        "no artifact is embedded yet; run `singularity-ops embed` (or search with --mode text)"
    )


def unembedded_count(conn: psycopg.Connection, config: EmbeddingConfig) -> int:
    """Artifacts without a vector of the configured model: vector ranking cannot find them."""
    key = model_key(config, TEXT_VERSION)
    return conn.execute(UNEMBEDDED_COUNT_SQL, {"key": key}).fetchone()[0]  # type: ignore[index]


# Spelled as ranges so that the btree on embedding_model (migration 0011) reads only the other
# models' entries (normally none); `embed` writes a vector and its model together.
UNEMBEDDED_COUNT_SQL = (
    "SELECT count(*) FROM knowledge_artifacts WHERE embedding_model IS NULL"
    " OR embedding_model < %(key)s OR embedding_model > %(key)s"
)


def run_search(
    conn: psycopg.Connection,
    config: EmbeddingConfig,
    options: SearchQuery,
    *,
    vector: Sequence[float] | None = None,
    query: str | None = None,
    ef_search: int | None = None,
    fusion: Fusion | None = None,
    limits: SearchLimits | None = None,
) -> list[SearchHit]:
    """The database part of search: the query's vector (vector, hybrid) and text (text, hybrid)
    are given. `ef_search` (default: embedding.ef_search, at least the candidates needed)
    trades latency for recall."""
    with conn.transaction():
        return _run_in_transaction(conn, config, options, vector, query, ef_search, fusion, limits)


def _run_in_transaction(
    conn: psycopg.Connection,
    config: EmbeddingConfig,
    options: SearchQuery,
    vector: Sequence[float] | None,
    query: str | None,
    ef_search: int | None = None,
    fusion: Fusion | None = None,
    limits: SearchLimits | None = None,
) -> list[SearchHit]:
    """run_search inside the caller's transaction, whose settings it changes (SET LOCAL)."""
    mode, top_k = options.mode, options.top_k
    if mode != "text" and vector is None:
        raise ValueError(f"mode {mode!r} needs the query's vector")
    limits = limits or SearchLimits()
    if mode != "vector":
        problem = query_problem(query or "", limits)
        if problem:
            raise ConfigError(problem)
    key = model_key(config, TEXT_VERSION)
    statement = search_sql(
        config.dimensions,
        key,
        mode=mode,
        types=bool(options.types),
        language=bool(options.language),
        tags=bool(options.tags),
        min_similarity=options.min_similarity is not None,
        fusion=fusion,
    )
    pool = top_k if mode == "vector" else max(FUSION_POOL, top_k)
    params = {
        "q": Vector(list(vector)) if vector is not None else None,
        "query": query,
        "k": top_k,
        "pool": pool,
        "types": list(options.types),
        "language": options.language,
        "tags": list(options.tags),
        "min_similarity": options.min_similarity,
    }
    # Enough candidates for the pool, and keep scanning the index while filters reject rows.
    # One round trip for every setting. synchronous_commit off: a search writes nothing but
    # its log line, which need not wait for the disk (a crash may lose the last few).
    candidates = max(ef_search or config.ef_search, 2 * pool)
    conn.execute(
        "SELECT set_config('hnsw.ef_search', %s, true),"
        " set_config('hnsw.iterative_scan', 'relaxed_order', true),"
        " set_config('statement_timeout', %s, true), set_config('synchronous_commit', 'off', true)",
        (str(min(candidates, 1000)), str(limits.statement_timeout_ms)),
    )
    try:
        rows = conn.execute(statement, params).fetchall()
    except psycopg.errors.QueryCanceled:
        raise SearchUnavailable(
            f"the search took longer than {limits.statement_timeout_ms} ms "
            "(search.statement_timeout_ms in singularity.yaml) and was cancelled; "
            "narrow it with --type, --language or fewer words"
        ) from None
    return [SearchHit(*row) for row in rows]


def search_vector(
    conn: psycopg.Connection,
    vector: Sequence[float],
    config: EmbeddingConfig,
    options: SearchQuery | None = None,
    **tuning,
) -> list[SearchHit]:
    """Vector search for an already-embedded query (what the recall benchmark measures);
    `tuning`: ef_search, limits."""
    options = replace(options or SearchQuery(), mode="vector")
    return run_search(conn, config, options, vector=vector, **tuning)


def search_many(
    conn: psycopg.Connection,
    provider: Provider | None,
    config: EmbeddingConfig,
    queries: Iterable[str | BadLine],
    options: SearchQuery | None = None,
    *,
    environment: str = "dev",
    log: bool = True,
    on_error: str = "raise",
    limits: SearchLimits | None = None,
    fusion: Fusion | None = None,
) -> Iterator[SearchResult | SearchFailure]:
    """A SearchResult for each non-blank query: the checks run once, the model loads once
    (only when the mode needs it and the checks passed), then each query costs one embedding,
    one statement and (log=True) one insert into the search log, which never fails a search.

    rank_by "proven" re-ranks a larger relevance pool by recent success (ranking.py).
    A query that cannot be searched (query_problem: NUL, invalid UTF-8, over a limit) raises
    ConfigError, or with on_error="yield" becomes a SearchFailure and the stream goes on."""
    options = options or SearchQuery()
    check_search(conn, config, options, limits)
    unembedded = 0 if options.mode == "text" else unembedded_count(conn, config)
    for query in queries:
        if isinstance(query, BadLine):  # from lines.read_lines: too long, or not UTF-8
            if on_error == "yield":
                yield SearchFailure(f"(line {query.number})", f"the query {query.reason}")
                continue
            raise ConfigError(f"line {query.number} of the queries: {query.reason}")
        text = query.strip()
        if not text:
            continue  # a blank line in a stream of queries asks nothing
        problem = query_problem(text, limits)
        if problem:
            if on_error == "yield":
                shown = text[:200].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield SearchFailure(shown, problem)
                continue
            raise ConfigError(problem)
        vector = None
        if options.mode != "text":
            if provider is None:
                provider = make_provider(config, queries=True)
            [vector] = provider.embed([text])
        try:
            with conn.transaction():  # the search and its log line: one commit
                result = _answer(
                    conn,
                    config,
                    options,
                    vector,
                    text,
                    limits,
                    fusion,
                    log,
                    environment,
                    unembedded,
                )
        except _LogFailed as failed:  # rolled back: the search wrote nothing else
            result = replace(failed.result, search_id=None)
        yield result  # committed: a reader may record an outcome against it at once


def _answer(
    conn: psycopg.Connection,
    config: EmbeddingConfig,
    options: SearchQuery,
    vector: Sequence[float] | None,
    text: str,
    limits: SearchLimits | None,
    fusion: Fusion | None,
    log: bool,
    environment: str,
    unembedded: int,
) -> SearchResult:
    """One query's hits, logged (never failing the search), inside the caller's transaction."""
    started = time.perf_counter()
    hits = _ranked_hits(conn, config, options, vector, text, limits, fusion)
    search_id = new_search_id() if log else None
    best = None
    if not hits and options.min_similarity is not None and vector is not None:
        nearest = _run_in_transaction(
            conn, config, replace(options, mode="vector", top_k=1, min_similarity=None),
            vector, text, limits=limits,
        )  # fmt: skip
        best = nearest[0].similarity if nearest else None
    result = SearchResult(search_id, text, options.mode, options.rank_by, hits, unembedded, best)
    if log:
        try:
            log_search(
                conn,
                search_id=search_id,  # type: ignore[arg-type]
                query=text,
                mode=options.mode,
                rank_by=options.rank_by,
                filters={
                    "types": list(options.types),
                    "language": options.language,
                    "tags": list(options.tags),
                },
                top_k=options.top_k,
                artifact_pks=[h.artifact_pk for h in hits],
                environment=environment,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except psycopg.Error:
            raise _LogFailed(result) from None
    return result


class _LogFailed(Exception):
    """The log line could not be written; carries the answer, which stands without it."""

    def __init__(self, result: SearchResult) -> None:
        super().__init__("search log write failed")
        self.result = result


def _ranked_hits(
    conn: psycopg.Connection,
    config: EmbeddingConfig,
    options: SearchQuery,
    vector: Sequence[float] | None,
    text: str,
    limits: SearchLimits | None,
    fusion: Fusion | None,
) -> list[SearchHit]:
    """The hits by relevance, or (rank_by "proven") a larger relevance pool re-ranked."""
    if options.rank_by != "proven":
        return _run_in_transaction(conn, config, options, vector, text, None, fusion, limits)
    pool = _run_in_transaction(
        conn, config, replace(options, top_k=options.top_k * POOL_FACTOR),
        vector, text, None, fusion, limits,
    )  # fmt: skip
    evidence = usage_evidence(conn, [h.artifact_pk for h in pool])
    return rerank_proven(pool, evidence)[: options.top_k]


def search(
    conn: psycopg.Connection,
    provider: Provider | None,
    config: EmbeddingConfig,
    query: str,
    options: SearchQuery | None = None,
    **context,
) -> SearchResult:
    """Search for `query`: checks first, then (vector, hybrid) the model embeds it, then SQL,
    then the search log. With provider None the configured provider is created only after
    the checks passed. `context`: environment, log, limits, fusion (see search_many)."""
    problem = query_problem(query or "", context.get("limits"))
    if problem:
        raise ConfigError(problem)
    [result] = list(search_many(conn, provider, config, [query], options, **context))
    return result  # type: ignore[return-value]
