"""The Python API as one object that reads like the CLI, as sqlite-utils' `Database` does:

    from singularity_ops.api import KnowledgeBase
    kb = KnowledgeBase()                       # the CLI's settings (singularity.yaml, env)
    kb.import_()                               # import
    kb.embed()                                 # embed
    result = kb.search("retry with backoff", language="python", limit=5)
    kb.record("code_template", "retry_go", success=True, search_id=result.search_id)
    kb.backup()                                # backup

Each method is one library call (search.search, usage_ingest.record_usage, ...) on a
connection of its own, and returns that call's dataclass: the shapes `--json` prints. The
CLI's search, show and record-usage and the agent server (server.Knowledge, which keeps a
pool and a warm model) go through this class, so all faces share one behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    import psycopg

    from .artifacts import ArtifactView
    from .backup import BackupResult
    from .config import Settings
    from .embed import EmbedResult
    from .importer import ImportResult
    from .search import SearchFailure, SearchResult
    from .usage_ingest import BatchResult, UsageResult
    from .usage_report import UsageReport

T = TypeVar("T")
DEFAULT_LIMIT = 8


class _LazyProvider:
    """The configured embedding provider, created at its first use: search checks the
    database before anything loads a model, and later searches reuse it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: Any = None

    def embed(self, texts: list[str]) -> list:
        if self.loaded is None:
            from .providers import make_provider

            self.loaded = make_provider(self.settings.embedding, queries=True)
        return self.loaded.embed(texts)


class KnowledgeBase:
    """The knowledge base of `settings` (default: resolved as the CLI resolves them)."""

    def __init__(
        self, settings: Settings | None = None, *, provider: Any = None, read_only: bool = False
    ) -> None:
        if settings is None:
            from .config import load_settings

            settings = load_settings()
        self.settings = settings
        self.provider = provider if provider is not None else _LazyProvider(settings)
        self.read_only = read_only

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """A connection (autocommit) to the database, closed on exit: for a caller's own SQL."""
        from .db import connect

        with connect(self.settings, autocommit=True) as conn:
            yield conn

    def _with_conn(self, fn: Callable[[psycopg.Connection], T]) -> T:
        with self.session() as conn:
            return fn(conn)

    def _writable(self) -> None:
        if self.read_only:
            raise ConfigError("this knowledge base was opened read-only: it records no usage")

    # -- search and read ------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        limit: int = DEFAULT_LIMIT,
        mode: str | None = None,
        types: Sequence[str] = (),
        tags: Sequence[str] = (),
        language: str | None = None,
        rank_by: str = "relevance",
        min_similarity: float | None = None,
        notes: list[str] | None = None,
    ) -> SearchResult:
        """search.search: checks first, then the model (vector, hybrid), SQL and the log.
        A corpus folder name among `types` is taken for its type (said in `notes`)."""
        from .search import search

        options = self._query(limit, mode, types, tags, language, rank_by, min_similarity)

        def run(conn: psycopg.Connection) -> SearchResult:
            resolved = replace(options, types=self.resolve_types(options.types, conn, notes))
            return search(
                conn, self.provider, self.settings.embedding, query, resolved, **self._context()
            )

        return self._with_conn(run)

    def search_many(
        self,
        queries: Iterable[Any],
        *,
        on_error: str = "raise",
        notes: list[str] | None = None,
        **filters: Any,
    ) -> Iterator[SearchResult | SearchFailure]:
        """search.search_many: one check and one model load for many queries (`filters` as
        in search); with on_error="yield" a bad query becomes a SearchFailure."""
        from .search import search_many

        options = self._query(**filters)
        with self.session() as conn:
            options = replace(options, types=self.resolve_types(options.types, conn, notes))
            yield from search_many(
                conn,
                self.provider,
                self.settings.embedding,
                queries,
                options,
                on_error=on_error,
                **self._context(),
            )

    def _query(
        self,
        limit: int = DEFAULT_LIMIT,
        mode: str | None = None,
        types: Sequence[str] = (),
        tags: Sequence[str] = (),
        language: str | None = None,
        rank_by: str = "relevance",
        min_similarity: float | None = None,
    ) -> Any:
        from .search import DEFAULT_MODE, SearchQuery

        options = SearchQuery(
            mode or DEFAULT_MODE,
            tuple(types),
            language,
            tuple(tags),
            limit,
            min_similarity,
            rank_by,
        )
        options.check(self.settings.search_limits)  # before any connection
        return options

    def _context(self) -> dict[str, Any]:
        return {
            "environment": self.settings.environment,
            "log": self.settings.search_log,
            "limits": self.settings.search_limits,
        }

    def resolve_types(
        self,
        types: Sequence[str],
        conn: psycopg.Connection | None = None,
        notes: list[str] | None = None,
    ) -> tuple[str, ...]:
        """Type filters as artifact types: a corpus folder name is taken for its type (each
        such reading appended to `notes`); an unknown one is a ConfigError listing the types
        there are."""
        if not types:
            return ()
        from .artifacts import resolve_types

        if conn is None:
            return self._with_conn(lambda c: self.resolve_types(types, c, notes))
        resolved, said = resolve_types(conn, list(types), self.settings.type_map)
        if notes is not None:
            notes.extend(said)
        return tuple(resolved)

    def artifact(
        self,
        artifact_type: str,
        artifact_id: str,
        version: str = "latest",  # artifacts.LATEST
        *,
        max_chars: int | None = 20_000,  # artifacts.VIEW_MAX_CHARS
    ) -> ArtifactView:
        """artifacts.view_artifact: content, source path and how often it helped."""
        from .artifacts import view_artifact

        return self._with_conn(
            lambda conn: view_artifact(
                conn, artifact_type, artifact_id, version, max_chars=max_chars
            )
        )

    # -- outcomes -------------------------------------------------------------------------

    def record(
        self,
        artifact_type: str,
        artifact_id: str,
        *,
        success: bool,
        version: str = "latest",  # artifacts.LATEST
        event_id: str | None = None,
        search_id: str | None = None,
        duration_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        reported_by: str | None = None,
        environment: str | None = None,
    ) -> UsageResult:
        """usage_ingest.record_usage; `reported_by` replaces any reported_by in metadata."""
        from .usage_ingest import record_usage, with_reporter

        self._writable()
        meta = dict(metadata or {}) if reported_by is None else with_reporter(metadata, reported_by)
        return self._with_conn(
            lambda conn: record_usage(
                conn,
                artifact_type,
                artifact_id,
                success=success,
                version=version,
                duration_ms=duration_ms,
                environment=environment or self.settings.environment,
                metadata=meta,
                event_id=event_id,
                search_id=search_id,
            )
        )

    def record_batch(self, events: Sequence[Any], *, reported_by: str | None = None) -> BatchResult:
        """usage_ingest.record_events: the valid events recorded, each invalid one reported."""
        from .usage_ingest import record_events

        self._writable()
        return self._with_conn(
            lambda conn: record_events(
                conn, events, environment=self.settings.environment, reported_by=reported_by
            )
        )

    def report(
        self, since: str = "30d", *, types: Sequence[str] = (), top: int = 10
    ) -> UsageReport:
        """usage_report.usage_report over a window like '30d' or '2w'."""
        from .usage_report import parse_window, usage_report

        days = parse_window(since, "since")
        return self._with_conn(
            lambda conn: usage_report(conn, since_days=days, types=list(types), top=top)
        )

    # -- the setup chain's steps ----------------------------------------------------------

    def import_(
        self, root: Path | None = None, *, include_learned: bool = False, **options: Any
    ) -> ImportResult:
        """importer.import_artifacts of the corpus at `root` (default: the configured
        templates directory, under the configured import.corpus; another root is its own
        corpus, as with `import --templates`); `options` as import_artifacts takes them
        (prune, dry_run, skip_invalid, ...)."""
        from .corpus import scan
        from .importer import import_artifacts, known_sources

        options.setdefault("corpus", self.settings.corpus if root is None else None)
        with self.session() as conn:
            found = scan(
                root or self.settings.templates_dir,
                type_map=self.settings.type_map,
                include_learned=include_learned,
                max_file_bytes=self.settings.max_file_bytes,
                known=known_sources(conn),
            )
            return import_artifacts(conn, found, include_learned=include_learned, **options)

    def embed(self, **options: Any) -> EmbedResult:
        """embed.embed: what has no embedding or a stale one (rebuild=True: everything)."""
        from .embed import embed

        return self._with_conn(
            lambda conn: embed(conn, self.provider, self.settings.embedding, **options)
        )

    def backup(self, out_dir: Path | None = None, **options: Any) -> BackupResult:
        """backup.backup into `out_dir` (default: the configured backup directory)."""
        from .backup import backup

        return backup(self.settings, out_dir or self.settings.backup_dir, **options)
