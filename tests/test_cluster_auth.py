"""The local clusters require a password: another local account gets nowhere, over TCP or the
socket; the toolkit, psql after `eval "$(singularity-ops env)"` and the tests get in through the
passfile; a trust cluster of an earlier version is upgraded in place; the secret is never shown."""

import json
import os
import stat
import subprocess
import sys

import psycopg
import pytest
from conftest import TEST_PORT, clean_env, free_port, run_cli

from singularity_ops import cluster
from singularity_ops.config import load_settings, read_passfile_password
from singularity_ops.db import ensure_db
from singularity_ops.pgbin import find_program

# Runs as `nobody` with the system Python (no project files needed): speaks the startup message
# of the PostgreSQL protocol and prints what the server answers, or the error of the attempt.
PROBE = r"""
import socket, struct, sys
kind, where, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        s = socket.create_connection((where, port), timeout=5)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(f"{where}/.s.PGSQL.{port}")
except OSError as exc:
    print("connect-error", exc.__class__.__name__)
    sys.exit(0)
body = b"user\0postgres\0database\0postgres\0\0"
s.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
reply = s.recv(64)
if reply[:1] == b"R":
    print("auth-request", struct.unpack("!i", reply[5:9])[0])
else:
    print("other", reply[:1])
"""


def probe_as_nobody(kind: str, where: str, port: int) -> str:
    out = subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", PROBE, kind, where, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def own_cluster(tmp_path):
    os.chmod(tmp_path, 0o755)  # so that only the cluster's own permissions keep nobody out
    settings = load_settings(
        cwd=tmp_path, env={"PGDATA": str(tmp_path / "pgdata"), "PGPORT": str(free_port())}
    )
    yield settings
    cluster.stop(settings.local, None)


def assert_refused_without_password(settings) -> None:
    params = settings.conninfo("postgres") | {"passfile": "/dev/null"}
    params.pop("password", None)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(**params).close()


def test_a_new_cluster_lets_no_other_account_in(own_cluster):
    ensure_db(own_cluster, timeout=60)
    local = own_cluster.local
    # 10 is AuthenticationSASL: the server wants the password (0 would be "come in").
    assert probe_as_nobody("tcp", "127.0.0.1", own_cluster.port) == "auth-request 10"
    assert probe_as_nobody("unix", str(local.socket_dir), own_cluster.port) == (
        "connect-error PermissionError"
    )
    assert stat.S_IMODE(os.stat(local.socket_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(local.passfile).st_mode) == 0o600
    assert not cluster.trusts_anyone(local)
    assert_refused_without_password(own_cluster)
    with psycopg.connect(**own_cluster.conninfo()) as conn:
        assert conn.execute("SHOW unix_socket_permissions").fetchone()[0] == "0700"
        assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"


def test_the_test_cluster_lets_no_other_account_in(test_server):
    assert probe_as_nobody("tcp", "127.0.0.1", TEST_PORT) == "auth-request 10"
    assert probe_as_nobody("unix", str(test_server.socket_dir), TEST_PORT).startswith(
        "connect-error"
    )
    assert not cluster.trusts_anyone(test_server)
    settings = load_settings(env={"PGDATA": str(test_server.data_dir), "PGPORT": str(TEST_PORT)})
    assert_refused_without_password(settings)


def test_psql_works_after_eval_env_and_the_secret_is_never_printed(own_cluster, tmp_path):
    env = {"PGDATA": str(own_cluster.local.data_dir), "PGPORT": str(own_cluster.port)}
    outputs = [run_cli("ensure-db", env=env, cwd=tmp_path)]
    password = read_passfile_password(own_cluster.local.passfile)
    assert password and len(password) >= 32
    for args in (("env",), ("env", "--json"), ("server", "status"), ("status", "--json")):
        outputs.append(run_cli(*args, env=env, cwd=tmp_path))
    assert f"export PGPASSFILE={own_cluster.local.passfile}" in outputs[1].stdout
    assert json.loads(outputs[2].stdout)["PGPASSFILE"] == str(own_cluster.local.passfile)
    assert f"password in {own_cluster.local.passfile}" in outputs[3].stdout
    psql = find_program("psql", None).path
    script = f'eval "$(python -m singularity_ops env)" && {psql} -Atc "select current_user"'
    shell = subprocess.run(
        ["sh", "-c", script],
        env=clean_env(**env, PATH=f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shell.returncode == 0 and shell.stdout.strip() == "postgres", shell.stderr
    outputs.append(shell)
    for out in outputs:
        assert password not in out.stdout + out.stderr
    assert password not in own_cluster.local.log_file.read_text(errors="replace")


def test_a_trust_cluster_of_an_earlier_version_is_upgraded_once_with_its_data(
    own_cluster, tmp_path
):
    ensure_db(own_cluster, timeout=60)
    local = own_cluster.local
    with psycopg.connect(**own_cluster.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")
        # What an earlier version made: trust everywhere, no password, no passfile.
        conn.execute("ALTER ROLE postgres PASSWORD NULL")
        hba = local.data_dir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
        )
        conn.execute("SELECT pg_reload_conf()")
    local.passfile.unlink()
    assert cluster.trusts_anyone(local)
    assert probe_as_nobody("tcp", "127.0.0.1", own_cluster.port) == "auth-request 0"

    env = {"PGDATA": str(local.data_dir), "PGPORT": str(own_cluster.port)}
    first = run_cli("ensure-db", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("\n") == 1 and "now requires the password kept in" in first.stderr
    assert str(local.passfile) in first.stderr
    password = read_passfile_password(local.passfile)
    assert password and password not in first.stdout + first.stderr
    assert probe_as_nobody("tcp", "127.0.0.1", own_cluster.port) == "auth-request 10"
    assert_refused_without_password(own_cluster)
    with psycopg.connect(**own_cluster.conninfo()) as conn:
        assert conn.execute("SELECT count(*), sum(n) FROM kept").fetchone() == (100, 5050)
    second = run_cli("ensure-db", env=env, cwd=tmp_path)
    assert second.returncode == 0 and second.stderr == ""


def test_a_lost_passfile_is_named_with_the_way_back(own_cluster, tmp_path):
    ensure_db(own_cluster, timeout=60)
    own_cluster.local.passfile.unlink()
    env = {"PGDATA": str(own_cluster.local.data_dir), "PGPORT": str(own_cluster.port)}
    out = run_cli("ensure-db", env=env, cwd=tmp_path)
    assert out.returncode == 1
    assert f"requires the password kept in {own_cluster.local.passfile}" in out.stderr
    assert "pg_hba.conf" in out.stderr and "Traceback" not in out.stderr
