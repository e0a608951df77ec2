"""The Python API and record-usage: latest-version lookup, containment queries, counters."""

import json

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config
from corpus_fixtures import write

from singularity_ops.artifacts import ArtifactNotFound, get_artifact, query_artifacts
from singularity_ops.corpus import scan
from singularity_ops.db import connect
from singularity_ops.importer import import_artifacts
from singularity_ops.usage_ingest import record_usage


@pytest.fixture
def versioned(kb_settings, tmp_path):
    root = tmp_path / "td"
    for version in ("1.9.0", "1.10.0", "1.2.0"):
        write(
            root,
            f"patterns/retry_{version}.json",
            {"id": "retry", "version": version, "language": "go", "tags": ["http", "resilience"]},
        )
    write(
        root,
        "patterns/cache.json",
        {"id": "cache", "language": "elixir", "tags": ["ets"], "kind": {"storage": "memory"}},
    )
    write(root, "prompts/review.json", {"id": "review", "tags": ["review", "http"]})
    with connect(kb_settings, autocommit=True) as conn:
        import_artifacts(conn, scan(root))
    return kb_settings


def test_latest_uses_version_ordering_not_string_ordering(versioned):
    with connect(versioned) as conn:
        assert get_artifact(conn, "patterns", "retry").version == "1.10.0"
        assert get_artifact(conn, "patterns", "retry", "1.2.0").version == "1.2.0"
        with pytest.raises(ArtifactNotFound, match=r"no artifact patterns/retry version 9\.9\.9"):
            get_artifact(conn, "patterns", "retry", "9.9.9")
        with pytest.raises(ArtifactNotFound):
            get_artifact(conn, "prompts", "retry")  # never by id alone


def test_query_by_containment_and_filters(versioned):
    with connect(versioned) as conn:
        found = query_artifacts(conn, contains={"kind": {"storage": "memory"}})
        assert [(a.artifact_id, a.language) for a in found] == [("cache", "elixir")]
        http = query_artifacts(conn, tags=["http"])
        assert [(a.artifact_type, a.artifact_id, a.version) for a in http] == [
            ("patterns", "retry", "1.10.0"),
            ("prompts", "review", "1.0.0"),
        ]
        assert [
            a.artifact_id for a in query_artifacts(conn, types=["patterns"], language="go")
        ] == ["retry"]
        all_versions = query_artifacts(conn, types=["patterns"], latest_only=False)
        assert len(all_versions) == 4


def test_record_usage_updates_counters_and_history_in_one_transaction(versioned):
    with connect(versioned, autocommit=True) as conn:
        for ok in (True, True, True, False):
            result = record_usage(
                conn, "patterns", "retry", success=ok, duration_ms=12, environment="test"
            )
        assert (result.version, result.usage_count, result.success_count) == ("1.10.0", 4, 3)
        assert result.success_rate == pytest.approx(0.75)
        older = record_usage(conn, "patterns", "retry", success=True, version="1.2.0")
        assert (older.version, older.usage_count) == ("1.2.0", 1)
        events = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE environment = 'test') FROM artifact_usage"
        ).fetchone()
        assert events == (5, 4)


def test_record_usage_cli_and_unknown_artifact(versioned, tmp_path):
    config = write_cli_config(tmp_path, versioned)
    ok = cli_in_process(
        "--config",
        str(config),
        "record-usage",
        "patterns",
        "cache",
        "--success",
        "--duration-ms",
        "5",
        "--json",
        cwd=tmp_path,
        env={"SINGULARITY_ENV": "prod"},
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["usage_count"] == 1
    missing = cli_in_process(
        "--config", str(config), "record-usage", "patterns", "nope", "--failure", cwd=tmp_path
    )
    assert missing.returncode == 1
    assert "no artifact patterns/nope; check the spelling" in missing.stderr
    usage = cli_in_process(
        "--config", str(config), "record-usage", "patterns", "cache", cwd=tmp_path
    )
    assert usage.returncode == 2, "--success or --failure is required"
    with psycopg.connect(**versioned.conninfo()) as conn:
        assert conn.execute("SELECT environment FROM artifact_usage").fetchall() == [("prod",)]


def test_status_shows_counts(versioned, tmp_path):
    config = write_cli_config(tmp_path, versioned)
    cli_in_process(
        "--config", str(config), "record-usage", "patterns", "cache", "--success", cwd=tmp_path
    )
    out = cli_in_process("--config", str(config), "status", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["migrations_pending"] == []
    assert set(report["extensions"]) >= {"vector", "timescaledb", "postgis"}
    knowledge = report["knowledge"]
    assert knowledge["total"] == 5
    assert knowledge["embeddings"] == {"present": 0, "stale": 0, "missing": 5}
    assert knowledge["top_used"][0]["artifact_id"] == "cache"
    text = cli_in_process("--config", str(config), "status", cwd=tmp_path)
    assert "artifacts    5 (patterns 4, prompts 1)" in text.stdout
