"""embed and search with the real local model, the real database and a fake HTTP provider."""

import json
import subprocess
import sys

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config
from corpus_fixtures import write
from embed_fixtures import LOCAL, UnusedProvider, imported, run_embed
from fake_embeddings import FakeEmbeddingServer

from singularity_ops.db import connect, relation_exists
from singularity_ops.embed import TEXT_VERSION, ModelMismatch, embedding_text, index_name
from singularity_ops.errors import ConfigError
from singularity_ops.glossary import describe, digest
from singularity_ops.providers import EmbeddingConfig, OpenAIProvider, ProviderError, model_key
from singularity_ops.search import (
    UNEMBEDDED_COUNT_SQL,
    SearchQuery,
    search,
    search_sql,
    search_vector,
)


@pytest.fixture(scope="session")
def local_provider():
    from singularity_ops.providers import LocalProvider

    return LocalProvider(LOCAL)


def test_semantic_search_ranks_the_nats_consumer_first(corpus_db, local_provider):
    settings, _ = corpus_db
    result = run_embed(settings, local_provider)
    assert (result.embedded, result.up_to_date, result.failed) == (5, 0, 0)
    with connect(settings) as conn:
        hits = search(conn, local_provider, LOCAL, "NATS consumer with error handling").hits
    ids = [h.artifact_id for h in hits]
    assert ids[0] == "nats_consumer"
    assert ids.index("pancakes") > ids.index("queue_worker")
    assert hits[0].similarity > 0.5 > hits[-1].similarity


def test_second_run_does_no_model_work_and_changes_are_picked_up(
    corpus_db, local_provider, tmp_path
):
    settings, root = corpus_db
    run_embed(settings, local_provider)
    again = run_embed(settings, UnusedProvider())  # proves no model work
    assert (again.embedded, again.up_to_date) == (0, 5)
    write(
        root,
        "code/pancakes.json",
        {"id": "pancakes", "name": "Crepes", "description": "Thin pancakes."},
    )
    imported(settings, root)
    with psycopg.connect(**settings.conninfo()) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM knowledge_artifacts WHERE embedded_hash <> embedding_source_hash"
            ).fetchone()[0]
            == 1
        )
    after_change = run_embed(settings, local_provider)
    assert (after_change.embedded, after_change.up_to_date) == (1, 4)
    rebuilt = run_embed(settings, local_provider, rebuild=True)
    assert rebuilt.embedded == 5


def test_cli_embed_with_nothing_to_do_never_imports_torch(corpus_db, local_provider, tmp_path):
    settings, _root = corpus_db
    run_embed(settings, local_provider)
    config = write_cli_config(tmp_path, settings)
    code = (
        "import sys\nfrom singularity_ops.cli import main\n"
        f"try:\n    main(['--config', {str(config)!r}, 'embed'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("nothing to do: 5 artifacts up to date"), out.stderr
    assert lines[-1] == "False"


def test_filters_and_cutoff_run_in_sql_and_still_fill_top_k(corpus_db, local_provider):
    settings, _ = corpus_db
    run_embed(settings, local_provider)
    with connect(settings) as conn:
        go = search(
            conn, local_provider, LOCAL, "pancakes", SearchQuery(language="go", top_k=2)
        ).hits
        assert {h.artifact_id for h in go} == {"nats_consumer", "queue_worker"}
        prompts = search(
            conn,
            local_provider,
            LOCAL,
            "message consumer",
            SearchQuery(types=["prompts"], tags=["messaging"]),
        ).hits
        assert [h.artifact_id for h in prompts] == ["queue_worker"]
        strict = search(
            conn,
            local_provider,
            LOCAL,
            "NATS consumer with error handling",
            SearchQuery(min_similarity=0.5),
        ).hits
        assert [h.artifact_id for h in strict] == ["nats_consumer"]
        assert all(h.similarity >= 0.5 for h in strict)
        with pytest.raises(ConfigError, match="query is empty"):
            search(conn, local_provider, LOCAL, "   ")


def test_search_cli_json_and_empty_query(corpus_db, local_provider, tmp_path):
    settings, _ = corpus_db
    run_embed(settings, local_provider)
    config = write_cli_config(tmp_path, settings)
    out = cli_in_process(
        "--config",
        str(config),
        "search",
        "pull consumer acks",
        "--top-k",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == {
        "search_id",
        "query",
        "mode",
        "rank_by",
        "hits",
        "unembedded",
        "best_similarity",
    }
    hits = result["hits"]
    assert len(hits) == 2 and {"artifact_type", "artifact_id", "version", "similarity"} <= set(
        hits[0]
    )
    empty = cli_in_process("--config", str(config), "search", "", cwd=tmp_path)
    assert empty.returncode == 2 and "query is empty" in empty.stderr


def test_search_uses_the_hnsw_and_full_text_indexes_at_ten_thousand_rows(kb_settings):
    key = model_key(LOCAL, TEXT_VERSION)
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content,"
            " embedding, embedding_model, embedded_hash)"
            " SELECT 'bulk', 'a' || g, '{\"language\": \"go\"}', '{\"language\": \"go\"}',"
            "  (SELECT array_agg(random())::real[]::vector FROM generate_series(1, 384) WHERE g > 0),"
            '  %s, knowledge_embedding_source_hash(\'{"language": "go"}\'::jsonb)'
            " FROM generate_series(1, 10000) g",
            (key,),
        )
        run_embed(kb_settings, None)  # nothing to embed: creates the model's index
        conn.execute("ANALYZE knowledge_artifacts")
        params = {
            "q": "[" + ",".join(["0.5"] * 384) + "]",
            "query": "a42",
            "k": 10,
            "pool": 50,
            "types": ["bulk"],
            "language": "go",
            "tags": [],
        }
        count_plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN " + UNEMBEDDED_COUNT_SQL, {"key": key})
        )
        plans = {}
        for mode in ("vector", "text", "hybrid"):
            statement = search_sql(384, key, mode=mode, types=True, language=True)
            plans[mode] = "\n".join(
                r[0] for r in conn.execute(psycopg.sql.SQL("EXPLAIN ") + statement, params)
            )
    for mode in ("vector", "hybrid"):
        assert f"Index Scan using {index_name(key)}" in plans[mode], plans[mode]
    # the count every search reports reads the other models' entries only (migration 0011)
    assert "Index Cond" in count_plan and "knowledge_artifacts_embedding_model" in count_plan, (
        count_plan
    )
    text_index = "Bitmap Index Scan on knowledge_artifacts_search_document"
    for mode in ("text", "hybrid"):
        assert text_index in plans[mode], plans[mode]
    with connect(kb_settings) as conn:
        hits = search_vector(
            conn, [0.5] * 384, LOCAL, SearchQuery(types=["bulk"], language="go", top_k=10)
        )
    assert len(hits) == 10


def test_embedding_text_is_never_empty_and_bounded():
    assert embedding_text("prompt", "bare_id", {}) == "bare id"
    text = embedding_text(
        "code",
        "x",
        {"name": "N", "metadata": {"description": "D", "tags": ["a"]}, "body": "y" * 5000},
    )
    assert text.startswith("N\nD\ntags: a\n")
    assert len(text) < 1400


# --- the OpenAI-compatible provider, against a local fake server ---------------------------


def openai_config(server, **overrides):
    values = {
        "provider": "openai",
        "model": "fake-embed",
        "dimensions": 8,
        "base_url": server.url,
        "api_key_env": "FAKE_KEY",
        "timeout": 5,
        "max_retries": 3,
        "batch_size": 2,
    }
    values.update(overrides)
    return EmbeddingConfig(**values)


def provider_for(server, **overrides):
    return OpenAIProvider(openai_config(server, **overrides), env={"FAKE_KEY": server.api_key})


def test_http_provider_retries_429_and_5xx_then_succeeds():
    with FakeEmbeddingServer() as server:
        server.script = [429, 503, 500]
        vectors = provider_for(server).embed(["a", "b"])
        assert len(vectors) == 2 and len(vectors[0]) == 8
        assert server.requests == 4


def test_http_provider_gives_up_after_max_retries():
    with FakeEmbeddingServer() as server:
        server.script = [500] * 10
        with pytest.raises(ProviderError, match="still failing after 2 retries: HTTP 500"):
            provider_for(server, max_retries=2).embed(["a"])


def test_http_provider_errors_are_clear_and_never_show_the_key():
    with FakeEmbeddingServer() as server:
        wrong_key = OpenAIProvider(openai_config(server), env={"FAKE_KEY": "sk-wrong-key-123"})
        with pytest.raises(ProviderError) as info:
            wrong_key.embed(["a"])
        assert "refused the API key (HTTP 401); check the key in $FAKE_KEY" in str(info.value)
        assert "sk-wrong-key-123" not in str(info.value)
        with pytest.raises(ProviderError, match=r"answered 404: wrong embedding\.base_url"):
            provider_for(server, base_url=server.url + "/nope").embed(["a"])
        with pytest.raises(
            ProviderError, match=r"returned 8-dimensional vectors .* embedding\.dimensions is 16"
        ):
            provider_for(server, dimensions=16).embed(["a"])
        assert server.requests == 3, "401, 404 and a dimension mismatch are not retried"


def test_provider_down_mid_run_keeps_committed_batches_and_next_run_continues(corpus_db):
    settings, _ = corpus_db
    with FakeEmbeddingServer() as server:
        server.fail_after = 1  # first batch (2 texts) succeeds, then the provider is down
        config = openai_config(server, max_retries=0)
        with pytest.raises(
            ProviderError,
            match=r"HTTP 500 \(2 of 5 embedded and committed before the failure; run embed again",
        ):
            run_embed(settings, provider_for(server, max_retries=0), config)
        with psycopg.connect(**settings.conninfo()) as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM knowledge_artifacts WHERE embedding IS NOT NULL"
                ).fetchone()[0]
                == 2
            )
        server.fail_after = None
        rest = run_embed(settings, provider_for(server), config)
        assert (rest.embedded, rest.up_to_date) == (3, 2)


def test_model_change_is_refused_until_rebuild_and_never_mixed(corpus_db, local_provider):
    settings, _ = corpus_db
    run_embed(settings, local_provider)
    with FakeEmbeddingServer() as server:
        config = openai_config(server)
        with pytest.raises(
            ModelMismatch,
            match=rf"embedded with another model \(5 with local:all-MiniLM-L6-v2:384:{TEXT_VERSION}\)"
            r".*embed --rebuild",
        ):
            run_embed(settings, provider_for(server), config)
        result = run_embed(settings, provider_for(server), config, rebuild=True)
        assert result.embedded == 5
        with psycopg.connect(**settings.conninfo()) as conn:
            models = conn.execute(
                "SELECT DISTINCT embedding_model, vector_dims(embedding) FROM knowledge_artifacts"
            ).fetchall()
        assert models == [(model_key(config, TEXT_VERSION), 8)]
        with connect(settings) as conn:
            hits = search(conn, provider_for(server), config, "anything", SearchQuery(top_k=3)).hits
        assert len(hits) == 3


def test_concurrent_embed_is_refused_with_a_message(corpus_db):
    settings, _ = corpus_db
    from singularity_ops.embed import EMBED_LOCK_KEY
    from singularity_ops.errors import SingularityOpsError

    with psycopg.connect(**settings.conninfo(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (EMBED_LOCK_KEY,))
        with pytest.raises(SingularityOpsError, match="another embed is running"):
            run_embed(settings, None)


def test_local_provider_refuses_models_it_cannot_load_offline():
    from singularity_ops.providers import LocalProvider

    with pytest.raises(ConfigError, match="not available offline"):
        LocalProvider(EmbeddingConfig(model="bge-large"))
    with pytest.raises(ConfigError, match="produces 384"):
        LocalProvider(EmbeddingConfig(dimensions=768))


def test_retry_after_accepts_seconds_and_http_dates():
    from singularity_ops.providers import retry_after_seconds

    now = 1_700_000_000.0
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:40 GMT", now) == pytest.approx(20.0)
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # in the past
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None) is None


def test_http_provider_with_the_key_variable_unset_names_it():
    with FakeEmbeddingServer() as server:
        keyless = OpenAIProvider(openai_config(server), env={})
        with pytest.raises(
            ProviderError, match=r"needs an API key \(HTTP 401\), but \$FAKE_KEY is not set"
        ):
            keyless.embed(["a"])
    with pytest.raises(ProviderError, match=r"needs an API key, but \$OPENAI_API_KEY is not set"):
        OpenAIProvider(EmbeddingConfig(provider="openai", dimensions=1536), env={})


def test_a_new_text_version_of_the_same_model_is_re_embedded_by_plain_embed(corpus_db):
    """Upgrading the toolkit's embedded text is not a model change: no --rebuild needed, and
    the older version's index goes once no row uses it."""
    from singularity_ops.embed import ensure_index

    settings, _ = corpus_db
    run_embed(settings, None)
    older = model_key(LOCAL, "t1")
    with connect(settings, autocommit=True) as conn:
        conn.execute("UPDATE knowledge_artifacts SET embedding_model = %s", (older,))
        ensure_index(conn, older, LOCAL.dimensions)
    result = run_embed(settings, None)
    assert result.embedded == 5 and result.up_to_date == 0
    with connect(settings) as conn:
        models = conn.execute(
            "SELECT embedding_model, count(*) FROM knowledge_artifacts GROUP BY 1"
        ).fetchall()
        assert models == [(model_key(LOCAL, TEXT_VERSION), 5)]
        assert not relation_exists(conn, index_name(older))
        assert relation_exists(conn, index_name(model_key(LOCAL, TEXT_VERSION)))


def test_embedded_text_spells_identifiers_as_words():
    text = embedding_text(
        "technology_detector",
        "otel",
        {
            "name": "OpenTelemetry",
            "category": "observability",
            "detector_signatures": {
                "patterns": ["trace.get_tracer(", "TracerProvider"],
                "file_patterns": ["otel-collector*.yaml"],
            },
            "parent_pattern": "distributed_tracing",
        },
    )
    assert text.splitlines() == [
        "OpenTelemetry",
        describe("OpenTelemetry"),
        "category: observability",
        "patterns: trace get tracer, Tracer Provider",
        "file patterns: otel collector yaml",
        "parent pattern: distributed tracing",
    ]


def test_a_thin_artifact_is_embedded_with_the_glossary_line_and_a_described_one_is_not():
    thin = {"name": "Falco", "category": "security"}
    assert embedding_text("technology_detector", "falco", thin).splitlines()[:2] == [
        "Falco",
        describe("falco"),
    ]
    assert "runtime security" in describe("falco")
    # The id is enough, and words such as "detector" do not hide the name.
    assert embedding_text("technology_detector", "redis_detector", {}).splitlines()[1] == (
        describe("Redis")
    )
    own = {"name": "Falco", "description": "Our Falco rules for the build farm."}
    assert embedding_text("technology_detector", "falco", own).splitlines()[:2] == [
        "Falco",
        "Our Falco rules for the build farm.",
    ]
    unknown = {"name": "Zorblax", "category": "security"}
    assert embedding_text("technology_detector", "zorblax", unknown).splitlines() == [
        "Zorblax",
        "category: security",
    ]


# The glossary is part of what is embedded: a new line must re-embed (plain `embed`), so its
# digest moves only with embed.TEXT_VERSION. Add the pair here when bumping both.
GLOSSARY_OF_TEXT_VERSION = {"t3": "ef20b424813d"}


def test_a_glossary_change_comes_with_a_new_text_version():
    assert GLOSSARY_OF_TEXT_VERSION.get(TEXT_VERSION) == digest(), (
        "singularity_ops/glossary.py changed: bump embed.TEXT_VERSION and record the new digest"
    )
