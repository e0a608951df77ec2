"""The connection class of the SQL Sandbox (testing.py): imported only when a test asks for
`singularity_db`, so that the pytest plugin costs nothing to load."""

from __future__ import annotations

import psycopg

SAVEPOINT = "singularity_sandbox"


class SandboxConnection(psycopg.Connection):
    """A connection whose transaction control stays inside one outer transaction."""

    _sandboxed = False

    def _start_sandbox(self) -> None:
        super().execute(f"SAVEPOINT {SAVEPOINT}")  # opens the outer transaction too
        self._sandboxed = True

    def commit(self) -> None:
        if not self._sandboxed:
            return super().commit()
        if self.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            self.rollback()  # COMMIT of a failed transaction is a rollback in PostgreSQL too
            return
        self.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        self.execute(f"SAVEPOINT {SAVEPOINT}")

    def rollback(self) -> None:
        if not self._sandboxed:
            return super().rollback()
        self.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")

    def close(self) -> None:
        if not self._sandboxed:
            super().close()

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        if not self._sandboxed:
            return super().__exit__(exc_type, exc_val, exc_tb)
        if exc_type:
            self.rollback()
        else:
            self.commit()

    def end_sandbox(self) -> None:
        """Roll back everything the test did and close for real."""
        self._sandboxed = False
        try:
            if not self.closed:
                super().rollback()
        finally:
            super().close()
