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


class SandboxUnavailable(DatabaseUnavailable):
    """The pytest plugin's shared database cannot be reached or is not migrated."""


class PgBinaryError(SingularityOpsError):
    """A PostgreSQL program is missing, too old, or failed."""


class ClusterError(SingularityOpsError):
    """The project-local cluster could not be initialised, started or stopped."""


class ExtensionError(SingularityOpsError):
    """An extension is not available, not preloaded, or could not be created."""


class Busy(SingularityOpsError):
    """Another run holds the lock this one needs (an advisory lock, the backup directory's
    lock): nothing was done; try again later. Exit 75, EX_TEMPFAIL, what cron wrappers and
    schedulers read as "retry"."""

    exit_code = 75


class LockTimeout(Busy):
    """Another run held an advisory lock for longer than the bounded wait."""


class BackupLocked(Busy):
    """Another backup holds the lock on the backup directory."""


# One class per capability: callers catch SingularityOpsError, or one of these by name.
class ArtifactNotFound(SingularityOpsError):
    """No artifact with that type, id (and version)."""


class InvalidArtifacts(SingularityOpsError):
    """Strict import refused because files are invalid; nothing was written."""


class MigrationError(SingularityOpsError):
    """A migration file or the recorded history is wrong, or a migration failed."""


class ModelMismatch(SingularityOpsError):
    """Rows are embedded with another model and --rebuild was not given."""


class ModelError(SingularityOpsError):
    """The local model's weights or ONNX graph are missing or unusable."""


class ProviderError(SingularityOpsError):
    """The embedding provider failed or returned something unusable."""


class SearchUnavailable(SingularityOpsError):
    """The database cannot answer this search yet (not migrated, nothing embedded)."""


class SearchNotFound(SingularityOpsError):
    """record-usage named a search the log does not hold, or an artifact it did not return."""


class UsageError(SingularityOpsError):
    """Usage events were refused (bad lines, unknown artifacts); nothing was recorded."""


class BackupError(SingularityOpsError):
    """pg_dump failed, or the backup could not be written or verified."""


class RestoreError(SingularityOpsError):
    """The restore was refused or failed; the target database is unchanged."""


class StepFailed(SingularityOpsError):
    """A step of the chain failed; carries the step's own error and exit code."""


class ServeError(SingularityOpsError):
    """The server cannot start as asked (bad options, nothing to serve)."""


class TokenError(SingularityOpsError):
    """A token could not be created or revoked (duplicate name, unknown name, no table)."""


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
