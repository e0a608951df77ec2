"""migrate against the real PostgreSQL 17: ordering, history checks, transactions, concurrency."""

import concurrent.futures
import shutil
from pathlib import Path

import psycopg
import pytest
from conftest import MIGRATIONS, cli_in_process, run_cli, write_cli_config

from singularity_ops.db import LockTimeout, connect
from singularity_ops.migrate import (
    LOCK_KEY,
    MigrationError,
    applied_migrations,
    discover,
    migrate,
    new_migration,
    parse_statements,
    status,
)

SHIPPED = len(discover(MIGRATIONS))


@pytest.fixture
def migrations(tmp_path) -> Path:
    """A private copy of the project's migrations that a test may extend or edit."""
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, target)
    return target


def add(directory: Path, filename: str, text: str) -> Path:
    path = directory / filename
    path.write_text(text)
    return path


def tables(settings) -> set[str]:
    with psycopg.connect(**settings.conninfo()) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def run_migrate(settings, directory, **kwargs):
    with connect(settings, autocommit=True) as conn:
        return migrate(conn, directory, **kwargs)


def test_applies_everything_in_order_then_is_a_no_op(ext_settings, migrations):
    first = run_migrate(ext_settings, migrations)
    assert first.applied == [f.filename for f in discover(migrations)]
    assert {"knowledge_artifacts", "artifact_usage", "schema_migrations"} <= tables(ext_settings)
    with psycopg.connect(**ext_settings.conninfo()) as conn:
        applied = applied_migrations(conn)
    assert sorted(applied) == [f.version for f in discover(migrations)]
    row = applied[1]
    assert row.name == "knowledge_artifacts" and len(row.checksum) == 64 and row.execution_ms >= 0
    second = run_migrate(ext_settings, migrations)
    assert second.applied == [] and second.already_applied == len(applied)


def test_cli_no_op_says_so(kb_settings, tmp_path):
    config = write_cli_config(tmp_path, kb_settings)
    out = cli_in_process("--config", str(config), "migrate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("nothing to do")


def test_edited_applied_file_is_refused_before_anything_runs(ext_settings, migrations):
    run_migrate(ext_settings, migrations)
    first = migrations / "0001_knowledge_artifacts.sql"
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    add(migrations, "0099_new_table.sql", "CREATE TABLE should_not_exist (x int);")
    with pytest.raises(
        MigrationError, match=r"0001_knowledge_artifacts.sql: changed after it was applied"
    ):
        run_migrate(ext_settings, migrations)
    assert "should_not_exist" not in tables(ext_settings)


def test_line_ending_only_change_is_not_an_edit(ext_settings, migrations):
    run_migrate(ext_settings, migrations)
    first = migrations / "0001_knowledge_artifacts.sql"
    first.write_bytes(first.read_bytes().replace(b"\n", b"\r\n"))
    assert run_migrate(ext_settings, migrations).applied == []


def test_missing_and_renamed_applied_files_are_refused(ext_settings, migrations):
    run_migrate(ext_settings, migrations)
    (migrations / "0002_artifact_usage.sql").rename(migrations / "0002_usage_events.sql")
    with pytest.raises(
        MigrationError, match=r"0002_usage_events.sql: version 2 was applied as 'artifact_usage'"
    ):
        run_migrate(ext_settings, migrations)
    (migrations / "0002_usage_events.sql").unlink()
    with pytest.raises(
        MigrationError, match=r"applied migration 0002_artifact_usage.sql is missing"
    ):
        run_migrate(ext_settings, migrations)


def test_duplicate_versions_and_bad_names_are_errors_naming_the_files(migrations):
    add(migrations, "0002_other.sql", "SELECT 1;")
    with pytest.raises(
        MigrationError, match=r"0002_artifact_usage.sql and .*0002_other.sql both have version 2"
    ):
        discover(migrations)
    (migrations / "0002_other.sql").unlink()
    add(migrations, "add_things.sql", "SELECT 1;")
    with pytest.raises(
        MigrationError, match=r"add_things.sql: migration files must be named NNNN_description.sql"
    ):
        discover(migrations)


def test_failing_migration_leaves_no_trace_and_names_file_and_position(
    kb_settings, migrations, tmp_path
):
    add(
        migrations,
        "0101_half_way.sql",
        "CREATE TABLE half_way (id int);\nINSERT INTO half_way VALUES (1);\n"
        "INSERT INTO no_such_table VALUES (1);\n",
    )
    add(migrations, "0102_after.sql", "CREATE TABLE after_failure (id int);")
    config = write_cli_config(tmp_path, kb_settings, migrations={"dir": str(migrations)})
    out = cli_in_process("--config", str(config), "migrate", cwd=tmp_path)
    assert out.returncode == 1
    assert '0101_half_way.sql:3:13: relation "no_such_table" does not exist' in out.stderr
    assert "nothing from this migration was kept" in out.stderr
    assert not {"half_way", "after_failure"} & tables(kb_settings)
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        assert 101 not in applied_migrations(conn)


def test_no_transaction_marker_allows_create_index_concurrently(kb_settings, migrations):
    index = "CREATE INDEX CONCURRENTLY ka_source_path ON knowledge_artifacts (source_path);\n"
    add(migrations, "0101_in_transaction.sql", index)
    with pytest.raises(MigrationError, match="cannot run inside a transaction block"):
        run_migrate(kb_settings, migrations)
    (migrations / "0101_in_transaction.sql").unlink()
    add(
        migrations,
        "0101_concurrent_index.sql",
        "-- singularity-ops: no-transaction\n-- a comment; with a semicolon\n"
        + index
        + "CREATE INDEX CONCURRENTLY ka_updated ON knowledge_artifacts (updated_at);\n",
    )
    assert run_migrate(kb_settings, migrations).applied == ["0101_concurrent_index.sql"]
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes").fetchall()}
    assert {"ka_source_path", "ka_updated"} <= names


def test_eight_concurrent_processes_apply_each_migration_once(ext_settings, migrations, tmp_path):
    # A slow migration that counts its own runs makes the processes overlap for real.
    add(
        migrations,
        "0101_slow_counter.sql",
        "CREATE TABLE run_counter (n int);\nSELECT pg_sleep(1);\nINSERT INTO run_counter VALUES (1);\n",
    )
    config = write_cli_config(tmp_path, ext_settings, migrations={"dir": str(migrations)})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: run_cli("--config", str(config), "migrate", "--json", cwd=tmp_path),
                range(8),
            )
        )
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    with psycopg.connect(**ext_settings.conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM run_counter").fetchone()[0] == 1
        counts = conn.execute(
            "SELECT count(*), count(DISTINCT version) FROM schema_migrations"
        ).fetchone()
    assert counts == (SHIPPED + 1, SHIPPED + 1)
    assert sum('"0101_slow_counter.sql"' in r.stdout for r in results) == 1


def test_lock_timeout_names_the_holder(kb_settings, migrations):
    add(migrations, "0101_pending.sql", "CREATE TABLE pending_one (x int);")
    params = {**kb_settings.conninfo(), "application_name": "holder-app"}
    with psycopg.connect(**params, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(
            LockTimeout,
            match=r"more than 0.5 s \(--lock-timeout\) \(held by backend pid \d+, holder-app",
        ):
            run_migrate(kb_settings, migrations, lock_timeout=0.5)
    assert "pending_one" not in tables(kb_settings)


def test_dry_run_writes_nothing(ext_settings, migrations):
    result = run_migrate(ext_settings, migrations, dry_run=True)
    assert result.dry_run and result.applied == [f.filename for f in discover(migrations)]
    assert tables(ext_settings) & {"schema_migrations", "knowledge_artifacts"} == set()


def test_status_exit_codes_and_json(ext_settings, migrations, tmp_path):
    config = write_cli_config(tmp_path, ext_settings, migrations={"dir": str(migrations)})
    pending = cli_in_process(
        "--config", str(config), "migrate", "status", "--exit-code", cwd=tmp_path
    )
    assert pending.returncode == 3 and f"0 applied, {SHIPPED} pending" in pending.stdout
    assert (
        cli_in_process("--config", str(config), "migrate", "status", cwd=tmp_path).returncode == 0
    )
    assert cli_in_process("--config", str(config), "migrate", cwd=tmp_path).returncode == 0
    done = cli_in_process(
        "--config", str(config), "migrate", "status", "--exit-code", "--json", cwd=tmp_path
    )
    assert done.returncode == 0
    assert '"pending": 0' in done.stdout and f'"applied": {SHIPPED}' in done.stdout
    with psycopg.connect(**ext_settings.conninfo()) as conn:
        assert [s.applied for s in status(conn, migrations)] == [True] * SHIPPED


def test_new_creates_the_next_numbered_file(migrations):
    path = new_migration(migrations, "Index artifacts by source path!")
    assert path.name == f"{SHIPPED + 1:04d}_index_artifacts_by_source_path.sql"
    assert discover(migrations)[-1].path == path
    assert new_migration(migrations, "second").name == f"{SHIPPED + 2:04d}_second.sql"


def test_statements_are_split_by_postgresqls_parser(migrations):
    path = add(
        migrations,
        "0101_tricky.sql",
        "-- leading; comment\nSELECT ';' AS a;\n/* block; */ SELECT $x$ ; $x$;\n"
        'DO $$ BEGIN PERFORM 1; END $$;\nSELECT "we;ird" FROM t;\n'
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
        "SELECT E'it\\'s'; SELECT 'é'\n",
    )
    [migration] = [m for m in discover(migrations) if m.path == path]
    statements = [s.text.strip() for s in parse_statements(migration)]
    assert statements == [
        "SELECT ';' AS a",
        "SELECT $x$ ; $x$",
        "DO $$ BEGIN PERFORM 1; END $$",
        'SELECT "we;ird" FROM t',
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "SELECT E'it\\'s'",
        "SELECT 'é'",
    ]


def test_no_transaction_migration_keeps_begin_atomic_and_escaped_quotes_whole(
    kb_settings, migrations
):
    add(
        migrations,
        "0101_concurrently.sql",
        "-- singularity-ops: no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ka_source ON knowledge_artifacts (source_path);\n"
        "CREATE FUNCTION two() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
        "CREATE TABLE quoted AS SELECT E'it\\'s' AS a;\nCREATE TABLE after_quote (x int);\n",
    )
    run_migrate(kb_settings, migrations)
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        assert conn.execute("SELECT two()").fetchone()[0] == 2
        assert conn.execute("SELECT a FROM quoted").fetchone()[0] == "it's"
        assert conn.execute("SELECT to_regclass('after_quote') IS NOT NULL").fetchone()[0]
        assert conn.execute("SELECT to_regclass('ka_source') IS NOT NULL").fetchone()[0]


def test_transaction_control_in_a_transactional_migration_is_refused_before_anything_runs(
    kb_settings, migrations
):
    add(migrations, "0101_fine.sql", "CREATE TABLE fine (x int);\n")
    add(
        migrations,
        "0102_commits.sql",
        "CREATE TABLE half (x int);\nCOMMIT;\nCREATE TABLE other_half (x int);\n",
    )
    with pytest.raises(MigrationError, match=r"0102_commits.sql:2:1: COMMIT in a migration that"):
        run_migrate(kb_settings, migrations)
    assert {"fine", "half", "other_half"} & tables(kb_settings) == set()
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        assert max(applied_migrations(conn)) == SHIPPED
    # savepoints stay allowed: they do not end the migration's transaction
    (migrations / "0102_commits.sql").write_text(
        "CREATE TABLE half (x int);\nSAVEPOINT s;\nRELEASE SAVEPOINT s;\n"
    )
    assert run_migrate(kb_settings, migrations).applied == ["0101_fine.sql", "0102_commits.sql"]


def test_syntax_error_is_reported_with_line_and_column_before_anything_runs(
    kb_settings, migrations
):
    add(migrations, "0101_fine.sql", "CREATE TABLE fine (x int);\n")
    add(migrations, "0102_typo.sql", "CREATE TABLE ok (x int);\n\n  SELEC 1;\n")
    with pytest.raises(
        MigrationError, match=r"0102_typo.sql:3:3: syntax error at or near \"SELEC\""
    ):
        run_migrate(kb_settings, migrations)
    assert "fine" not in tables(kb_settings)


def test_a_new_migration_numbered_below_applied_ones_is_refused_unless_out_of_order(
    kb_settings, migrations, tmp_path
):
    add(migrations, "0100_late.sql", "CREATE TABLE late (x int);\n")
    run_migrate(kb_settings, migrations)
    add(migrations, "0050_early.sql", "CREATE TABLE early (x int);\n")
    with pytest.raises(
        MigrationError, match=r"0050_early.sql: numbered below .*0100_late.sql.*--out-of-order"
    ):
        run_migrate(kb_settings, migrations)
    with pytest.raises(MigrationError, match="numbered below"):
        run_migrate(kb_settings, migrations, dry_run=True)
    assert "early" not in tables(kb_settings)
    config = write_cli_config(tmp_path, kb_settings, migrations={"dir": str(migrations)})
    out = cli_in_process("--config", str(config), "migrate", "--out-of-order", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "early" in tables(kb_settings)


def test_percent_signs_in_migrations_are_sent_as_written(kb_settings, migrations):
    add(migrations, "0101_percent.sql", "CREATE TABLE pct AS SELECT '100%s done'::text AS label;")
    run_migrate(kb_settings, migrations)
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        assert conn.execute("SELECT label FROM pct").fetchone()[0] == "100%s done"


def test_migration_without_extensions_says_to_run_create_extensions(db_settings, migrations):
    with pytest.raises(
        MigrationError,
        match=r"0001_knowledge_artifacts.sql: the vector extension is not installed.*create-extensions",
    ):
        run_migrate(db_settings, migrations)


def test_session_settings_of_one_migration_do_not_leak_into_the_next(ext_settings, tmp_path):
    """0001 moves search_path and role; run together with 0002, 0002's table still lands in
    public and belongs to the connecting user, as when each runs alone."""
    from singularity_ops.db import connect
    from singularity_ops.migrate import migrate

    (tmp_path / "0001_moves.sql").write_text(
        "CREATE SCHEMA zs; CREATE ROLE sops_mig_role; GRANT ALL ON SCHEMA public, zs TO"
        " sops_mig_role; GRANT ALL ON schema_migrations TO sops_mig_role;"
        " SET search_path TO zs, public; SET ROLE sops_mig_role; SET work_mem = '77MB';"
    )
    (tmp_path / "0002_table.sql").write_text("CREATE TABLE landed (n int);")
    try:
        with connect(ext_settings, autocommit=True) as conn:
            migrate(conn, tmp_path)
            schema, owner = conn.execute(
                "SELECT n.nspname, pg_get_userbyid(c.relowner) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'landed'"
            ).fetchone()
            assert (schema, owner) == ("public", conn.info.user)
            assert conn.execute("SHOW work_mem").fetchone()[0] != "77MB"
    finally:
        with connect(ext_settings, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS landed")
            conn.execute("DROP SCHEMA IF EXISTS zs CASCADE")
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'sops_mig_role'").fetchone():
                conn.execute("DROP OWNED BY sops_mig_role")
                conn.execute("DROP ROLE sops_mig_role")


def test_a_misnamed_migration_file_is_named_in_a_warning(ext_settings, tmp_path):
    from conftest import cli_in_process, write_cli_config

    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "0001_a.sql").write_text("CREATE TABLE a (n int);")
    (migrations / "0002_b.SQL").write_text("CREATE TABLE b (n int);")
    config = write_cli_config(tmp_path, ext_settings, migrations={"dir": str(migrations)})
    out = cli_in_process("--config", str(config), "migrate")
    assert out.returncode == 0, out.stderr
    assert "0002_b.SQL: ignored, not a migration" in out.stderr


def test_an_empty_migration_is_refused_and_forget_is_the_way_out(
    ext_settings, migrations, tmp_path
):
    run_migrate(ext_settings, migrations)
    empty = new_migration(migrations, "add an index later")
    with pytest.raises(MigrationError, match=rf"{empty.name}: no SQL statements"):
        run_migrate(ext_settings, migrations)
    # An empty file applied by an older toolkit: SQL added later would be refused as an edit.
    with psycopg.connect(**ext_settings.conninfo()) as conn:
        version = int(empty.name[:4])
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, execution_ms)"
            " VALUES (%s, 'add_an_index_later', 'x', 0)",
            (version,),
        )
    empty.write_text("CREATE TABLE later (id int);\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        run_migrate(ext_settings, migrations)
    config = write_cli_config(tmp_path, ext_settings, migrations={"dir": str(migrations)})
    unconfirmed = cli_in_process(
        "--config", str(config), "migrate", "forget", str(version), cwd=tmp_path
    )
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    forgot = cli_in_process("--config", str(config), "migrate", "forget", str(version), "--yes",
                     cwd=tmp_path)  # fmt: skip
    assert forgot.returncode == 0, forgot.stderr
    assert run_migrate(ext_settings, migrations).applied == [empty.name]
    assert "later" in tables(ext_settings)
    missing = cli_in_process(
        "--config", str(config), "migrate", "forget", "999", "--yes", cwd=tmp_path
    )
    assert missing.returncode == 1 and "not applied" in missing.stderr
