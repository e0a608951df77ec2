"""import: upsert the artifacts of templates_data/ into knowledge_artifacts in one transaction.

Unchanged files (same content hash and source path) are not written at all. Changed files
update content but keep the learning metrics; their embedding becomes stale because
what the embedding was computed from changed. Rows go through COPY into a staging table and one
INSERT ... ON CONFLICT merge, never one round trip per file.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .config import DEFAULT_MAX_PRUNE_SHARE
from .corpus import Artifact, Problem, Scan
from .db import advisory_lock, lock_key
from .errors import InvalidArtifacts, SingularityOpsError
from .faults import pause_point

IMPORT_LOCK_KEY = lock_key("import")


@dataclass
class ImportResult:
    """Counts of what import did (or, with dry_run, would do)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0  # non-artifact files (schemas, manifests, non-JSON)
    invalid: int = 0
    pruned: int = 0
    orphaned: int = 0  # rows from git whose file is gone, not pruned (no --prune)
    dry_run: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # rows whose file is gone, kept (no --prune)
    pruned_rows: list[str] = field(default_factory=list)  # ... deleted (or, dry run, to delete)
    # what changes: "inserted type/id@version (path)", "updated ..."
    changes: list[str] = field(default_factory=list)
    need_embedding: int = 0  # artifacts (all of them, not only this import's) `embed` has to do
    notes: list[str] = field(default_factory=list)  # files left out on purpose (corpus.Scan.notes)
    glossary_notes: int = 0  # rows whose glossary line (for text search) was written again


# A handful of files may always be pruned: in a small corpus one deletion is already a large
# share (config.DEFAULT_MAX_PRUNE_SHARE).
PRUNE_ALWAYS_ALLOWED = 5


def known_sources(conn: psycopg.Connection) -> dict[str, tuple[str, str, str, str]]:
    """source_path -> (content_hash, type, id, version) of rows from git, for corpus.scan(known=)."""
    return {
        path: (content_hash, t, i, v)
        for path, content_hash, t, i, v in conn.execute(
            "SELECT source_path, content_hash, artifact_type, artifact_id, version"
            " FROM knowledge_artifacts WHERE source IN ('git', 'learned') AND source_path IS NOT NULL"
        )
    }


def _in_scope(source_path: str | None, scopes: list[str]) -> bool:
    if source_path is None:
        return False
    for scope in scopes:
        if scope == "" or source_path == scope or source_path.startswith(scope.rstrip("/") + "/"):
            return True
    return False


def import_artifacts(
    conn: psycopg.Connection,
    scan: Scan,
    *,
    skip_invalid: bool = False,
    dry_run: bool = False,
    prune: bool = False,
    include_learned: bool = False,
    lock_timeout: float = 60,
    corpus: str | None = None,
    force: bool = False,
    max_prune_share: float = DEFAULT_MAX_PRUNE_SHARE,
) -> ImportResult:
    """Upsert `scan.artifacts`. Strict unless skip_invalid: any problem means nothing is written.

    Rows remember their corpus (default: the import root's directory name); prune removes
    only rows of this corpus whose files are gone, and refuses to remove more than
    max_prune_share of the corpus unless force (a wrong --templates looks like that)."""
    corpus = corpus or scan.root.name
    started = time.monotonic()
    result = ImportResult(
        notes=list(scan.notes),
        skipped=len(scan.skipped),
        invalid=len(scan.problems),
        dry_run=dry_run,
        problems=[str(p) for p in scan.problems],
    )
    if scan.problems and not skip_invalid:
        raise InvalidArtifacts(
            f"{len(scan.problems)} invalid file(s) under {scan.root}; nothing was imported "
            "(fix them, or pass --skip-invalid to import the rest):\n"
            + "\n".join(f"  {p}" for p in scan.problems)
        )
    try:
        with contextlib.suppress(psycopg.Rollback):  # a dry run leaves through the rollback
            _write(
                conn,
                scan,
                result,
                dry_run=dry_run,
                prune=prune,
                include_learned=include_learned,
                lock_timeout=lock_timeout,
                corpus=corpus,
                force=force,
                max_prune_share=max_prune_share,
            )
    except psycopg.Error as exc:
        detail = exc.diag.message_primary or str(exc)
        raise SingularityOpsError(
            f"import failed and was rolled back, nothing was written: {detail}"
        ) from None
    if not dry_run:
        result.need_embedding = conn.execute(
            "SELECT count(*) FROM knowledge_artifacts"
            " WHERE embedding IS NULL OR embedded_hash IS DISTINCT FROM embedding_source_hash"
        ).fetchone()[0]  # type: ignore[index]
    if not dry_run and (result.inserted or result.updated):
        # Rows written in bulk wait in the full-text index's pending list, which every text
        # and hybrid search scans until (auto)vacuum merges it (after loading 100,000 rows,
        # hybrid searches took 26 ms instead of 7). Merge it now, not during the searches.
        conn.execute(
            "SELECT gin_clean_pending_list(to_regclass('knowledge_artifacts_search_document'))"
        )
    result.seconds = time.monotonic() - started
    return result


def _write(
    conn: psycopg.Connection,
    scan: Scan,
    result: ImportResult,
    *,
    dry_run: bool,
    prune: bool,
    include_learned: bool,
    lock_timeout: float,
    corpus: str,
    force: bool,
    max_prune_share: float,
) -> None:
    with conn.transaction(), advisory_lock(conn, IMPORT_LOCK_KEY, "import", wait=lock_timeout):
        existing = {
            (t, i, v): (pk, h, path, source, rows_corpus)
            for pk, t, i, v, h, path, source, rows_corpus in conn.execute(
                "SELECT id, artifact_type, artifact_id, version, content_hash, source_path, source,"
                " corpus FROM knowledge_artifacts"
            )
        }
        to_write: list[Artifact] = []
        for artifact in scan.artifacts:
            current = existing.get(artifact.key)
            if current is None:
                result.inserted += 1
                to_write.append(artifact)
                result.changes.append(f"inserted {_label(artifact)}")
            elif current[1:] != (
                artifact.content_hash,
                artifact.source_path,
                artifact.source,
                corpus,
            ):
                result.updated += 1
                to_write.append(artifact)
                result.changes.append(f"updated {_label(artifact)}")
            else:
                result.unchanged += 1

        seen = {a.key for a in scan.artifacts}
        invalid_paths = {_problem_path(p) for p in scan.problems}
        orphans = [
            (pk, key, path)
            for key, (pk, _hash, path, source, rows_corpus) in existing.items()
            if key not in seen
            and rows_corpus == corpus  # another corpus's rows are never this import's orphans
            and (source == "git" or (source == "learned" and include_learned))
            and path not in invalid_paths  # a broken file is not a deleted file
            and _in_scope(path, scan.scopes)
        ]
        size = sum(1 for row in existing.values() if row[4] == corpus)
        many = len(orphans) > max(max_prune_share * size, PRUNE_ALWAYS_ALLOWED)
        if prune and not force and many:
            raise SingularityOpsError(
                f"--prune would delete {len(orphans)} of the {size} artifacts of corpus "
                f"{corpus!r} (more than {max_prune_share:.0%}, import.max_prune_share), with their "
                f"usage history; is {scan.root} the right import root? Check with --dry-run, "
                "then pass --force if it is"
            )
        orphan_labels = sorted(f"{t}/{i}@{v} ({path})" for _pk, (t, i, v), path in orphans)
        if prune:
            result.pruned = len(orphans)
            result.pruned_rows = orphan_labels
        else:
            result.orphaned = len(orphans)
            result.orphans = orphan_labels

        if not dry_run:
            if to_write:
                _merge(conn, to_write, corpus)
            if prune and orphans:
                conn.execute(
                    "DELETE FROM knowledge_artifacts WHERE id = ANY(%s)",
                    ([pk for pk, _k, _p in orphans],),
                )
            result.glossary_notes = refresh_glossary_notes(conn)
            pause_point("import:before-commit")
        else:
            # A dry run writes nothing: leave through the rollback path on purpose.
            raise psycopg.Rollback()


def _label(artifact: Artifact) -> str:
    t, i, v = artifact.key
    return f"{t}/{i}@{v} ({artifact.source_path})"


def _problem_path(problem: Problem) -> str:
    location = problem.location
    # strip :line:column
    parts = location.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0]
    return location


def _merge(conn: psycopg.Connection, artifacts: list[Artifact], corpus: str) -> None:
    from .glossary import note_digest

    # The glossary's line goes in with the row: writing it in a pass afterwards wrote every
    # new or changed row twice (a dead copy each, until vacuum).
    digest = note_digest()
    conn.execute(
        "CREATE TEMP TABLE import_staging (artifact_type text, artifact_id text, version text,"
        " content_raw text, source_path text, source text, glossary_note text,"
        " glossary_digest text) ON COMMIT DROP"
    )
    with conn.cursor().copy(
        "COPY import_staging (artifact_type, artifact_id, version, content_raw, source_path,"
        " source, glossary_note, glossary_digest) FROM STDIN"
    ) as copy:
        for a in artifacts:
            copy.write_row(
                (
                    *(a.artifact_type, a.artifact_id, a.version, a.content_raw),
                    *(a.source_path, a.source, a.glossary_note),
                    digest if a.glossary_checked else None,  # None: refresh_glossary_notes
                )
            )
    conn.execute(
        """
        INSERT INTO knowledge_artifacts
            (artifact_type, artifact_id, version, content_raw, content, source_path, source, corpus,
             glossary_note, glossary_digest)
        SELECT artifact_type, artifact_id, version, content_raw, content_raw::jsonb, source_path,
               source, %s, glossary_note, glossary_digest
        FROM import_staging
        ON CONFLICT (artifact_type, artifact_id, version) DO UPDATE SET
            content_raw = EXCLUDED.content_raw,
            content = EXCLUDED.content,
            source_path = EXCLUDED.source_path,
            source = EXCLUDED.source,
            corpus = EXCLUDED.corpus,
            glossary_note = EXCLUDED.glossary_note,
            glossary_digest = EXCLUDED.glossary_digest
        """,
        (corpus,),
    )


# The rows whose glossary line is not the running code's: IS DISTINCT FROM, spelt so that the
# index of migration 0013 answers it (a whole-table scan otherwise, 50 ms at 100k rows).
STALE_GLOSSARY_SQL = (
    "SELECT id, artifact_id, content FROM knowledge_artifacts WHERE glossary_digest IS NULL"
    " OR glossary_digest < %(digest)s OR glossary_digest > %(digest)s"
)


def refresh_glossary_notes(conn: psycopg.Connection) -> int:
    """Write `glossary_note` (what text search indexes beside a thin artifact) for the rows
    whose `glossary_digest` is not the running code's: every row after the glossary changes
    (or right after migration 0012), and rows written without parsing their file. Rows an
    import writes normally carry theirs already. Returns how many rows were written."""
    from .glossary import note_digest, note_for

    current = note_digest()
    ids: list[Any] = []
    notes: list[str | None] = []
    with conn.cursor(name="glossary_notes") as rows:  # server side: a whole table may be due
        rows.itersize = 2000
        rows.execute(STALE_GLOSSARY_SQL, {"digest": current})
        for pk, artifact_id, content in rows:
            ids.append(pk)
            notes.append(note_for(artifact_id, content))
    if ids:
        conn.execute(
            "UPDATE knowledge_artifacts AS k SET glossary_note = n.note, glossary_digest = %s"
            " FROM unnest(%s::uuid[], %s::text[]) AS n(id, note) WHERE k.id = n.id",
            (current, ids, notes),
        )
    return len(ids)
