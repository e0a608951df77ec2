"""embed: compute embeddings for artifacts that have none or whose content changed.

Mechanism: knowledge_artifacts.embedding is an untyped `vector`; each row records the model
(`embedding_model`, see providers.model_key) and the hash of what it was computed from
(`embedded_hash`, compared with the generated `embedding_source_hash`: the content without
the keys embedding_text() never reads, so a promoted file with a new `_learning` block is not
re-embedded). Every model gets its own HNSW index on `(embedding::vector(N))`
restricted to its rows (`WHERE embedding_model = '<key>'`), as pgvector documents for
mixed dimensions, so vectors of different models are never compared.

Work is done in batches, each committed on its own: a provider failing mid-run keeps the
batches already done and the next run continues with the rest.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from pgvector import Vector
from psycopg import sql

from .db import advisory_lock, lock_key, relation_exists
from .errors import ModelMismatch
from .faults import pause_point
from .providers import EmbeddingConfig, Provider, ProviderError, make_provider, model_key

# Bump when embedding_text() changes. Rows embedded by the same model under an older text
# version are stale (plain `embed` redoes them, no --rebuild needed); another model is not.
# t2: every field as 'key: words' with identifiers split into words (detector signatures),
# and no type word.
TEXT_VERSION = "t3"
EXCERPT_CHARS = 1200
EMBED_LOCK_KEY = lock_key("embed")
_DESCRIPTIVE_KEYS = ("name", "title", "description", "summary")
_IDENTITY_KEYS = ("id", "version", "artifact_type", "metadata", "tags", "language", "_learning")


@dataclass(frozen=True)
class EmbedResult:
    """What embed did."""

    model: str
    embedded: int
    up_to_date: int
    failed: int
    index: str
    index_created: bool
    seconds: float


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s_\-./\\:(){}\[\]\"'`=*<>,;|&!?#@$%^~+]+")


def humanise(text: str) -> str:
    """Identifiers as words: TracerProvider -> Tracer Provider, falco_rules*.yaml -> falco
    rules yaml, trace.get_tracer( -> trace get tracer. What a detector's signatures mean is
    in those words; the punctuation only splits them."""
    return " ".join(_SEPARATORS.split(_CAMEL.sub(" ", text))).strip()


def _structured_lines(value: Any, key: str, out: list[str], budget: list[int]) -> None:
    """'key: a, b, c' lines (keys and values humanised) until the character budget is spent."""
    if budget[0] <= 0:
        return
    if isinstance(value, Mapping):
        for sub_key, item in value.items():
            _structured_lines(item, str(sub_key), out, budget)
        return
    items = value if isinstance(value, list) else [value]
    words = []
    for item in items:
        if isinstance(item, Mapping | list):
            _structured_lines(item, key, out, budget)
        elif item is not None and (word := humanise(str(item))):
            words.append(word)
    if words:
        line = f"{humanise(key)}: {', '.join(words)}"[: budget[0]]
        out.append(line)
        budget[0] -= len(line) + 1


def embedding_text(artifact_type: str, artifact_id: str, content: Mapping[str, Any]) -> str:
    """The one function from artifact to the text that is embedded.

    Name (or id), description, language, tags, then a bounded excerpt of the rest of the
    content as 'key: words' lines, identifiers spelled as words. Never empty: the name or the
    id is always there. `artifact_type` is not embedded (see below).
    """
    metadata = content.get("metadata") if isinstance(content.get("metadata"), Mapping) else {}

    def field(key: str) -> Any:
        return content.get(key) if content.get(key) not in (None, "") else metadata.get(key)

    # No type word: on bench/relevance_eval.py's tune half it pulled every artifact of a type
    # toward any query using that word (vector MRR@10 0.793 without it, 0.761 with it first,
    # 0.758 as a "kind:" line). --type filters by type instead.
    name = field("name") or field("title") or artifact_id.replace("_", " ")
    lines = [str(name)]
    for key in ("description", "summary"):
        if field(key):
            lines.append(str(field(key)))
    if len(lines) == 1:
        from .glossary import note_for  # only embed pays for the table

        about = note_for(artifact_id, content)
        if about:
            lines.append(about)
    if field("language"):
        lines.append(f"language: {field('language')}")
    tags = field("tags")
    if isinstance(tags, list) and tags:
        lines.append("tags: " + ", ".join(str(t) for t in tags))
    rest = {k: v for k, v in content.items() if k not in _DESCRIPTIVE_KEYS + _IDENTITY_KEYS}
    excerpt: list[str] = []
    _structured_lines(rest, "", excerpt, [EXCERPT_CHARS])
    lines.extend(excerpt)
    return "\n".join(lines)


def index_name(key: str) -> str:
    """The HNSW index of one model (names stay under PostgreSQL's 63 bytes)."""
    return "knowledge_artifacts_embedding_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_index(conn: psycopg.Connection, key: str, dimensions: int) -> bool:
    """Create the model's HNSW cosine index if missing. True when it was created."""
    name = index_name(key)
    if relation_exists(conn, name):
        return False
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {name} ON knowledge_artifacts USING hnsw "
                "((embedding::vector({dims})) vector_cosine_ops) WHERE embedding_model = {key}"
            ).format(name=sql.Identifier(name), dims=sql.Literal(dimensions), key=sql.Literal(key))
        )
    return True


def _drop_emptied_indexes(conn: psycopg.Connection, keys: list[str]) -> None:
    """The HNSW index of an older text version, once no row uses that version any more."""
    for old_key in keys:
        left = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM knowledge_artifacts WHERE embedding_model = %s)",
            (old_key,),
        ).fetchone()[0]  # type: ignore[index]
        if not left:
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(old_key)))
            )


def _stale_condition() -> str:
    return (
        "(embedding IS NULL OR embedding_model IS DISTINCT FROM %(key)s"
        " OR embedded_hash IS DISTINCT FROM embedding_source_hash)"
    )


def embed(
    conn: psycopg.Connection,
    provider: Provider | None,
    config: EmbeddingConfig,
    *,
    rebuild: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedResult:
    """Embed artifacts that have no embedding, a stale one, or (with rebuild) all of them.

    `conn` must be in autocommit mode: every batch is its own transaction. With provider None,
    the configured one is created only when there is work: a run with nothing to do never
    loads a model (seconds of torch import).
    """
    if not conn.autocommit:
        raise ValueError("embed() needs an autocommit connection: each batch commits on its own")
    started = time.monotonic()
    # Fails at once when another embed runs: that one commits batch by batch, so nothing is
    # lost, and a second run would only embed the same rows twice.
    with advisory_lock(conn, EMBED_LOCK_KEY, "embed", wait=0):
        key = model_key(config, TEXT_VERSION)
        todo, total, older_texts = _plan(conn, key, rebuild)
        if todo and provider is None:
            provider = make_provider(config)
        batch_size = batch_size or config.batch_size
        embedded = _embed_all(conn, provider, key, todo, batch_size, progress)  # type: ignore[arg-type]
        # Built after a bulk load (faster than growing it row by row), kept up to date after that.
        created = ensure_index(conn, key, config.dimensions)
        if embedded == len(todo):
            _drop_emptied_indexes(conn, older_texts)
    return EmbedResult(
        model=key,
        embedded=embedded,
        up_to_date=total - len(todo),
        failed=len(todo) - embedded,
        index=index_name(key),
        index_created=created,
        seconds=time.monotonic() - started,
    )


def _plan(conn: psycopg.Connection, key: str, rebuild: bool) -> tuple[list, int, list[str]]:
    """The rows to embed, the number of rows, and the model keys of older text versions of
    this model; ModelMismatch when rows carry another model and rebuild is not asked for."""
    same_model = key.rsplit(":", 1)[0] + ":"
    other = conn.execute(
        "SELECT embedding_model, count(*) FROM knowledge_artifacts"
        " WHERE embedding_model IS NOT NULL AND embedding_model <> %s"
        " AND NOT starts_with(embedding_model, %s) GROUP BY 1 ORDER BY 2 DESC",
        (key, same_model),
    ).fetchall()
    if other and not rebuild:
        found = ", ".join(f"{n} with {m}" for m, n in other)
        raise ModelMismatch(
            f"artifacts are embedded with another model ({found}) but singularity.yaml now asks "
            f"for {key}; run `singularity-ops embed --rebuild` to re-embed everything with it"
        )
    older_texts = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT embedding_model FROM knowledge_artifacts"
            " WHERE starts_with(embedding_model, %s) AND embedding_model <> %s",
            (same_model, key),
        )
    ]
    todo = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM knowledge_artifacts WHERE %(rebuild)s OR {_stale_condition()}"
            " ORDER BY artifact_type, artifact_id, version",
            {"rebuild": rebuild, "key": key},
        )
    ]
    total = conn.execute("SELECT count(*) FROM knowledge_artifacts").fetchone()[0]  # type: ignore[index]
    return todo, total, older_texts


def _embed_all(
    conn: psycopg.Connection,
    provider: Provider,
    key: str,
    todo: list,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Embed `todo` batch by batch, each batch committed on its own; the number embedded."""
    embedded = 0
    for start in range(0, len(todo), batch_size):
        try:
            embedded += _embed_batch(conn, provider, key, todo[start : start + batch_size])
        except ProviderError as exc:
            raise ProviderError(
                f"{exc.message} ({embedded} of {len(todo)} embedded and committed before the "
                "failure; run embed again to continue with the rest)"
            ) from None
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
        pause_point("embed:after-batch")
    return embedded


def _embed_batch(conn: psycopg.Connection, provider: Provider, key: str, ids: list) -> int:
    rows = conn.execute(
        "SELECT id, artifact_type, artifact_id, content, embedding_source_hash FROM knowledge_artifacts"
        " WHERE id = ANY(%s) ORDER BY artifact_type, artifact_id, version",
        (ids,),
    ).fetchall()
    texts = [embedding_text(t, i, content) for _pk, t, i, content, _h in rows]
    try:
        vectors = provider.embed(texts)
    except ProviderError:
        raise
    except Exception as exc:  # a model library failing is still the provider failing
        raise ProviderError(
            f"the {provider.name} embedding model failed: {type(exc).__name__}: {exc}"
        ) from exc
    with conn.transaction(), conn.cursor() as cur:
        # Only rows whose content did not change while we were embedding are updated.
        cur.executemany(
            "UPDATE knowledge_artifacts SET embedding = %s, embedding_model = %s,"
            " embedded_hash = %s, embedded_at = now() WHERE id = %s AND embedding_source_hash = %s",
            [
                (Vector(vec), key, content_hash, pk, content_hash)
                for (pk, _t, _i, _c, content_hash), vec in zip(rows, vectors, strict=True)
            ],
        )
    return len(rows)
