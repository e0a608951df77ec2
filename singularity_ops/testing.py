"""Test isolation on the shared database: every test gets its own rolled-back transaction.

The SQL Sandbox pattern (Ecto.Adapters.SQL.Sandbox): the `singularity_db` fixture yields a
connection to the configured shared database inside a transaction that is rolled back
after the test, whatever happens. Inside it:

- `commit()` releases and re-creates a savepoint, `rollback()` rolls back to it, and
  `with conn.transaction():` blocks become savepoints: code under test behaves as usual and
  nothing ever reaches the database;
- `with conn:` and `close()` do not end the sandbox;
- `singularity_ops.db.connect()` returns this same connection for the duration of the test
  (see `db.use_connection`), so toolkit functions called by code under test are sandboxed.

Registered through the `pytest11` entry point; it does nothing unless a test asks for
`singularity_db` or `singularity_settings`, and imports nothing heavy until then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from .errors import DatabaseUnavailable, SandboxUnavailable

if TYPE_CHECKING:
    import psycopg

    from .config import Settings

SETUP_HINT = "run `singularity-ops setup` (or point DATABASE_URL at a migrated database)"


@contextmanager
def sandbox(settings: Settings) -> Iterator[psycopg.Connection]:
    """A sandboxed connection to `settings`' database, rolled back and closed on exit.

    Also usable outside pytest (scripts, notebooks) for a dry run against the real data.
    """
    import psycopg

    from .db import (
        _prepare,
        explain_connect_error,
        relation_exists,
        use_connection,
    )
    from .errors import SandboxUnavailable
    from .sandbox_connection import SandboxConnection

    try:
        conn = SandboxConnection.connect(**settings.conninfo())
    except psycopg.OperationalError as exc:
        # The CLI's explanation (wrong port, another checkout's cluster, missing passfile...).
        why = explain_connect_error(settings, settings.dbname, exc)
        raise SandboxUnavailable(f"cannot reach the shared database: {why}; {SETUP_HINT}") from None
    try:
        try:
            # The same identity check as every CLI connection, and pgvector's type, in one
            # round trip.
            _prepare(settings, conn)
        except DatabaseUnavailable as exc:
            raise SandboxUnavailable(str(exc)) from None
        migrated = relation_exists(conn, "knowledge_artifacts")
        conn.rollback()
        if not migrated:
            raise SandboxUnavailable(
                f"database {settings.url()} is not migrated (no knowledge_artifacts); {SETUP_HINT}"
            )
        conn._start_sandbox()
        with use_connection(conn):
            yield conn
    finally:
        conn.end_sandbox()


@pytest.fixture(scope="session")
def singularity_settings() -> Settings:
    """The configuration the sandbox uses: the same resolution as the CLI (DATABASE_URL, ...)."""
    from .config import load_settings

    return load_settings()


@pytest.fixture
def singularity_db(singularity_settings: Settings) -> Iterator[Any]:
    """A connection to the shared database inside a transaction rolled back after the test."""
    try:
        manager = sandbox(singularity_settings)
        conn = manager.__enter__()
    except SandboxUnavailable as exc:
        pytest.fail(f"singularity_db: {exc}", pytrace=False)
    try:
        yield conn
    finally:
        manager.__exit__(None, None, None)
