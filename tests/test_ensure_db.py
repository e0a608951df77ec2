"""ensure-db against the real PostgreSQL 17: missing, existing, stopped, unreachable, odd names."""

import concurrent.futures
import os
import time

import psycopg
import pytest
from conftest import free_port, run_cli

from singularity_ops import cluster
from singularity_ops.config import load_settings
from singularity_ops.db import ensure_db
from singularity_ops.errors import DatabaseUnavailable


@pytest.fixture
def own_cluster(tmp_path):
    """Settings for a brand-new project-local cluster in tmp_path (not yet initialised)."""
    settings = load_settings(
        cwd=tmp_path, env={"PGDATA": str(tmp_path / "pgdata"), "PGPORT": str(free_port())}
    )
    yield settings
    cluster.stop(settings.local, None)


def databases(conn_settings) -> set[str]:
    with psycopg.connect(**conn_settings.conninfo("postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def drop_database(conn_settings, name: str) -> None:
    with psycopg.connect(**conn_settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(name))
        )


def test_creates_a_missing_database_then_is_a_no_op(server_settings):
    name = f"sops_missing_{os.getpid()}"
    settings = load_settings(env={}, database_url=server_settings.url(), dbname=name)
    try:
        first = ensure_db(settings, timeout=10)
        assert first.created and name in databases(server_settings)
        second = ensure_db(settings, timeout=10)
        assert not second.created
        assert second.server_version.startswith("17.")
    finally:
        drop_database(server_settings, name)


def test_name_that_needs_quoting_is_created_exactly(server_settings):
    name = '"we;ird"-name'
    try:
        result = run_cli("--database-url", server_settings.url(), "--dbname", name, "ensure-db")
        assert result.returncode == 0, result.stderr
        assert name in databases(server_settings)
        again = run_cli(
            "--database-url", server_settings.url(), "--dbname", name, "ensure-db", "--json"
        )
        assert again.returncode == 0 and '"created": false' in again.stdout
    finally:
        drop_database(server_settings, name)


def test_concurrent_runs_all_succeed_and_create_once(server_settings):
    name = f"sops_race_{os.getpid()}"
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(
                pool.map(
                    lambda _: run_cli(
                        "--database-url",
                        server_settings.url(),
                        "--dbname",
                        name,
                        "ensure-db",
                        "--json",
                    ),
                    range(4),
                )
            )
        assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
        assert sum('"created": true' in r.stdout for r in results) == 1
    finally:
        drop_database(server_settings, name)


def test_initialises_and_starts_a_missing_local_cluster_with_timescaledb_preloaded(own_cluster):
    result = ensure_db(own_cluster, timeout=60)
    assert result.cluster_initialized and result.cluster_started and result.created
    assert result.preload_configured
    with psycopg.connect(**own_cluster.conninfo()) as conn:
        assert "timescaledb" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    again = ensure_db(own_cluster, timeout=10)
    assert not (again.cluster_initialized or again.cluster_started or again.created)


def test_starts_a_stopped_local_cluster_even_with_a_stale_pid_file(own_cluster):
    ensure_db(own_cluster, timeout=60)
    assert cluster.stop(own_cluster.local, None)
    assert not cluster.status(own_cluster.local).running
    # A crash leaves postmaster.pid behind; the pid may be dead or reused by another process.
    for stale_pid in (2**22 + 12345, os.getpid()):
        pid_file = own_cluster.local.data_dir / "postmaster.pid"
        pid_file.write_text(f"{stale_pid}\n{own_cluster.local.data_dir}\n")
        result = ensure_db(own_cluster, timeout=60)
        assert result.cluster_started and not result.cluster_initialized
        assert cluster.status(own_cluster.local).running
        cluster.stop(own_cluster.local, None)


def test_server_status_and_stop_through_the_cli(own_cluster, tmp_path):
    env = {"PGDATA": str(own_cluster.local.data_dir), "PGPORT": str(own_cluster.port)}
    stopped = run_cli("server", "status", env=env, cwd=tmp_path)
    assert stopped.returncode == 3 and "not initialised" in stopped.stdout
    assert run_cli("ensure-db", env=env, cwd=tmp_path).returncode == 0
    running = run_cli("server", "status", "--json", env=env, cwd=tmp_path)
    assert running.returncode == 0 and '"running": true' in running.stdout
    assert run_cli("server", "stop", env=env, cwd=tmp_path).stdout.strip() == "stopped"
    assert run_cli("server", "stop", env=env, cwd=tmp_path).stdout.strip() == "not running"


def test_unreachable_server_times_out_with_a_clear_message():
    port = free_port()
    settings = load_settings(env={"DATABASE_URL": f"postgresql://kb:hunter2@127.0.0.1:{port}/kb"})
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as info:
        ensure_db(settings, timeout=1.5)
    assert time.monotonic() - started >= 1.0, "it waited for the server as asked"
    message = str(info.value)
    assert "gave up after 1.5 s" in message and f"127.0.0.1:{port}" in message
    assert "hunter2" not in message


def test_unreachable_server_through_the_cli_exits_1_without_the_password():
    port = free_port()
    result = run_cli(
        "ensure-db",
        "--timeout",
        "1",
        env={"DATABASE_URL": f"postgresql://kb:hunter2@127.0.0.1:{port}/kb"},
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("singularity-ops: error: gave up after 1 s")
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_authentication_errors_fail_at_once_instead_of_waiting(server_settings):
    url = f"postgresql://sops_no_such_role:hunter2@127.0.0.1:{server_settings.port}/postgres"
    # Waiting cannot fix a missing role: with --timeout 600 a wait would outlast run_cli's.
    result = run_cli("ensure-db", "--timeout", "600", env={"DATABASE_URL": url}, timeout=120)
    assert result.returncode == 1
    # Under scram-sha-256 the server does not say whether the role exists.
    assert 'password authentication failed for user "sops_no_such_role"' in result.stderr
    assert "check the user and password" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_commands_refuse_another_projects_cluster_on_the_same_port(own_cluster, tmp_path):
    ensure_db(own_cluster, timeout=60)
    impostor = load_settings(
        cwd=tmp_path,
        env={"PGDATA": str(tmp_path / "other-pgdata"), "PGPORT": str(own_cluster.port)},
    )
    from singularity_ops.db import connect

    with pytest.raises(
        DatabaseUnavailable, match=r"is served by another server .*not this project.s cluster"
    ):
        connect(impostor, "postgres")


def test_a_taken_port_is_found_before_initdb_writes_anything(tmp_path):
    import socket

    from singularity_ops.errors import ClusterError

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = load_settings(
            cwd=tmp_path, env={"PGDATA": str(tmp_path / "pgdata"), "PGPORT": str(port)}
        )
        with pytest.raises(ClusterError, match=f"port {port} on 127.0.0.1 is already taken"):
            ensure_db(settings, timeout=5)
    assert not (tmp_path / "pgdata").exists(), "no initdb before the port check"


def test_status_reports_a_stopped_cluster_as_data_with_exit_3(own_cluster, tmp_path):
    import json

    env = {"PGDATA": str(own_cluster.local.data_dir), "PGPORT": str(own_cluster.port)}
    out = run_cli("status", "--json", env=env, cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    report = json.loads(out.stdout)
    assert report["reachable"] is False and "cannot connect" in report["error"]
    assert report["local_cluster"]["initialized"] is False
    text = run_cli("status", env=env, cwd=tmp_path)
    assert (
        text.returncode == 3 and "unreachable" in text.stdout and "not initialised" in text.stdout
    )


def test_a_cluster_made_by_another_timescaledb_build_is_refused_with_both_fixes(
    own_cluster, tmp_path
):
    import json

    from singularity_ops.cluster import BUILD_FILE
    from singularity_ops.db import connect
    from singularity_ops.errors import ClusterError
    from singularity_ops.extensions import create_extensions

    ensure_db(own_cluster, timeout=60)
    with connect(own_cluster, autocommit=True) as conn:
        create_extensions(conn, ["vector", "timescaledb", "postgis"])
    record = own_cluster.local.data_dir / BUILD_FILE
    build = json.loads(record.read_text())
    assert build["server"].startswith("PostgreSQL 17") and build["extensions"]["timescaledb"]
    # what a Debian-made cluster looks like to a newer nixpkgs build (or the reverse)
    build["extensions"]["timescaledb"] = "2.0.0"
    build["server"] = "PostgreSQL 17.0 (another build)"
    record.write_text(json.dumps(build))
    with pytest.raises(ClusterError) as info:
        ensure_db(own_cluster, timeout=60)
    message = str(info.value)
    assert "timescaledb 2.0.0 (PostgreSQL 17.0 (another build)) made this cluster" in message
    assert "singularity-ops server update-extensions" in message and "PGDATA=" in message
    env = {"PGDATA": str(own_cluster.local.data_dir), "PGPORT": str(own_cluster.port)}
    updated = run_cli("server", "update-extensions", "--json", env=env, cwd=tmp_path)
    assert updated.returncode == 0, updated.stderr
    assert {u["extension"] for u in json.loads(updated.stdout)} == {
        "timescaledb",
        "vector",
        "postgis",
    }
    ensure_db(own_cluster, timeout=60)
    assert json.loads(record.read_text())["extensions"]["timescaledb"] != "2.0.0"


def test_the_cluster_keeps_its_port_and_another_port_is_named_not_waited_for(own_cluster, tmp_path):
    ensure_db(own_cluster, timeout=60)
    data_env = {"PGDATA": str(own_cluster.local.data_dir)}
    # PGPORT=N once (./scripts/setup); later commands without it still mean that cluster.
    remembered = load_settings(cwd=tmp_path, env=data_env)
    assert remembered.port == own_cluster.port and remembered.local.port == own_cluster.port
    assert run_cli("ensure-db", "--json", env=data_env, cwd=tmp_path).returncode == 0
    status = run_cli("server", "status", env=data_env, cwd=tmp_path)
    assert f"listening: 127.0.0.1:{own_cluster.port}," in status.stdout

    other = str(free_port())
    # Named at once, not after --timeout: a wait of 600 s would outlast run_cli's timeout.
    wrong = run_cli("ensure-db", "--timeout", "600", env={**data_env, "PGPORT": other},
                    cwd=tmp_path, timeout=120)  # fmt: skip
    assert wrong.returncode == 1
    assert f"already running on port {own_cluster.port}, not {other}" in wrong.stderr
    search = run_cli("status", "--json", env={**data_env, "PGPORT": other}, cwd=tmp_path)
    assert f"running on port {own_cluster.port}, not {other}" in search.stdout
    text = run_cli("status", env={**data_env, "PGPORT": other}, cwd=tmp_path)
    assert f"running on port {own_cluster.port}, but this configuration says {other}" in text.stdout
    assert "start it with" not in text.stdout, "a running cluster is not told to start"
    stop = run_cli("server", "stop", env=data_env, cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    stopped = run_cli("server", "status", env=data_env, cwd=tmp_path)
    assert "listening" not in stopped.stdout
    assert f"port when started: {own_cluster.port}" in stopped.stdout
    started_again = run_cli("server", "start", env=data_env, cwd=tmp_path)
    assert f"started on 127.0.0.1:{own_cluster.port}" in started_again.stdout
