"""restore: put a verified backup back, following TimescaleDB's documented procedure.

1. Verify the dump against its manifest (size and sha256) before touching
   anything: a truncated or corrupted dump is refused.
2. Restore into a new scratch database, never into the target itself: create the recorded
   extensions first (warning when the installed timescaledb differs from the manifest's),
   SELECT timescaledb_pre_restore(), pg_restore without -j (or psql -v ON_ERROR_STOP=1
   --single-transaction for plain .sql), SELECT timescaledb_post_restore(), ANALYZE.
3. Check every table's row count against the manifest.
4. Only then give the scratch database the target's name. With --force an existing target is
   renamed aside first and dropped after the swap; if anything fails before the swap, the
   scratch database is dropped and the target is exactly as it was.

A --knowledge-only dump holds just knowledge_artifacts: it is restored as data into a target
prepared with the toolkit's own migrations, which carry the functions its columns use.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from .backup import BackupError, good_backups, pg_env, table_counts, verify_backup
from .config import Settings
from .db import connect, database_exists, wait_for_server
from .errors import SingularityOpsError
from .pgbin import find_program


class RestoreError(SingularityOpsError):
    """The restore was refused or failed; the target database is unchanged."""


@dataclass
class RestoreResult:
    """What `restore` did."""

    file: Path
    target: str
    replaced: bool
    tables: dict[str, int]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def latest_backup(directory: Path, dbname: str) -> Path:
    """The newest good full backup of `dbname` in `directory`."""
    backups = good_backups(directory, dbname)
    if not backups:
        raise RestoreError(
            f"no backup of {dbname!r} in {directory} (looked for {dbname}_YYYYMMDDTHHMMSSZ.* with a manifest)"
        )
    return backups[-1]


def _user_tables(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname NOT LIKE '\\_timescaledb%%'"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"
    ).fetchone()[0]  # type: ignore[index]


def _admin(settings: Settings) -> psycopg.Connection:
    return wait_for_server(settings, timeout=settings.connect_timeout)


def _terminate(admin: psycopg.Connection, dbname: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    )


def _rename(admin: psycopg.Connection, old: str, new: str) -> None:
    admin.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def _drop(admin: psycopg.Connection, dbname: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def restore(
    settings: Settings,
    dump: Path,
    *,
    target_db: str | None = None,
    force: bool = False,
) -> RestoreResult:
    """Restore `dump` into target_db (default: the configured database)."""
    started = time.monotonic()
    dump = dump.resolve()
    manifest = verify_backup(dump, settings, list_archive=False)  # refuses corrupted dumps first
    target = target_db or settings.dbname
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    scratch = f"{target[:40]}__restoring_{stamp}"
    aside = f"{target[:40]}__replaced_{stamp}"
    warnings: list[str] = []

    with _admin(settings) as admin:
        exists = database_exists(admin, target)
        if exists:
            with connect(settings, target) as conn:
                populated = _user_tables(conn)
            if populated and not force:
                raise RestoreError(
                    f"database {target!r} is not empty ({populated} tables); restore into another "
                    "database with --target-db NAME, or pass --force to replace it (safely: the "
                    "old one is only dropped after the new one is complete)"
                )
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(scratch)
            )
        )
        try:
            counts = _restore_into(settings, dump, manifest, scratch, warnings)
        except BaseException:
            _drop(admin, scratch)
            raise
        # The swap: the only moment the target name changes hands.
        if exists:
            _terminate(admin, target)
            _rename(admin, target, aside)
        try:
            _rename(admin, scratch, target)
        except psycopg.Error:
            if exists:
                _rename(admin, aside, target)
            _drop(admin, scratch)
            raise
        if exists:
            _drop(admin, aside)
    return RestoreResult(dump, target, exists, counts, time.monotonic() - started, warnings)


def _restore_into(
    settings: Settings, dump: Path, manifest: dict, dbname: str, warnings: list[str]
) -> dict[str, int]:
    recorded = {k: v for k, v in manifest["extensions"].items() if k != "plpgsql"}
    with connect(settings, dbname, autocommit=True) as conn:
        for name, version in recorded.items():
            try:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {} CASCADE").format(
                        sql.Identifier(name)
                    )
                )
            except psycopg.Error as exc:
                raise RestoreError(
                    f"the backup needs extension {name} {version}, which cannot be created here: "
                    f"{exc.diag.message_primary}"
                ) from None
            installed = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = %s", (name,)
            ).fetchone()[0]  # type: ignore[index]
            if installed != version:
                message = (
                    f"extension {name} is {installed} here but the backup was made with {version}"
                )
                if name == "timescaledb":
                    message += "; TimescaleDB restores need the same version, check the result"
                warnings.append(message)
        timescale = "timescaledb" in recorded
        if manifest.get("knowledge_only"):
            from .migrate import migrate

            migrate(conn, settings.migrations_dir)
        if timescale:
            conn.execute("SELECT timescaledb_pre_restore()")
    try:
        _run_restore(settings, dump, manifest, dbname)
    finally:
        if timescale:
            with connect(settings, dbname, autocommit=True) as conn:
                conn.execute("SELECT timescaledb_post_restore()")
    with connect(settings, dbname, autocommit=True) as conn:
        conn.execute("ANALYZE")
        found = {
            t["table"]: t["rows"]
            for t in table_counts(conn, [t["table"] for t in manifest["tables"]])
        }
    # Backups made with --verify record exact counts from the dump's own snapshot.
    expected = {t["table"]: t["rows"] for t in manifest["tables"] if "rows" in t}
    missing = [t["table"] for t in manifest["tables"] if t["table"] not in found]
    if missing:
        raise RestoreError(
            f"restored database lacks table(s) {', '.join(missing)} of the backup; target left unchanged"
        )
    wrong = {t: (n, found.get(t)) for t, n in expected.items() if found.get(t) != n}
    if wrong:
        detail = ", ".join(
            f"{t}: {got} rows, expected {want}" for t, (want, got) in sorted(wrong.items())
        )
        raise RestoreError(
            f"restored database does not match the backup's manifest ({detail}); target left unchanged"
        )
    return found


def _run_restore(settings: Settings, dump: Path, manifest: dict, dbname: str) -> None:
    conninfo, env = pg_env(_with_db(settings, dbname))
    if manifest["format"] == "plain":
        psql = find_program("psql", settings.bindir)
        cmd = [
            str(psql.path),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            f"--dbname={conninfo}",
        ]
        stdin_path: Path | None = dump
    else:
        pg_restore = find_program("pg_restore", settings.bindir)
        cmd = [str(pg_restore.path), "--exit-on-error", "--no-owner", f"--dbname={conninfo}"]
        if manifest.get("knowledge_only"):
            cmd += ["--data-only", "--table=knowledge_artifacts"]
        if manifest["format"] == "directory":
            cmd.append(str(dump))
            stdin_path = None
        else:
            stdin_path = dump  # streamed: works through wrappers, never read into memory
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        out = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, env=env, check=False)
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        raise BackupError(
            f"restoring {dump.name} failed (exit {out.returncode}); target left unchanged: {' | '.join(lines[-4:])}"
        )


def _with_db(settings: Settings, dbname: str) -> Settings:
    from dataclasses import replace

    return replace(settings, dbname=dbname)
