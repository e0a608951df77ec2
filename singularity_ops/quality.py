"""`validate --quality`: the artifacts retrieval will struggle with, and why, one line each.

From the files alone: no description, a description of a few words, a name that only repeats
the id. From the database (rows embedded with the configured model): near-duplicates, pairs
of different artifacts whose vectors are closer than a threshold, which a search cannot tell
apart (the same pattern in several languages without the language in the text, copies).
This is how the people who curate templates_data/ improve what agents find.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .corpus import Artifact
from .embed import TEXT_VERSION
from .glossary import describe
from .providers import EmbeddingConfig, model_key

MIN_DESCRIPTION_WORDS = 5
NEAR_DUPLICATE_SIMILARITY = 0.95


@dataclass(frozen=True)
class QualityIssue:
    """One thing that makes an artifact hard to find."""

    path: str  # relative to the import root
    artifact: str  # type/id@version
    issue: str  # no-description, short-description, name-repeats-id, near-duplicate
    reason: str
    other_path: str | None = None  # near-duplicate: the other artifact's file

    def __str__(self) -> str:
        return f"{self.path}: {self.issue}: {self.reason}"


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9A-Za-z]+", text.lower()) if w]


def lint_artifacts(artifacts: Iterable[Artifact]) -> list[QualityIssue]:
    """The file-level checks, in path order."""
    issues = []
    for artifact in sorted(artifacts, key=lambda a: a.source_path):
        content = json.loads(artifact.content_raw)
        metadata = content.get("metadata") if isinstance(content.get("metadata"), dict) else {}

        def field(key: str, content=content, metadata=metadata):
            value = content.get(key) or metadata.get(key)
            return value if isinstance(value, str) and value.strip() else None

        label = f"{artifact.artifact_type}/{artifact.artifact_id}@{artifact.version}"
        description = field("description") or field("summary")
        if description is None:
            known = describe(artifact.artifact_id, field("name") or "")
            issues.append(
                QualityIssue(
                    artifact.source_path,
                    label,
                    "no-description",
                    "no description: searches by what it does (not by its name) will miss it; "
                    "add one sentence saying what it is for"
                    + (
                        " (meanwhile search embeds the glossary's generic line for it)"
                        if known
                        else ""
                    ),
                )
            )
        elif len(_words(description)) < MIN_DESCRIPTION_WORDS:
            issues.append(
                QualityIssue(
                    artifact.source_path,
                    label,
                    "short-description",
                    f"the description has {len(_words(description))} word(s); say what it "
                    "does and when to use it",
                )
            )
        name = field("name") or field("title")
        # An identifier-shaped name (nats_consumer_go, vault): no words beyond the id's.
        # "Circuit Breaker" for circuit_breaker is a fine name and is not reported.
        if (
            name is not None
            and not re.search(r"\s", name.strip())
            and _words(name) == _words(artifact.artifact_id)
        ):
            issues.append(
                QualityIssue(
                    artifact.source_path,
                    label,
                    "name-repeats-id",
                    f"the name {name!r} only repeats the id; a name in words people use "
                    "helps both search modes",
                )
            )
    return issues


def near_duplicates(
    conn: psycopg.Connection,
    config: EmbeddingConfig,
    threshold: float = NEAR_DUPLICATE_SIMILARITY,
) -> list[QualityIssue]:
    """Pairs of different artifacts (not versions of one) embedded closer than `threshold`,
    each pair once, most similar first. Uses the model's HNSW index: one nearest-neighbour
    probe per artifact."""
    key = model_key(config, TEXT_VERSION)
    vector = f"vector({int(config.dimensions)})"
    # The model as a literal, so that the planner can use its partial HNSW index.
    statement = sql.SQL(
        """
        SELECT a.source_path, a.artifact_type || '/' || a.artifact_id || '@' || a.version,
               n.source_path, n.artifact_type || '/' || n.artifact_id || '@' || n.version,
               n.similarity
        FROM knowledge_artifacts a
        CROSS JOIN LATERAL (
            SELECT b.id, b.source_path, b.artifact_type, b.artifact_id, b.version,
                   1 - (b.embedding::{vector} <=> a.embedding::{vector}) AS similarity
            FROM knowledge_artifacts b
            WHERE b.embedding_model = {key} AND b.id <> a.id
              AND (b.artifact_type, b.artifact_id) <> (a.artifact_type, a.artifact_id)
            ORDER BY b.embedding::{vector} <=> a.embedding::{vector}
            LIMIT 3
        ) n
        WHERE a.embedding_model = {key} AND n.similarity >= %(threshold)s
        ORDER BY n.similarity DESC, 1, 3
        """.replace("{vector}", vector)
    ).format(key=sql.Literal(key))
    rows = conn.execute(statement, {"threshold": threshold}).fetchall()
    seen: set[frozenset] = set()
    issues = []
    for path, label, other_path, other_label, similarity in rows:
        pair = frozenset((label, other_label))
        if pair in seen:
            continue
        seen.add(pair)
        issues.append(
            QualityIssue(
                path or label,
                label,
                "near-duplicate",
                f"{similarity:.3f} similar to {other_label} ({other_path or 'not from a file'}); "
                "searches cannot tell them apart: say in each what makes it different "
                "(language, scope), or merge them",
                other_path,
            )
        )
    return issues
