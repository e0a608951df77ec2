"""The Python API over knowledge_artifacts: get, query, view, statistics (recording usage is
usage_ingest.record_usage).

Every function takes a psycopg connection and works inside the caller's transaction when
one is open (so tests and other code can roll back), or in its own when the connection is
in autocommit mode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from .errors import ArtifactNotFound, SingularityOpsError

LATEST = "latest"
# "latest" is the highest version by numeric parts (1.10.0 > 1.9.0), then by text.
_LATEST_ORDER = "knowledge_version_key(version) DESC, version DESC"

_COLUMNS = """
    id::text AS pk, artifact_type, artifact_id, version, content, content_hash, source_path, source,
    language, tags, usage_count, success_count, success_rate, last_used_at, embedding_model,
    (embedding IS NOT NULL AND embedded_hash = embedding_source_hash) AS embedded, created_at, updated_at
"""


def _lookup(artifact_type: str, artifact_id: str, version: str) -> tuple[str, list[Any], str]:
    """WHERE ... ORDER BY ... LIMIT 1 finding one artifact (latest or given version), its
    parameters, and how to name it in a message. Always by type and id, never by id alone."""
    where = "artifact_type = %s AND artifact_id = %s"
    params: list[Any] = [artifact_type, artifact_id]
    label = f"{artifact_type}/{artifact_id}"
    if version != LATEST:
        where += " AND version = %s"
        params.append(version)
        label += f" version {version}"
    return f"WHERE {where} ORDER BY {_LATEST_ORDER} LIMIT 1", params, label


@dataclass(frozen=True)
class ArtifactRecord:
    """One row of knowledge_artifacts, without the raw text and the vector."""

    pk: str
    artifact_type: str
    artifact_id: str
    version: str
    content: dict[str, Any]
    content_hash: str
    source_path: str | None
    source: str
    language: str | None
    tags: list[str]
    usage_count: int
    success_count: int
    success_rate: float | None
    last_used_at: datetime | None
    embedding_model: str | None
    embedded: bool
    created_at: datetime
    updated_at: datetime


def known_types(conn: psycopg.Connection) -> list[str]:
    """The artifact types present, sorted."""
    return [
        row[0]
        for row in conn.execute("SELECT DISTINCT artifact_type FROM knowledge_artifacts ORDER BY 1")
    ]


def resolve_types(
    conn: psycopg.Connection,
    types: Sequence[str],
    type_map: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """(the artifact types `types` name, a note per name that was taken as something else).

    A corpus folder name (`prompts`) is accepted for the type import.type_map gives it
    (`prompt`); an unknown name is a ConfigError that lists the types there are."""
    from .errors import ConfigError

    if not types:
        return [], []
    # The usual case, every name a type, costs one index probe per name; the full list of
    # types (a scan of the table) is read only to map or report a name that is not one.
    if not conn.execute(
        "SELECT 1 FROM unnest(%s::text[]) t WHERE NOT EXISTS"
        " (SELECT 1 FROM knowledge_artifacts WHERE artifact_type = t) LIMIT 1",
        (list(types),),
    ).fetchone():
        return list(types), []
    known = known_types(conn)
    resolved, notes, unknown = [], [], []
    for name in types:
        mapped = (type_map or {}).get(name)
        if name in known:
            resolved.append(name)
        elif mapped in known:
            resolved.append(mapped)  # type: ignore[arg-type]
            notes.append(f"{name!r} is the folder of artifact type {mapped!r}; using that")
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"no artifact has type {', '.join(map(repr, unknown))} "
            f"(types: {', '.join(known) or 'none, nothing is imported yet'})"
        )
    return resolved, notes


def _not_found(conn: psycopg.Connection, label: str, artifact_type: str, hint: str) -> str:
    detail = ""
    if artifact_type not in (types := known_types(conn)):
        shown = ", ".join(types) or "none: nothing is imported yet"
        detail = f" (there is no type {artifact_type!r}; types: {shown})"
    return f"no artifact {label}{detail}; {hint}"


def get_artifact(
    conn: psycopg.Connection, artifact_type: str, artifact_id: str, version: str = LATEST
) -> ArtifactRecord:
    """One artifact by type and id; `version` defaults to the latest by version ordering."""
    clause, params, label = _lookup(artifact_type, artifact_id, version)
    query = f"SELECT {_COLUMNS} FROM knowledge_artifacts {clause}"
    row = conn.cursor(row_factory=class_row(ArtifactRecord)).execute(query, params).fetchone()
    if row is None:
        raise ArtifactNotFound(
            f"no artifact {label}; list them with `singularity-ops status` or import it first"
        )
    return row


# What get_artifact over MCP returns at most of an artifact's text (--max-chars / max_chars).
VIEW_MAX_CHARS = 20_000


@dataclass(frozen=True)
class ArtifactView:
    """An artifact as `show` and the server's get_artifact give it: the original text (cut at
    max_chars, with `truncated` saying so), the parsed JSON when the text is whole, where it
    came from, and how it has done."""

    artifact_type: str
    artifact_id: str
    version: str
    source_path: str | None
    content_hash: str
    content_raw: str  # the original text, first max_chars characters
    content: Any | None  # the JSON document; None when truncated (the text is cut, not parsed)
    truncated: bool
    total_chars: int
    usage_count: int
    success_count: int
    success_rate: float | None
    last_used_at: datetime | None
    updated_at: datetime


def parse_ref(ref: str) -> tuple[str, str, str]:
    """'TYPE/ID[@VERSION]' -> (type, id, version or LATEST); ValueError says what is wrong."""
    body, _, version = ref.partition("@")
    artifact_type, slash, artifact_id = body.partition("/")
    if not slash or not artifact_type or not artifact_id or (ref.count("@") and not version):
        raise ValueError(
            f"{ref[:120]!r} is not TYPE/ID[@VERSION] (for example pattern/nats-consumer@1.2.0); "
            "`singularity-ops search` prints them"
        )
    return artifact_type, artifact_id, version or LATEST


def view_artifact(
    conn: psycopg.Connection,
    artifact_type: str,
    artifact_id: str,
    version: str = LATEST,
    *,
    max_chars: int | None = None,
) -> ArtifactView:
    """One artifact's text and figures; `max_chars` cuts the text (None: all of it)."""
    if max_chars is not None and max_chars < 1:
        raise SingularityOpsError(f"max_chars must be at least 1, got {max_chars}")
    clause, params, label = _lookup(artifact_type, artifact_id, version)
    limit = max_chars if max_chars is not None else 2**30
    row = conn.execute(
        "SELECT artifact_type, artifact_id, version, source_path, content_hash,"
        " left(content_raw, %s), CASE WHEN char_length(content_raw) <= %s THEN content END,"
        " char_length(content_raw) > %s, char_length(content_raw), usage_count, success_count,"
        f" success_rate, last_used_at, updated_at FROM knowledge_artifacts {clause}",
        [limit, limit, limit, *params],
    ).fetchone()
    if row is None:
        raise ArtifactNotFound(
            _not_found(
                conn,
                label,
                artifact_type,
                "find artifacts with `search` (singularity-ops search QUERY)",
            )
        )
    return ArtifactView(*row)


def query_artifacts(
    conn: psycopg.Connection,
    *,
    contains: Mapping[str, Any] | None = None,
    types: Sequence[str] = (),
    language: str | None = None,
    tags: Sequence[str] = (),
    latest_only: bool = True,
    limit: int | None = 100,
) -> list[ArtifactRecord]:
    """Artifacts matching JSONB containment and filters (tags: all must be present)."""
    where, params = ["TRUE"], []
    if contains:
        where.append("content @> %s::jsonb")
        params.append(json.dumps(contains))
    if types:
        where.append("artifact_type = ANY(%s)")
        params.append(list(types))
    if language:
        where.append("language = %s")
        params.append(language)
    if tags:
        where.append("tags @> %s::text[]")
        params.append(list(tags))
    base = f"SELECT {_COLUMNS} FROM knowledge_artifacts WHERE {' AND '.join(where)}"
    if latest_only:
        base = (
            f"SELECT DISTINCT ON (artifact_type, artifact_id) * FROM ({base}) q "
            f"ORDER BY artifact_type, artifact_id, knowledge_version_key(version) DESC, version DESC"
        )
    query = f"SELECT * FROM ({base}) r ORDER BY artifact_type, artifact_id, version"
    if limit is not None:
        query += " LIMIT %s"
        params.append(limit)
    return conn.cursor(row_factory=class_row(ArtifactRecord)).execute(query, params).fetchall()


@dataclass(frozen=True)
class TypeCount:
    artifact_type: str
    artifacts: int


@dataclass(frozen=True)
class EmbeddingCounts:
    present: int
    stale: int
    missing: int


@dataclass(frozen=True)
class Ranked:
    artifact_type: str
    artifact_id: str
    version: str
    usage_count: int
    success_rate: float | None


@dataclass(frozen=True)
class KnowledgeStats:
    """Counts for `status`."""

    total: int
    by_type: list[TypeCount]
    embeddings: EmbeddingCounts
    usage_events: int
    top_used: list[Ranked]
    best_success_rate: list[Ranked]


def stats(conn: psycopg.Connection, *, top: int = 5, min_usage_for_rate: int = 1) -> KnowledgeStats:
    """Artifacts by type, embedding freshness, most used and most successful artifacts."""
    by_type = [
        TypeCount(*r)
        for r in conn.execute(
            "SELECT artifact_type, count(*) FROM knowledge_artifacts GROUP BY 1 ORDER BY 1"
        )
    ]
    present, stale, missing = conn.execute(
        "SELECT count(*) FILTER (WHERE embedding IS NOT NULL AND embedded_hash = embedding_source_hash),"
        " count(*) FILTER (WHERE embedding IS NOT NULL"
        " AND embedded_hash IS DISTINCT FROM embedding_source_hash),"
        " count(*) FILTER (WHERE embedding IS NULL) FROM knowledge_artifacts"
    ).fetchone()  # type: ignore[misc]
    usage_events = conn.execute("SELECT count(*) FROM artifact_usage").fetchone()[0]  # type: ignore[index]
    ranked = "SELECT artifact_type, artifact_id, version, usage_count, success_rate FROM knowledge_artifacts"
    top_used = [
        Ranked(*r)
        for r in conn.execute(
            f"{ranked} WHERE usage_count > 0 ORDER BY usage_count DESC, artifact_type, artifact_id LIMIT %s",
            (top,),
        )
    ]
    best = [
        Ranked(*r)
        for r in conn.execute(
            f"{ranked} WHERE usage_count >= %s ORDER BY success_rate DESC, usage_count DESC,"
            " artifact_type, artifact_id LIMIT %s",
            (min_usage_for_rate, top),
        )
    ]
    return KnowledgeStats(
        total=sum(t.artifacts for t in by_type),
        by_type=by_type,
        embeddings=EmbeddingCounts(present, stale, missing),
        usage_events=usage_events,
        top_used=top_used,
        best_success_rate=best,
    )
