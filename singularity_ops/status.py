"""status: one screen an operator reads: server, extensions, migrations, knowledge, learning."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from . import cluster
from .artifacts import KnowledgeStats, stats
from .backup import BackupInfo, list_backups, series_name
from .config import Settings
from .db import connect, relation_exists
from .errors import DatabaseUnavailable
from .extensions import installed_extensions
from .migrate import applied_migrations, discover
from .usage_report import UsageStatus, usage_status

EXIT_UNREACHABLE = 3  # as `server status`: not running is a state to report, not a failure


@dataclass(frozen=True)
class StatusReport:
    """Everything `status` shows. An unreachable server is reported, not raised."""

    target: str
    environment: str
    reachable: bool
    error: str | None = None  # why the server could not be reached
    local_cluster: cluster.ClusterStatus | None = (
        None  # the project-local cluster, if it is the target
    )
    server_version: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    migrations_applied: int = 0
    migrations_pending: list[str] = field(default_factory=list)
    knowledge: KnowledgeStats | None = None  # None until the schema is migrated
    usage: UsageStatus | None = None  # None until migration 0006
    last_backup: BackupInfo | None = None  # the newest good backup of this database in backup.dir
    last_backup_age_hours: float | None = None


def collect_status(settings: Settings, conn: psycopg.Connection | None = None) -> StatusReport:
    """Read-only: gather the status of the configured database (connecting if `conn` is None)."""
    base = {
        "target": settings.redact(settings.url()),
        "environment": settings.environment,
        "local_cluster": cluster.status(settings.local) if settings.local else None,
    }
    if conn is None:
        try:
            conn = connect(settings, autocommit=True)
        except DatabaseUnavailable as exc:
            return StatusReport(**base, reachable=False, error=settings.redact(exc.message))
        with conn:
            return _collect(conn, settings, base)
    return _collect(conn, settings, base)


def _collect(conn: psycopg.Connection, settings: Settings, base: dict) -> StatusReport:
    version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    applied = applied_migrations(conn)
    files = discover(settings.migrations_dir) if settings.migrations_dir.is_dir() else []
    pending = [f.filename for f in files if f.version not in applied]
    has_schema = relation_exists(conn, "knowledge_artifacts")
    has_rollup = relation_exists(conn, "artifact_usage_daily")
    return StatusReport(
        **base,
        reachable=True,
        server_version=version,
        extensions=installed_extensions(conn),
        migrations_applied=len(applied),
        migrations_pending=pending,
        knowledge=stats(conn) if has_schema else None,
        usage=usage_status(conn) if has_rollup else None,
        **_last_backup(settings),
    )


def _last_backup(settings: Settings) -> dict:
    backups = list_backups(settings.backup_dir, series_name(settings.dbname))
    if not backups:
        return {}
    newest = backups[-1]
    try:
        taken = datetime.fromisoformat(newest.created_at)
    except ValueError:
        return {"last_backup": newest}
    age = (datetime.now(UTC) - taken).total_seconds() / 3600
    return {"last_backup": newest, "last_backup_age_hours": round(age, 1)}


def cluster_advice(local: cluster.ClusterStatus, configured_port: int) -> str:
    """What to do about the project's local cluster when the database is unreachable: it
    runs on another port, it runs (so the error is the database's), or it must be started."""
    if local.running and local.port != configured_port:
        return (
            f"running on port {local.port}, but this configuration says {configured_port} "
            "(PGPORT or postgres.local.port): unset it, or `singularity-ops server "
            "stop` and start it again on the new port"
        )
    if local.running:
        return f"running on 127.0.0.1:{local.port} (the error above is the database's)"
    state = "stopped" if local.initialized else "not initialised"
    return f"{state}; start it with `singularity-ops ensure-db`"
