"""status: one screen an operator reads: server, extensions, migrations, knowledge, learning."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .artifacts import KnowledgeStats, stats
from .config import Settings
from .db import relation_exists
from .extensions import installed_extensions
from .migrate import applied_migrations, discover


@dataclass(frozen=True)
class StatusReport:
    """Everything `status` shows."""

    target: str
    environment: str
    server_version: str
    extensions: dict[str, str]
    migrations_applied: int
    migrations_pending: list[str]
    knowledge: KnowledgeStats | None  # None until the schema is migrated


def collect_status(conn: psycopg.Connection, settings: Settings) -> StatusReport:
    """Read-only: gather the status of the configured database."""
    version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    applied = applied_migrations(conn)
    files = discover(settings.migrations_dir) if settings.migrations_dir.is_dir() else []
    pending = [f.filename for f in files if f.version not in applied]
    has_schema = relation_exists(conn, "knowledge_artifacts")
    return StatusReport(
        target=settings.url(),
        environment=settings.environment,
        server_version=version,
        extensions=installed_extensions(conn),
        migrations_applied=len(applied),
        migrations_pending=pending,
        knowledge=stats(conn) if has_schema else None,
    )
