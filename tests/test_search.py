"""search: the three modes, hybrid fusion with filters, --stdin, and the checks that run before
any model is loaded."""

import json
import subprocess
import sys

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config
from embed_fixtures import LOCAL, UnusedProvider, run_embed

from singularity_ops.db import connect
from singularity_ops.errors import ConfigError
from singularity_ops.search import (
    DEFAULT_FUSION,
    RRF_K,
    SearchQuery,
    SearchUnavailable,
    search,
)


@pytest.fixture
def embedded(corpus_db, tmp_path):
    settings, _root = corpus_db
    run_embed(settings, None)
    return settings, write_cli_config(tmp_path, settings)


def cli_json(config, *args, **kwargs):
    out = cli_in_process(
        "--config", str(config), "search", *args, "--json", cwd=config.parent, **kwargs
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["hits"]


def test_text_mode_needs_no_model_and_ranks_by_words(embedded):
    settings, _ = embedded
    with connect(settings) as conn:
        hits = search(
            conn, UnusedProvider(), LOCAL, "pancake recipe", SearchQuery(mode="text")
        ).hits
    assert [h.artifact_id for h in hits] == ["pancakes"]
    assert hits[0].similarity is None and hits[0].text_rank == 1 and hits[0].vector_rank is None


def test_hybrid_fuses_both_rankings_with_reciprocal_ranks(embedded):
    _, config = embedded
    hits = cli_json(config, "consumer retries failures", "--top-k", "5")
    assert {h["artifact_id"] for h in hits[:2]} == {"queue_worker", "nats_consumer"}
    for hit in hits:
        weights = (DEFAULT_FUSION.vector_weight, DEFAULT_FUSION.text_weight)
        ranks = (hit["vector_rank"], hit["text_rank"])
        expected = sum(w / (RRF_K + r) for w, r in zip(weights, ranks, strict=True) if r)
        assert hit["score"] == pytest.approx(expected)
        assert hit["similarity"] is not None  # text-only hits get theirs computed too
    assert hits == sorted(hits, key=lambda h: -h["score"])
    assert any(h["text_rank"] is None for h in hits), "vector-only candidates take part"


def test_text_ranks_rows_with_every_word_first_and_hybrid_fuses_only_those(embedded):
    settings, config = embedded
    with connect(settings) as conn:
        text = search(conn, UnusedProvider(), LOCAL, "message queue", SearchQuery(mode="text")).hits
    # queue_worker holds both words; nats_consumer only "messages"
    assert text[0].artifact_id == "queue_worker" and text[0].score >= 1
    assert len(text) > 1 and all(h.score < 1 for h in text[1:]), "partial matches follow"
    hybrid = cli_json(config, "message queue", "--top-k", "5")
    with_text = {h["artifact_id"] for h in hybrid if h["text_rank"] is not None}
    assert with_text == {"queue_worker"}, "a partial word match never joins the fusion"


def test_fusion_alternatives_stay_available_to_the_library(embedded):
    from singularity_ops.search import Fusion

    settings, _ = embedded
    with connect(settings) as conn:
        rsf = search(
            conn, None, LOCAL, "consumer retries failures",
            fusion=Fusion(method="rsf", vector_weight=0.7, text_weight=0.3, text_match="or"),
        ).hits  # fmt: skip
    assert rsf == sorted(rsf, key=lambda h: -h.score)
    assert all(0 <= h.score <= 1.0 + 1e-9 for h in rsf)  # weights sum to 1 over [0, 1] norms
    assert any(h.text_rank is not None for h in rsf) and any(h.text_rank is None for h in rsf)


def test_filters_apply_to_both_halves_of_hybrid(embedded):
    _, config = embedded
    hits = cli_json(config, "message consumer", "--language", "go", "--tag", "messaging")
    assert {h["artifact_id"] for h in hits} == {"nats_consumer", "queue_worker"}
    only_prompts = cli_json(config, "pancakes", "--type", "prompts")
    assert {h["artifact_type"] for h in only_prompts} == {"prompts"}
    # "pancakes" matches the code/pancakes text, which the type filter must keep out
    assert all(h["artifact_id"] != "pancakes" for h in only_prompts)


def test_min_similarity_is_refused_in_text_mode(embedded):
    _, config = embedded
    out = cli_in_process(
        "--config", str(config), "search", "x", "--mode", "text", "--min-similarity", "0.5"
    )
    assert out.returncode == 2 and "needs --mode vector or hybrid" in out.stderr


STDIN_ARGS = ("--stdin", "--top-k", "2")


def test_stdin_answers_each_line_with_one_json_line(embedded):
    _, config = embedded
    queries = "NATS consumer with error handling\n\n  pancake recipe  \ncommit message\n"
    out = subprocess.run(
        [sys.executable, "-m", "singularity_ops", "--config", str(config), "search", *STDIN_ARGS],
        input=queries,
        capture_output=True,
        text=True,
        cwd=config.parent,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["query"] for line in lines] == [
        "NATS consumer with error handling",
        "pancake recipe",
        "commit message",
    ]
    assert [line["hits"][0]["artifact_id"] for line in lines] == [
        "nats_consumer",
        "pancakes",
        "commit_message",
    ]
    assert all(len(line["hits"]) == 2 and line["mode"] == "hybrid" for line in lines)


def test_query_and_stdin_together_is_a_usage_error(embedded):
    _, config = embedded
    out = cli_in_process("--config", str(config), "search", "x", "--stdin")
    assert out.returncode == 2 and "not both or neither" in out.stderr


MODEL_FREE = (
    "import sys\nfrom singularity_ops.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
    "print('onnxruntime' in sys.modules, 'tokenizers' in sys.modules)\n"
)


def run_without_model(config, *args):
    """Run the CLI in-process and report whether the model's libraries were imported."""
    out = subprocess.run(
        [sys.executable, "-c", MODEL_FREE, "--config", str(config), "search", *args],
        capture_output=True,
        text=True,
        cwd=config.parent,
        timeout=60,
    )
    *_, exit_line, loaded = out.stdout.strip().splitlines()
    return exit_line, loaded, out.stderr


def test_unknown_filter_values_fail_before_any_model_load(embedded):
    _, config = embedded
    exit_line, loaded, stderr = run_without_model(config, "x", "--type", "nosuchtype")
    assert exit_line == "exit 2" and loaded == "False False"
    assert "no artifact has type 'nosuchtype' (types: code, prompts)" in stderr
    exit_line, loaded, stderr = run_without_model(
        config, "x", "--language", "cobol", "--tag", "nope"
    )
    assert exit_line == "exit 2" and loaded == "False False"
    assert "no artifact has language 'cobol' (languages: css, go)" in stderr
    assert "no artifact has tag 'nope'" in stderr


def test_unmigrated_or_unembedded_database_fails_before_any_model_load(db_settings, tmp_path):
    config = write_cli_config(tmp_path, db_settings)
    exit_line, loaded, stderr = run_without_model(config, "anything")
    assert exit_line == "exit 1" and loaded == "False False"
    assert "has no knowledge schema; run `singularity-ops migrate`" in stderr


def test_nothing_embedded_fails_before_any_model_load(corpus_db, tmp_path):
    settings, _ = corpus_db
    config = write_cli_config(tmp_path, settings)
    exit_line, loaded, stderr = run_without_model(config, "anything")
    assert exit_line == "exit 1" and loaded == "False False"
    assert "no artifact is embedded yet; run `singularity-ops embed`" in stderr
    # text mode works without any embedding
    out = cli_in_process("--config", str(config), "search", "pancake", "--mode", "text")
    assert out.returncode == 0 and "code/pancakes" in out.stdout
    header, *lines = out.stdout.splitlines()
    assert header.split() == ["#", "ts_rank", "type/id@version", "name"]
    assert [line.split()[0] for line in lines] == [str(n) for n in range(1, len(lines) + 1)]
    assert all(line.endswith("(not embedded)") for line in lines), "never embedded, not stale"


def test_missing_database_fails_before_any_model_load(db_settings, tmp_path):
    from dataclasses import replace

    config = write_cli_config(tmp_path, replace(db_settings, dbname="no_such_db"))
    exit_line, loaded, stderr = run_without_model(config, "anything")
    assert exit_line == "exit 1" and loaded == "False False"
    assert 'database "no_such_db" does not exist' in stderr


def test_rows_of_another_model_only_is_refused_with_the_fix(corpus_db):
    settings, _ = corpus_db
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "UPDATE knowledge_artifacts SET embedding = '[1,0]', embedding_model = 'openai:x:2:t1'"
        )
    with connect(settings) as conn, pytest.raises(SearchUnavailable, match="embed --rebuild"):
        search(conn, UnusedProvider(), LOCAL, "x")


def test_library_search_rejects_bad_arguments_before_the_model(embedded):
    settings, _ = embedded
    with connect(settings) as conn:
        with pytest.raises(ConfigError, match="--mode must be one of"):
            search(conn, UnusedProvider(), LOCAL, "x", SearchQuery(mode="fuzzy"))
        with pytest.raises(ConfigError, match="--top-k must be at least 1"):
            search(conn, UnusedProvider(), LOCAL, "x", SearchQuery(top_k=0))


def test_search_says_what_it_left_out_and_how_far_off_a_cutoff_was(corpus_db, tmp_path):
    settings, root = corpus_db
    run_embed(settings, None)
    (root / "code" / "late.json").write_text('{"id": "late", "name": "Late arrival"}')
    config = write_cli_config(tmp_path, settings, **{"import": {"root": str(root)}})
    imported = cli_in_process("--config", str(config), "import", cwd=tmp_path)
    assert "1 artifact(s) need `singularity-ops embed`" in imported.stdout
    out = cli_in_process("--config", str(config), "search", "pancake recipe", cwd=tmp_path)
    assert out.returncode == 0
    assert "note: 1 artifact(s) have no vector yet" in out.stderr
    assert out.stdout.splitlines()[0].endswith("(ordered by the fused rank)")
    far = cli_in_process("--config", str(config), "search", "pancake recipe", "--min-similarity", "0.99",
                  "--json", cwd=tmp_path)  # fmt: skip
    result = json.loads(far.stdout)
    assert result["hits"] == [] and 0 < result["best_similarity"] < 0.99
    text = cli_in_process("--config", str(config), "search", "pancake recipe", "--min-similarity",
                   "0.99", cwd=tmp_path)  # fmt: skip
    assert f"the most similar artifact scored {result['best_similarity']:.3f}" in text.stderr


def test_a_search_query_is_one_checked_value():
    from singularity_ops.errors import ConfigError
    from singularity_ops.search import SearchLimits

    query = SearchQuery(types=["pattern"], tags=["nats"], top_k=5)
    assert query.types == ("pattern",) and query.tags == ("nats",)
    assert hash(query) == hash(SearchQuery(types=("pattern",), tags=("nats",), top_k=5))
    query.check()
    for bad, message in [
        (SearchQuery(mode="fuzzy"), "--mode must be one of"),
        (SearchQuery(rank_by="newest"), "--rank-by must be one of"),
        (SearchQuery(top_k=0), "--top-k must be at least 1"),
        (SearchQuery(top_k=11), r"--top-k 11 is more than the limit of 10 \(search.max_top_k"),
        (SearchQuery(min_similarity=1.5), "--min-similarity must be between -1 and 1"),
        (SearchQuery(mode="text", min_similarity=0.5), "needs --mode vector or hybrid"),
    ]:
        with pytest.raises(ConfigError, match=message):
            bad.check(SearchLimits(max_top_k=10))
