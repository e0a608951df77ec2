"""Search input is bounded: characters, words, top-k, a statement timeout; NUL and invalid
UTF-8 get clear errors; in --stdin mode a bad line gets an error object and the stream goes
on. All through the real process."""

import json
import subprocess
import sys

import psycopg
import pytest
from conftest import clean_env, cli_in_process, write_cli_config
from embed_fixtures import LOCAL, UnusedProvider, run_embed

from singularity_ops.db import connect
from singularity_ops.errors import ConfigError
from singularity_ops.search import SearchLimits, SearchQuery, SearchUnavailable, search


@pytest.fixture
def embedded(corpus_db, tmp_path):
    settings, _root = corpus_db
    run_embed(settings, None)
    return settings, write_cli_config(tmp_path, settings)


def test_over_long_queries_and_top_k_are_usage_errors_naming_the_setting(embedded):
    _, config = embedded
    cases = {
        "x" * 100_000: "100,000 characters, more than the limit of 2,000 (search.max_query_chars",
        "word " * 300: "300 words, more than the limit of 64 (search.max_query_words",
    }
    for query, message in cases.items():
        out = cli_in_process("--config", str(config), "search", query, "--mode", "text")
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert "this is a bug" not in out.stderr
    huge = cli_in_process("--config", str(config), "search", "x", "--top-k", "99999999999999999999")
    assert huge.returncode == 2 and "(search.max_top_k in singularity.yaml)" in huge.stderr


def test_the_limits_come_from_singularity_yaml(embedded, tmp_path):
    settings, _ = embedded
    config = write_cli_config(tmp_path, settings, search={"max_query_words": 2})
    out = cli_in_process("--config", str(config), "search", "three words here", "--mode", "text")
    assert out.returncode == 2 and "the limit of 2 (search.max_query_words" in out.stderr


def test_stdin_answers_bad_lines_with_an_error_object_and_goes_on(embedded):
    _, config = embedded
    lines = b"pancakes\n\xff\xfe broken\nnul \x00 here\n" + b"w " * 100 + b"\nconsumer\n"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "singularity_ops",
            "--config",
            str(config),
            "search",
            "--stdin",
            "--mode",
            "text",
            "--top-k",
            "1",
        ],
        input=lines,
        capture_output=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    answers = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [("error" in a, a.get("query", "")[:8]) for a in answers] == [
        (False, "pancakes"),
        (True, "(line 2)"),
        (True, "nul \x00 he"),
        (True, "w w w w "),
        (False, "consumer"),
    ]
    assert "not valid UTF-8" in answers[1]["error"] and "NUL" in answers[2]["error"]
    assert out.returncode == 1, "a stream with failed lines exits 1 after answering the rest"


def test_a_statement_timeout_cancels_a_search_with_a_clear_error(embedded):
    settings, _ = embedded
    # Another session holds the table: the search waits, and its statement_timeout ends it.
    with psycopg.connect(**settings.conninfo()) as holder, connect(settings) as conn:
        holder.execute("LOCK TABLE knowledge_artifacts IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(SearchUnavailable, match=r"longer than 300 ms .*statement_timeout_ms"):
            search(
                conn,
                UnusedProvider(),
                LOCAL,
                "consumer",
                SearchQuery(mode="text"),
                limits=SearchLimits(statement_timeout_ms=300),
            )
        holder.rollback()
        assert search(conn, UnusedProvider(), LOCAL, "consumer", SearchQuery(mode="text")).hits


def test_library_search_refuses_nul_and_invalid_text_before_the_model(embedded):
    settings, _ = embedded
    with connect(settings) as conn:
        for bad in ("a\x00b", "caf\udce9"):
            with pytest.raises(ConfigError):
                search(conn, UnusedProvider(), LOCAL, bad)
