"""The error hierarchy: every expected failure carries a message a user can act on and an exit code."""


class SingularityOpsError(Exception):
    """An expected failure. The CLI prints its message on one line and exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class ConfigError(SingularityOpsError):
    """Configuration or usage is wrong: fix the named key, flag or variable."""

    exit_code = 2


class DatabaseUnavailable(SingularityOpsError):
    """The server could not be reached or refused the connection."""


class PgBinaryError(SingularityOpsError):
    """A PostgreSQL program is missing, too old, or failed."""


class ClusterError(SingularityOpsError):
    """The project-local cluster could not be initialised, started or stopped."""


class ExtensionError(SingularityOpsError):
    """An extension is not available, not preloaded, or could not be created."""


def explain_db_error(exc: BaseException) -> str | None:
    """A message a user can act on for a database error that is the server's or the grants'
    doing, not a bug (a privilege, a schema not migrated, a lost connection); None otherwise.
    Every face uses it: the CLI prints it, the server returns it as a tool error."""
    import sys

    if "psycopg" not in sys.modules:
        return None
    import psycopg

    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (
            f"the database refused: {exc.diag.message_primary}; the connecting user lacks a "
            "privilege (GRANT it, or connect as the owner of the knowledge base)"
        )
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        return (
            f"the database is not migrated to this toolkit's schema ({exc.diag.message_primary}); "
            "run `singularity-ops migrate` (or `singularity-ops setup`)"
        )
    if isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"lost the database connection or the server failed: {first}; try again"
    return None
