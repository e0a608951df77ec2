"""create-extensions against the real PostgreSQL 17 with vector, timescaledb and postgis."""

import psycopg
import pytest
from conftest import cli_in_process, free_port

from singularity_ops import cluster
from singularity_ops.config import load_settings
from singularity_ops.errors import ExtensionError
from singularity_ops.extensions import create_extensions, installed_extensions


def test_creates_all_three_then_is_a_no_op(db_settings):
    first = cli_in_process("--database-url", db_settings.url(), "create-extensions")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["vector", "timescaledb", "postgis"]
    assert all(line.endswith("(created)") for line in lines)
    second = cli_in_process("--database-url", db_settings.url(), "create-extensions", "--json")
    assert second.returncode == 0
    assert '"created": true' not in second.stdout
    with psycopg.connect(**db_settings.conninfo()) as conn:
        versions = installed_extensions(conn)
    assert versions["vector"].startswith("0.8") and versions["postgis"].startswith("3.")
    assert versions["timescaledb"].startswith("2.")


def test_missing_extension_names_it_and_creates_nothing(db_settings):
    result = cli_in_process(
        "--database-url",
        db_settings.url(),
        "create-extensions",
        "-e",
        "vector",
        "-e",
        "no_such_ext",
    )
    assert result.returncode == 1
    assert "extension 'no_such_ext' is not available on the server" in result.stderr
    with psycopg.connect(**db_settings.conninfo()) as conn:
        assert "vector" not in installed_extensions(conn), "a failed run must change nothing"


@pytest.fixture
def cluster_without_preload(tmp_path):
    """A fresh cluster started directly (not through ensure-db), so timescaledb is not preloaded."""
    settings = load_settings(
        cwd=tmp_path, env={"PGDATA": str(tmp_path / "pgdata"), "PGPORT": str(free_port())}
    )
    cluster.init(settings.local, None)
    cluster.start(settings.local, None)
    yield settings
    cluster.stop(settings.local, None)


def test_timescaledb_without_preload_gives_the_fix(cluster_without_preload):
    settings = cluster_without_preload
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        with pytest.raises(ExtensionError) as info:
            create_extensions(conn, ["vector", "timescaledb"])
        assert "vector" not in installed_extensions(conn)
    message = str(info.value)
    assert "extension 'timescaledb' must be preloaded" in message
    assert "shared_preload_libraries" in message and "restart" in message


def test_jobs_the_apache_build_cannot_run_are_unscheduled(db_settings):
    with psycopg.connect(**db_settings.conninfo(), autocommit=True) as conn:
        create_extensions(conn, ["timescaledb"])
        license_name = conn.execute("SHOW timescaledb.license").fetchone()[0]
        jobs = conn.execute(
            "SELECT proc_name, scheduled FROM _timescaledb_config.bgw_job ORDER BY id"
        ).fetchall()
    assert license_name == "apache"  # what Debian's and nixpkgs' timescaledb-apache ship
    assert ("policy_job_stat_history_retention", False) in jobs, jobs
    assert all(not scheduled for name, scheduled in jobs if name != "policy_telemetry")
