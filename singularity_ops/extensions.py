"""create-extensions: check availability and preload, then CREATE EXTENSION IF NOT EXISTS."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from . import cluster
from .config import Settings
from .db import BUILD_EXTENSIONS, current_build, relation_exists, wait_for_server
from .errors import ClusterError, ExtensionError

# Extensions that must be loaded at server start, not only created.
NEEDS_PRELOAD = {"timescaledb"}

# How to install each extension we know of, for the error message.
INSTALL_HINTS = {
    "vector": "Debian: apt-get install postgresql-17-pgvector; Nix: postgresql_17.withPackages (p: [ p.pgvector ])",
    "timescaledb": "Debian: apt-get install postgresql-17-timescaledb; Nix: postgresql_17.withPackages (p: [ p.timescaledb-apache ])",
    "postgis": "Debian: apt-get install postgresql-17-postgis-3; Nix: postgresql_17.withPackages (p: [ p.postgis ])",
}


@dataclass(frozen=True)
class ExtensionResult:
    """One extension after create-extensions."""

    name: str
    version: str
    created: bool


def installed_extensions(conn: psycopg.Connection) -> dict[str, str]:
    """Extension name -> installed version in the connected database."""
    rows = conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY extname").fetchall()
    return dict(rows)


def check_extensions(conn: psycopg.Connection, names: Sequence[str]) -> None:
    """Raise ExtensionError naming every extension that cannot be created, and how to fix it."""
    available = dict(
        conn.execute(
            "SELECT name, default_version FROM pg_available_extensions WHERE name = ANY(%s)",
            (list(names),),
        ).fetchall()
    )
    problems = []
    for name in names:
        if name not in available:
            hint = INSTALL_HINTS.get(name, "install the package that provides it on the server")
            problems.append(
                f"extension {name!r} is not available on the server (not in pg_available_extensions); "
                f"install it: {hint}"
            )
    preload_raw = conn.execute("SHOW shared_preload_libraries").fetchone()
    preload = {lib.strip() for lib in (preload_raw[0] if preload_raw else "").split(",")}
    for name in NEEDS_PRELOAD.intersection(names):
        if name in available and name not in preload:
            problems.append(
                f"extension {name!r} must be preloaded: add {name} to shared_preload_libraries in "
                "postgresql.conf (or ALTER SYSTEM SET shared_preload_libraries = '"
                f"{','.join(sorted({*preload, name} - {''}))}') and restart the server; "
                "`singularity-ops ensure-db` does this for the project-local cluster"
            )
    if problems:
        raise ExtensionError("\n".join(problems))


# On the Apache build of TimescaleDB every policy job needs the TSL license: the one it
# schedules itself ("Job History Log Retention Policy", job 3) then fails each time it runs,
# and after every restore, with "functionality not supported under the current apache
# license" in the server log. Only telemetry runs under Apache.
_APACHE_RUNNABLE = ("policy_telemetry",)


def unschedule_unlicensed_jobs(conn: psycopg.Connection) -> list[int]:
    """On the Apache build, unschedule TimescaleDB's own jobs that it cannot run (alter_job
    is TSL too, so through its catalog, which needs superuser; without it, nothing changes).
    Returns the job ids unscheduled."""
    if not relation_exists(conn, "_timescaledb_config.bgw_job"):
        return []
    license_row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    if not license_row or license_row[0] != "apache":
        return []
    try:
        with conn.transaction():
            rows = conn.execute(
                "UPDATE _timescaledb_config.bgw_job SET scheduled = false"
                " WHERE scheduled AND proc_schema = '_timescaledb_functions'"
                " AND NOT proc_name = ANY(%s) RETURNING id",
                (list(_APACHE_RUNNABLE),),
            ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return []
    return [r[0] for r in rows]


def create_extensions(conn: psycopg.Connection, names: Sequence[str]) -> list[ExtensionResult]:
    """Create the extensions that are missing, in one transaction. Idempotent.

    Everything is checked first, so a missing extension leaves the database unchanged.
    """
    check_extensions(conn, names)
    before = installed_extensions(conn)
    try:
        with conn.transaction():
            for name in names:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
                )
            unschedule_unlicensed_jobs(conn)
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise ExtensionError(f"CREATE EXTENSION failed: {message}") from None
    after = installed_extensions(conn)
    return [ExtensionResult(n, after[n], n not in before) for n in names]


@dataclass(frozen=True)
class ExtensionUpdate:
    """One extension updated in one database by `server update-extensions`."""

    database: str
    extension: str
    before: str
    after: str


def update_extensions(settings: Settings, timeout: float = 30) -> list[ExtensionUpdate]:
    """TimescaleDB's documented update procedure, on every database of the local cluster:
    a fresh session whose first command is ALTER EXTENSION timescaledb UPDATE; then vector
    and postgis are updated too, and the build now serving the cluster is recorded."""
    if settings.local is None:
        raise ClusterError(
            "update-extensions works on the project-local cluster; on another server, run "
            "ALTER EXTENSION timescaledb UPDATE (psql -X, first command) in each database"
        )
    cluster.start(settings.local, settings.bindir, timeout)
    done = []
    with wait_for_server(settings, timeout) as admin:
        names = [
            r[0]
            for r in admin.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
            )
        ]
        current = current_build(admin)
    recorded = (cluster.read_build(settings.local) or {}).get("extensions") or {}
    for name in names:
        # The first command of a fresh session, as TimescaleDB documents: the loader then
        # does not load the library of the old version, which this build may not have.
        with (
            psycopg.connect(**settings.conninfo(name), autocommit=True) as first,
            contextlib.suppress(psycopg.errors.UndefinedObject),  # none in this database
        ):
            first.execute("ALTER EXTENSION timescaledb UPDATE")
        with psycopg.connect(**settings.conninfo(name), autocommit=True) as conn:
            installed = dict(
                conn.execute("SELECT extname, extversion FROM pg_extension").fetchall()
            )
            for extension in ("vector", "postgis"):
                if extension in installed:
                    conn.execute(
                        sql.SQL("ALTER EXTENSION {} UPDATE").format(sql.Identifier(extension))
                    )
            after = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
        for extension in BUILD_EXTENSIONS:
            if extension in after:
                before = (
                    installed[extension]
                    if extension != "timescaledb"
                    else recorded.get(extension, "?")
                )
                done.append(ExtensionUpdate(name, extension, before, after[extension]))
    cluster.write_build(settings.local, current)
    return done
