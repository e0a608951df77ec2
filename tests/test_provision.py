"""scripts/provision-postgres: idempotent when provisioned, clear and quick where it cannot work."""

import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "provision-postgres"


def test_second_run_only_checks_and_prints_a_bindir_with_postgres_17():
    out = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    bindir = out.stdout.strip()
    version = subprocess.run([f"{bindir}/postgres", "--version"], capture_output=True, text=True)
    assert " 17." in version.stdout


def test_without_root_it_fails_at_once_with_the_alternatives():
    # A copy in a directory `nobody` can read: the checkout may sit under a 0700 mktemp dir.
    shared = Path(tempfile.mkdtemp(prefix="sops-provision-"))
    try:
        shared.chmod(0o755)
        script = shared / "provision-postgres"
        shutil.copy(SCRIPT, script)
        out = subprocess.run(
            [
                "runuser",
                "-u",
                "nobody",
                "--",
                "env",
                f"SINGULARITY_PG_HOME={shared}/home",
                "PATH=/usr/bin:/bin",
                "bash",
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        shutil.rmtree(shared)
    assert out.returncode == 1, out.stderr
    assert "provisioning needs root" in out.stderr
    assert "DATABASE_URL" in out.stderr
    assert out.stdout == ""


def test_unreachable_mirror_fails_in_seconds(tmp_path):
    out = subprocess.run(
        [SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SINGULARITY_PG_HOME": str(tmp_path / "pg-home"),
            "SINGULARITY_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
        },
    )
    assert out.returncode == 1
    assert "Debian mirror http://127.0.0.1:9/debian is not reachable" in out.stderr
    assert not (tmp_path / "pg-home" / "rootfs").exists()


def test_a_wrapped_client_reads_a_passfile_outside_the_default_binds(server_settings):
    # CI clones under /check: the rootfs wrappers must bind the directory PGPASSFILE names,
    # or pg_dump and pg_restore fail with "no password supplied" (they did, in CI).
    from conftest import TEST_PASSFILE

    from singularity_ops.backup import pg_env
    from singularity_ops.pgbin import find_program

    outside = Path(tempfile.mkdtemp(prefix="sops-passfile-", dir="/"))
    try:
        passfile = outside / "pgpass"
        shutil.copy(TEST_PASSFILE, passfile)
        passfile.chmod(0o600)
        conninfo, env = pg_env(server_settings)
        env.pop("PGPASSWORD", None)
        env["PGPASSFILE"] = str(passfile)
        psql = find_program("psql", server_settings.bindir).path
        out = subprocess.run(
            [
                str(psql),
                "-X",
                "-At",
                "--no-password",
                f"--dbname={conninfo}",
                "-c",
                "SELECT 41 + 1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd="/",
        )
    finally:
        shutil.rmtree(outside)
    assert (out.returncode, out.stdout.strip()) == (0, "42"), out.stderr
