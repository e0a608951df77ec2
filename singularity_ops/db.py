"""Connecting to the server, waiting for it, and making sure the database exists."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .config import LocalCluster, Settings
from .errors import Busy, ClusterError, DatabaseUnavailable, LockTimeout

# Connection failures carry no SQLSTATE in psycopg, so they are told apart by libpq's text.
# Worth waiting on: no server yet, starting up or shutting down, too many clients.
_TRANSIENT = (
    "connection refused",
    "could not connect",
    "no such file or directory",
    "is the server running",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "too many clients",
    "timeout expired",
    "server closed the connection unexpectedly",
)


def lock_key(name: str) -> int:
    """A stable pg_advisory_lock key for one of the toolkit's operations."""
    digest = hashlib.sha256(f"singularity-ops:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def advisory_lock(
    conn: psycopg.Connection,
    key: int,
    what: str,
    *,
    wait: float | None,
    option: str | None = None,
) -> Iterator[None]:
    """Hold the toolkit's advisory lock `key` for the block: the one way every command that
    must not overlap another run of itself takes its lock.

    wait: seconds to wait for another run to finish (0: not at all; None: as long as it
    takes). Past it, raise Busy (exit 75) naming the backend that holds the lock and `option`,
    the setting that changes the wait. Inside a transaction the lock is the transaction's
    (released with the caller's commit or rollback); in autocommit mode it is the session's,
    released when the block ends."""
    in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    scope = "_xact" if in_transaction else ""
    if not _take_lock(conn, key, scope, wait):
        holder = lock_holder(conn, key)
        if wait:
            raise LockTimeout(
                f"another {what} has held its lock for more than {wait:g} s"
                + (f" ({option})" if option else "")
                + f"{holder}; wait for it"
                + (f" or raise {option}" if option else "")
            )
        raise Busy(f"another {what} is running{holder}; try again when it has finished")
    try:
        yield
    finally:
        if not in_transaction and not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _take_lock(conn: psycopg.Connection, key: int, scope: str, wait: float | None) -> bool:
    if wait == 0:
        row = conn.execute(f"SELECT pg_try_advisory{scope}_lock(%s)", (key,)).fetchone()
        return bool(row and row[0])
    # The server waits (no polling, woken the moment the lock is free), bounded by a
    # lock_timeout local to a savepoint (or a transaction of its own), so that the caller's
    # setting comes back and a timeout does not abort the caller's transaction.
    timeout = "0" if wait is None else f"{max(1, math.ceil(wait * 1000))}ms"
    try:
        with conn.transaction():
            before = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]  # type: ignore[index]
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
            conn.execute(f"SELECT pg_advisory{scope}_lock(%s)", (key,))
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (before,))
    except psycopg.errors.LockNotAvailable:
        return False
    return True


def lock_holder(conn: psycopg.Connection, key: int) -> str:
    """' (held by backend pid ..., app, address, since)' for the holder of an advisory lock."""
    row = conn.execute(
        """
        SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), a.client_addr, a.backend_start
        FROM pg_locks l JOIN pg_stat_activity a USING (pid)
        WHERE l.locktype = 'advisory' AND l.granted
          AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
        LIMIT 1
        """,
        (key,),
    ).fetchone()
    if not row:
        return ""
    pid, app, addr, since = row
    return (
        f" (held by backend pid {pid}, {app}, {addr or 'local socket'}, connected {since:%H:%M:%S})"
    )


@dataclass(frozen=True)
class EnsureDbResult:
    """What `ensure-db` did."""

    target: str
    dbname: str
    created: bool
    server_version: str
    local: bool
    cluster_initialized: bool
    cluster_started: bool
    preload_configured: bool
    # An older cluster that let anyone in (trust) now requires the password in this passfile.
    password_required: str | None = None


# The connection provider can be routed to one existing connection (the test sandbox).
# The connection connect() hands out instead of opening one (use_connection): per context, so
# a sandboxed test's routing never leaks into another thread or task.
_routed: ContextVar[psycopg.Connection | None] = ContextVar("singularity_ops_routed", default=None)


@contextmanager
def use_connection(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Route every connect() to the configured database to `conn` while the block runs.

    This is how singularity_ops.testing makes toolkit code called by a test use the test's
    sandboxed connection. A request for autocommit gets the same connection: its
    transaction() blocks become savepoints.
    """
    token = _routed.set(conn)
    try:
        yield conn
    finally:
        _routed.reset(token)


def connect(
    settings: Settings, dbname: str | None = None, *, autocommit: bool = False
) -> psycopg.Connection:
    """Open a connection to `dbname` (default: the configured database).

    Errors become DatabaseUnavailable with the password redacted and a hint.
    """
    routed = _routed.get()
    if routed is not None and (dbname is None or dbname == routed.info.dbname):
        return routed
    try:
        conn = psycopg.connect(**settings.conninfo(dbname), autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            explain_connect_error(settings, dbname or settings.dbname, exc)
        ) from None
    try:
        _prepare(settings, conn)
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(settings: Settings, conn: psycopg.Connection) -> None:
    """check_local_identity and _register_vector in one round trip (every command of every
    process connects: the two took six round trips, ~6 ms of a cold search)."""
    served = _probe(conn, data_directory=settings.local is not None)
    if settings.local is not None:  # data_directory: superusers only, as on our cluster
        _check_served(settings, served)


def _probe(conn: psycopg.Connection, *, data_directory: bool) -> str | None:
    """One query: registers pgvector's `vector` type where the extension exists, and returns
    the server's data directory when asked (else None)."""
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    row = conn.execute(
        "SELECT t.oid, t.typarray, t.oid::regtype::text, t.typdelim"
        + (", current_setting('data_directory')" if data_directory else ", NULL")
        + " FROM (SELECT to_regtype('vector') AS vector) q LEFT JOIN pg_type t ON t.oid = q.vector"
    ).fetchone()
    assert row is not None
    oid, array_oid, regtype, delimiter, served = row
    if oid is not None:  # None: the extension does not exist (yet) in this database
        info = TypeInfo("vector", oid, array_oid, regtype=regtype, delimiter=delimiter)
        register_vector_info(conn, info)
    return served


def _open(settings: Settings, params: dict, *, autocommit: bool) -> psycopg.Connection:
    """psycopg.connect, then make sure a local target is this project's own cluster."""
    conn = psycopg.connect(**params, autocommit=autocommit)
    try:
        check_local_identity(settings, conn)
    except BaseException:
        conn.close()
        raise
    return conn


def check_local_identity(settings: Settings, conn: psycopg.Connection) -> None:
    """For the project-local cluster, make sure the server on its port is really ours.

    Another checkout's cluster on the same port would otherwise be used without a word.
    """
    if settings.local is None:
        return
    served = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
    if not conn.autocommit:
        conn.rollback()
    _check_served(settings, served)


def _check_served(settings: Settings, served: str) -> None:
    assert settings.local is not None
    if os.path.realpath(served) != os.path.realpath(settings.local.data_dir):
        if settings.no_project:
            from .config import no_project_message

            raise DatabaseUnavailable(no_project_message(settings))
        raise DatabaseUnavailable(
            f"127.0.0.1:{settings.port} is served by the cluster in {served}, not this project's "
            f"{settings.local.data_dir}; stop that one (`singularity-ops server stop` in its "
            "checkout) or give this project another port (PGPORT or postgres.local.port)"
        )


def _register_vector(conn: psycopg.Connection) -> None:
    """Teach psycopg about pgvector's `vector` type, where the extension exists in this
    database (only `vector`: pgvector's register_vector() also looks up bit, halfvec and
    sparsevec, one round trip each; the toolkit uses none of them)."""
    _probe(conn, data_directory=False)
    if not conn.autocommit:
        conn.rollback()


CLOSED_HINT = (
    "it is closed to connections, as a restore closes its target just before the swap: if no "
    "restore is running, one was killed there; `singularity-ops restore --cleanup` reopens it"
)


def explain_connect_error(settings: Settings, dbname: str, exc: psycopg.Error) -> str:
    """Why a connection failed, the password redacted, and what to do about it."""
    from . import cluster  # not at import time: every command connects, few manage the cluster

    if settings.no_project:
        from .config import no_project_message

        return no_project_message(settings)
    detail = settings.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    where = f"{settings.url(dbname)}"
    text = str(exc).lower()
    local_refused = settings.is_local and (
        "no password supplied" in text or "authentication failed" in text
    )
    if _database_missing(exc):
        hint = "run `singularity-ops ensure-db` to create it"
    elif "not currently accepting connections" in text:
        hint = CLOSED_HINT
    elif local_refused and not cluster.status(settings.local).running:
        hint = (
            f"port {settings.port} is served by another server (another checkout's cluster?), "
            f"not this project's cluster in {settings.local.data_dir}, which is not running; "
            "stop that one (`singularity-ops server stop` in its checkout) or give this "
            "project another port (PGPORT or postgres.local.port)"
        )
    elif local_refused:
        hint = (
            f"the local cluster requires the password kept in {settings.local.passfile}, which "
            "is missing or no longer matches; restore that file, or (to set a new password) "
            f"change scram-sha-256 to trust in {settings.local.data_dir / 'pg_hba.conf'}, run "
            "`singularity-ops server stop`, then `singularity-ops ensure-db`"
        )
    elif "authentication failed" in text or ("role" in text and "does not exist" in text):
        hint = "check the user and password (PGPASSWORD or ~/.pgpass; never put them in output)"
    elif "no password supplied" in text:
        hint = "the server wants a password: put it in PGPASSWORD, ~/.pgpass or PGPASSFILE"
    elif settings.is_local:
        running = cluster.status(settings.local).running
        listening = cluster.running_port(settings.local.data_dir) if running else None
        if listening is not None and listening != settings.port:
            hint = (
                f"the project-local cluster is running on port {listening}, not {settings.port}; "
                "unset PGPORT (or postgres.local.port) to use it"
            )
        else:
            hint = "start the project-local cluster with `singularity-ops ensure-db`"
    else:
        hint = "is the server running? check DATABASE_URL / PGHOST / PGPORT or --database-url"
    return f"cannot connect to {where}: {detail}; {hint}"


def _is_transient(exc: psycopg.OperationalError) -> bool:
    text = str(exc).lower()
    return any(pattern in text for pattern in _TRANSIENT)


def _database_missing(exc: psycopg.Error) -> bool:
    text = str(exc)
    return "database" in text and "does not exist" in text and "role" not in text


def wait_for_server(settings: Settings, timeout: float) -> psycopg.Connection:
    """Connect to the maintenance database, retrying like pg_isready in a loop until `timeout`.

    Returns an autocommit connection. Authentication errors fail at once: waiting cannot fix them.
    """
    deadline = time.monotonic() + timeout
    maintenance = [settings.maintenance_db, "template1"]
    delay = 0.1
    last: psycopg.OperationalError | None = None
    while True:
        try:
            params = settings.conninfo(maintenance[0])
            # Never let one attempt against a silent host outlast the whole --timeout.
            remaining = max(deadline - time.monotonic(), 0)
            params["connect_timeout"] = max(2, min(settings.connect_timeout, math.ceil(remaining)))
            return _open(settings, params, autocommit=True)
        except psycopg.OperationalError as exc:
            last = exc
            if _database_missing(exc) and len(maintenance) > 1:
                maintenance.pop(0)  # no "postgres" database here: use template1
                continue
            if not _is_transient(exc):
                raise DatabaseUnavailable(
                    explain_connect_error(settings, maintenance[0], exc)
                ) from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 1.0)
    assert last is not None
    message = explain_connect_error(settings, maintenance[0], last)
    raise DatabaseUnavailable(f"gave up after {timeout:g} s (--timeout): {message}")


def relation_exists(conn: psycopg.Connection, name: str) -> bool:
    """True when a table, index or view of that name is visible on the search path."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def database_exists(conn: psycopg.Connection, dbname: str) -> bool:
    """True when a database of that exact name exists on the server."""
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row is not None


def create_database(conn: psycopg.Connection, dbname: str) -> bool:
    """CREATE DATABASE with the name quoted as an identifier. False when it already existed."""
    if database_exists(conn, dbname):
        return False
    try:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        # Another ensure-db created it a moment ago (the race surfaces as either error).
        if database_exists(conn, dbname):
            return False
        raise
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseUnavailable(
            f"database {dbname!r} does not exist and this user may not create it: "
            f"{exc.diag.message_primary}; ask an administrator to run CREATE DATABASE or grant CREATEDB"
        ) from None
    return True


def _ensure_timescaledb_preloaded(
    settings: Settings, conn: psycopg.Connection, timeout: float
) -> bool:
    """On the local cluster, preload timescaledb when it is installed. True if a restart was done."""
    from . import cluster

    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " current_setting('shared_preload_libraries')"
    ).fetchone()
    assert row is not None
    available, preload = row
    libraries = [lib.strip() for lib in preload.split(",") if lib.strip()]
    if not available or "timescaledb" in libraries:
        return False
    libraries.append("timescaledb")
    conn.execute(
        sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(
            sql.Literal(",".join(libraries))
        )
    )
    conn.close()
    assert settings.local is not None
    cluster.restart(settings.local, settings.bindir, timeout)
    return True


BUILD_EXTENSIONS = ("vector", "timescaledb", "postgis")


def current_build(conn: psycopg.Connection) -> dict:
    """The PostgreSQL build serving `conn` and the versions of the extensions it offers."""
    server = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
    available = dict(
        conn.execute(
            "SELECT name, default_version FROM pg_available_extensions WHERE name = ANY(%s)",
            (list(BUILD_EXTENSIONS),),
        ).fetchall()
    )
    return {"server": server.split(",")[0], "extensions": available}


def check_build(settings: Settings, conn: psycopg.Connection) -> None:
    """Refuse a local cluster another PostgreSQL build made with another timescaledb, saying
    how to go on; record the build the first time."""
    from . import cluster

    assert settings.local is not None
    current = current_build(conn)
    recorded = cluster.read_build(settings.local)
    problem = cluster.build_mismatch(recorded, current)
    if problem:
        raise ClusterError(
            f"{settings.local.data_dir}: {problem}. Either update the extensions in place, "
            "TimescaleDB's documented procedure (ALTER EXTENSION timescaledb UPDATE as the "
            "first command of a session, in every database): `singularity-ops server "
            "update-extensions`; or keep one data directory per build: PGDATA=<another "
            "directory> (or postgres.local.data_dir) for this one"
        )
    if recorded != current:
        cluster.write_build(settings.local, current)


def ensure_db(settings: Settings, timeout: float = 30) -> EnsureDbResult:
    """Make sure the server is up and the database exists. Idempotent.

    For the project-local cluster: initialise it if missing, start it if stopped, and preload
    timescaledb when it is installed.
    """
    from . import cluster

    if settings.no_project:
        from .config import no_project_message
        from .errors import ConfigError

        raise ConfigError(no_project_message(settings))
    initialized = started = preloaded = False
    if settings.local is not None:
        # Before initdb: a port already taken by another server means this cluster could not
        # start anyway, and initdb would leave 40 MB behind for nothing.
        cluster.check_port_free(settings.local)
        initialized = cluster.init(settings.local, settings.bindir)
        started = cluster.start(settings.local, settings.bindir, timeout)
    conn = wait_for_server(settings, timeout)
    secured = None
    try:
        if settings.local is not None:
            if require_password(settings.local, conn):
                secured = str(settings.local.passfile)
            preloaded = _ensure_timescaledb_preloaded(settings, conn, timeout)
            if preloaded:
                conn = wait_for_server(settings, timeout)
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        if settings.local is not None:
            check_build(settings, conn)
        created = create_database(conn, settings.dbname)
        allowed = conn.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (settings.dbname,)
        ).fetchone()
        if allowed is not None and not allowed[0]:
            raise DatabaseUnavailable(f"database {settings.dbname!r} exists, but {CLOSED_HINT}")
    finally:
        conn.close()
    return EnsureDbResult(
        target=settings.url(),
        dbname=settings.dbname,
        created=created,
        server_version=version,
        local=settings.is_local,
        cluster_initialized=initialized,
        cluster_started=started,
        preload_configured=preloaded,
        password_required=secured,
    )


def require_password(local: LocalCluster, conn: psycopg.Connection) -> bool:
    """Upgrade a cluster made with trust authentication (earlier versions) in place: give the
    superuser the passfile's password, allow only scram-sha-256 and reload. True if upgraded.

    Only the SCRAM verifier, computed here, reaches the server: the password itself is in no
    statement, log line or command line. Connected clients stay connected; new connections
    need the password, which the toolkit and `singularity-ops env` take from the passfile.
    """
    from . import cluster

    cluster.secure_socket_dir(local)
    if not cluster.trusts_anyone(local):
        return False
    password = cluster.ensure_password(local)
    verifier = conn.pgconn.encrypt_password(
        password.encode(), cluster.SUPERUSER.encode(), cluster.AUTH_METHOD.encode()
    )
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(cluster.SUPERUSER), sql.Literal(verifier.decode())
        )
    )
    cluster.write_hba(local)
    conn.execute("SELECT pg_reload_conf()")
    return True
