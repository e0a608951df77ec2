"""restore: put a verified backup back without ever leaving the target half-restored.

Why it restores into a scratch database and swaps names (the README's backup section lists the
steps): a pg_restore into the live database can fail halfway, and TimescaleDB's documented
procedure (pre/post_restore around a non-parallel pg_restore) needs a database of its own. The
rename of target and scratch is one transaction, so the target name always resolves to a
complete database, the old one or the new one; leftovers of a killed run are named
`<target>__restoring_<time>` / `<target>__replaced_<time>` and removed by the next run.

A --knowledge-only dump carries no learning data, so the live usage history of the artifacts
it holds is copied over from the database being replaced (after closing it to new
connections, so no event recorded meanwhile is lost); events of artifacts it lacks would be
lost, and the restore refuses unless discard_orphaned_usage is given.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from .backup import BackupError, good_backups, pg_env, series_name, table_counts, verify_backup
from .config import Settings
from .db import advisory_lock, connect, database_exists, lock_key, relation_exists, wait_for_server
from .errors import ConfigError, RestoreError
from .faults import pause_point
from .pgbin import find_program
from .proc import run_until_done

RESTORE_LOCK_KEY = lock_key("restore")
USAGE = "artifact_usage"
DAILY = "artifact_usage_daily"
KEYS = "usage_event_keys"
IDENTITY = ("artifact_type", "artifact_id", "version")
COUNTERS = ("usage_count", "success_count", "last_used_at")


@dataclass
class RestoreResult:
    """What `restore` did."""

    file: Path
    target: str
    replaced: bool
    tables: dict[str, int]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)  # leftovers of killed restores removed
    usage_kept: int = 0  # knowledge-only: usage events carried over from the replaced database
    usage_discarded: int = 0  # ... and events dropped because their artifact is not in the backup
    # A full restore over a database: its usage events used after the backup was taken (not
    # in the backup, so gone with the replaced database), and their first and last time.
    usage_lost: int = 0
    usage_lost_span: list[str] | None = None


def latest_backup(directory: Path, dbname: str) -> Path:
    """The newest good full backup of `dbname` in `directory`."""
    series = series_name(dbname)
    backups = good_backups(directory, series)
    if not backups:
        raise RestoreError(
            f"no backup of {dbname!r} in {directory} (looked for {series}_YYYYMMDDTHHMMSSZ.* with a manifest)"
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


def _terminate(admin: psycopg.Connection, dbname: str, keep: tuple[int, ...] = ()) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> ALL(%s)",
        (dbname, list(keep)),
    )


def _rename(admin: psycopg.Connection, old: str, new: str) -> None:
    admin.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def _drop(admin: psycopg.Connection, dbname: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def _allow_connections(admin: psycopg.Connection, dbname: str, allow: bool) -> None:
    admin.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(dbname), sql.SQL("true" if allow else "false")
        )
    )


# Databases a restore creates carry this mark in their (server-wide) comment, with the target
# and what the run did: cleanup acts on these and nothing else, whatever their names.
MARK = "singularity-ops restore:"


def _mark(admin: psycopg.Connection, dbname: str, record: dict | None) -> None:
    text = None if record is None else MARK + json.dumps(record, sort_keys=True)
    admin.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(dbname), sql.Literal(text))
    )


def _restored_from(admin: psycopg.Connection, dbname: str) -> str | None:
    """The database a restore of this toolkit filled `dbname` from, per its mark, or None."""
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (dbname,),
    ).fetchone()
    record = _read_mark(row[0] if row else None)
    return record.get("from_database") if record and record.get("kind") == "restored" else None


def _read_mark(comment: str | None) -> dict | None:
    """The record a restore of this toolkit left in a database's comment, or None."""
    if not comment or not comment.startswith(MARK):
        return None
    try:
        record = json.loads(comment[len(MARK) :])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def leftover_name(target: str, kind: str, stamp: str) -> str:
    """`<target>__<kind>_<stamp>` within PostgreSQL's 63 bytes whatever the target's length
    (the target is cut on a character boundary; the comment keeps its full name)."""
    suffix = f"__{kind}_{stamp}"
    room = 63 - len(suffix.encode())
    head = target.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + suffix


def tracked_leftovers(admin: psycopg.Connection) -> list[tuple[str, dict]]:
    """(database, record) for every database a restore of this toolkit left (by its mark)."""
    rows = admin.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE starts_with(coalesce(shobj_description(oid, 'pg_database'), ''), %s)"
        " ORDER BY datname",
        (MARK,),
    ).fetchall()
    out = []
    for name, comment in rows:
        record = _read_mark(comment)
        if record and record.get("kind") in ("restoring", "replaced"):
            out.append((name, record))
    return out


def cleanup_leftovers(admin: psycopg.Connection) -> list[str]:
    """Remove what killed restores of this toolkit left, on the whole server. Call with the
    restore lock held. Only databases carrying the toolkit's mark are touched: a DBA's own
    `x__restoring_20260101000000` is not.

    - a scratch database ("restoring"); if its run had closed the target (it died between
      closing the target and the swap), the target is reopened first.
    - an old copy after a swap ("replaced"); dropped. If the target itself is missing (never
      after an atomic swap, but kept safe anyway), the copy is renamed back instead.
    """
    done = []
    for name, record in tracked_leftovers(admin):
        target = str(record.get("target", ""))
        closed = admin.execute(
            "SELECT NOT datallowconn FROM pg_database WHERE datname = %s AND NOT datistemplate",
            (target,),
        ).fetchone()
        if record["kind"] == "restoring":
            if record.get("closed_target") and closed and closed[0]:
                _allow_connections(admin, target, True)
                done.append(f"reopened {target}")
            _drop(admin, name)
            done.append(f"dropped {name}")
        elif closed is None:
            _rename(admin, name, target)
            _mark(admin, target, None)
            _allow_connections(admin, target, True)
            done.append(f"renamed {name} back to {target}")
        else:
            _drop(admin, name)
            done.append(f"dropped {name}")
    return done


def closed_databases(admin: psycopg.Connection) -> list[str]:
    """Databases a killed restore closed to connections and left closed (status shows them)."""
    return [
        str(record.get("target"))
        for _name, record in tracked_leftovers(admin)
        if record["kind"] == "restoring" and record.get("closed_target")
    ]


def cleanup(settings: Settings, *, lock_timeout: float = 60) -> list[str]:
    """`restore --cleanup`: take the restore lock and remove leftovers of killed restores."""
    with (
        _admin(settings) as admin,
        advisory_lock(admin, RESTORE_LOCK_KEY, "restore", wait=lock_timeout),
    ):
        return cleanup_leftovers(admin)


def find_backup(settings: Settings, file: Path) -> Path:
    """The backup FILE names: the path itself, or for a bare name that is not in the current
    directory (as `backup` prints it), that name in the backup directory."""
    if file.exists():
        return file
    beside = settings.backup_dir / file.name
    if file.parent != Path(".") or not beside.exists():
        raise ConfigError(
            f"backup {file} does not exist"
            + ("" if file.parent != Path(".") else f" (nor in {settings.backup_dir})")
        )
    return beside


def restore(
    settings: Settings,
    dump: Path,
    *,
    target_db: str | None = None,
    force: bool = False,
    from_other_database: bool = False,
    discard_orphaned_usage: bool = False,
    lock_timeout: float = 60,
    trust_plain_dump: bool = False,
) -> RestoreResult:
    """Restore `dump` into target_db (default: the configured database).

    A plain (SQL) dump runs through psql, which also runs psql meta-commands (`\\! cmd` runs
    a shell command). The manifest's checksum proves the bytes are the ones written, not who
    wrote them: unless trust_plain_dump, a plain dump holding any meta-command besides the
    ones pg_dump writes (\\connect, \\restrict, \\unrestrict) is refused.
    """
    started = time.monotonic()
    dump = dump.resolve()
    manifest = verify_backup(dump, settings, list_archive=False)  # refuses corrupted dumps first
    if manifest["format"] == "plain" and not trust_plain_dump:
        _refuse_unexpected_meta_commands(dump)
    target = target_db or settings.dbname
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    scratch = leftover_name(target, "restoring", stamp)
    aside = leftover_name(target, "replaced", stamp)
    result = RestoreResult(dump, target, False, {}, 0.0)

    with (
        _admin(settings) as admin,
        advisory_lock(admin, RESTORE_LOCK_KEY, "restore", wait=lock_timeout),
    ):
        result.cleaned = cleanup_leftovers(admin)
        exists = database_exists(admin, target)
        if exists:
            _check_replaceable(admin, settings, target, dump, manifest, force, from_other_database)
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(scratch)
            )
        )
        record = {
            "kind": "restoring",
            "target": target,
            "started": stamp,
            "from_database": manifest["database"],
        }
        _mark(admin, scratch, record)
        closed = False
        try:
            result.tables = _restore_into(settings, dump, manifest, scratch, result.warnings)
            pause_point("restore:before-swap")
            if exists:
                source = connect(settings, target, autocommit=True)
                try:
                    # From here on nobody else can connect to the target: no event recorded
                    # meanwhile can be lost, and the renames cannot meet a live session.
                    # Marked first, in one transaction with the close: a kill from here on
                    # leaves a scratch database that says the target needs reopening.
                    with admin.transaction():
                        _mark(admin, scratch, {**record, "closed_target": True})
                        _allow_connections(admin, target, False)
                    closed = True
                    _terminate(admin, target, keep=(source.info.backend_pid,))
                    pause_point("restore:target-closed")
                    _keep_or_count_usage(
                        settings, source, scratch, manifest, result, discard_orphaned_usage
                    )
                finally:
                    source.close()
            _swap(admin, target, scratch, aside, exists, record)
            closed = False
        except BaseException:
            _drop(admin, scratch)
            if closed:
                _allow_connections(admin, target, True)
            raise
        result.replaced = exists
        if exists:
            pause_point("restore:after-swap")
            _drop(admin, aside)
    result.seconds = time.monotonic() - started
    return result


def _refuse_unexpected_meta_commands(dump: Path) -> None:
    """A plain dump may hold only the psql meta-commands pg_dump writes."""
    found = plain_meta_commands(dump)
    if found:
        shown = "; ".join(f"line {n}: {text[:60]}" for n, text in found[:3])
        raise RestoreError(
            f"{dump.name} is a plain SQL dump holding psql meta-commands pg_dump does not "
            f"write ({shown}); psql would run them (\\! runs a shell command). Restore it "
            "only if you trust who wrote it: --trust-plain-dump"
        )


def _check_replaceable(
    admin: psycopg.Connection,
    settings: Settings,
    target: str,
    dump: Path,
    manifest: dict,
    force: bool,
    from_other_database: bool,
) -> None:
    """An existing target with tables is replaced only with --force, and only by a backup of
    itself (or of the database it was restored from) unless --from-other-database."""
    with connect(settings, target) as conn:
        populated = _user_tables(conn)
    if not populated:
        return
    if not force:
        raise RestoreError(
            f"database {target!r} is not empty ({populated} tables); restore into another "
            "database with --target-db NAME, or pass --force to replace it (safely: the "
            "old one is only dropped after the new one is complete)"
        )
    same_source = manifest["database"] == target or (
        _restored_from(admin, target) == manifest["database"]
    )
    if not same_source and not from_other_database:
        raise RestoreError(
            f"{dump.name} is a backup of database {manifest['database']!r}, not of "
            f"{target!r}; pass --from-other-database to replace {target!r} with it, or "
            "restore it into a new database with --target-db NAME"
        )


def _keep_or_count_usage(
    settings: Settings,
    source: psycopg.Connection,
    scratch: str,
    manifest: dict,
    result: RestoreResult,
    discard_orphaned_usage: bool,
) -> None:
    """A knowledge-only restore carries the replaced database's usage over; a full one
    counts the events it loses."""
    if manifest.get("knowledge_only"):
        kept, discarded = _carry_usage(settings, source, scratch, discard_orphaned_usage)
        result.usage_kept, result.usage_discarded = kept, discarded
    else:
        _note_lost_usage(source, manifest, result)


def _note_lost_usage(source: psycopg.Connection, manifest: dict, result: RestoreResult) -> None:
    """Count the replaced database's usage events used after the backup was taken: a full
    restore loses them (a knowledge-only one carries usage over)."""
    taken = manifest.get("created_at")
    if not taken or not relation_exists(source, "artifact_usage"):
        return
    count, first, last = source.execute(
        "SELECT count(*), min(used_at), max(used_at) FROM artifact_usage WHERE used_at > %s",
        (taken,),
    ).fetchone()  # type: ignore[misc]
    if not count:
        return
    result.usage_lost = count
    result.usage_lost_span = [first.isoformat(), last.isoformat()]
    result.warnings.append(
        f"{count} usage event(s) recorded in {result.target!r} after this backup was taken "
        f"({first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} UTC) are not in it and went with "
        "the replaced database; to restore artifacts without losing usage, restore a "
        "knowledge-only backup (`backup --knowledge-only`), which carries usage over"
    )


_PG_DUMP_META = re.compile(r"^\\(connect|restrict|unrestrict)\b")
_COPY_FROM_STDIN = re.compile(r"^COPY .* FROM stdin;$")


def plain_meta_commands(dump: Path) -> list[tuple[int, str]]:
    """(line, text) of every psql meta-command in a plain dump outside COPY data, except the
    ones pg_dump itself writes. Read line by line: any size, bounded memory."""
    found = []
    in_copy = False
    with open(dump, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if in_copy:
                in_copy = line != "\\."
                continue
            if _COPY_FROM_STDIN.match(line):
                in_copy = True
            elif line.lstrip().startswith("\\") and not _PG_DUMP_META.match(line):
                found.append((number, line.strip()))
    return found


def _swap(
    admin: psycopg.Connection, target: str, scratch: str, aside: str, exists: bool, record: dict
) -> None:
    """Both renames, and the marks that go with them, in one transaction: the new target keeps
    the old one's comment, the old copy is marked "replaced". A session that was still ending
    (terminated a moment ago) makes ALTER DATABASE fail with ObjectInUse: end it again and
    retry, for a few seconds."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with admin.transaction():
                comment = None
                if exists:
                    comment = admin.execute(
                        "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                        " WHERE datname = %s",
                        (target,),
                    ).fetchone()[0]  # type: ignore[index]
                    _rename(admin, target, aside)
                    _mark(admin, aside, {**record, "kind": "replaced"})
                    pause_point("restore:between-renames")
                _rename(admin, scratch, target)
                if comment is None or comment.startswith(MARK):
                    # Remember where it came from: a later restore of the same source over it
                    # needs no --from-other-database. A DBA's own comment is kept instead.
                    comment = MARK + json.dumps(
                        {"kind": "restored", "from_database": record.get("from_database")},
                        sort_keys=True,
                    )
                admin.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(target), sql.Literal(comment)
                    )
                )
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise RestoreError(
                    f"database {target!r} still has sessions after 10 s of ending them; "
                    "nothing was replaced, try again"
                ) from None
            _terminate(admin, target)
            _terminate(admin, scratch)
            time.sleep(0.1)


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
            from .extensions import unschedule_unlicensed_jobs

            with connect(settings, dbname, autocommit=True) as conn:
                unschedule_unlicensed_jobs(conn)  # before the scheduler starts them again
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


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (table,),
        )
    ]


def _carry_usage(
    settings: Settings, source: psycopg.Connection, scratch: str, discard_orphans: bool
) -> tuple[int, int]:
    """Copy the usage history from the database being replaced into the restored knowledge:
    the events and their daily rollup (matched to artifacts by type, id and version), the
    idempotency keys, and the counters. Returns (events kept, events discarded)."""
    if not _columns(source, USAGE):
        return 0, 0
    with connect(settings, scratch, autocommit=True) as dest, dest.transaction():
        staged = {
            table: _stage_by_identity(source, dest, table)
            for table in (USAGE, DAILY)
            if _columns(source, table) and _columns(dest, table)
        }
        match = sql.SQL(" AND ").join(
            sql.SQL("k.{c} = c.{c}").format(c=sql.Identifier(c)) for c in IDENTITY
        )
        orphans = dest.execute(
            sql.SQL(
                "SELECT count(*) FROM {staged} c WHERE NOT EXISTS"
                " (SELECT 1 FROM knowledge_artifacts k WHERE {match})"
            ).format(staged=sql.Identifier(f"carried_{USAGE}"), match=match)
        ).fetchone()[0]  # type: ignore[index]
        if orphans and not discard_orphans:
            raise RestoreError(
                f"{orphans} usage event(s) in {source.info.dbname!r} belong to artifacts this "
                "knowledge-only backup does not have and would be lost; pass "
                "--discard-orphaned-usage to restore anyway without them (nothing was changed)"
            )
        kept = 0
        for table, columns in staged.items():
            inserted = dest.execute(
                sql.SQL(
                    "INSERT INTO {table} ({target}) SELECT k.id, {cols} FROM {staged} c"
                    " JOIN knowledge_artifacts k ON {match}"
                ).format(
                    table=sql.Identifier(table),
                    target=sql.SQL(", ").join(sql.Identifier(c) for c in ["artifact_pk", *columns]),
                    cols=sql.SQL(", ").join(sql.Identifier("c", col) for col in columns),
                    staged=sql.Identifier(f"carried_{table}"),
                    match=match,
                )
            ).rowcount
            if table == USAGE:
                kept = inserted
        if _columns(source, KEYS) and _columns(dest, KEYS):
            _copy_between(source, dest, f"COPY {KEYS} TO STDOUT", f"COPY {KEYS} FROM STDIN")
        dest.execute(
            "CREATE TEMP TABLE carried_counters ON COMMIT DROP AS SELECT artifact_type,"
            " artifact_id, version, usage_count, success_count, last_used_at"
            " FROM knowledge_artifacts WITH NO DATA"
        )
        _copy_between(
            source,
            dest,
            "COPY (SELECT artifact_type, artifact_id, version, usage_count, success_count,"
            " last_used_at FROM knowledge_artifacts) TO STDOUT",
            "COPY carried_counters FROM STDIN",
        )
        dest.execute(
            sql.SQL(
                "UPDATE knowledge_artifacts k SET usage_count = c.usage_count,"
                " success_count = c.success_count, last_used_at = c.last_used_at"
                " FROM carried_counters c WHERE {match}"
            ).format(match=match)
        )
    return kept, orphans


def _stage_by_identity(
    source: psycopg.Connection, dest: psycopg.Connection, table: str
) -> list[str]:
    """Stream `table` from source into a temp table `carried_<table>` of dest, with each row's
    artifact_pk replaced by the artifact's identity. Returns the carried columns."""
    source_columns = _columns(source, table)
    columns = [c for c in _columns(dest, table) if c in source_columns and c != "artifact_pk"]
    ident = sql.SQL(", ").join(sql.Identifier("k", c) for c in IDENTITY)
    cols = sql.SQL(", ").join(sql.Identifier("u", c) for c in columns)
    dest.execute(
        sql.SQL(
            "CREATE TEMP TABLE {staged} ON COMMIT DROP AS SELECT {ident}, {cols}"
            " FROM knowledge_artifacts k, {table} u WITH NO DATA"
        ).format(
            staged=sql.Identifier(f"carried_{table}"),
            ident=ident,
            cols=cols,
            table=sql.Identifier(table),
        )
    )
    _copy_between(
        source,
        dest,
        sql.SQL(
            "COPY (SELECT {ident}, {cols} FROM {table} u JOIN knowledge_artifacts k"
            " ON k.id = u.artifact_pk) TO STDOUT"
        ).format(ident=ident, cols=cols, table=sql.Identifier(table)),
        sql.SQL("COPY {staged} FROM STDIN").format(staged=sql.Identifier(f"carried_{table}")),
    )
    return columns


def _copy_between(source: psycopg.Connection, dest: psycopg.Connection, out, into) -> None:
    """Stream COPY ... TO STDOUT on one connection into COPY ... FROM STDIN on another."""
    with (
        source.cursor() as src,
        src.copy(out) as reader,
        dest.cursor() as dst,
        dst.copy(into) as writer,
    ):
        for chunk in reader:
            writer.write(chunk)


def _run_restore(settings: Settings, dump: Path, manifest: dict, dbname: str) -> None:
    conninfo, env = pg_env(replace(settings, dbname=dbname))
    if manifest["format"] == "plain":
        psql = find_program("psql", settings.bindir)
        cmd = [
            str(psql.path),
            "-X",
            "-q",
            "--no-password",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            f"--dbname={conninfo}",
        ]
        stdin_path: Path | None = dump
    else:
        pg_restore = find_program("pg_restore", settings.bindir)
        cmd = [
            str(pg_restore.path),
            "--exit-on-error",
            "--no-owner",
            "--no-password",
            f"--dbname={conninfo}",
        ]
        if manifest.get("knowledge_only"):
            cmd += ["--data-only", "--table=knowledge_artifacts"]
        if manifest["format"] == "directory":
            cmd.append(str(dump))
            stdin_path = None
        else:
            stdin_path = dump  # streamed: works through wrappers, never read into memory
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        code, stderr = run_until_done(cmd, pause="restore:during-pg_restore", stdin=stdin, env=env)
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    if code != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        raise BackupError(
            f"restoring {dump.name} failed (exit {code}); target left unchanged: {' | '.join(lines[-4:])}"
        )
