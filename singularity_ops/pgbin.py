"""Finding and version-checking the PostgreSQL programs (initdb, pg_ctl, pg_dump, psql, ...).

One lookup for every program: the configured bindir (postgres.bindir or PG_BINDIR), then the
environment's own bin directory (where scripts/setup links a provisioned PostgreSQL into
.venv/bin), then PATH, then the newest /usr/lib/postgresql/<N>/bin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import PgBinaryError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgProgram:
    """A located PostgreSQL program and its version."""

    name: str
    path: Path
    major: int
    minor: int

    @property
    def bindir(self) -> Path:
        return self.path.parent

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"


def candidate_dirs(configured: Path | None) -> list[Path]:
    """The directories searched, in order."""
    dirs: list[Path] = []
    if configured:
        dirs.append(configured)
    dirs.append(Path(sys.prefix) / "bin")
    dirs.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    versioned = Path("/usr/lib/postgresql")
    if versioned.is_dir():
        numbered = [p for p in versioned.iterdir() if p.name.isdigit()]
        dirs.extend(p / "bin" for p in sorted(numbered, key=lambda p: int(p.name), reverse=True))
    return dirs


def find_program(name: str, configured: Path | None = None) -> PgProgram:
    """Locate `name` by the lookup order and read its version."""
    if configured is not None:
        path = configured / name
        if not _is_executable(path):
            raise PgBinaryError(
                f"{name} not found in the configured bindir {configured} "
                "(postgres.bindir in singularity.yaml or PG_BINDIR); fix that setting"
            )
        return _describe(name, str(path))
    for directory in candidate_dirs(None):
        path = directory / name
        if _is_executable(path):
            return _describe(name, str(path))
    raise PgBinaryError(
        f"{name} not found (searched the environment's bin, PATH and /usr/lib/postgresql/*/bin). "
        "Run scripts/provision-postgres, install PostgreSQL 17, or set PG_BINDIR."
    )


def require_major(program: PgProgram, at_least: int, why: str) -> None:
    """Refuse a program older than `at_least`, saying which one was found."""
    if program.major < at_least:
        raise PgBinaryError(
            f"{program.name} {program.version} at {program.path} is too old: {why} needs "
            f"version {at_least} or newer. Set PG_BINDIR to a PostgreSQL {at_least} bindir "
            "(scripts/provision-postgres prints one)."
        )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@cache
def _describe(name: str, path: str) -> PgProgram:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise PgBinaryError(f"cannot run {path}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired:
        raise PgBinaryError(f"{path} --version did not answer within 30 s") from None
    match = _VERSION.search(out.stdout)
    if out.returncode != 0 or not match:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise PgBinaryError(
            f"{path} --version failed: {detail[-1] if detail else f'exit {out.returncode}'}"
        )
    return PgProgram(name, Path(path), int(match[1]), int(match[2] or 0))


def is_root_wrapper(program: PgProgram) -> bool:
    """True for the wrapper scripts of scripts/provision-postgres, which handle root themselves."""
    try:
        with open(program.path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"pgroot_exec.py" in head
