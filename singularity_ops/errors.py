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
