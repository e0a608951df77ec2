"""backup: cron-safe pg_dump backups that are verified, rotated and restorable.

- The dump streams from pg_dump's stdout into a temporary file in the backup directory
  (sha256 computed on the way, nothing held in memory), is fsynced, and only then renamed to
  its final name; the manifest follows the same way. No truncated file ever carries a final
  name, and a backup counts as good only when both its dump and its manifest exist.
- pg_dump runs on a snapshot exported by our own transaction, so the row counts recorded in
  the manifest are exactly the rows in the dump; restore checks them.
- A flock on the backup directory makes an overlapping run exit at once (exit code 75).
- Retention deletes, after a successful backup only, the oldest good backups of the same
  series beyond --keep, and only files whose name matches the scheme and whose manifest says
  this tool wrote them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from . import __version__
from .config import Settings
from .errors import SingularityOpsError
from .migrate import applied_migrations
from .pgbin import PgProgram, find_program, require_major

LOCK_FILE = ".singularity-backup.lock"
EXIT_LOCKED = 75  # EX_TEMPFAIL: another backup is running; try again later
FORMATS = {"custom": ".dump", "plain": ".sql", "directory": ".dir"}
NAME_PATTERN = re.compile(r"^(?P<series>.+)_(?P<stamp>\d{8}T\d{6}Z)(?P<ext>\.dump|\.sql|\.dir)$")
MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 1024 * 1024
TOOL = "singularity-ops"
# Schemas whose tables are reached through their parents (hypertable chunks) or are internal.
_SKIP_SCHEMAS = (
    "pg_catalog",
    "information_schema",
    "_timescaledb_catalog",
    "_timescaledb_internal",
    "_timescaledb_cache",
    "_timescaledb_config",
    "_timescaledb_functions",
    "_timescaledb_debug",
    "timescaledb_information",
    "timescaledb_experimental",
    "topology",
    "tiger",
    "tiger_data",
)


class BackupError(SingularityOpsError):
    """pg_dump failed, or the backup could not be written or verified."""


class BackupLocked(SingularityOpsError):
    """Another backup holds the lock on the backup directory."""

    exit_code = EXIT_LOCKED


@dataclass
class BackupResult:
    """What `backup` wrote."""

    path: Path
    manifest: Path
    format: str
    bytes: int
    sha256: str
    seconds: float
    verified: bool
    deleted: list[str] = field(default_factory=list)


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """flock on the backup directory; an overlapping run fails at once instead of waiting."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise BackupLocked(
                f"another backup is running in {directory} (lock {LOCK_FILE}, held by pid {holder}); "
                f"this run did nothing (exit {EXIT_LOCKED})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def pg_env(settings: Settings) -> tuple[str, dict[str, str]]:
    """A conninfo for the command line (no password) and the environment carrying the password."""
    from psycopg.conninfo import make_conninfo

    params = {k: v for k, v in settings.conninfo().items() if k != "password"}
    params.pop("connect_timeout", None)
    env = dict(os.environ)
    if settings.password:
        env["PGPASSWORD"] = settings.password
    return make_conninfo(**params), env


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _server_facts(conn: psycopg.Connection) -> dict:
    server_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    extensions = dict(
        conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1").fetchall()
    )
    return {
        "server_version": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
        "server_major": server_num // 10000,
        "extensions": extensions,
    }


def table_counts(
    conn: psycopg.Connection, only: list[str] | None = None, *, exact: bool = True
) -> list[dict]:
    """Row counts and sizes of user tables (hypertables counted through their parent).

    exact=True counts every row (a full scan of each table: as costly as reading it);
    exact=False reads the planner's estimate instead ("rows_estimate"), which is free.
    """
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%'
          AND NOT c.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """,
        (list(_SKIP_SCHEMAS),),
    ).fetchall()
    tables = []
    for schema, name, size, estimate in rows:
        qualified = f"{schema}.{name}"
        if only is not None and qualified not in only:
            continue
        hypertable = _hypertable_facts(conn, schema, name)
        entry: dict = {"table": qualified, "bytes": hypertable[0] if hypertable else size}
        if exact:
            entry["rows"] = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
            ).fetchone()[0]  # type: ignore[index]
        else:
            entry["rows_estimate"] = max(hypertable[1] if hypertable else estimate, 0)
        tables.append(entry)
    return tables


def _hypertable_facts(conn: psycopg.Connection, schema: str, name: str) -> tuple[int, int] | None:
    """(total bytes, approximate rows) of a hypertable, or None for a plain table."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT hypertable_size(r), approximate_row_count(r)"
                " FROM (SELECT format('%%I.%%I', %s::text, %s::text)::regclass AS r) t"
                " WHERE EXISTS (SELECT 1 FROM timescaledb_information.hypertables"
                "  WHERE hypertable_schema = %s AND hypertable_name = %s)",
                (schema, name, schema, name),
            ).fetchone()
    except psycopg.Error:
        return None  # no timescaledb in this database
    return (row[0], row[1]) if row else None


def _stream_to_file(cmd: list[str], env: dict[str, str], target: Path) -> tuple[int, str]:
    """Run pg_dump writing to stdout; copy into `target` (mode 0600) hashing on the way."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while chunk := proc.stdout.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            stderr = proc.stderr.read().decode(errors="replace")
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            raise BackupError(
                f"pg_dump failed (exit {code}); nothing was kept: {_last_lines(stderr)}"
            )
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _last_lines(text: str, n: int = 4) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no message)"


def _hash_file(digest, path: Path) -> int:
    """Feed a file into `digest` in chunks (never whole into memory); return its size."""
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size


def directory_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 over a directory-format dump: every file's name and bytes, sorted."""
    digest = hashlib.sha256()
    size = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        size += _hash_file(digest, file)
    return size, digest.hexdigest()


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a dump file or directory, streaming."""
    if path.is_dir():
        return directory_digest(path)
    digest = hashlib.sha256()
    size = _hash_file(digest, path)
    return size, digest.hexdigest()


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def backup_name(dbname: str, knowledge_only: bool, fmt: str, when: datetime) -> str:
    """<series>_YYYYMMDDTHHMMSSZ<ext>; the series is the database name or `knowledge`."""
    series = "knowledge" if knowledge_only else dbname
    return f"{series}_{when:%Y%m%dT%H%M%SZ}{FORMATS[fmt]}"


def backup(
    settings: Settings,
    out_dir: Path,
    *,
    fmt: str = "custom",
    knowledge_only: bool = False,
    keep: int | None = None,
    jobs: int = 1,
    verify: bool = False,
) -> BackupResult:
    """Dump the configured database into out_dir, write its manifest, then apply retention."""
    from .db import connect

    if fmt not in FORMATS:
        raise BackupError(f"unknown format {fmt!r}; use custom, plain or directory")
    if jobs > 1 and fmt != "directory":
        raise BackupError(
            "--jobs needs --format directory (pg_dump can only parallelise directory dumps)"
        )
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1: the newest good backup is never deleted")
    started = time.monotonic()
    out_dir = out_dir.resolve()
    # Probing pg_dump's version runs a process (through the wrappers, a namespace setup too):
    # let it overlap with connecting instead of adding to every backup's fixed cost.
    probe = ThreadPoolExecutor(1)
    pg_dump_future = probe.submit(find_program, "pg_dump", settings.bindir)
    probe.shutdown(wait=False)
    with directory_lock(out_dir):
        _remove_stale_partials(out_dir)
        with connect(settings) as conn:
            # A repeatable-read snapshot shared with pg_dump: counts and dump see the same rows.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            facts = _server_facts(conn)
            pg_dump = pg_dump_future.result()
            require_major(
                pg_dump,
                facts["server_major"],
                f"dumping a PostgreSQL {facts['server_version']} server",
            )
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
            only = ["public.knowledge_artifacts"] if knowledge_only else None
            # Exact counts cost a full read of every table, as much as a good part of the
            # dump itself: only with --verify, which is the thorough mode.
            tables = table_counts(conn, only, exact=verify)
            migrations = sorted(applied_migrations(conn))
            when = datetime.now(UTC)
            final = out_dir / backup_name(settings.dbname, knowledge_only, fmt, when)
            while final.exists() or _manifest_path(final).exists():
                time.sleep(0.2)  # a backup in this series finished this very second
                when = datetime.now(UTC)
                final = out_dir / backup_name(settings.dbname, knowledge_only, fmt, when)
            partial = out_dir / f".{final.name}.partial-{os.getpid()}"
            conninfo, env = pg_env(settings)
            cmd = [
                str(pg_dump.path),
                f"--format={fmt}",
                f"--snapshot={snapshot}",
                "--no-password",
                f"--dbname={conninfo}",
            ]
            if knowledge_only:
                cmd.append("--table=public.knowledge_artifacts")
            try:
                if fmt == "directory":
                    cmd += [f"--jobs={jobs}", f"--file={partial}"]
                    _run_directory_dump(cmd, env, partial)
                    size, sha = directory_digest(partial)
                else:
                    size, sha = _stream_to_file(cmd, env, partial)
                os.replace(partial, final)
                _fsync_dir(out_dir)
            except BaseException:
                _remove(partial)
                raise
        manifest = {
            "tool": TOOL,
            "tool_version": __version__,
            "database": settings.dbname,
            "environment": settings.environment,
            "format": fmt,
            "knowledge_only": knowledge_only,
            "file": final.name,
            "bytes": size,
            "sha256": sha,
            "created_at": when.isoformat(),
            "pg_dump_version": pg_dump.version,
            "server_version": facts["server_version"],
            "extensions": facts["extensions"],
            "tables": tables,
            "row_counts": "exact" if verify else "estimated",
            "migrations": migrations,
        }
        manifest_path = _manifest_path(final)
        _write_json_atomically(manifest_path, manifest)
        _fsync_dir(out_dir)
        verified = False
        if verify:
            verify_backup(final, settings)
            verified = True
        deleted = apply_retention(out_dir, final, keep) if keep else []
    return BackupResult(
        final, manifest_path, fmt, size, sha, time.monotonic() - started, verified, deleted
    )


def _run_directory_dump(cmd: list[str], env: dict[str, str], partial: Path) -> None:
    old = os.umask(0o077)
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False
        )
    finally:
        os.umask(old)
    if out.returncode != 0:
        raise BackupError(
            f"pg_dump failed (exit {out.returncode}); nothing was kept: {_last_lines(out.stderr)}"
        )
    for file in partial.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as fh:
                os.fsync(fh.fileno())


def _manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + MANIFEST_SUFFIX)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale_partials(directory: Path) -> None:
    """Temporary files of runs that were killed (their pid is gone) are ours to clean up."""
    for path in directory.glob(".*.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(path)
        except PermissionError:
            pass


def read_manifest(dump: Path) -> dict | None:
    """The manifest of a dump, or None when it is missing or not ours."""
    try:
        data = json.loads(_manifest_path(dump).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != TOOL or data.get("file") != dump.name:
        return None
    return data


def good_backups(directory: Path, series: str | None = None) -> list[Path]:
    """Dumps this tool wrote in `directory` (matching name and manifest), oldest first."""
    found = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = NAME_PATTERN.match(path.name)
        if not match or (series is not None and match["series"] != series):
            continue
        if read_manifest(path) is not None:
            found.append(path)
    return sorted(found, key=lambda p: NAME_PATTERN.match(p.name)["stamp"])  # type: ignore[index]


def apply_retention(directory: Path, newest: Path, keep: int) -> list[str]:
    """Delete the oldest good backups of newest's series and format beyond `keep`."""
    match = NAME_PATTERN.match(newest.name)
    assert match is not None
    series = [p for p in good_backups(directory, match["series"]) if p.suffix == newest.suffix]
    doomed = [p for p in series[:-keep] if p != newest]
    deleted = []
    for path in doomed:
        _remove(path)
        _manifest_path(path).unlink(missing_ok=True)
        deleted.append(path.name)
    if deleted:
        _fsync_dir(directory)
    return deleted


def verify_backup(dump: Path, settings: Settings, *, list_archive: bool = True) -> dict:
    """Check the dump against its manifest (size and sha256) and, for archives, pg_restore --list.

    Restore passes list_archive=False: the checksum already proves the bytes are the ones
    written, and pg_restore reads the archive for real right after (into a scratch database).
    """
    manifest = read_manifest(dump)
    if manifest is None:
        raise BackupError(
            f"{dump}: no manifest ({dump.name}{MANIFEST_SUFFIX}) written by singularity-ops; "
            "it is not a complete backup of this tool"
        )
    if not dump.exists():
        raise BackupError(f"{dump} does not exist")
    needs_pg_restore = manifest["format"] in ("custom", "directory")
    probe = ThreadPoolExecutor(1)
    pg_restore_future = (
        probe.submit(find_program, "pg_restore", settings.bindir) if needs_pg_restore else None
    )
    probe.shutdown(wait=False)
    size, sha = file_digest(dump)
    if (size, sha) != (manifest["bytes"], manifest["sha256"]):
        raise BackupError(
            f"{dump}: does not match its manifest ({size} bytes, sha256 {sha[:12]}; manifest says "
            f"{manifest['bytes']} bytes, {manifest['sha256'][:12]}): it is truncated or corrupted"
        )
    if pg_restore_future is not None:
        pg_restore = pg_restore_future.result()
        _check_restore_version(pg_restore, manifest)
    if needs_pg_restore and list_archive:
        if manifest["format"] == "custom":
            with open(dump, "rb") as fh:
                out = subprocess.run(
                    [str(pg_restore.path), "--list"],
                    stdin=fh,
                    capture_output=True,
                    text=True,
                    check=False,
                )
        else:
            out = subprocess.run(
                [str(pg_restore.path), "--list", str(dump)],
                capture_output=True,
                text=True,
                check=False,
            )
        if out.returncode != 0:
            raise BackupError(
                f"{dump}: pg_restore --list cannot read it: {_last_lines(out.stderr)}"
            )
    return manifest


def _check_restore_version(pg_restore: PgProgram, manifest: dict) -> None:
    dumped_with = int(str(manifest["pg_dump_version"]).split(".")[0])
    require_major(
        pg_restore, dumped_with, f"reading a dump made by pg_dump {manifest['pg_dump_version']}"
    )
