"""Test infrastructure: a real PostgreSQL 17 cluster (vector, timescaledb, postgis) per session.

The cluster is started through the toolkit's own cluster code in .singularity/test-pgdata
(one per pytest-xdist worker: test-pgdata-gw0, ...; git-ignored, reused between runs). Tests
that need state get a fresh database on it: an empty one from pytest-postgresql's noproc
fixtures, or a copy of a template with the extensions (and the migrations) made once a
session. If the server cannot be started, the session fails: no database test is ever skipped.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories

from singularity_ops import cluster
from singularity_ops.config import (
    LocalCluster,
    Settings,
    load_settings,
    make_local_cluster,
    passfile_for,
    read_passfile_password,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


# The longest modules start first, so that no worker is left with one of them at the end
# while the others are idle (with --dist worksteal, an idle worker takes queued tests).
_SLOW_FIRST = {"test_bench.py": 0, "test_cli_examples.py": 0, "test_faults.py": 1}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _SLOW_FIRST.get(item.path.name, 2))


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Under pytest-xdist (./scripts/test runs workers) each worker has a cluster of its own, so
# that workers share no database, lock or port.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_WORKER_NUMBER = int(_WORKER.removeprefix("gw")) if _WORKER.startswith("gw") else 0
# A port of its own for every session: two checkouts, or a developer's own server on the
# usual ports, never collide with the test server. SINGULARITY_TEST_PORT pins the first one;
# worker gwN takes that port plus N.
_PINNED_PORT = os.environ.get("SINGULARITY_TEST_PORT")
TEST_PORT = int(_PINNED_PORT) + _WORKER_NUMBER if _PINNED_PORT else free_port()
TEST_DATA = ROOT / ".singularity" / ("test-pgdata" + (f"-{_WORKER}" if _WORKER else ""))
# The test cluster requires a password, like every cluster the toolkit makes. libpq reads it
# from this passfile for every connection of the session and of the processes it starts.
TEST_PASSFILE = passfile_for(TEST_DATA)
os.environ["PGPASSFILE"] = str(TEST_PASSFILE)


# A developer's own settings that would otherwise leak into what the tests run.
_PRIVATE_SETTINGS = (
    "SINGULARITY_CONFIG",
    "SINGULARITY_ENV",
    "SINGULARITY_CACHE_DIR",
    "SINGULARITY_ONNX_MODEL",
    "SINGULARITY_TEST_PAUSE",
    "SINGULARITY_TEST_PAUSE_FILE",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without connection settings (PG*, DATABASE_URL) or a
    developer's SINGULARITY_* settings, except the test cluster's passfile, plus `extra`: what
    every subprocess of the tests gets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL")) and k not in _PRIVATE_SETTINGS
    }
    env["PGPASSFILE"] = str(TEST_PASSFILE)
    env.update(extra)
    return env


def cluster_password() -> str:
    """The test cluster's superuser password (exists once the session server is up)."""
    password = read_passfile_password(TEST_PASSFILE)
    assert password, f"no password in {TEST_PASSFILE}"
    return password


@pytest.fixture(scope="session")
def test_server() -> Iterator[LocalCluster]:
    """Start the session's PostgreSQL 17, with timescaledb preloaded; stop it at the end."""
    local = make_local_cluster(TEST_DATA, TEST_PORT)
    settings = load_settings(
        cwd=ROOT, env={"PGDATA": str(TEST_DATA), "PGPORT": str(TEST_PORT)}, config_file=None
    )
    assert settings.local == local, "test cluster settings must come from the toolkit's resolution"
    from singularity_ops.db import ensure_db

    TEST_DATA.parent.mkdir(parents=True, exist_ok=True)
    session_lock = open(TEST_DATA.parent / f"{TEST_DATA.name}.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(session_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.exit(
            f"another test session of this checkout is running (it holds {session_lock.name}, "
            f"and the server in {TEST_DATA}); wait for it, or test another checkout",
            returncode=1,
        )
    try:
        cluster.stop(local, None)  # left running by a killed session, maybe on another port
        ensure_db(settings, timeout=60)
        _tune_for_tests(settings, local)
        _drop_leftover_databases(settings)
    except Exception as exc:  # fail loudly: never skip database tests
        pytest.exit(f"cannot start the test PostgreSQL 17 in {TEST_DATA}: {exc}", returncode=1)
    yield local
    cluster.stop(local, None)
    session_lock.close()


def _drop_leftover_databases(settings: Settings) -> None:
    """A killed session leaves pytest-postgresql's template and test databases behind in the
    reused cluster; the session lock is ours, so nothing uses them any more."""
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0',"
                " 'template1')"
            )
        ]
        for name in names:
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(
                    psycopg.sql.Identifier(name)
                )
            )
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )


# Disposable data: a crash may lose it, so nothing waits for the disk; and tests that need
# statistics ANALYZE themselves, so autovacuum only takes CPU from the other workers.
_TEST_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
}


def _tune_for_tests(settings: Settings, local: LocalCluster) -> None:
    """The test server creates every test database from a template. TimescaleDB starts a
    scheduler in each new database, and while it is connected the template cannot be copied
    ("source database is being accessed by other users", timescale/timescaledb#4048). The
    tests use no background jobs, so the session's server runs without schedulers; and its
    data is thrown away, so it does not flush to disk."""
    wanted = {"timescaledb.max_background_workers": "0", **_TEST_SERVER_SETTINGS}
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        changed = False
        for name, value in wanted.items():
            if conn.execute(f"SHOW {name}").fetchone()[0] != value:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                changed = True
    if changed:
        cluster.restart(local, None)


# Requested only by the tests that need a server (through the fixtures below): the pure
# tests (config, corpus, path safety, ...) never wait for PostgreSQL to start.
postgresql_noproc_unstarted = factories.postgresql_noproc(
    host="127.0.0.1", port=TEST_PORT, user="postgres", dbname="sops_test"
)


@pytest.fixture(scope="session")
def postgresql_noproc(test_server: LocalCluster, postgresql_noproc_unstarted: Any) -> Any:
    """pytest-postgresql's description of the session server, once it runs."""
    return postgresql_noproc_unstarted


postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def db_settings(postgresql: psycopg.Connection) -> Settings:
    """Settings that point the toolkit at this test's fresh, empty database."""
    info = postgresql.info
    return load_settings(
        cwd=ROOT,
        env={},
        database_url=f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}",
    )


@pytest.fixture(scope="session")
def server_settings(test_server: LocalCluster) -> Settings:
    """Settings for the session server with a database name the test chooses later (--dbname)."""
    return load_settings(
        cwd=ROOT,
        env={},
        database_url=f"postgresql://postgres@127.0.0.1:{test_server.port}/postgres",
    )


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
    input: str | None = None,
):
    """Run the real console entry point in a subprocess (exit codes, stdout/stderr split)."""
    full_env = clean_env(**(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "singularity_ops", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def cli_in_process(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """The CLI's entry point called in this process (click's CliRunner isolation), with the
    environment run_cli gives a subprocess and the remembered secrets of earlier calls
    forgotten, as in a new process: for tests of output and exit codes, where a process
    start (about 0.4 s) would cost more than the test. It sees only what Python writes;
    what a child process or a C library writes to the real stderr needs run_cli. A call
    still running after `timeout` seconds fails the test (SIGALRM), as run_cli's would."""
    from click.testing import CliRunner

    from singularity_ops import config
    from singularity_ops.cli import main

    wanted = clean_env(**(env or {}))
    overrides: dict[str, str | None] = {k: None for k in os.environ if k not in wanted}
    overrides.update(wanted)
    remembered = dict(config._SECRETS)
    config._SECRETS.clear()
    previous = os.getcwd()
    os.chdir(cwd)

    def too_long(_signum, _frame):
        raise TimeoutError(f"singularity-ops {' '.join(args)} ran longer than {timeout} s")

    before = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with CliRunner().isolation(input=input, env=overrides) as (out, err, _both):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        os.chdir(previous)
        config._SECRETS.clear()
        config._SECRETS.update(remembered)
    return subprocess.CompletedProcess(
        list(args), code, out.getvalue().decode(), err.getvalue().decode()
    )


MIGRATIONS = ROOT / "singularity_ops" / "sql" / "migrations"


@pytest.fixture(scope="session")
def database_templates(server_settings: Settings) -> Settings:
    """Two template databases, made once a session: `sops_tmpl_ext` with vector, timescaledb
    and postgis, and `sops_tmpl_kb` with every migration applied on top. Creating the
    extensions and migrating costs about a second; copying a template, a tenth of that."""
    from singularity_ops.db import connect
    from singularity_ops.extensions import create_extensions
    from singularity_ops.migrate import migrate

    base = server_settings
    with psycopg.connect(**base.conninfo(), autocommit=True) as admin:
        for name in ("sops_tmpl_kb", "sops_tmpl_ext"):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute("CREATE DATABASE sops_tmpl_ext")
        with connect(replace(base, dbname="sops_tmpl_ext"), autocommit=True) as conn:
            create_extensions(conn, ["vector", "timescaledb", "postgis"])
        admin.execute("CREATE DATABASE sops_tmpl_kb TEMPLATE sops_tmpl_ext")
        with connect(replace(base, dbname="sops_tmpl_kb"), autocommit=True) as conn:
            migrate(conn, MIGRATIONS)
    return base


_copies = itertools.count(1)


def _copy_of(base: Settings, template: str) -> Iterator[Settings]:
    """A fresh database copied from `template`, dropped after the test."""
    name = f"sops_db_{next(_copies)}"
    with psycopg.connect(**base.conninfo(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    yield replace(base, dbname=name)
    with psycopg.connect(**base.conninfo(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ext_settings(database_templates: Settings) -> Iterator[Settings]:
    """A fresh database with vector, timescaledb and postgis created."""
    yield from _copy_of(database_templates, "sops_tmpl_ext")


@pytest.fixture
def kb_settings(database_templates: Settings) -> Iterator[Settings]:
    """A fresh database with the extensions and every migration applied."""
    yield from _copy_of(database_templates, "sops_tmpl_kb")


def write_cli_config(directory: Path, settings: Settings, **sections: dict) -> Path:
    """A singularity.yaml in `directory` pointing the CLI at `settings`' database."""
    import yaml

    data = {"database": {"url": settings.url()}, "migrations": {"dir": str(MIGRATIONS)}, **sections}
    path = directory / "singularity.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def corpus_db(kb_settings, tmp_path):
    """A migrated database holding embed_fixtures.small_corpus (not embedded yet)."""
    from embed_fixtures import imported, small_corpus

    root = small_corpus(tmp_path / "td")
    imported(kb_settings, root)
    return kb_settings, root


@pytest.fixture
def full_db(kb_settings):
    """Artifacts with vectors, usage across ~9 weekly chunks, and a postgis table."""
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content, embedding,"
            " embedding_model, embedded_hash, usage_count, success_count)"
            " SELECT 'pattern', 'p' || g, format('{\"n\": %s, \"tags\": [\"t%s\"]}', g, g % 5),"
            '  format(\'{"n": %s, "tags": ["t%s"]}\', g, g % 5)::jsonb,'
            "  (SELECT array_agg(round(random()::numeric, 6))::real[]::vector FROM generate_series(1, 8) WHERE g > 0),"
            "  'fake:8', 'h', 0, 0 FROM generate_series(1, 200) g"
        )
        conn.execute(
            "INSERT INTO artifact_usage (used_at, artifact_pk, success, environment, duration_ms, metadata)"
            " SELECT now() - (g || ' hours')::interval, a.id, g % 3 <> 0, 'test', g, jsonb_build_object('g', g)"
            " FROM generate_series(1, 1500) g JOIN LATERAL (SELECT id FROM knowledge_artifacts"
            "  ORDER BY artifact_id OFFSET g % 200 LIMIT 1) a ON true"
        )
        conn.execute(
            "CREATE TABLE places (id serial PRIMARY KEY, name text, geom geometry(Point, 4326))"
        )
        conn.execute(
            "INSERT INTO places (name, geom) SELECT 'place ' || g,"
            " ST_SetSRID(ST_MakePoint(g * 0.37 - 50, g * 0.11 - 20), 4326) FROM generate_series(1, 100) g"
        )
        chunks = conn.execute("SELECT count(*) FROM show_chunks('artifact_usage')").fetchone()[0]
    assert chunks >= 8
    return kb_settings


@pytest.fixture
def target(full_db):
    name = f"{full_db.dbname}_restored"
    yield name
    from backup_fixtures import drop

    drop(full_db, name)
