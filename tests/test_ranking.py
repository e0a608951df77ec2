"""--rank-by proven: the Wilson lower bound, the boost's bounds, and the simulation that
decided the default (relevance), against the real database for the evidence."""

import random

import pytest
from corpus_fixtures import write
from embed_fixtures import LOCAL, UnusedProvider, imported

from singularity_ops.db import connect
from singularity_ops.ranking import (
    MAX_BOOST,
    MIN_USES,
    UsageEvidence,
    boost_for,
    rerank_proven,
    usage_evidence,
    wilson_lower_bound,
)
from singularity_ops.search import SearchHit, SearchQuery, search
from singularity_ops.usage_ingest import ingest_usage


def hit(name: str, score: float) -> SearchHit:
    return SearchHit(
        "pattern",
        name,
        "1",
        score,
        name,
        None,
        None,
        [],
        False,
        True,
        score,
        1,
        None,
        name,
        None,
        None,
    )


def proof(uses: int, successes: int) -> UsageEvidence:
    bound = wilson_lower_bound(successes, uses)
    return UsageEvidence(
        uses,
        successes,
        successes / uses if uses else None,
        bound,
        90,
        boost_for(bound, uses, min_uses=MIN_USES, max_boost=MAX_BOOST),
    )


def test_the_wilson_bound_rewards_evidence_not_luck():
    assert wilson_lower_bound(0, 0) is None
    assert wilson_lower_bound(3, 3) == pytest.approx(0.4385, abs=1e-3)
    assert wilson_lower_bound(90, 100) == pytest.approx(0.8256, abs=1e-3)
    assert wilson_lower_bound(900, 1000) > wilson_lower_bound(90, 100) > wilson_lower_bound(9, 10)
    assert wilson_lower_bound(0, 50) == 0.0


def test_the_boost_is_neutral_below_min_uses_and_bounded_either_way():
    assert proof(MIN_USES - 1, MIN_USES - 1).boost == 0
    assert proof(0, 0).boost == 0
    assert 0 < proof(1000, 1000).boost <= MAX_BOOST
    assert -MAX_BOOST <= proof(1000, 0).boost < 0


def test_near_ties_swap_but_a_clearly_better_match_is_never_buried():
    # b is almost as relevant as a, and much more successful: it goes first
    near = [hit("a", 0.80), hit("b", 0.79), hit("c", 0.10)]
    evidence = {"a": proof(200, 20), "b": proof(200, 190)}
    assert [h.artifact_id for h in rerank_proven(near, evidence)] == ["b", "a", "c"]
    # the best possible record cannot lift c over a clearly better a with the worst record
    clear = [hit("a", 0.90), hit("b", 0.50), hit("c", 0.10)]
    worst_and_best = {"a": proof(10_000, 0), "c": proof(10_000, 10_000)}
    assert rerank_proven(clear, worst_and_best)[0].artifact_id == "a"
    # no evidence at all: the relevance order, untouched, every hit carrying what was known
    plain = rerank_proven(near, {})
    assert [h.artifact_id for h in plain] == ["a", "b", "c"]


def test_simulated_outcomes_decide_proven_helps_near_ties_only():
    """Many searches with a near-tie at the top: the truly better artifact (success 0.85 vs
    0.55) is ranked first by relevance only half the time. After simulated outcomes, proven
    ranks it first almost always; with a clear relevance gap it changes nothing. This is the
    evidence behind the default: proven only pays once outcomes exist, so relevance stays
    the default and `usage eval` shows, per ranking, when proven does better on real traffic."""
    rng = random.Random(7)
    first_by = {"relevance": 0, "proven": 0}
    trials = 400
    for _ in range(trials):
        better_first = rng.random() < 0.5
        scores = (0.80, 0.78) if better_first else (0.78, 0.80)
        hits = [hit("better", scores[0]), hit("worse", scores[1]), hit("far", 0.2)]
        hits.sort(key=lambda h: -h.score)
        uses = 30
        evidence = {
            "better": proof(uses, sum(rng.random() < 0.85 for _ in range(uses))),
            "worse": proof(uses, sum(rng.random() < 0.55 for _ in range(uses))),
        }
        first_by["relevance"] += hits[0].artifact_id == "better"
        first_by["proven"] += rerank_proven(hits, evidence)[0].artifact_id == "better"
    assert first_by["relevance"] / trials == pytest.approx(0.5, abs=0.08)
    assert first_by["proven"] / trials > 0.9
    gap = [hit("relevant", 0.9), hit("popular", 0.5), hit("far", 0.1)]
    for _ in range(50):
        evidence = {"relevant": proof(30, rng.randint(0, 10)), "popular": proof(30, 30)}
        assert rerank_proven(gap, evidence)[0].artifact_id == "relevant"


def test_proven_search_reads_the_windowed_evidence_and_shows_it(kb_settings, tmp_path):
    settings = kb_settings
    twin = {"name": "Outbox relay", "description": "Publishes outbox rows to the broker."}
    write(tmp_path, "patterns/twin_a.json", {"id": "twin_a", **twin})
    write(tmp_path, "patterns/twin_b.json", {"id": "twin_b", **twin})
    imported(settings, tmp_path)
    events = [
        f'{{"artifact_type": "patterns", "artifact_id": "{ident}", "success": {outcome},'
        f' "event_id": "{ident}-{n}"}}'
        for n in range(12)
        for ident, outcome in (("twin_a", "false"), ("twin_b", "true"))
    ]
    # old evidence outside the 90-day window counts for nothing
    events.append(
        '{"artifact_type": "patterns", "artifact_id": "twin_a", "success": true,'
        ' "used_at": "2020-01-01T00:00:00Z", "event_id": "old"}'
    )
    with connect(settings, autocommit=True) as conn:
        ingest_usage(conn, events)
        relevance = search(
            conn, UnusedProvider(), LOCAL, "outbox relay", SearchQuery(mode="text")
        ).hits
        proven = search(
            conn,
            UnusedProvider(),
            LOCAL,
            "outbox relay",
            SearchQuery(mode="text", rank_by="proven"),
        )
        evidence = usage_evidence(conn, [h.artifact_pk for h in proven.hits])
    assert {h.artifact_id for h in relevance} == {"twin_a", "twin_b"}
    assert relevance[0].score == pytest.approx(relevance[1].score)  # an exact tie
    assert [h.artifact_id for h in proven.hits] == ["twin_b", "twin_a"]
    proved, failed = proven.hits[0].evidence, proven.hits[1].evidence
    assert (proved.uses, proved.successes, failed.uses, failed.successes) == (12, 12, 12, 0)
    assert proved.boost > 0 > failed.boost
    assert evidence[proven.hits[0].artifact_pk] == proved
    assert relevance[0].evidence is None and proven.rank_by == "proven"
