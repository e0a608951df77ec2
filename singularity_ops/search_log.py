"""The search log: which search (query, mode, ranking, results in order) led to an outcome.

- log_search() records one search; search.py makes sure it never fails one: a search whose
  log write fails (a read-only connection, a schema without migration 0007) still answers,
  with no search_id.
- search_rank() is what record-usage --search-id asks: the rank of an artifact in a search.
- evaluate_rankings() is `usage eval`: from real traffic, the MRR and hit@k of the artifacts
  that later succeeded, per mode and per ranking.
- prune_search_log() drops searches older than the retention (search.log_retention_days).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .db import relation_exists
from .errors import ConfigError, SearchNotFound, SingularityOpsError

DEFAULT_RETENTION_DAYS = 90


def new_search_id() -> str:
    """A fresh search id (a random UUID, made here so that logging needs no round trip back)."""
    return str(uuid.uuid4())


def log_search(
    conn: psycopg.Connection,
    *,
    search_id: str,
    query: str,
    mode: str,
    rank_by: str,
    filters: Mapping[str, Any],
    top_k: int,
    artifact_pks: Sequence[str],
    environment: str,
    duration_ms: float,
) -> None:
    """Record one search in the caller's transaction. A failure raises psycopg.Error and
    aborts that transaction: search.py runs it last in the search's own transaction and rolls
    that back instead (the search wrote nothing else), so the log never fails a search and
    costs no savepoint."""
    conn.execute(
        "INSERT INTO search_log (search_id, query, mode, rank_by, filters, top_k,"
        " artifact_pks, environment, duration_ms)"
        " VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s::uuid[], %s, %s)",
        (
            search_id,
            query,
            mode,
            rank_by,
            json.dumps({k: v for k, v in filters.items() if v not in (None, [], ())}),
            top_k,
            list(artifact_pks),
            environment,
            duration_ms,
        ),
    )


def search_rank(conn: psycopg.Connection, search_id: str, artifact_pk: str, label: str) -> int:
    """The 1-based rank of an artifact in a logged search; SearchNotFound says what is wrong."""
    try:
        uuid.UUID(search_id)
    except ValueError:
        raise ConfigError(
            f"--search-id must be the search_id a search printed (a UUID), got {search_id[:60]!r}"
        ) from None
    if not relation_exists(conn, "search_log"):
        raise SearchNotFound("this database has no search log yet; run `singularity-ops migrate`")
    row = conn.execute(
        "SELECT array_position(artifact_pks, %s::uuid) FROM search_log WHERE search_id = %s"
        " LIMIT 1",
        (artifact_pk, search_id),
    ).fetchone()
    if row is None:
        raise SearchNotFound(
            f"no search {search_id} in the search log (mistyped, or older than the log's "
            "retention, search.log_retention_days); record the outcome without --search-id"
        )
    if row[0] is None:
        raise SearchNotFound(
            f"{label} was not among the results of search {search_id}; name an artifact that "
            "search returned, or record the outcome without --search-id"
        )
    return int(row[0])


@dataclass(frozen=True)
class RankingQuality:
    """How well one (mode, ranking) placed the artifacts that later succeeded."""

    mode: str
    rank_by: str
    searches: int  # searches logged in the window
    outcomes: int  # outcomes recorded with a search_id
    successes: int  # ... that succeeded: what the figures below are about
    mrr: float | None  # mean of 1 / rank of each success
    hit_at_1: float | None
    hit_at_5: float | None
    mean_rank: float | None


@dataclass(frozen=True)
class RankingEvaluation:
    """`usage eval`: per mode and ranking, from searches and the outcomes tied to them."""

    window_days: int
    rankings: list[RankingQuality]


def evaluate_rankings(conn: psycopg.Connection, since_days: int) -> RankingEvaluation:
    """MRR@k and hit@1/5 of successful outcomes by the rank their search gave them."""
    if not relation_exists(conn, "search_log"):
        raise SingularityOpsError(
            "this database has no search log yet; run `singularity-ops migrate`"
        )
    rows = conn.execute(
        """
        WITH searches AS (
            SELECT search_id, mode, rank_by FROM search_log
            WHERE searched_at >= now() - make_interval(days => %(days)s)
        ),
        outcomes AS (
            SELECT s.mode, s.rank_by, u.success, u.search_rank
            FROM artifact_usage u JOIN searches s USING (search_id)
            WHERE u.search_id IS NOT NULL
        )
        SELECT s.mode, s.rank_by, count(*) AS searches,
               coalesce(o.outcomes, 0), coalesce(o.successes, 0), o.mrr, o.hit1, o.hit5, o.mean_rank
        FROM searches s
        LEFT JOIN (
            SELECT mode, rank_by, count(*) AS outcomes, count(*) FILTER (WHERE success) AS successes,
                   avg(1.0 / search_rank) FILTER (WHERE success) AS mrr,
                   avg((search_rank = 1)::int) FILTER (WHERE success) AS hit1,
                   avg((search_rank <= 5)::int) FILTER (WHERE success) AS hit5,
                   avg(search_rank) FILTER (WHERE success) AS mean_rank
            FROM outcomes WHERE search_rank IS NOT NULL GROUP BY 1, 2
        ) o USING (mode, rank_by)
        GROUP BY s.mode, s.rank_by, o.outcomes, o.successes, o.mrr, o.hit1, o.hit5, o.mean_rank
        ORDER BY s.mode, s.rank_by
        """,
        {"days": since_days},
    ).fetchall()
    return RankingEvaluation(
        since_days,
        [
            RankingQuality(
                mode,
                rank_by,
                searches,
                outcomes,
                successes,
                *(None if v is None else float(v) for v in (mrr, hit1, hit5, mean_rank)),
            )
            for mode, rank_by, searches, outcomes, successes, mrr, hit1, hit5, mean_rank in rows
        ],
    )


@dataclass(frozen=True)
class SearchLogPrune:
    """What pruning the search log removed."""

    older_than_days: int
    searches: int
    dry_run: bool


def prune_search_log(
    conn: psycopg.Connection, older_than_days: int, *, dry_run: bool = False
) -> SearchLogPrune:
    """Delete searches older than N days (a DELETE: exact to the row, on a hypertable or a
    plain table alike). Outcomes keep their search_id and rank."""
    if older_than_days < 1:
        raise ConfigError(f"search.log_retention_days must be at least 1, got {older_than_days}")
    if not relation_exists(conn, "search_log"):
        return SearchLogPrune(older_than_days, 0, dry_run)
    cutoff = sql.SQL("now() - {}::interval").format(sql.Literal(f"{older_than_days} days"))
    with conn.transaction():
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM search_log WHERE searched_at < {}").format(cutoff)
        ).fetchone()[0]  # type: ignore[index]
        if not dry_run and count:
            conn.execute(sql.SQL("DELETE FROM search_log WHERE searched_at < {}").format(cutoff))
    return SearchLogPrune(older_than_days, count, dry_run)
