"""db.advisory_lock: the one way commands keep from overlapping, and its one "busy" error."""

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config

from singularity_ops.db import advisory_lock, connect, lock_key
from singularity_ops.embed import EMBED_LOCK_KEY
from singularity_ops.errors import Busy, LockTimeout

KEY = lock_key("test-lock")


def holder(settings):
    conn = psycopg.connect(
        **{**settings.conninfo(), "application_name": "the-holder"}, autocommit=True
    )
    conn.execute("SELECT pg_advisory_lock(%s)", (KEY,))
    return conn


def test_no_wait_fails_at_once_naming_the_holder_and_exit_75(kb_settings):
    with holder(kb_settings), connect(kb_settings, autocommit=True) as conn:
        with (
            pytest.raises(
                Busy, match=r"another thing is running \(held by backend pid \d+, the-holder"
            ) as caught,
            advisory_lock(conn, KEY, "thing", wait=0),
        ):
            pass
        assert caught.value.exit_code == 75
    # free again: taken and released by the block
    with connect(kb_settings, autocommit=True) as conn:
        with advisory_lock(conn, KEY, "thing", wait=0):
            assert (
                conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                ).fetchone()[0]
                == 1
            )
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            ).fetchone()[0]
            == 0
        )


def test_a_bounded_wait_in_a_transaction_leaves_the_transaction_usable(kb_settings):
    with holder(kb_settings), connect(kb_settings) as conn:
        conn.execute("SET LOCAL lock_timeout = '7s'")
        with (
            pytest.raises(
                LockTimeout, match=r"held its lock for more than 0.2 s \(--opt\).*raise --opt"
            ),
            advisory_lock(conn, KEY, "thing", wait=0.2, option="--opt"),
        ):
            pass
        # the savepoint took the failure: the caller's transaction and its setting survive
        assert conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0] == "7s"
        conn.rollback()


def test_in_a_transaction_the_lock_lasts_until_it_ends(kb_settings):
    with connect(kb_settings) as conn, connect(kb_settings, autocommit=True) as other:
        conn.execute("SELECT 1")  # a transaction is open
        with advisory_lock(conn, KEY, "thing", wait=None):
            pass
        # still held: it is the transaction's
        with pytest.raises(Busy), advisory_lock(other, KEY, "thing", wait=0):
            pass
        conn.rollback()
        with advisory_lock(other, KEY, "thing", wait=0):
            pass


def test_a_second_embed_exits_75(kb_settings, tmp_path):
    config = write_cli_config(tmp_path, kb_settings)
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (EMBED_LOCK_KEY,))
        result = cli_in_process("--config", str(config), "embed", cwd=tmp_path)
    assert result.returncode == 75, result.stderr
    assert "another embed is running" in result.stderr
