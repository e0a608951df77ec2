"""`search --rank-by proven`: relevance first, then a bounded nudge toward what has worked.

The relevance top-K is re-ranked by each artifact's recent success: the Wilson lower bound
(95 %) of its success rate over the window (90 days by default), from the daily rollup. The
bound rewards evidence, not luck: 3 of 3 successes bound at 0.44, 90 of 100 at 0.83. The boost
is zero below `min_uses`, and at most `max_boost` either way on a relevance scale normalised
to [0, 1] over the candidates, so it can swap near-ties but never lift an artifact over one
that is clearly more relevant (a gap of more than 2 x max_boost).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from .search import SearchHit

RANKINGS = ("relevance", "proven")
DEFAULT_RANKING = "relevance"
WINDOW_DAYS = 90
MIN_USES = 5
MAX_BOOST = 0.10
# Candidates re-ranked for a top-k of 10: the boost may bring one in from a little further down.
POOL_FACTOR = 2
Z = 1.96  # 95 %


@dataclass(frozen=True)
class UsageEvidence:
    """What the proven ranking knew about one artifact."""

    uses: int
    successes: int
    success_rate: float | None
    lower_bound: float | None  # Wilson, 95 %
    window_days: int
    boost: float  # added to the normalised relevance (0 below min_uses)


def wilson_lower_bound(successes: int, uses: int, z: float = Z) -> float | None:
    """The Wilson score interval's lower bound of successes / uses (None for no uses)."""
    if uses <= 0:
        return None
    p = successes / uses
    denominator = 1 + z * z / uses
    centre = p + z * z / (2 * uses)
    margin = z * math.sqrt(p * (1 - p) / uses + z * z / (4 * uses * uses))
    return max(0.0, (centre - margin) / denominator)


def boost_for(lower_bound: float | None, uses: int, *, min_uses: int, max_boost: float) -> float:
    """-max_boost..+max_boost: a lower bound of 0.5 is neutral; below min_uses, no boost."""
    if lower_bound is None or uses < min_uses:
        return 0.0
    return max_boost * (2 * lower_bound - 1)


def usage_evidence(
    conn: psycopg.Connection,
    artifact_pks: Sequence[str],
    *,
    window_days: int = WINDOW_DAYS,
    min_uses: int = MIN_USES,
    max_boost: float = MAX_BOOST,
) -> dict[str, UsageEvidence]:
    """Evidence for each artifact over the window, from artifact_usage_daily (one query)."""
    rows = conn.execute(
        "SELECT artifact_pk::text, sum(uses)::bigint, sum(successes)::bigint"
        " FROM artifact_usage_daily WHERE artifact_pk = ANY(%s::uuid[])"
        " AND day > (now() AT TIME ZONE 'UTC')::date - %s GROUP BY 1",
        (list(artifact_pks), window_days),
    ).fetchall()
    found = {pk: (int(uses), int(successes)) for pk, uses, successes in rows}
    evidence = {}
    for pk in artifact_pks:
        uses, successes = found.get(pk, (0, 0))
        bound = wilson_lower_bound(successes, uses)
        evidence[pk] = UsageEvidence(
            uses,
            successes,
            successes / uses if uses else None,
            bound,
            window_days,
            boost_for(bound, uses, min_uses=min_uses, max_boost=max_boost),
        )
    return evidence


def rerank_proven(
    hits: Sequence[SearchHit], evidence: Mapping[str, UsageEvidence]
) -> list[SearchHit]:
    """Hits ordered by normalised relevance + boost (ties keep the relevance order), each
    carrying its evidence."""
    if not hits:
        return []
    scores = [h.score for h in hits]
    top, bottom = max(scores), min(scores)
    spread = top - bottom

    def relevance(hit: SearchHit) -> float:
        return (hit.score - bottom) / spread if spread > 0 else 1.0

    keyed = []
    for position, hit in enumerate(hits):
        proof = evidence.get(hit.artifact_pk)
        boost = proof.boost if proof else 0.0
        keyed.append((-(relevance(hit) + boost), position, replace(hit, evidence=proof)))
    keyed.sort(key=lambda item: item[:2])
    return [hit for *_key, hit in keyed]
