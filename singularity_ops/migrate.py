"""Versioned SQL migrations: plain files in sql/migrations, applied in order, exactly once each.

- Files are named NNNN_description.sql; the number is the version.
- schema_migrations records version, name, checksum (sha256 of the file with CRLF read as LF),
  applied_at and execution time.
- An applied file whose checksum changed, that is missing, or that was renamed stops the run
  before anything is applied.
- A session-level advisory lock, taken with a bounded wait on an autocommit connection,
  serialises concurrent runs; the loser waits, then finds nothing left to do.
- Each migration runs in its own transaction together with its schema_migrations row. A file
  whose first line is `-- singularity-ops: no-transaction` runs statement by statement
  outside a transaction (for CREATE INDEX CONCURRENTLY and the like), split by PostgreSQL's
  own parser (pglast).
- Before the first pending migration runs, every pending one is parsed (syntax errors as
  file:line:column), a transactional one may not contain COMMIT/BEGIN/ROLLBACK, and none may
  be numbered below an applied one unless out_of_order is asked for.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from .db import advisory_lock, lock_key, relation_exists
from .errors import ConfigError, MigrationError

NO_TRANSACTION_MARKER = "-- singularity-ops: no-transaction"
FILE_PATTERN = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)\.sql$")
LOCK_KEY = lock_key("migrate")
TABLE = "schema_migrations"


@dataclass(frozen=True)
class MigrationFile:
    """One file in the migrations directory."""

    version: int
    name: str
    path: Path
    checksum: str
    transactional: bool

    @property
    def filename(self) -> str:
        return self.path.name

    def text(self) -> str:
        return _normalized_text(self.path)


@dataclass(frozen=True)
class AppliedMigration:
    """A row of schema_migrations."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    execution_ms: int


@dataclass(frozen=True)
class MigrationState:
    """One migration in the status view."""

    version: int
    name: str
    applied: bool
    applied_at: datetime | None
    execution_ms: int | None


@dataclass(frozen=True)
class MigrateResult:
    """What `migrate` did (or, with dry_run, would do)."""

    applied: list[str]
    pending_before: int
    already_applied: int
    dry_run: bool
    seconds: float


def _normalized_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MigrationError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(
            f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8"
        ) from None
    return text.replace("\r\n", "\n")


def stray_files(directory: Path) -> list[Path]:
    """Files in the migrations directory that migrate ignores (`0007_x.SQL`, `notes.txt`):
    worth a warning, since a misnamed migration would otherwise never run."""
    if not directory.is_dir():
        return []
    return [
        path
        for path in sorted(directory.iterdir())
        if path.is_file()
        and not path.name.startswith((".", "__init__"))
        and path.suffix != ".sql"
        and path.name.lower() not in ("readme", "readme.md", "readme.txt")
    ]


def discover(directory: Path) -> list[MigrationFile]:
    """The migration files in version order; errors for bad names and duplicate versions."""
    if not directory.is_dir():
        raise ConfigError(
            f"migrations directory {directory} does not exist; set migrations.dir in "
            "singularity.yaml or run from the project root"
        )
    found: dict[int, MigrationFile] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql" or not path.is_file():
            continue
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(
                f"{path}: migration files must be named NNNN_description.sql "
                "(digits, underscore, letters/digits/_/-); rename it"
            )
        text = _normalized_text(path)
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"{found[version].path} and {path} both have version {version}; "
                "renumber one of them (`singularity-ops migrate new` picks the next number)"
            )
        first_line = text.split("\n", 1)[0].strip()
        found[version] = MigrationFile(
            version=version,
            name=match["name"],
            path=path,
            checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            transactional=first_line != NO_TRANSACTION_MARKER,
        )
    return [found[v] for v in sorted(found)]


def _ensure_table(conn: psycopg.Connection) -> None:
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            version bigint PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            execution_ms integer NOT NULL
        )
        """
    )


def applied_migrations(conn: psycopg.Connection) -> dict[int, AppliedMigration]:
    """schema_migrations as a dict by version; empty when the table does not exist yet."""
    if not relation_exists(conn, TABLE):
        return {}
    rows = conn.execute(
        f"SELECT version, name, checksum, applied_at, execution_ms FROM {TABLE} ORDER BY version"
    ).fetchall()
    return {row[0]: AppliedMigration(*row) for row in rows}


def verify_history(files: list[MigrationFile], applied: dict[int, AppliedMigration]) -> None:
    """Refuse edited, renamed or missing applied migrations, naming the file."""
    by_version = {f.version: f for f in files}
    problems = []
    for version, row in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            problems.append(
                f"applied migration {version:04d}_{row.name}.sql is missing from the migrations "
                "directory; restore it from version control (applied history must not change)"
            )
        elif current.name != row.name:
            problems.append(
                f"{current.path}: version {version} was applied as {row.name!r} but the file is "
                f"now named {current.name!r}; rename it back"
            )
        elif current.checksum != row.checksum:
            problems.append(
                f"{current.path}: changed after it was applied (checksum {row.checksum[:12]} "
                f"recorded, {current.checksum[:12]} now); revert the edit and put the change "
                "in a new migration (`singularity-ops migrate new`)"
            )
    if problems:
        raise MigrationError("\n".join(problems))


def status(conn: psycopg.Connection, directory: Path) -> list[MigrationState]:
    """Applied and pending migrations, verified against the files."""
    files = discover(directory)
    applied = applied_migrations(conn)
    verify_history(files, applied)
    return [
        MigrationState(
            version=f.version,
            name=f.name,
            applied=f.version in applied,
            applied_at=applied[f.version].applied_at if f.version in applied else None,
            execution_ms=applied[f.version].execution_ms if f.version in applied else None,
        )
        for f in files
    ]


def _position(text: str, statement_start: int, error_position: str | None) -> str:
    """line:column in the file of the error, from PostgreSQL's 1-based character position."""
    if not error_position:
        return ""
    return _location(text, statement_start + int(error_position) - 1)


def _failure(migration: MigrationFile, text: str, start: int, exc: psycopg.Error) -> MigrationError:
    diag = exc.diag
    where = _position(text, start, diag.statement_position)
    message = diag.message_primary or str(exc).strip()
    extra = f" ({diag.message_detail})" if diag.message_detail else ""
    hint = f"; hint: {diag.message_hint}" if diag.message_hint else ""
    note = (
        "nothing from this migration was kept"
        if migration.transactional
        else "this no-transaction migration may have applied earlier statements; check before re-running"
    )
    return MigrationError(f"{migration.path}{where}: {message}{extra}{hint} ({note})")


@dataclass(frozen=True)
class Statement:
    """One statement of a migration file, as PostgreSQL's own parser (pglast) sees it."""

    offset: int  # character offset in the file
    text: str
    kind: str  # the parse node, e.g. "CreateStmt", "TransactionStmt"
    ends_transaction: bool  # BEGIN, COMMIT, ROLLBACK, PREPARE TRANSACTION, ... (not savepoints)


def _location(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f":{line}:{column}"


_SAVEPOINT_KINDS = {"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"}


def parse_statements(migration: MigrationFile, text: str | None = None) -> list[Statement]:
    """Split a migration into statements with PostgreSQL's parser (libpg_query via pglast).

    A syntax error is reported as file:line:column before anything runs. Dollar quotes,
    E'' strings, BEGIN ATOMIC bodies and comments are the parser's business, not ours.
    """
    from pglast import parser

    text = migration.text() if text is None else text
    try:
        parsed = parser.parse_sql(text)
    except parser.ParseError as exc:
        message, offset = (*exc.args, None)[:2]
        where = _location(text, offset) if isinstance(offset, int) else ""
        raise MigrationError(
            f"{migration.path}{where}: {message}; nothing was applied (fix the SQL)"
        ) from None
    statements = []
    for raw in parsed:
        start = raw.stmt_location
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        kind = type(raw.stmt).__name__
        control = kind == "TransactionStmt" and raw.stmt.kind.name not in _SAVEPOINT_KINDS
        statements.append(Statement(start, text[start:end], kind, control))
    return statements


def check_transaction_control(migration: MigrationFile, statements: list[Statement]) -> None:
    """A transactional migration must not end or open transactions itself: a COMMIT inside it
    would keep half of it and make the rest of the history lie."""
    if not migration.transactional:
        return
    text = migration.text()
    for statement in statements:
        if statement.ends_transaction:
            word = statement.text.split(None, 1)[0].upper() if statement.text.strip() else "?"
            raise MigrationError(
                f"{migration.path}{_location(text, statement.offset)}: {word} in a migration that "
                "runs in one transaction; remove it (each migration is committed for you), or "
                f"make the first line `{NO_TRANSACTION_MARKER}` if it must manage transactions"
            )


def _apply_one(conn: psycopg.Connection, migration: MigrationFile) -> int:
    text = migration.text()
    started = time.monotonic()
    if migration.transactional:
        try:
            with conn.transaction():
                conn.execute(text)  # no parameters: simple protocol, many statements allowed
                _record(conn, migration, started)
        except psycopg.Error as exc:
            raise _failure(migration, text, 0, exc) from None
    else:
        for statement in parse_statements(migration, text):
            try:
                conn.execute(statement.text)
            except psycopg.Error as exc:
                raise _failure(migration, text, statement.offset, exc) from None
        with conn.transaction():
            _record(conn, migration, started)
    return int((time.monotonic() - started) * 1000)


def _reset_session(conn: psycopg.Connection) -> None:
    """What a migration SET (search_path, role, any setting) or created (temp tables) ends
    with it: the next file starts as it would in a run of its own. Not DISCARD ALL, which
    would also release the advisory lock this run holds."""
    conn.execute("SET SESSION AUTHORIZATION DEFAULT")
    conn.execute("RESET ALL")
    conn.execute("DISCARD TEMP")


def _record(conn: psycopg.Connection, migration: MigrationFile, started: float) -> None:
    conn.execute(
        f"INSERT INTO {TABLE} (version, name, checksum, execution_ms) VALUES (%s, %s, %s, %s)",
        (
            migration.version,
            migration.name,
            migration.checksum,
            int((time.monotonic() - started) * 1000),
        ),
    )


def check_pending(
    files: list[MigrationFile],
    applied: dict[int, AppliedMigration],
    *,
    out_of_order: bool = False,
) -> list[MigrationFile]:
    """The pending migrations, checked before any of them runs: none numbered below an
    applied one (unless out_of_order, as Flyway's outOfOrder), each parses, and no
    transaction control in a transactional one."""
    pending = [f for f in files if f.version not in applied]
    newest = max(applied, default=0)
    behind = [f for f in pending if f.version < newest]
    if behind and not out_of_order:
        names = ", ".join(f.filename for f in behind)
        raise MigrationError(
            f"{names}: numbered below the newest applied migration "
            f"{newest:04d}_{applied[newest].name}.sql, so it would run after migrations that "
            "were written after it; renumber it (`singularity-ops migrate new` picks the next "
            "number) or pass --out-of-order to apply it anyway"
        )
    for migration in pending:
        statements = parse_statements(migration)
        if not statements:
            # Applied, it would be stuck: adding SQL later is "changed after it was applied".
            raise MigrationError(
                f"{migration.filename}: no SQL statements (only comments or blank lines); "
                "write the migration first, or delete the file if it was made by mistake; "
                "nothing was applied"
            )
        check_transaction_control(migration, statements)
    return pending


def migrate(
    conn: psycopg.Connection,
    directory: Path,
    *,
    dry_run: bool = False,
    lock_timeout: float = 60,
    out_of_order: bool = False,
) -> MigrateResult:
    """Apply pending migrations in order. `conn` must be in autocommit mode (it holds the lock).

    With dry_run, report what would run and change nothing (not even schema_migrations).
    Every pending file is parsed and checked before the first one runs.
    """
    if not conn.autocommit:
        raise ValueError(
            "migrate() needs an autocommit connection: each migration is its own transaction"
        )
    started = time.monotonic()
    files = discover(directory)
    applied = applied_migrations(conn)
    verify_history(files, applied)
    if dry_run:
        pending = check_pending(files, applied, out_of_order=out_of_order)
        return MigrateResult(
            [f.filename for f in pending],
            len(pending),
            len(applied),
            True,
            time.monotonic() - started,
        )
    # Fast path for the common CI case: everything applied, no lock needed.
    if applied and all(f.version in applied for f in files):
        return MigrateResult([], 0, len(applied), False, time.monotonic() - started)

    with advisory_lock(conn, LOCK_KEY, "migrate", wait=lock_timeout, option="--lock-timeout"):
        _ensure_table(conn)
        applied = applied_migrations(conn)  # re-read: another process may have just finished
        verify_history(files, applied)
        pending = check_pending(files, applied, out_of_order=out_of_order)
        done = []
        for migration in pending:
            _apply_one(conn, migration)
            _reset_session(conn)
            done.append(migration.filename)
    return MigrateResult(done, len(pending), len(applied), False, time.monotonic() - started)


def forget_migration(
    conn: psycopg.Connection, version: int, *, lock_timeout: float = 60, dry_run: bool = False
) -> AppliedMigration:
    """Remove `version` from schema_migrations without undoing anything it did: the way out
    for a migration applied by mistake (an empty file, say) whose file you then fix or
    delete. Undo its effects by hand first if it had any."""
    if not conn.autocommit:
        raise ValueError("forget_migration() needs an autocommit connection (it takes the lock)")
    with advisory_lock(conn, LOCK_KEY, "migrate", wait=lock_timeout, option="--lock-timeout"):
        row = applied_migrations(conn).get(version)
        if row is None:
            raise MigrationError(
                f"migration {version:04d} is not applied; `singularity-ops migrate status` "
                "lists the applied ones"
            )
        if not dry_run:
            conn.execute(f"DELETE FROM {TABLE} WHERE version = %s", (version,))
    return row


def new_migration(directory: Path, description: str) -> Path:
    """Create the next numbered, empty migration file with a readable name."""
    slug = re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_")
    if not slug:
        raise ConfigError(f"migration description {description!r} has no letters or digits")
    directory.mkdir(parents=True, exist_ok=True)
    existing = discover(directory)
    version = (existing[-1].version + 1) if existing else 1
    path = directory / f"{version:04d}_{slug}.sql"
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(
            f"-- {description}\n"
            "-- Runs in one transaction with its schema_migrations row. For statements that cannot\n"
            f"-- run in a transaction, make the first line exactly: {NO_TRANSACTION_MARKER}\n\n"
        )
    return path
