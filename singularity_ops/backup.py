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

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from . import __version__
from .config import Settings
from .errors import BackupError, BackupLocked
from .faults import pause_point
from .files import fsync_dir, partial_path, remove, remove_orphans, write_atomically
from .migrate import applied_migrations
from .pgbin import PgProgram, find_program, require_major
from .proc import popen, run_until_done
from .proc import run as run_child

LOCK_FILE = ".singularity-backup.lock"
EXIT_LOCKED = BackupLocked.exit_code  # 75, EX_TEMPFAIL: another backup is running
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


def make_backup_dir(directory: Path) -> None:
    """Create the backup directory (and missing parents) readable by the owner only: dumps
    hold the whole knowledge base. An existing directory keeps its mode."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise BackupError(
            f"cannot create the backup directory {exc.filename or directory}: {exc.strerror}; "
            "choose another --out (or backup.dir)"
        ) from None


@contextmanager
def directory_lock(directory: Path) -> Iterator[int]:
    """flock on the backup directory; an overlapping run fails at once instead of waiting.

    Yields the lock's file descriptor: children get it too, so the lock lasts as long as the
    last of them, not just this process.
    """
    make_backup_dir(directory)
    lock = directory / LOCK_FILE
    try:
        # Never through a symlink (it would truncate whatever it points at), never blocking.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BackupError(
                f"the backup lock {lock} is a symbolic link; this run did nothing. Remove it "
                "(the toolkit creates the lock itself)"
            ) from None
        raise BackupError(
            f"cannot write to the backup directory {directory}: {exc.strerror}; "
            "choose another --out (or backup.dir) or fix its permissions"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackupError(
            f"the backup lock {lock} is not a regular file; this run did nothing. Remove it "
            "(the toolkit creates the lock itself)"
        )
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
        yield fd
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


def _stream_to_file(
    cmd: list[str], env: dict[str, str], target: Path, lock_fd: int
) -> tuple[int, str]:
    """Run pg_dump writing to stdout; copy into `target` (mode 0600) hashing on the way."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        proc = popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=(lock_fd,),
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            pause_point("backup:during-pg_dump", child=proc)
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


def _write_manifest(path: Path, data: dict) -> None:
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def series_name(dbname: str, knowledge_only: bool = False) -> str:
    """The file-name prefix of a database's backups: its name, percent-encoded wherever it is
    not a plain file name (`../x` and `a/b` stay inside the backup directory)."""
    if knowledge_only:
        return "knowledge"
    name = quote(dbname, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def backup_name(dbname: str, knowledge_only: bool, fmt: str, when: datetime) -> str:
    """<series>_YYYYMMDDTHHMMSSZ<ext>; the series is the database name or `knowledge`."""
    return f"{series_name(dbname, knowledge_only)}_{when:%Y%m%dT%H%M%SZ}{FORMATS[fmt]}"


def backup(
    settings: Settings,
    out_dir: Path,
    *,
    fmt: str = "custom",
    knowledge_only: bool = False,
    keep: int | None = None,
    keep_days: float | None = None,
    jobs: int = 1,
    verify: bool = False,
) -> BackupResult:
    """Dump the configured database into out_dir, write its manifest, then apply retention.

    Order of the writes: the dump under a hidden partial name, its manifest under the final
    name, then the dump's rename. A killed run leaves at worst a partial file and a manifest
    whose dump never appeared, both removed by the next run; a final-named dump always has
    its manifest.
    """
    _check_backup_options(fmt, jobs, keep, keep_days)
    started = time.monotonic()
    out_dir = out_dir.resolve()
    # Probing pg_dump's version runs a process (through the wrappers, a namespace setup too):
    # let it overlap with connecting instead of adding to every backup's fixed cost.
    probe = ThreadPoolExecutor(1)
    pg_dump_future = probe.submit(find_program, "pg_dump", settings.bindir)
    probe.shutdown(wait=False)
    with directory_lock(out_dir) as lock_fd:
        remove_leftovers(out_dir)
        dump = _dump(settings, out_dir, pg_dump_future, fmt, knowledge_only, jobs, verify, lock_fd)
        manifest_path = _publish(settings, out_dir, dump, fmt, knowledge_only, verify)
        final = dump.final
        verified = False
        if verify:
            verify_backup(final, settings)
            verified = True
        deleted = (
            apply_retention(out_dir, final, keep=keep, keep_days=keep_days)
            if keep or keep_days
            else []
        )
    return BackupResult(
        final, manifest_path, fmt, dump.size, dump.sha256, time.monotonic() - started,
        verified, deleted,
    )  # fmt: skip


def _check_backup_options(fmt: str, jobs: int, keep: int | None, keep_days: float | None) -> None:
    if fmt not in FORMATS:
        raise BackupError(f"unknown format {fmt!r}; use custom, plain or directory")
    if jobs > 1 and fmt != "directory":
        raise BackupError(
            "--jobs needs --format directory (pg_dump can only parallelise directory dumps)"
        )
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1: the newest good backup is never deleted")
    if keep_days is not None and keep_days <= 0:
        raise BackupError("--keep-days must be more than 0")


@dataclass(frozen=True)
class _Dump:
    """A finished dump under its partial name, and what its manifest says of it."""

    final: Path
    partial: Path
    when: datetime
    size: int
    sha256: str
    pg_dump_version: str
    facts: dict
    tables: dict
    migrations: list


def _dump(
    settings: Settings,
    out_dir: Path,
    pg_dump_future: Future[PgProgram],
    fmt: str,
    knowledge_only: bool,
    jobs: int,
    verify: bool,
    lock_fd: int,
) -> _Dump:
    """pg_dump into a partial file, from a repeatable-read snapshot the counts share."""
    from .db import connect

    with connect(settings) as conn:
        # A repeatable-read snapshot shared with pg_dump: counts and dump see the same rows.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        facts = _server_facts(conn)
        pg_dump = pg_dump_future.result()
        require_major(
            pg_dump, facts["server_major"], f"dumping a PostgreSQL {facts['server_version']} server"
        )
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        only = ["public.knowledge_artifacts"] if knowledge_only else None
        # Exact counts cost a full read of every table, as much as a good part of the
        # dump itself: only with --verify, which is the thorough mode.
        tables = table_counts(conn, only, exact=verify)
        migrations = sorted(applied_migrations(conn))
        when, final = _free_name(settings, out_dir, knowledge_only, fmt)
        partial = partial_path(final)
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
                _run_directory_dump(cmd, env, partial, lock_fd)
                size, sha = directory_digest(partial)
            else:
                size, sha = _stream_to_file(cmd, env, partial, lock_fd)
        except BaseException:
            remove(partial)
            raise
    return _Dump(final, partial, when, size, sha, pg_dump.version, facts, tables, migrations)


def _free_name(
    settings: Settings, out_dir: Path, knowledge_only: bool, fmt: str
) -> tuple[datetime, Path]:
    """The backup's final path: its series' name at this second, never an existing one."""
    while True:
        when = datetime.now(UTC)
        final = out_dir / backup_name(settings.dbname, knowledge_only, fmt, when)
        if not (final.exists() or _manifest_path(final).exists()):
            break
        time.sleep(0.2)  # a backup in this series finished this very second
    if final.parent != out_dir:  # series_name() makes this impossible; never write elsewhere
        raise AssertionError(f"backup path {final} escaped {out_dir}")
    return when, final


def _publish(
    settings: Settings, out_dir: Path, dump: _Dump, fmt: str, knowledge_only: bool, verify: bool
) -> Path:
    """The manifest under the final name, then the dump's rename; a failure removes both."""
    manifest = {
        "tool": TOOL,
        "tool_version": __version__,
        "database": settings.dbname,
        "environment": settings.environment,
        "format": fmt,
        "knowledge_only": knowledge_only,
        "file": dump.final.name,
        "bytes": dump.size,
        "sha256": dump.sha256,
        "created_at": dump.when.isoformat(),
        "pg_dump_version": dump.pg_dump_version,
        "server_version": dump.facts["server_version"],
        "extensions": dump.facts["extensions"],
        "tables": dump.tables,
        "row_counts": "exact" if verify else "estimated",
        "migrations": dump.migrations,
    }
    manifest_path = _manifest_path(dump.final)
    try:
        pause_point("backup:before-manifest")
        _write_manifest(manifest_path, manifest)
        pause_point("backup:before-dump-rename")
        os.replace(dump.partial, dump.final)
        fsync_dir(out_dir)
    except BaseException:
        remove(dump.partial)
        if not dump.final.exists():
            manifest_path.unlink(missing_ok=True)
        raise
    return manifest_path


def _run_directory_dump(cmd: list[str], env: dict[str, str], partial: Path, lock_fd: int) -> None:
    # pg_dump creates the directory and its files: owner only. The umask is the child's own,
    # so this process's (and its other threads') stays as it was.
    code, stderr = run_until_done(
        cmd,
        pause="backup:during-pg_dump",
        stdin=subprocess.DEVNULL,
        env=env,
        pass_fds=(lock_fd,),
        umask=0o077,
    )
    if code != 0:
        raise BackupError(f"pg_dump failed (exit {code}); nothing was kept: {_last_lines(stderr)}")
    for file in partial.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as fh:
                os.fsync(fh.fileno())


def _manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + MANIFEST_SUFFIX)


def remove_leftovers(directory: Path) -> list[str]:
    """What killed runs left: partial files of dead pids, and manifests written just before a
    kill whose dump never got its final name. Called under the directory lock."""
    removed = remove_orphans(directory)
    for manifest in directory.glob(f"*{MANIFEST_SUFFIX}"):
        dump = manifest.with_name(manifest.name.removesuffix(MANIFEST_SUFFIX))
        if NAME_PATTERN.match(dump.name) and not dump.exists() and _ours(manifest):
            manifest.unlink(missing_ok=True)
            removed.append(manifest.name)
    return removed


def _ours(manifest_file: Path) -> bool:
    try:
        data = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == TOOL


# What restore and verify rely on in a manifest, with the type each must have.
_MANIFEST_KEYS = {
    "format": str,
    "bytes": int,
    "sha256": str,
    "database": str,
    "pg_dump_version": str,
    "extensions": dict,
    "tables": list,
}


def read_manifest(dump: Path, *, strict: bool = False) -> dict | None:
    """The manifest beside a dump (`<dump>.manifest.json`, whatever name it records: the pair
    may have been renamed together), or None when there is none of ours.

    With strict, a manifest of ours that lacks what restore needs is an error naming the key.
    """
    path = _manifest_path(dump)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if strict:
            raise BackupError(f"{path}: cannot read the manifest: {exc}") from None
        return None
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        return None
    problems = [
        f"{key} ({kind.__name__})"
        for key, kind in _MANIFEST_KEYS.items()
        if not isinstance(data.get(key), kind)
    ]
    if isinstance(data.get("format"), str) and data["format"] not in FORMATS:
        problems.append(f"format (one of {', '.join(FORMATS)}, not {data['format'][:20]!r})")
    version = data.get("pg_dump_version")
    if isinstance(version, str) and not re.match(r"^\d+(\.\d+)*\b", version):
        problems.append(f"pg_dump_version (a version like 17.6, not {version[:20]!r})")
    if problems:
        if strict:
            raise BackupError(
                f"{path}: the manifest lacks or mistypes {', '.join(problems)}; it was edited "
                "or written by another tool, so the dump cannot be verified: restore from another backup"
            )
        return None
    return data


def find_manifest(dump: Path, *, strict: bool = False) -> dict | None:
    """read_manifest, else a manifest of ours in the same directory recording this dump's size
    and sha256 (a dump renamed or moved without its manifest's new name)."""
    found = read_manifest(dump, strict=strict)
    if found is not None or not dump.exists():
        return found
    size = None
    digest = None
    for candidate in sorted(dump.parent.glob(f"*{MANIFEST_SUFFIX}")):
        other = candidate.with_name(candidate.name.removesuffix(MANIFEST_SUFFIX))
        data = read_manifest(other)
        if data is None:
            continue
        if size is None:
            size = dump.stat().st_size if dump.is_file() else file_digest(dump)[0]
        if data["bytes"] != size:
            continue
        if digest is None:
            digest = file_digest(dump)[1]
        if data["sha256"] == digest:
            return data
    return None


def _good_backups_with_manifests(
    directory: Path, series: str | None
) -> list[tuple[Path, str, dict]]:
    """(dump, series, manifest) of every good backup, oldest first: each manifest read once."""
    found = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = NAME_PATTERN.match(path.name)
        if not match or (series is not None and match["series"] != series):
            continue
        manifest = read_manifest(path)
        if manifest is not None and manifest.get("file") == path.name:
            found.append((match["stamp"], path, match["series"], manifest))
    return [(path, name, manifest) for _stamp, path, name, manifest in sorted(found)]


def good_backups(directory: Path, series: str | None = None) -> list[Path]:
    """Dumps this tool wrote in `directory` under the names it gave them (the name matches
    the scheme and its manifest records it), oldest first. Retention touches nothing else."""
    return [path for path, _series, _manifest in _good_backups_with_manifests(directory, series)]


@dataclass(frozen=True)
class BackupInfo:
    """One good backup in a directory, from its manifest."""

    file: Path
    series: str
    database: str
    created_at: str
    bytes: int
    format: str
    knowledge_only: bool
    exact_counts: bool  # taken with --verify: exact row counts, the dump re-read


def list_backups(directory: Path, series: str | None = None) -> list[BackupInfo]:
    """The good backups in `directory` (those this tool wrote, with their manifests), oldest
    first, optionally of one series."""
    out = []
    for path, name, manifest in _good_backups_with_manifests(directory, series):
        out.append(
            BackupInfo(
                file=path,
                series=name,
                database=str(manifest.get("database", "?")),
                created_at=str(manifest.get("created_at", "")),
                bytes=int(manifest.get("bytes", 0)),
                format=str(manifest.get("format", "?")),
                knowledge_only=bool(manifest.get("knowledge_only")),
                exact_counts=manifest.get("row_counts") == "exact",
            )
        )
    return out


def apply_retention(
    directory: Path, newest: Path, *, keep: int | None = None, keep_days: float | None = None
) -> list[str]:
    """Delete old good backups of newest's series and format; never `newest` itself.

    keep: at most this many (the newest ones). keep_days: delete those older than this many
    days, but (as pg_back's purge_min_keep) never one of the newest `keep` when both are given.
    """
    match = NAME_PATTERN.match(newest.name)
    assert match is not None
    series = [p for p in good_backups(directory, match["series"]) if p.suffix == newest.suffix]
    newest_first = list(reversed(series))
    cutoff = datetime.now(UTC) - timedelta(days=keep_days) if keep_days else None
    doomed = []
    for position, path in enumerate(newest_first):
        if path == newest:
            continue
        stamp = datetime.strptime(NAME_PATTERN.match(path.name)["stamp"], "%Y%m%dT%H%M%SZ")  # type: ignore[index]
        too_old = cutoff is not None and stamp.replace(tzinfo=UTC) < cutoff
        beyond = keep is not None and position >= keep
        if (keep is None or beyond) and (cutoff is None or too_old):
            doomed.append(path)
    deleted = []
    for path in doomed:
        remove(path)
        _manifest_path(path).unlink(missing_ok=True)
        deleted.append(path.name)
    if deleted:
        fsync_dir(directory)
    return deleted


def verify_backup(dump: Path, settings: Settings, *, list_archive: bool = True) -> dict:
    """Check the dump against its manifest (size and sha256) and, for archives, pg_restore --list.

    Restore passes list_archive=False: the checksum already proves the bytes are the ones
    written, and pg_restore reads the archive for real right after (into a scratch database).
    """
    if not dump.exists():
        raise BackupError(f"{dump} does not exist")
    manifest = find_manifest(dump, strict=True)
    if manifest is None:
        raise BackupError(
            f"{dump}: no manifest written by singularity-ops ({dump.name}{MANIFEST_SUFFIX}, or "
            "one in the same directory recording this dump's checksum); it is not a complete "
            "backup of this tool"
        )
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
    _check_format(dump, manifest["format"])
    if pg_restore_future is not None:
        pg_restore = pg_restore_future.result()
        _check_restore_version(pg_restore, manifest)
    if needs_pg_restore and list_archive:
        if manifest["format"] == "custom":
            with open(dump, "rb") as fh:
                out = run_child(
                    [str(pg_restore.path), "--list"],
                    stdin=fh,
                    capture_output=True,
                    text=True,
                    check=False,
                )
        else:
            out = run_child(
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


def _check_format(dump: Path, fmt: str) -> None:
    """The dump is what its manifest says it is (a custom archive starts with PGDMP)."""
    if fmt == "directory":
        if not (dump / "toc.dat").is_file():
            raise BackupError(f"{dump}: the manifest says directory format, but it has no toc.dat")
        return
    if dump.is_dir():
        raise BackupError(f"{dump}: the manifest says {fmt} format, but it is a directory")
    with open(dump, "rb") as fh:
        archive = fh.read(5) == b"PGDMP"
    if fmt == "custom" and not archive:
        raise BackupError(f"{dump}: the manifest says custom format, but it is not an archive")
    if fmt == "plain" and archive:
        raise BackupError(
            f"{dump}: the manifest says plain (SQL) format, but it is a custom archive; the "
            "manifest was edited: restore from another backup"
        )


def _check_restore_version(pg_restore: PgProgram, manifest: dict) -> None:
    dumped_with = int(str(manifest["pg_dump_version"]).split(".")[0])
    require_major(
        pg_restore, dumped_with, f"reading a dump made by pg_dump {manifest['pg_dump_version']}"
    )
