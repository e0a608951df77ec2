"""The knowledge schema created by the first migrations."""

import json

import psycopg
import pytest
from conftest import MIGRATIONS

from singularity_ops.db import connect
from singularity_ops.extensions import create_extensions
from singularity_ops.migrate import migrate


def insert(conn, content: dict | str, **columns):
    raw = content if isinstance(content, str) else json.dumps(content)
    values = {
        "artifact_type": "pattern",
        "artifact_id": "a",
        "content_raw": raw,
        "content": raw,
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    return conn.execute(
        f"INSERT INTO knowledge_artifacts ({names}) VALUES ({marks}) "
        "RETURNING id, version, language, tags, success_rate, content_hash, updated_at",
        list(values.values()),
    ).fetchone()


def test_generated_columns_from_top_level_and_metadata(kb_settings):
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        top = insert(conn, {"language": "elixir", "tags": ["otp", "genserver"]}, artifact_id="top")
        nested = insert(
            conn, {"metadata": {"language": "go", "tags": ["nats"]}}, artifact_id="nested"
        )
        neither = insert(conn, {"name": "plain"}, artifact_id="neither")
    assert top[1:4] == ("1.0.0", "elixir", ["otp", "genserver"])
    assert nested[2:4] == ("go", ["nats"])
    assert neither[2:4] == (None, [])


def test_success_rate_is_null_until_used(kb_settings):
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        unused = insert(conn, {"x": 1}, artifact_id="unused")
        used = insert(conn, {"x": 1}, artifact_id="used", usage_count=8, success_count=6)
        assert unused[4] is None and used[4] == pytest.approx(0.75)
        with pytest.raises(psycopg.errors.CheckViolation):
            insert(conn, {"x": 1}, artifact_id="impossible", usage_count=1, success_count=2)


def test_content_hash_is_sha256_of_the_raw_bytes(kb_settings):
    import hashlib

    raw = '{"name": "héllo",   "x": [1, 2]}'
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        row = insert(conn, raw)
        stored = conn.execute(
            "SELECT content_raw FROM knowledge_artifacts WHERE id = %s", (row[0],)
        ).fetchone()
    assert row[5] == hashlib.sha256(raw.encode()).hexdigest()
    assert stored[0] == raw, "content_raw keeps the file text byte for byte"


def test_raw_and_jsonb_must_agree(kb_settings):
    with (
        psycopg.connect(**kb_settings.conninfo()) as conn,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content) "
            "VALUES ('pattern', 'x', '{\"a\": 1}', '{\"a\": 2}')"
        )


def test_identity_is_unique_per_type_id_version(kb_settings):
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        insert(conn, {"x": 1}, artifact_id="same")
        insert(conn, {"x": 1}, artifact_id="same", version="1.1.0")
        insert(conn, {"x": 1}, artifact_id="same", artifact_type="template")
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert(conn, {"x": 1}, artifact_id="same")


def test_updated_at_follows_updates(kb_settings):
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        row = insert(conn, {"x": 1})
        conn.execute("SELECT pg_sleep(0.01)")
        after = conn.execute(
            "UPDATE knowledge_artifacts SET usage_count = 1 WHERE id = %s RETURNING updated_at",
            (row[0],),
        ).fetchone()
    assert after[0] > row[6]


def test_usage_table_is_a_hypertable_with_a_foreign_key(kb_settings):
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        hyper = conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'artifact_usage'"
        ).fetchone()[0]
        assert hyper == 1
        artifact = insert(conn, {"x": 1})
        conn.execute(
            "INSERT INTO artifact_usage (artifact_pk, success, environment) VALUES (%s, true, 'test')",
            (artifact[0],),
        )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO artifact_usage (artifact_pk, success) VALUES (gen_random_uuid(), true)"
            )


def test_usage_table_is_plain_without_timescaledb(db_settings):
    with connect(db_settings, autocommit=True) as conn:
        create_extensions(conn, ["vector"])
        migrate(conn, MIGRATIONS)
        kind = conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'artifact_usage'"
        ).fetchone()
        assert kind == ("r",)
        assert conn.execute("SELECT to_regclass('artifact_usage_time')").fetchone()[0] is not None
