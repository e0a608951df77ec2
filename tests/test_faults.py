"""The fault-injection suite: SIGKILL the real process at named points, then check the target.

Each case starts the CLI with SINGULARITY_TEST_PAUSE naming a pause point (singularity_ops.faults),
waits until the process reports it got there, notes its children, kills it with SIGKILL and
asserts: the target is complete (old or new, never half), no child outlived the parent, no
secret was printed, and the next run cleans up after it and succeeds.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from backup_fixtures import checksums
from conftest import ROOT, clean_env, cli_in_process, cluster_password, write_cli_config
from corpus_fixtures import messy_tree

from singularity_ops.backup import LOCK_FILE, MANIFEST_SUFFIX, NAME_PATTERN, backup


def kill_at(point: str, args: list[str], cwd: Path, timeout: float = 120) -> list[int]:
    """Run the CLI until it pauses at `point`, SIGKILL it; return the pids of its children
    that were still working at that moment, after checking they died with it."""
    marker = cwd / f"paused-{point.replace(':', '-')}"
    marker.unlink(missing_ok=True)
    # The real password of the test cluster, through PGPASSWORD: it must never be printed.
    secret = cluster_password()
    env = clean_env(
        SINGULARITY_TEST_PAUSE=point, SINGULARITY_TEST_PAUSE_FILE=str(marker), PGPASSWORD=secret
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "singularity_ops", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"{args} ended (exit {proc.returncode}) before {point}: {err.decode()}")
        assert time.monotonic() < deadline, f"{args} never reached {point}"
        time.sleep(0.02)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if _running(c.pid)]
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    assert secret not in (out + err).decode(errors="replace")
    assert_gone(children)
    return children


def assert_gone(pids: list[int], within: float = 5) -> None:
    """Every pid has exited (a zombie waiting for init to reap it counts as exited). Killed
    with its parent, a child is gone at once; `within` is a generous bound for a loaded
    machine, not a measurement."""
    deadline = time.monotonic() + within
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.05)
    assert not alive, f"children outlived their killed parent: {alive}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    """A step around the kill (the run before it, the run that cleans up after it): the
    entry point in process; the killed run itself is always a real process (kill_at)."""
    out = cli_in_process(
        "--config", str(config), *args, env={"PGPASSWORD": cluster_password()},
        cwd=config.parent, timeout=300,
    )  # fmt: skip
    assert cluster_password() not in out.stdout + out.stderr
    return out


def dumps_without_manifest(directory: Path) -> list[str]:
    return [
        p.name
        for p in directory.iterdir()
        if NAME_PATTERN.match(p.name) and not (directory / (p.name + MANIFEST_SUFFIX)).exists()
    ]


def leftover_databases(settings) -> list[str]:
    with psycopg.connect(**settings.conninfo("postgres")) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    return [n for n in names if "__restoring_" in n or "__replaced_" in n]


def state(settings) -> dict:
    """Content checksums of the small tables and the size of the usage history."""
    result = checksums(settings, tables=("knowledge_artifacts", "places"))
    with psycopg.connect(**settings.conninfo()) as conn:
        result["usage"] = conn.execute("SELECT count(*) FROM artifact_usage").fetchone()[0]
    return result


def allows_connections(settings) -> bool:
    with psycopg.connect(**settings.conninfo("postgres")) as conn:
        return conn.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (settings.dbname,)
        ).fetchone()[0]


# --- import and embed ------------------------------------------------------------------


def test_import_killed_before_its_commit_writes_nothing_and_runs_again(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(root)}})
    kill_at("import:before-commit", ["--config", str(config), "import"], tmp_path)
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM knowledge_artifacts").fetchone()[0] == 0
    again = cli(config, "import")
    assert again.returncode == 0 and "10 inserted" in again.stdout


def test_embed_killed_after_a_batch_keeps_it_and_the_next_run_finishes(corpus_db, tmp_path):
    settings, _root = corpus_db
    config = write_cli_config(tmp_path, settings)
    kill_at("embed:after-batch", ["--config", str(config), "embed", "--batch-size", "2"], tmp_path)
    with psycopg.connect(**settings.conninfo()) as conn:
        done = conn.execute(
            "SELECT count(*) FROM knowledge_artifacts WHERE embedding IS NOT NULL"
        ).fetchone()[0]
    assert done == 2, "the first batch was committed before the kill"
    again = cli(config, "embed", "--json")
    assert again.returncode == 0 and '"embedded": 3' in again.stdout


# --- backup ----------------------------------------------------------------------------


@pytest.fixture
def bulky_db(full_db):
    """full_db plus half a million usage events: pg_dump and pg_restore then work for a second or
    more, so a child that outlived its killed parent would still be seen running."""
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO artifact_usage (used_at, artifact_pk, success, environment, metadata)"
            " SELECT now() - (g % 8000 || ' hours')::interval, (SELECT id FROM knowledge_artifacts"
            " ORDER BY artifact_id LIMIT 1), g % 3 <> 0, 'prod', jsonb_build_object('g', g)"
            " FROM generate_series(1, 500000) g"
        )
    return full_db


@pytest.mark.parametrize(
    ("point", "fmt"),
    [
        ("backup:during-pg_dump", "custom"),
        ("backup:during-pg_dump", "directory"),
        ("backup:before-manifest", "custom"),
        ("backup:before-dump-rename", "custom"),
    ],
)
def test_backup_killed_leaves_no_final_dump_without_manifest_and_no_child(
    request, tmp_path, point, fmt
):
    # custom: pg_dump blocks on the full pipe while the parent is paused; directory: it needs
    # enough data to still be writing its files
    full_db = request.getfixturevalue("bulky_db" if fmt == "directory" else "full_db")
    out = tmp_path / "b"
    first = backup(full_db, out)
    config = write_cli_config(tmp_path, full_db, backup={"dir": str(out)})
    children = kill_at(point, ["--config", str(config), "backup", "--format", fmt], tmp_path)
    if point == "backup:during-pg_dump":
        assert children, "pg_dump was running when the parent was killed"
    assert dumps_without_manifest(out) == []
    leftovers = sorted(p.name for p in out.iterdir() if p.name not in (LOCK_FILE,))
    snapshot = {p: (out / p).stat().st_mtime_ns for p in leftovers}
    time.sleep(0.5)
    assert {p: (out / p).stat().st_mtime_ns for p in leftovers} == snapshot, "nothing writes on"
    again = cli(config, "backup", "--json", "--format", fmt)
    assert again.returncode == 0, again.stderr  # the lock was free: the child died too
    assert dumps_without_manifest(out) == []
    names = sorted(p.name for p in out.iterdir())
    assert not any(".partial-" in n for n in names), names
    good = [n for n in names if NAME_PATTERN.match(n)]
    assert len(good) == 2 and first.path.name in good


# --- restore ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "point",
    [
        "restore:during-pg_restore",
        "restore:before-swap",
        "restore:target-closed",
        "restore:between-renames",
        "restore:after-swap",
    ],
)
def test_restore_killed_anywhere_leaves_a_complete_target_and_the_next_run_cleans_up(
    request, tmp_path, point
):
    full_db = request.getfixturevalue("bulky_db" if "during" in point else "full_db")
    dump = backup(full_db, tmp_path / "b").path
    dumped = state(full_db)
    with psycopg.connect(**full_db.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM places WHERE id <= 40")
    before = state(full_db)
    config = write_cli_config(tmp_path, full_db)
    children = kill_at(point, ["--config", str(config), "restore", str(dump), "--force"], tmp_path)
    if point == "restore:during-pg_restore":
        assert children, "pg_restore was running when the parent was killed"
    expected = dumped if point == "restore:after-swap" else before
    if point in ("restore:target-closed", "restore:between-renames"):
        assert not allows_connections(full_db), "the killed run had closed the target"
    else:
        assert state(full_db) == expected, "the target name holds a complete database"
    assert leftover_databases(full_db), "the killed run left its scratch or old copy"
    cleaned = cli(config, "restore", "--cleanup", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert leftover_databases(full_db) == []
    assert allows_connections(full_db)
    assert state(full_db) == expected
    again = cli(config, "restore", str(dump), "--force")
    assert again.returncode == 0, again.stderr
    assert state(full_db) == dumped


def test_the_next_restore_cleans_up_by_itself(full_db, tmp_path):
    dump = backup(full_db, tmp_path / "b").path
    config = write_cli_config(tmp_path, full_db)
    kill_at(
        "restore:target-closed",
        ["--config", str(config), "restore", str(dump), "--force"],
        tmp_path,
    )
    again = cli(config, "restore", str(dump), "--force")
    assert again.returncode == 0, again.stderr
    assert "cleaned up after a killed restore: reopened" in again.stderr
    assert leftover_databases(full_db) == [] and allows_connections(full_db)


def _pause_points_killed_in(path: Path) -> set[str]:
    """The pause points a test file really kills at, from its syntax tree (comments and
    docstrings do not count): kill_at's first argument, the values of a parametrize whose
    names include "point", and SINGULARITY_TEST_PAUSE in an environment dict."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "kill_at" and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
            if name == "parametrize" and len(node.args) == 2:
                names = ast.literal_eval(node.args[0])
                names = [names] if isinstance(names, str) else list(names)
                if "point" in names:
                    for value in ast.literal_eval(node.args[1]):
                        found.add(value if isinstance(value, str) else value[names.index("point")])
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "SINGULARITY_TEST_PAUSE"
                    and isinstance(value, ast.Constant)
                ):
                    found.add(value.value)
    return found


def test_fault_suite_covers_every_pause_point_in_the_code():
    """A pause point added to the code without a kill test fails this test."""
    import re

    used = set()
    for path in (ROOT / "singularity_ops").glob("*.py"):
        used |= set(re.findall(r'(?:pause_point\(|pause=)"([^"]+)"', path.read_text()))
    tested = _pause_points_killed_in(Path(__file__))
    tested |= _pause_points_killed_in(ROOT / "tests" / "test_local_model.py")
    assert used == tested, f"untested: {used - tested}, unknown: {tested - used}"


def test_a_killed_restore_of_a_long_named_target_is_found_and_only_its_own_leftovers_go(
    full_db, tmp_path
):
    """The scratch name of a 52-character target fits 63 bytes; cleanup finds it by the
    toolkit's mark, reopens the target, and leaves a DBA's own look-alike database alone;
    meanwhile ensure-db and status name the closed target and the command that reopens it."""
    from dataclasses import replace

    long_name = "kb_production_singularity_knowledge_base_primary_01"
    dump = backup(full_db, tmp_path / "b").path
    look_alike = "dba_copy__restoring_20200101000000"
    with psycopg.connect(**full_db.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{long_name}"')
        admin.execute(f'DROP DATABASE IF EXISTS "{look_alike}"')
        admin.execute(f'CREATE DATABASE "{look_alike}"')
    target = replace(full_db, dbname=long_name)
    config = write_cli_config(tmp_path, target)
    try:
        first = cli(config, "restore", str(dump))  # a new database: no --force needed
        assert first.returncode == 0, first.stderr
        kill_at(
            "restore:target-closed",
            ["--config", str(config), "restore", str(dump), "--force", "--from-other-database"],
            tmp_path,
        )
        assert not allows_connections(target)
        for args in (("ensure-db",), ("status",)):
            out = cli(config, *args)
            assert out.returncode in (1, 3) and "restore --cleanup" in out.stderr + out.stdout
            assert "this is a bug" not in out.stderr
        cleaned = cli(config, "restore", "--cleanup", "--json")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"reopened {long_name}" in cleaned.stdout
        assert allows_connections(target)
        assert leftover_databases(target) == [look_alike], "a DBA's own database stays"
    finally:
        with psycopg.connect(**full_db.conninfo("postgres"), autocommit=True) as admin:
            for name in (long_name, look_alike):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
