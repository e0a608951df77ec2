"""The search log: every search gets an id and a row; an outcome names its search and rank
(record-usage --search-id, bulk "search_id"); usage eval turns both into ranking quality;
a log that cannot be written never fails a search."""

import json
import uuid

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config
from embed_fixtures import LOCAL, UnusedProvider, run_embed

from singularity_ops.db import connect
from singularity_ops.search import SearchQuery, search
from singularity_ops.search_log import SearchNotFound, evaluate_rankings, prune_search_log
from singularity_ops.usage_ingest import ingest_usage, record_usage


@pytest.fixture
def embedded(corpus_db, tmp_path):
    settings, _root = corpus_db
    run_embed(settings, None)
    return settings, write_cli_config(tmp_path, settings)


def logged(settings, search_id):
    with psycopg.connect(**settings.conninfo()) as conn:
        return conn.execute(
            "SELECT query, mode, rank_by, filters, top_k, artifact_pks::text[], environment"
            " FROM search_log WHERE search_id = %s",
            (search_id,),
        ).fetchall()


def test_every_search_gets_an_id_and_a_row_with_its_results_in_order(embedded):
    settings, config = embedded
    out = cli_in_process(
        "--config", str(config), "search", "consumer", "--language", "go", "--json"
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    [(query, mode, rank_by, filters, top_k, pks, environment)] = logged(
        settings, result["search_id"]
    )
    assert (query, mode, rank_by, top_k, environment) == (
        "consumer",
        "hybrid",
        "relevance",
        10,
        "dev",
    )
    assert filters == {"language": "go"}
    assert pks == [h["artifact_pk"] for h in result["hits"]]
    stdin = cli_in_process(
        "--config", str(config), "search", "--stdin", "--mode", "text",
        input="consumer\npancakes\n",
    )  # fmt: skip
    lines = [json.loads(line) for line in stdin.stdout.splitlines()]
    ids = [line["search_id"] for line in lines]
    assert len(set(ids)) == 2 and all(logged(settings, i)[0][1] == "text" for i in ids)


def test_a_search_whose_log_cannot_be_written_still_answers(embedded, tmp_path):
    settings, _config = embedded
    with connect(settings, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        result = search(conn, UnusedProvider(), LOCAL, "pancakes", SearchQuery(mode="text"))
        assert result.hits and result.search_id is None
        conn.execute("SET default_transaction_read_only = off")
        # inside a caller's transaction the failed insert is a rolled-back savepoint only
        with conn.transaction():
            conn.execute("SET LOCAL transaction_read_only = on")
            inner = search(conn, UnusedProvider(), LOCAL, "pancakes", SearchQuery(mode="text"))
            assert inner.search_id is None
            assert conn.execute("SELECT count(*) FROM knowledge_artifacts").fetchone()[0] == 5
    off = write_cli_config(tmp_path, settings, search={"log": False})
    out = cli_in_process("--config", str(off), "search", "pancakes", "--mode", "text", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["search_id"] is None
    with psycopg.connect(**settings.conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM search_log").fetchone()[0] == 0


def test_an_outcome_records_the_rank_its_search_gave_the_artifact(embedded):
    settings, config = embedded
    with connect(settings, autocommit=True) as conn:
        result = search(
            conn, UnusedProvider(), LOCAL, "consumer messaging", SearchQuery(mode="text")
        )
        ranked = [(h.artifact_type, h.artifact_id) for h in result.hits]
        second = ranked[1]
        record_usage(conn, *second, success=True, search_id=result.search_id)
        absent = next(
            (t, i)
            for t, i in conn.execute("SELECT artifact_type, artifact_id FROM knowledge_artifacts")
            if (t, i) not in ranked
        )
        with pytest.raises(SearchNotFound, match="was not among the results of search"):
            record_usage(conn, *absent, success=True, search_id=result.search_id)
        with pytest.raises(SearchNotFound, match=r"no search .* in the search log"):
            record_usage(conn, *second, success=True, search_id=str(uuid.uuid4()))
        rows = conn.execute(
            "SELECT search_id::text, search_rank FROM artifact_usage ORDER BY used_at"
        ).fetchall()
    assert rows == [(result.search_id, 2)], "the refused outcomes recorded nothing"
    bad = cli_in_process(
        "--config", str(config), "record-usage", *second, "--success", "--search-id", "nope"
    )
    assert bad.returncode == 2 and "must be the search_id a search printed" in bad.stderr


def test_bulk_lines_carry_search_ids_and_bad_ones_are_named(embedded):
    settings, _config = embedded
    with connect(settings, autocommit=True) as conn:
        result = search(
            conn, UnusedProvider(), LOCAL, "consumer messaging", SearchQuery(mode="text")
        )
        first = result.hits[0]
        lines = [
            json.dumps({"artifact_type": first.artifact_type, "artifact_id": first.artifact_id,
                        "success": True, "search_id": result.search_id, "event_id": "1"}),
            # a search the log no longer holds: the outcome counts, without a rank
            json.dumps({"artifact_type": first.artifact_type, "artifact_id": first.artifact_id,
                        "success": False, "search_id": str(uuid.uuid4()), "event_id": "2"}),
        ]  # fmt: skip
        ingest_usage(conn, lines)
        ranks = conn.execute(
            "SELECT event_id, search_rank FROM artifact_usage ORDER BY event_id"
        ).fetchall()
        assert ranks == [("1", 1), ("2", None)]
        bad = json.dumps({**json.loads(lines[0]), "search_id": 42, "event_id": "3"})
        with pytest.raises(Exception, match=r"-:1: \"search_id\" must be the search_id"):
            ingest_usage(conn, [bad])


def test_usage_eval_reports_mrr_and_hits_per_mode_and_ranking(embedded):
    settings, config = embedded
    with connect(settings, autocommit=True) as conn:
        outcomes = []
        for mode, rank_by, position in (
            ("text", "relevance", 1),
            ("text", "relevance", 2),
            ("text", "proven", 1),
        ):
            result = search(
                conn,
                UnusedProvider(),
                LOCAL,
                "consumer messaging",
                SearchQuery(mode=mode, rank_by=rank_by),
            )
            chosen = result.hits[position - 1]
            outcomes.append((chosen, result.search_id))
        for chosen, search_id in outcomes:
            record_usage(
                conn, chosen.artifact_type, chosen.artifact_id, success=True, search_id=search_id
            )
        # a failure tied to a search is an outcome, not a success
        record_usage(
            conn, outcomes[0][0].artifact_type, outcomes[0][0].artifact_id,
            success=False, search_id=outcomes[0][1],
        )  # fmt: skip
        search(
            conn, UnusedProvider(), LOCAL, "pancakes", SearchQuery(mode="text")
        )  # a search, no outcome
        report = {(r.mode, r.rank_by): r for r in evaluate_rankings(conn, 30).rankings}
    relevance = report[("text", "relevance")]
    assert (relevance.searches, relevance.outcomes, relevance.successes) == (3, 3, 2)
    assert relevance.mrr == pytest.approx((1 + 1 / 2) / 2)
    assert (relevance.hit_at_1, relevance.hit_at_5) == (0.5, 1.0)
    assert report[("text", "proven")].mrr == 1.0
    out = cli_in_process("--config", str(config), "usage", "eval", "--since", "7d", "--json")
    assert out.returncode == 0, out.stderr
    assert {(r["mode"], r["rank_by"]) for r in json.loads(out.stdout)["rankings"]} == set(report)
    text = cli_in_process("--config", str(config), "usage", "eval")
    assert "MRR" in text.stdout and "0.750" in text.stdout


def test_the_search_log_is_pruned_by_its_retention(embedded):
    settings, _config = embedded
    with connect(settings, autocommit=True) as conn:
        for _ in range(3):
            search(conn, UnusedProvider(), LOCAL, "pancakes", SearchQuery(mode="text"))
        # a hypertable row cannot move to another chunk: log an old search as it was then
        conn.execute(
            "INSERT INTO search_log (searched_at, search_id, query, mode, top_k, artifact_pks)"
            " VALUES (now() - interval '100 days', gen_random_uuid(), 'old', 'text', 10, '{}')"
        )
        assert prune_search_log(conn, 90, dry_run=True).searches == 1
        assert prune_search_log(conn, 90).searches == 1
        assert conn.execute("SELECT count(*) FROM search_log").fetchone()[0] == 3
