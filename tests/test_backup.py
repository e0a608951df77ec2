"""backup and restore against the real PostgreSQL 17: vectors, a multi-chunk hypertable, postgis."""

import fcntl
import json
from dataclasses import replace

import psycopg
import pytest
from backup_fixtures import checksums
from conftest import cli_in_process, write_cli_config

from singularity_ops.backup import EXIT_LOCKED, LOCK_FILE, BackupError, backup, good_backups
from singularity_ops.errors import PgBinaryError
from singularity_ops.restore import RestoreError, restore


def test_custom_backup_restores_every_row_vector_and_geometry(full_db, target, tmp_path):
    result = backup(full_db, tmp_path / "b", verify=True)
    assert result.path.name.startswith(f"{full_db.dbname}_") and result.path.suffix == ".dump"
    assert oct(result.path.stat().st_mode & 0o777) == "0o600"
    manifest = json.loads(result.manifest.read_text())
    assert manifest["sha256"] == result.sha256 and manifest["bytes"] == result.bytes
    assert {"vector", "timescaledb", "postgis"} <= set(manifest["extensions"])
    assert manifest["pg_dump_version"].startswith("17.") and manifest["server_version"].startswith(
        "17."
    )
    assert {
        k: v
        for k, v in next(
            t for t in manifest["tables"] if t["table"] == "public.artifact_usage"
        ).items()
        if k != "bytes"
    } == {"table": "public.artifact_usage", "rows": 1500}
    restored = restore(full_db, result.path, target_db=target)
    assert restored.tables["public.artifact_usage"] == 1500
    assert checksums(full_db, target) == checksums(full_db)
    with psycopg.connect(**full_db.conninfo(target)) as conn:
        assert conn.execute("SELECT count(*) FROM show_chunks('artifact_usage')").fetchone()[0] >= 8
        assert (
            conn.execute("SELECT ST_AsText(geom) FROM places WHERE id = 1").fetchone()[0]
            == "POINT(-49.63 -19.89)"
        )


@pytest.mark.parametrize("fmt", ["plain", "directory"])
def test_plain_and_directory_formats_round_trip(full_db, target, tmp_path, fmt):
    result = backup(
        full_db, tmp_path / "b", fmt=fmt, jobs=2 if fmt == "directory" else 1, verify=True
    )
    assert result.path.suffix == {"plain": ".sql", "directory": ".dir"}[fmt]
    restore(full_db, result.path, target_db=target)
    assert checksums(full_db, target) == checksums(full_db)


def test_knowledge_only_dumps_just_the_artifacts(full_db, target, tmp_path):
    result = backup(full_db, tmp_path / "b", knowledge_only=True)
    assert result.path.name.startswith("knowledge_")
    assert [t["table"] for t in json.loads(result.manifest.read_text())["tables"]] == [
        "public.knowledge_artifacts"
    ]
    restore(full_db, result.path, target_db=target)
    ours = checksums(full_db, target)
    assert ours["knowledge_artifacts"] == checksums(full_db)["knowledge_artifacts"]
    assert ours["artifact_usage"][0] == 0 and "places" not in ours


def test_overlapping_run_exits_at_once_with_its_own_code(full_db, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(out)})
    with open(out / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        # Waiting for the lock would outlast run_cli's timeout: that bound is the only one.
        result = cli_in_process("--config", str(config), "backup", cwd=tmp_path, timeout=120)
    assert result.returncode == EXIT_LOCKED
    assert "another backup is running" in result.stderr
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_quiet_on_success_and_json_has_the_keys(full_db, tmp_path):
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(tmp_path / "b")})
    quiet = cli_in_process("--config", str(config), "backup", cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout) == (0, "")
    loud = cli_in_process("--config", str(config), "backup", "--json", cwd=tmp_path)
    assert {"path", "bytes", "sha256", "seconds"} <= set(json.loads(loud.stdout))


def test_killed_pg_dump_leaves_no_final_file_and_retention_deletes_nothing(
    full_db, tmp_path, monkeypatch
):
    out = tmp_path / "b"
    first = backup(full_db, out)
    # The backup SIGKILLs its own pg_dump at the named point (no /proc scan, no race, no
    # other checkout's pg_dump at risk), then must notice and keep nothing.
    monkeypatch.setenv("SINGULARITY_TEST_KILL_CHILD", "backup:during-pg_dump")
    with pytest.raises(BackupError, match=r"pg_dump failed \(exit -9\)"):
        backup(full_db, out, keep=1)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LOCK_FILE, first.path.name, first.manifest.name]
    ), "no partial file and no final name from the failed run; the old backup is still there"


def test_retention_keeps_the_newest_and_never_touches_foreign_files(full_db, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    foreign = [
        out / f"{full_db.dbname}_20200101T000000Z.dump",  # our naming, no manifest
        out / "notes.txt",
        out / f"{full_db.dbname}_20200102T000000Z.dump",
    ]
    for path in foreign:
        path.write_text("not ours")
    (out / f"{full_db.dbname}_20200102T000000Z.dump.manifest.json").write_text(
        json.dumps({"tool": "pg_back"})
    )
    made = [backup(full_db, out, keep=2) for _ in range(3)]
    assert made[2].deleted == [made[0].path.name]
    assert good_backups(out, full_db.dbname) == [made[1].path, made[2].path]
    assert all(path.exists() for path in foreign)
    with pytest.raises(BackupError, match="--keep must be at least 1"):
        backup(full_db, out, keep=0)


def test_truncated_and_bit_flipped_dumps_are_refused_before_anything(full_db, target, tmp_path):
    result = backup(full_db, tmp_path / "b")
    original = result.path.read_bytes()
    result.path.write_bytes(original[: len(original) // 2])
    with pytest.raises(BackupError, match=r"does not match its manifest .* truncated or corrupted"):
        restore(full_db, result.path, target_db=target)
    flipped = bytearray(original)
    flipped[len(flipped) // 3] ^= 0x01
    result.path.write_bytes(bytes(flipped))
    with pytest.raises(BackupError, match="truncated or corrupted"):
        restore(full_db, result.path, target_db=target)
    with psycopg.connect(**full_db.conninfo("postgres")) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert target not in names and not any("__restoring_" in n for n in names)


def test_non_empty_target_needs_force_and_force_replaces_it_whole(full_db, tmp_path):
    result = backup(full_db, tmp_path / "b")
    with pytest.raises(RestoreError, match=r"is not empty .* --force"):
        restore(full_db, result.path)
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM places WHERE id <= 50")
    replaced = restore(full_db, result.path, force=True)
    assert replaced.replaced and replaced.tables["public.places"] == 100
    assert checksums(full_db)["places"][0] == 100


def test_failed_restore_leaves_the_target_exactly_as_it_was(full_db, tmp_path):
    result = backup(full_db, tmp_path / "b", verify=True)
    manifest_path = result.manifest
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"] = [
        dict(t, rows=t["rows"] + 1) if t["table"] == "public.places" else t
        for t in manifest["tables"]
    ]
    manifest_path.write_text(json.dumps(manifest))
    before = checksums(full_db)
    with pytest.raises(RestoreError, match=r"public.places: 100 rows, expected 101"):
        restore(full_db, result.path, force=True)
    assert checksums(full_db) == before
    with psycopg.connect(**full_db.conninfo("postgres")) as conn:
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%%__restoring_%%'"
        ).fetchone()[0]
    assert leftovers == 0


def test_pg_dump_older_than_the_server_is_refused(full_db, tmp_path):
    # Only the version check is under test: a bindir whose pg_dump says it is 15.4.
    old = tmp_path / "pg15" / "bin"
    old.mkdir(parents=True)
    (old / "pg_dump").write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 15.4"\n')
    (old / "pg_dump").chmod(0o755)
    with pytest.raises(
        PgBinaryError,
        match=rf"pg_dump 15\.4 at {old}/pg_dump is too old: .* needs version 17",
    ):
        backup(replace(full_db, bindir=old), tmp_path / "b")
    assert not (tmp_path / "b").exists() or [p.name for p in (tmp_path / "b").iterdir()] == [
        LOCK_FILE
    ]


def test_restore_cli_latest_and_usage_errors(full_db, target, tmp_path):
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(tmp_path / "b")})
    assert cli_in_process("--config", str(config), "backup", cwd=tmp_path).returncode == 0
    both = cli_in_process("--config", str(config), "restore", cwd=tmp_path)
    assert both.returncode == 2 and "either a backup FILE or --latest" in both.stderr
    out = cli_in_process(
        "--config",
        str(config),
        "restore",
        "--latest",
        "--target-db",
        target,
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tables"]["public.places"] == 100


def test_plain_backups_record_estimates_and_verified_ones_exact_counts(full_db, target, tmp_path):
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute("ANALYZE")
    fast = json.loads(backup(full_db, tmp_path / "b").manifest.read_text())
    assert fast["row_counts"] == "estimated"
    usage = next(t for t in fast["tables"] if t["table"] == "public.artifact_usage")
    assert "rows" not in usage and 1000 <= usage["rows_estimate"] <= 2000
    thorough = json.loads(backup(full_db, tmp_path / "b", verify=True).manifest.read_text())
    assert thorough["row_counts"] == "exact"
    assert (
        next(t for t in thorough["tables"] if t["table"] == "public.artifact_usage")["rows"] == 1500
    )
    restored = restore(full_db, tmp_path / "b" / fast["file"], target_db=target)
    assert restored.tables["public.artifact_usage"] == 1500
