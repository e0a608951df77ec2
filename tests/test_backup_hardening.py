"""backup and restore under the fault tour's findings: usage history, hostile names, renamed
backups, other databases, retention by age, and errors that are not bugs."""

import json
import os
import shutil
import threading
import time
from dataclasses import replace

import psycopg
import pytest
from backup_fixtures import checksums, drop
from conftest import cli_in_process, write_cli_config

from singularity_ops.backup import backup, good_backups
from singularity_ops.restore import RestoreError, restore
from singularity_ops.usage_ingest import record_usage


def usage_state(settings, dbname=None):
    with psycopg.connect(**settings.conninfo(dbname)) as conn:
        events = conn.execute("SELECT count(*) FROM artifact_usage").fetchone()[0]
        counters = conn.execute(
            "SELECT sum(usage_count), sum(success_count) FROM knowledge_artifacts"
        ).fetchone()
    return events, tuple(int(c or 0) for c in counters)


def test_knowledge_only_restore_keeps_the_usage_history_of_artifacts_it_has(full_db, tmp_path):
    with psycopg.connect(**full_db.conninfo()) as conn:
        record_usage(conn, "pattern", "p1", success=True)
        record_usage(conn, "pattern", "p1", success=False)
        conn.commit()
    dump = backup(full_db, tmp_path / "b", knowledge_only=True).path
    with psycopg.connect(**full_db.conninfo()) as conn:
        record_usage(conn, "pattern", "p2", success=True)  # after the backup: must survive too
        conn.execute(
            "UPDATE knowledge_artifacts SET content_raw = '{\"n\": 0}', content = '{\"n\": 0}'"
            " WHERE artifact_id = 'p3'"
        )
        conn.commit()
    before = usage_state(full_db)
    result = restore(full_db, dump, force=True)
    assert (result.usage_kept, result.usage_discarded) == (before[0], 0)
    assert usage_state(full_db) == before, "events and counters are those of the live database"
    with psycopg.connect(**full_db.conninfo()) as conn:
        content = conn.execute(
            "SELECT content FROM knowledge_artifacts WHERE artifact_id = 'p3'"
        ).fetchone()[0]
        assert content == {"n": 3, "tags": ["t3"]}, "the knowledge itself is the backup's"


def test_knowledge_only_restore_refuses_to_lose_events_of_newer_artifacts(full_db, tmp_path):
    dump = backup(full_db, tmp_path / "b", knowledge_only=True).path
    with psycopg.connect(**full_db.conninfo()) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
            " VALUES ('pattern', 'newer', '{}', '{}')"
        )
        record_usage(conn, "pattern", "newer", success=True)
        conn.commit()
    before = checksums(full_db)
    config = write_cli_config(tmp_path, full_db)
    out = cli_in_process("--config", str(config), "restore", str(dump), "--force", cwd=tmp_path)
    assert out.returncode == 1
    assert "1 usage event(s)" in out.stderr and "--discard-orphaned-usage" in out.stderr
    assert checksums(full_db) == before
    result = restore(full_db, dump, force=True, discard_orphaned_usage=True)
    assert (result.usage_kept, result.usage_discarded) == (1500, 1)


def test_restoring_another_databases_dump_over_a_target_needs_an_explicit_flag(
    full_db, target, tmp_path
):
    dump = backup(full_db, tmp_path / "b").path
    restore(full_db, dump, target_db=target)  # a new database: nothing replaced, no question
    # made by a restore of this database (its mark says so): refreshing it asks nothing
    assert restore(full_db, dump, target_db=target, force=True).replaced
    with psycopg.connect(**full_db.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("COMMENT ON DATABASE {} IS NULL").format(
            psycopg.sql.Identifier(target)))  # fmt: skip
    with pytest.raises(RestoreError, match=r"is a backup of database .* --from-other-database"):
        restore(full_db, dump, target_db=target, force=True)
    assert restore(full_db, dump, target_db=target, force=True, from_other_database=True).replaced


def test_database_names_never_lead_a_backup_out_of_its_directory(full_db, tmp_path):
    out = tmp_path / "d" / "inner"
    made = []
    for name in ("../x", "a/b", ".hidden"):
        drop(full_db, name)
        with psycopg.connect(**full_db.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        try:
            made.append(backup(replace(full_db, dbname=name), out))
        finally:
            drop(full_db, name)
    assert [m.path.parent for m in made] == [out] * 3
    assert [m.path.name.split("_2")[0] for m in made] == ["%2E.%2Fx", "a%2Fb", "%2Ehidden"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["inner"]
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == "0o700"


def test_an_existing_backup_directory_keeps_its_mode(full_db, tmp_path):
    out = tmp_path / "shared"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)
    backup(full_db, out)
    assert oct(out.stat().st_mode & 0o777) == "0o750"


def test_a_backup_renamed_or_moved_with_its_manifest_still_restores(full_db, target, tmp_path):
    made = backup(full_db, tmp_path / "b")
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    renamed = elsewhere / "before-upgrade.dump"
    shutil.move(made.path, renamed)
    shutil.move(made.manifest, elsewhere / "before-upgrade.dump.manifest.json")
    assert restore(full_db, renamed, target_db=target).tables["public.places"] == 100
    # the dump renamed alone: its manifest is found by the checksum it records
    alone = elsewhere / "copy-for-ticket-123.dump"
    shutil.copy(renamed, alone)
    drop(full_db, target)
    assert restore(full_db, alone, target_db=target).tables["public.places"] == 100
    # renamed files are never candidates for retention
    assert good_backups(elsewhere) == []


def test_retention_by_age_keeps_the_newest_and_respects_keep(full_db, tmp_path):
    out = tmp_path / "b"
    old = []
    for stamp in ("20200101T000000Z", "20200201T000000Z", "20200301T000000Z"):
        made = backup(full_db, out)
        name = f"{full_db.dbname}_{stamp}.dump"
        manifest = json.loads(made.manifest.read_text())
        manifest["file"] = name
        (out / f"{name}.manifest.json").write_text(json.dumps(manifest))
        made.manifest.unlink()
        made.path.rename(out / name)
        old.append(name)
    kept_by_count = backup(full_db, out, keep=3, keep_days=30)
    assert kept_by_count.deleted == [old[0]], "older than 30 days and beyond the newest 3"
    by_age = backup(full_db, out, keep_days=30)
    assert sorted(by_age.deleted) == sorted(old[1:])
    assert [p.name for p in good_backups(out)] == [kept_by_count.path.name, by_age.path.name]


def test_errors_from_the_environment_are_messages_not_bugs(full_db, tmp_path):
    config = write_cli_config(tmp_path, full_db)
    unwritable = cli_in_process(
        "--config", str(config), "backup", "--out", "/dev/null/b", cwd=tmp_path
    )
    assert unwritable.returncode == 1 and "this is a bug" not in unwritable.stderr
    assert "/dev/null" in unwritable.stderr and "choose another --out" in unwritable.stderr
    made = backup(full_db, tmp_path / "b")
    manifest = json.loads(made.manifest.read_text())
    del manifest["format"]
    made.manifest.write_text(json.dumps(manifest))
    broken = cli_in_process(
        "--config", str(config), "restore", str(made.path), "--target-db", "x", cwd=tmp_path
    )
    assert broken.returncode == 1 and "this is a bug" not in broken.stderr
    assert f"{made.manifest}: the manifest lacks or mistypes format (str)" in broken.stderr
    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    (latin1 / "singularity.yaml").write_bytes(b"environment: d\xe9v\n")
    bad_config = cli_in_process("status", cwd=latin1)
    assert bad_config.returncode == 2 and "not UTF-8 (byte 0xe9" in bad_config.stderr


def test_a_user_without_privileges_gets_a_message_not_a_bug(full_db, tmp_path):
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS sops_nobody")
        conn.execute("CREATE ROLE sops_nobody LOGIN PASSWORD 'nobody-pw-7'")
    try:
        url = full_db.url().replace("postgres@", "sops_nobody:nobody-pw-7@")
        out = cli_in_process("--database-url", url, "status", cwd=tmp_path)
        assert out.returncode == 1, out.stdout
        assert "the database refused: permission denied" in out.stderr
        assert "this is a bug" not in out.stderr
    finally:
        with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
            conn.execute("DROP OWNED BY sops_nobody")
            conn.execute("DROP ROLE sops_nobody")


def test_force_restore_succeeds_while_clients_keep_reconnecting(full_db, tmp_path):
    dump = backup(full_db, tmp_path / "b").path
    stop = threading.Event()
    errors: list[str] = []
    crashed: list[str] = []

    def client():
        try:
            while not stop.is_set():
                try:
                    with psycopg.connect(**{**full_db.conninfo(), "connect_timeout": 2}) as conn:
                        conn.execute("SELECT count(*) FROM knowledge_artifacts").fetchone()
                        time.sleep(0.02)
                except psycopg.Error as exc:
                    errors.append(type(exc).__name__)
                    time.sleep(0.01)
        except BaseException as exc:  # anything but a database error is the test's failure
            crashed.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.3)
        result = restore(full_db, dump, force=True)
        alive = [thread.is_alive() for thread in clients]
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert result.replaced and result.tables["public.places"] == 100
    assert alive == [True] * 4 and crashed == [], crashed
    # Refused while the target is closed, ended when the swap terminates them: nothing else.
    assert set(errors) <= {"OperationalError", "AdminShutdown"}, set(errors)
    with psycopg.connect(**full_db.conninfo("postgres")) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        assert [n for n in names if "__restoring_" in n or "__replaced_" in n] == []
        allowed = conn.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (full_db.dbname,)
        ).fetchone()[0]
    assert allowed


def test_knowledge_only_restore_keeps_the_rollup_and_the_idempotency_keys(full_db, tmp_path):
    import io

    from singularity_ops.db import connect
    from singularity_ops.usage_ingest import ingest_usage
    from singularity_ops.usage_report import usage_report

    log = "\n".join(
        json.dumps(
            {
                "artifact_type": "pattern",
                "artifact_id": f"p{n % 7 + 1}",
                "success": n % 3 > 0,
                "duration_ms": n * 13,
                "event_id": f"e{n}",
            }
        )
        for n in range(40)
    )
    with connect(full_db, autocommit=True) as conn:
        assert ingest_usage(conn, io.StringIO(log)).recorded == 40
        before = usage_report(conn, since_days=30)
    dump = backup(full_db, tmp_path / "b", knowledge_only=True).path
    restore(full_db, dump, force=True)
    with connect(full_db, autocommit=True) as conn:
        after = usage_report(conn, since_days=30)
        assert (after.top, after.uses) == (before.top, before.uses)
        assert ingest_usage(conn, io.StringIO(log)).recorded == 0, "the keys came along"


def test_the_backup_lock_is_never_followed_through_a_symlink(full_db, tmp_path):
    out = tmp_path / "backups"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / ".singularity-backup.lock").symlink_to(victim)
    config = write_cli_config(tmp_path, full_db)
    result = cli_in_process("--config", str(config), "backup", "--out", str(out))
    assert result.returncode == 1 and "is a symbolic link" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n", "the link's target was not truncated"
    assert not list(out.glob("*.dump")), "nothing was dumped"
    (out / ".singularity-backup.lock").unlink()
    os.mkfifo(out / ".singularity-backup.lock")
    fifo = cli_in_process("--config", str(config), "backup", "--out", str(out), timeout=30)
    assert fifo.returncode == 1 and "is not a regular file" in fifo.stderr


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB file system: writes past that fail with ENOSPC, as on a full disk."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_a_message_naming_the_path_and_leaves_no_final_file(
    full_db, tmp_path, full_disk
):
    config = write_cli_config(tmp_path, full_db)
    for fmt in ("custom", "plain"):
        out = cli_in_process(
            "--config", str(config), "backup", "--out", str(full_disk), "--format", fmt
        )
        assert out.returncode == 1, out.stderr
        assert "this is a bug" not in out.stderr and "No space left on device" in out.stderr
        assert [p.name for p in full_disk.iterdir() if not p.name.startswith(".")] == []
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute(
            "UPDATE knowledge_artifacts SET usage_count = 50, success_count = 50,"
            " content = jsonb_set(content, '{pad}', to_jsonb(repeat('x', 20000))),"
            " content_raw = jsonb_set(content, '{pad}', to_jsonb(repeat('x', 20000)))::text"
        )
    exported = cli_in_process(
        "--config", str(config), "export", "--out", str(full_disk / "learned"), "--min-usage", "1"
    )
    assert exported.returncode == 1 and "this is a bug" not in exported.stderr, exported.stderr
    assert str(full_disk) in exported.stderr and "No space left on device" in exported.stderr
    # the model cache on a full disk: a message, and no cache entry under its final name
    built = cli_in_process(
        "model", "build", env={"SINGULARITY_CACHE_DIR": str(full_disk / "cache")}, cwd=tmp_path
    )
    assert built.returncode == 1 and "this is a bug" not in built.stderr, built.stderr
    assert "No space left on device" in built.stderr
    entries = list((full_disk / "cache").rglob("*.onnx"))
    assert all(".partial-" in str(p) for p in entries) and not any(
        p.name == "manifest.json" for p in (full_disk / "cache").rglob("manifest.json")
    )


def test_manifest_lies_and_plain_dump_meta_commands_are_refused_with_reasons(full_db, tmp_path):
    from singularity_ops.backup import MANIFEST_SUFFIX

    config = write_cli_config(tmp_path, full_db)
    custom = backup(full_db, tmp_path / "c").path
    manifest_path = custom.with_name(custom.name + MANIFEST_SUFFIX)
    manifest = json.loads(manifest_path.read_text())
    for key, value, reason in (
        ("pg_dump_version", "banana", "pg_dump_version (a version like 17.6, not 'banana')"),
        ("format", "plain", "the manifest says plain (SQL) format, but it is a custom archive"),
    ):
        manifest_path.write_text(json.dumps({**manifest, key: value}))
        out = cli_in_process(
            "--config", str(config), "restore", str(custom), "--target-db", "sops_x"
        )
        assert out.returncode == 1 and reason in out.stderr, out.stderr
        assert "this is a bug" not in out.stderr
    # a plain dump with a shell escape: refused unless trusted
    plain = backup(full_db, tmp_path / "p", fmt="plain").path
    marker = tmp_path / "shell-ran"
    # Before pg_dump's own \restrict line (17.6+), after which psql itself refuses them.
    plain.write_text(f"\\! touch {marker}\n" + plain.read_text())
    plain_manifest = plain.with_name(plain.name + MANIFEST_SUFFIX)
    from singularity_ops.backup import file_digest

    size, sha = file_digest(plain)
    plain_manifest.write_text(
        json.dumps({**json.loads(plain_manifest.read_text()), "bytes": size, "sha256": sha})
    )
    target = f"{full_db.dbname}_plain"
    refused = cli_in_process("--config", str(config), "restore", str(plain), "--target-db", target)
    assert refused.returncode == 1 and "--trust-plain-dump" in refused.stderr, refused.stderr
    assert "line " in refused.stderr and not marker.exists()
    try:
        trusted = cli_in_process(
            "--config", str(config), "restore", str(plain), "--target-db", target,
            "--trust-plain-dump",
        )  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        assert marker.exists(), "trusted: psql ran the dump as written"
    finally:
        drop(full_db, target)


def test_a_connection_ended_by_another_session_prints_no_stray_rollback_line(full_db):
    """What a backup saw when a concurrent restore ended its session: psycopg's logged
    "error ignored in rollback" must not reach stderr beside the command's own message."""
    import subprocess
    import sys

    from conftest import clean_env

    code = (
        "import psycopg, sys\n"
        "from singularity_ops.cli import quiet_library_logs\n"
        "quiet_library_logs()\n"
        f"info = {full_db.conninfo()!r}\n"
        "try:\n"
        "    with psycopg.connect(**info) as conn:\n"
        "        conn.execute('SELECT 1')\n"
        "        with psycopg.connect(**info, autocommit=True) as other:\n"
        "            other.execute('SELECT pg_terminate_backend(%s)', (conn.info.backend_pid,))\n"
        "        raise RuntimeError('the command fails for its own reason')\n"
        "except RuntimeError:\n"
        "    pass\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "error ignored in rollback" not in out.stderr and out.stderr == ""


def test_a_full_restore_says_how_much_usage_after_the_backup_it_drops(full_db, tmp_path):
    dump = backup(full_db, tmp_path / "b").path
    with psycopg.connect(**full_db.conninfo()) as conn:
        record_usage(conn, "pattern", "p2", success=True)
        record_usage(conn, "pattern", "p3", success=False)
        conn.commit()
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(tmp_path / "b")})
    out = cli_in_process("--config", str(config), "restore", str(dump), "--force", "--json",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["usage_lost"] == 2 and len(result["usage_lost_span"]) == 2
    assert "2 usage event(s)" in out.stderr and "--knowledge-only" in out.stderr
    again = cli_in_process("--config", str(config), "restore", str(dump), "--force", "--json",
                    cwd=tmp_path)  # fmt: skip
    assert json.loads(again.stdout)["usage_lost"] == 0, "nothing newer than the backup: no warning"


def test_restore_finds_a_bare_backup_name_in_the_backup_directory(full_db, tmp_path):
    dump = backup(full_db, tmp_path / "b").path
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(tmp_path / "b")})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli_in_process("--config", str(config), "restore", dump.name, "--target-db", "sops_bare_name",
                  "--json", cwd=elsewhere)  # fmt: skip
    try:
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["file"] == str(dump)
    finally:
        drop(full_db, "sops_bare_name")
    missing = cli_in_process("--config", str(config), "restore", "nope.dump", cwd=elsewhere)
    assert missing.returncode == 2 and f"nor in {tmp_path / 'b'}" in missing.stderr


def test_backup_list_and_status_show_the_backups_there_are(full_db, tmp_path):
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(tmp_path / "b")})
    empty = cli_in_process("--config", str(config), "status", cwd=tmp_path)
    assert "backup       none in" in empty.stdout
    dump = backup(full_db, tmp_path / "b", verify=True).path
    listed = cli_in_process("--config", str(config), "backup", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["file"] == str(dump) and entry["format"] == "custom" and entry["exact_counts"]
    text = cli_in_process("--config", str(config), "backup", "list", cwd=tmp_path)
    assert text.stdout.startswith(dump.name) and "verified" in text.stdout
    status = json.loads(
        cli_in_process("--config", str(config), "status", "--json", cwd=tmp_path).stdout
    )
    assert status["last_backup"]["file"] == str(dump) and status["last_backup_age_hours"] < 1
    again = cli_in_process("--config", str(config), "backup", "--json", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["path"], "backup itself still works"


def test_refreshing_a_scratch_copy_needs_no_from_other_database(full_db, tmp_path):
    backup(full_db, tmp_path / "b")
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(tmp_path / "b")})
    refresh = ("--config", str(config), "restore", "--latest", "--target-db", "sops_scratch_copy")
    try:
        first = cli_in_process(*refresh, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        again = cli_in_process(*refresh, "--force", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        with psycopg.connect(**full_db.conninfo("sops_scratch_copy"), autocommit=True) as conn:
            conn.execute("COMMENT ON DATABASE sops_scratch_copy IS 'the DBA''s own'")
        other = cli_in_process(*refresh, "--force", cwd=tmp_path)
        assert other.returncode == 1 and "--from-other-database" in other.stderr, (
            "without the mark, nothing says it came from this database"
        )
    finally:
        drop(full_db, "sops_scratch_copy")


def test_a_restored_database_has_no_job_the_apache_build_cannot_run(full_db, target, tmp_path):
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute("UPDATE _timescaledb_config.bgw_job SET scheduled = true")  # as before
    dump = backup(full_db, tmp_path / "b").path
    restore(full_db, dump, target_db=target)
    with psycopg.connect(**full_db.conninfo(target)) as conn:
        jobs = conn.execute(
            "SELECT proc_name, scheduled FROM _timescaledb_config.bgw_job"
        ).fetchall()
    assert jobs and all(not scheduled for name, scheduled in jobs if name != "policy_telemetry")
