"""Bearer tokens for the HTTP server: created once (shown once), stored as hashes, shared by
every replica through the database.

    from singularity_ops.tokens import create_token, verify_token
    created = create_token(conn, "ci-agent", scope="write")   # created.token: show it once
    verify_token(conn, created.token)                          # -> TokenInfo, or None
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from .db import relation_exists
from .errors import ConfigError, TokenError

SCOPES = ("read", "write")
PREFIX = "sops_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Longer than any token this module makes; a bigger header is refused before hashing.
MAX_TOKEN_CHARS = 200


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without its secret."""

    name: str
    scope: str  # "read": the read tools; "write": the read tools and the write tools
    created_at: datetime
    last_used_at: datetime | None

    @property
    def scopes(self) -> list[str]:
        """The scopes this token grants (write includes read)."""
        return ["read", "write"] if self.scope == "write" else ["read"]


@dataclass(frozen=True)
class CreatedToken:
    """A new token: `token` is the secret, shown once and never stored."""

    name: str
    scope: str
    token: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _require_table(conn: psycopg.Connection) -> None:
    if not relation_exists(conn, "api_tokens"):
        raise TokenError(
            f"database {conn.info.dbname!r} has no token table (migration 0009); "
            "run `singularity-ops migrate`"
        )


def create_token(conn: psycopg.Connection, name: str, *, scope: str = "read") -> CreatedToken:
    """Make a token named `name` with `scope` (read or write); returns its secret once."""
    if not _NAME.match(name):
        raise ConfigError(
            f"token name {name[:80]!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if scope not in SCOPES:
        raise ConfigError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    _require_table(conn)
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO api_tokens (name, token_sha256, scope) VALUES (%s, %s, %s)",
                (name, _digest(token), scope),
            )
    except psycopg.errors.UniqueViolation:
        raise TokenError(
            f"a token named {name!r} exists; revoke it first (`singularity-ops token revoke "
            f"{name}`) or choose another name"
        ) from None
    return CreatedToken(name, scope, token)


def list_tokens(conn: psycopg.Connection) -> list[TokenInfo]:
    """Every token, by name (never the secrets: only their hashes are stored)."""
    _require_table(conn)
    rows = conn.execute(
        "SELECT name, scope, created_at, last_used_at FROM api_tokens ORDER BY name"
    ).fetchall()
    return [TokenInfo(*row) for row in rows]


def revoke_token(conn: psycopg.Connection, name: str) -> None:
    """Delete the token `name`: every server refuses it from its next request on."""
    _require_table(conn)
    with conn.transaction():
        gone = conn.execute("DELETE FROM api_tokens WHERE name = %s", (name,)).rowcount
    if not gone:
        raise TokenError(f"no token named {name[:80]!r}; `singularity-ops token list` shows them")


_VERIFY = "SELECT name, scope, created_at, last_used_at FROM api_tokens WHERE token_sha256 = %s"
_VERIFY_AND_NOTE = (
    "WITH found AS (" + _VERIFY + "), noted AS (UPDATE api_tokens t SET last_used_at = now()"
    " FROM found f WHERE t.name = f.name"
    " AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute'))"
    " SELECT * FROM found"
)


def verify_token(conn: psycopg.Connection, token: str) -> TokenInfo | None:
    """The token's record if `token` is a valid secret, else None. Notes the use (at most
    once a minute per token, so that busy servers do not write on every request)."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = _digest(token)
    try:  # one round trip: every request of the HTTP server pays it
        row = conn.execute(_VERIFY_AND_NOTE, (digest,)).fetchone()
    except psycopg.errors.ReadOnlySqlTransaction:
        # A server on a read replica cannot note the use; the check itself still works.
        if not conn.autocommit:
            conn.rollback()
        row = conn.execute(_VERIFY, (digest,)).fetchone()
    if row is None:
        return None
    return TokenInfo(*row)
