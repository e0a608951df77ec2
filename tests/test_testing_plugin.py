"""The SQL Sandbox plugin, run in its own pytest sessions (pytester) against a real database."""

import psycopg
import pytest
from conftest import free_port

from singularity_ops.config import load_settings
from singularity_ops.testing import sandbox

TABLES = ("knowledge_artifacts", "artifact_usage")


def fingerprint(settings):
    """Row count and content checksum of each table, plus the committed transaction counter."""
    with psycopg.connect(**settings.conninfo()) as conn:
        sums = {
            t: conn.execute(
                psycopg.sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {} x"
                ).format(psycopg.sql.Identifier(t))
            ).fetchone()
            for t in TABLES
        }
    return sums


@pytest.fixture
def shared(kb_settings, monkeypatch):
    """A migrated database with one artifact, and the plugin pointed at it through DATABASE_URL."""
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
            " VALUES ('pattern', 'existing', '{\"v\": 1}', '{\"v\": 1}')"
        )
    for key in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "SINGULARITY_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", kb_settings.url())
    return kb_settings


INNER_TESTS = """
import psycopg
import pytest
from singularity_ops import usage_ingest
from singularity_ops.config import load_settings
from singularity_ops.db import connect


def test_writes_everything_and_commits(singularity_db):
    conn = singularity_db
    conn.execute("INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
                 " VALUES ('pattern', 'new', '{}', '{}')")
    conn.commit()
    conn.execute("UPDATE knowledge_artifacts SET content_raw = '{\\"v\\": 2}', content = '{\\"v\\": 2}'"
                 " WHERE artifact_id = 'existing'")
    with conn.transaction():
        conn.execute("DELETE FROM knowledge_artifacts WHERE artifact_id = 'new'")
    conn.commit()
    # toolkit code asking for its own connection gets the sandbox, commits included
    with connect(load_settings(), autocommit=True) as toolkit_conn:
        assert toolkit_conn is conn
        result = usage_ingest.record_usage(toolkit_conn, "pattern", "existing", success=True)
    assert result.usage_count == 1
    conn.execute("INSERT INTO artifact_usage (used_at, artifact_pk, success)"
                 " SELECT now() - interval '30 days', id, false FROM knowledge_artifacts")
    conn.commit()
    conn.execute("CREATE TABLE ddl_inside_a_test (x int)")
    assert conn.execute("SELECT count(*) FROM artifact_usage").fetchone()[0] == 2


def test_rollback_inside_the_sandbox_undoes_since_last_commit(singularity_db):
    conn = singularity_db
    conn.execute("INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
                 " VALUES ('pattern', 'kept', '{}', '{}')")
    conn.commit()
    conn.execute("INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
                 " VALUES ('pattern', 'undone', '{}', '{}')")
    conn.rollback()
    ids = {r[0] for r in conn.execute("SELECT artifact_id FROM knowledge_artifacts")}
    assert ids == {"existing", "kept"}


def test_errors_inside_the_sandbox_are_recoverable(singularity_db):
    conn = singularity_db
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
                     " VALUES ('pattern', 'existing', '{}', '{}')")
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM knowledge_artifacts").fetchone()[0] == 1


def test_a_failing_test_rolls_back_too(singularity_db):
    singularity_db.execute("INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
                           " VALUES ('pattern', 'from_failing_test', '{}', '{}')")
    singularity_db.commit()
    assert False, "this test fails on purpose"
"""


def test_a_whole_session_leaves_the_database_byte_for_byte_as_before(shared, pytester):
    before = fingerprint(shared)
    pytester.makepyfile(INNER_TESTS)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3, failed=1)
    assert fingerprint(shared) == before
    with psycopg.connect(**shared.conninfo()) as conn:
        assert conn.execute("SELECT to_regclass('ddl_inside_a_test')").fetchone()[0] is None


def test_two_sandboxes_see_only_their_own_rows(shared):
    settings = load_settings()
    with sandbox(settings) as first, sandbox(settings) as second:
        first.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
            " VALUES ('pattern', 'only_in_first', '{}', '{}')"
        )
        first.commit()
        second.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content)"
            " VALUES ('pattern', 'only_in_second', '{}', '{}')"
        )
        second.commit()
        seen_by = {
            name: {r[0] for r in conn.execute("SELECT artifact_id FROM knowledge_artifacts")}
            for name, conn in (("first", first), ("second", second))
        }
    assert seen_by == {
        "first": {"existing", "only_in_first"},
        "second": {"existing", "only_in_second"},
    }


def test_plugin_is_inert_when_no_test_asks_for_it(pytester, monkeypatch):
    # An unreachable database: a session that never requests the fixture must not notice.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_unreachable_or_unmigrated_database_names_the_command_to_run(
    pytester, monkeypatch, db_settings
):
    pytester.makepyfile("def test_uses_db(singularity_db):\n    pass\n")
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://nobody:hunter2@127.0.0.1:{free_port()}/nothing"
    )
    down = pytester.runpytest_subprocess()
    down.assert_outcomes(errors=1)
    down.stdout.fnmatch_lines(
        ["*singularity_db: cannot reach the shared database*run `singularity-ops setup`*"]
    )
    assert "hunter2" not in down.stdout.str()
    monkeypatch.setenv("DATABASE_URL", db_settings.url())  # exists, but not migrated
    bare = pytester.runpytest_subprocess()
    bare.assert_outcomes(errors=1)
    bare.stdout.fnmatch_lines(
        ["*is not migrated (no knowledge_artifacts); run `singularity-ops setup`*"]
    )


def test_the_sandbox_refuses_another_checkouts_cluster_like_the_cli(test_server, tmp_path):
    from singularity_ops.testing import SandboxUnavailable

    other_checkout = load_settings(
        cwd=tmp_path,
        env={"PGDATA": str(tmp_path / "pgdata"), "PGPORT": str(test_server.port)},
        dbname="postgres",
    )
    with (
        pytest.raises(SandboxUnavailable, match=r"is served by another server .*not running"),
        sandbox(other_checkout),
    ):
        pass
