"""Usage reports over time: windows, per-artifact success rates and trends, the search
ranking figures, the rollup's refresh and the raw events' retention.

Reports read the daily rollup artifact_usage_daily (a few hundred rows a day at most, whatever
the number of events); the same report can be computed from the raw events (source="raw"),
which is how the tests prove the rollup right, and what works for any day the rollup was not
kept for. usage_ingest.py keeps the rollup exact as it records.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from .config import ENVIRONMENTS
from .db import relation_exists
from .errors import ConfigError
from .usage_ingest import DURATION_BOUNDS

FALLING_BY = 0.10  # a success rate this much lower than in the previous window is "falling"
FALLING_MIN_USES = 5  # ... with at least this many uses in both windows

_WINDOW = re.compile(r"^\s*(\d+)\s*([dw])\s*$")


def parse_window(text: str, option: str = "--since") -> int:
    """'30d' or '2w' -> days. Windows are whole UTC days: the rollup keeps days."""
    match = _WINDOW.match(text or "")
    if not match or int(match[1]) < 1:
        raise ConfigError(
            f"{option} must be a number of days or weeks like 30d or 2w, got {text!r}"
        )
    days = int(match[1]) * (7 if match[2] == "w" else 1)
    if days > MAX_WINDOW_DAYS:
        raise ConfigError(
            f"{option} {text.strip()} is more than {MAX_WINDOW_DAYS:,} days (100 years); "
            "nothing here is that old"
        )
    return days


MAX_WINDOW_DAYS = 36_500


@dataclass(frozen=True)
class Window:
    """`days` whole UTC days ending today, and the same number of days before them."""

    days: int
    start: date
    end: date  # inclusive: today
    previous_start: date

    @classmethod
    def ending(cls, today: date, days: int) -> Window:
        start = today - timedelta(days=days - 1)
        return cls(days, start, today, start - timedelta(days=days))


@dataclass
class ArtifactUsage:
    """One artifact in a usage report."""

    artifact_type: str
    artifact_id: str
    version: str
    uses: int
    successes: int
    success_rate: float | None
    previous_uses: int
    previous_success_rate: float | None
    uses_change: float | None  # (uses - previous) / previous
    rate_change: float | None  # success_rate - previous_success_rate
    lifetime_uses: int
    lifetime_success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    environments: dict[str, int]
    daily: list[int]  # uses per day of the window, oldest first
    last_used_at: datetime | None


@dataclass
class UsageReport:
    """What `usage` shows."""

    window_days: int
    start: date
    end: date
    previous_start: date
    source: str  # "rollup" or "raw"
    uses: int
    successes: int
    previous_uses: int
    top: list[ArtifactUsage]
    falling: list[ArtifactUsage]
    query_ms: float
    days: list[date] = field(
        default_factory=list
    )  # the window's days, oldest first: `daily`'s dates


def histogram_percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile of a duration histogram, interpolated linearly inside its bucket."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    edges = (0, *DURATION_BOUNDS)
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            if index >= len(DURATION_BOUNDS):
                return float(DURATION_BOUNDS[-1])  # the open top bucket: its lower bound
            low, high = edges[index], DURATION_BOUNDS[index]
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(DURATION_BOUNDS[-1])


def _raw_daily(since: date) -> sql.Composed:
    """The rollup's rows computed from the raw events of days >= since (the plain-SQL path)."""
    return sql.SQL(
        "(SELECT (used_at AT TIME ZONE 'UTC')::date AS day, artifact_pk, environment,"
        " count(*) AS uses, count(*) FILTER (WHERE success) AS successes,"
        " knowledge_histogram(array_agg(knowledge_duration_bucket(duration_ms)),"
        " array_fill(1::bigint, ARRAY[count(*)::int])) AS duration_histogram,"
        " max(used_at) AS last_used_at"
        " FROM artifact_usage WHERE used_at >= {since}::date::timestamp AT TIME ZONE 'UTC'"
        " GROUP BY 1, 2, 3)"
    ).format(since=sql.Literal(since))


def _daily_source(window: Window, source: str) -> sql.Composable:
    if source not in ("rollup", "raw"):
        raise ConfigError(f"source must be rollup or raw, got {source!r}")
    return (
        sql.SQL("artifact_usage_daily") if source == "rollup" else _raw_daily(window.previous_start)
    )


def window_stats(
    conn: psycopg.Connection,
    window: Window,
    *,
    types: Sequence[str] = (),
    environment: str | None = None,
    source: str = "rollup",
) -> list[dict[str, Any]]:
    """Per artifact with uses in the window or the one before: the window's and the previous
    window's uses, successes and last use, beside the lifetime counters. Plain sums over the
    rollup's rows, so it stays fast however many events there are."""
    where = [sql.SQL("d.day BETWEEN %(previous_start)s AND %(end)s")]
    if environment:
        where.append(sql.SQL("d.environment = %(environment)s"))
    if types:
        where.append(sql.SQL("k.artifact_type = ANY(%(types)s)"))
    query = sql.SQL(
        """
        SELECT k.id, k.artifact_type, k.artifact_id, k.version, k.usage_count, k.success_rate,
               coalesce(sum(d.uses) FILTER (WHERE d.day >= %(start)s), 0)::bigint,
               coalesce(sum(d.successes) FILTER (WHERE d.day >= %(start)s), 0)::bigint,
               coalesce(sum(d.uses) FILTER (WHERE d.day < %(start)s), 0)::bigint,
               coalesce(sum(d.successes) FILTER (WHERE d.day < %(start)s), 0)::bigint,
               max(d.last_used_at) FILTER (WHERE d.day >= %(start)s)
        FROM {daily} d JOIN knowledge_artifacts k ON k.id = d.artifact_pk
        WHERE {where}
        GROUP BY k.id
        """
    ).format(daily=_daily_source(window, source), where=sql.SQL(" AND ").join(where))
    params = {
        "previous_start": window.previous_start,
        "start": window.start,
        "end": window.end,
        "environment": environment,
        "types": list(types),
    }
    keys = (
        "pk",
        "artifact_type",
        "artifact_id",
        "version",
        "lifetime_uses",
        "lifetime_success_rate",
        "uses",
        "successes",
        "previous_uses",
        "previous_successes",
        "last_used_at",
    )
    return [dict(zip(keys, row, strict=True)) for row in conn.execute(query, params)]


def window_details(
    conn: psycopg.Connection,
    window: Window,
    pks: Sequence[Any],
    *,
    environment: str | None = None,
    source: str = "rollup",
) -> dict[Any, dict[str, Any]]:
    """For a few artifacts: uses per day and per environment, and the merged duration
    histogram of the window (what the report shows for its top and falling artifacts)."""
    where = [
        sql.SQL("d.day BETWEEN %(start)s AND %(end)s"),
        sql.SQL("d.artifact_pk = ANY(%(pks)s)"),
    ]
    if environment:
        where.append(sql.SQL("d.environment = %(environment)s"))
    query = sql.SQL(
        "SELECT d.artifact_pk, d.day, d.environment, d.uses, d.duration_histogram"
        " FROM {daily} d WHERE {where}"
    ).format(daily=_daily_source(window, source), where=sql.SQL(" AND ").join(where))
    params = {
        "start": window.start,
        "end": window.end,
        "pks": list(pks),
        "environment": environment,
    }
    details: dict[Any, dict[str, Any]] = {
        pk: {"by_day": {}, "environments": {}, "histogram": []} for pk in pks
    }
    for pk, day, env, uses, histogram in conn.execute(query, params):
        entry = details[pk]
        entry["by_day"][day] = entry["by_day"].get(day, 0) + uses
        entry["environments"][env] = entry["environments"].get(env, 0) + uses
        merged = entry["histogram"]
        entry["histogram"] = (
            [a + b for a, b in zip(merged, histogram, strict=True)] if merged else list(histogram)
        )
    for entry in details.values():
        entry["environments"] = dict(sorted(entry["environments"].items()))
    return details


def _rate(successes: int, uses: int) -> float | None:
    return round(successes / uses, 4) if uses else None


def usage_report(
    conn: psycopg.Connection,
    *,
    since_days: int = 30,
    types: Sequence[str] = (),
    environment: str | None = None,
    top: int = 10,
    source: str = "rollup",
    today: date | None = None,
) -> UsageReport:
    """The most used artifacts of the last `since_days` UTC days, with the window's success rate
    beside the lifetime rate, the trend against the previous window, and the artifacts whose
    success rate is falling. source="raw" computes the same from the raw events."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if environment is not None and environment not in ENVIRONMENTS:
        raise ConfigError(f"--env must be one of {', '.join(ENVIRONMENTS)}, got {environment!r}")
    today = today or conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]  # type: ignore[index]
    window = Window.ending(today, since_days)
    started = time.perf_counter()
    stats = window_stats(conn, window, types=types, environment=environment, source=source)
    entries = [(s["pk"], _artifact_usage(s)) for s in stats]
    used = sorted(
        (e for e in entries if e[1].uses),
        key=lambda e: (-e[1].uses, e[1].artifact_type, e[1].artifact_id, e[1].version),
    )[:top]
    falling = sorted(
        (e for e in entries if _falling(e[1])),
        key=lambda e: (e[1].rate_change, e[1].artifact_type, e[1].artifact_id),
    )
    details = window_details(
        conn, window, list({pk for pk, _ in used + falling}), environment=environment, source=source
    )
    query_ms = (time.perf_counter() - started) * 1000
    for pk, entry in used + falling:
        detail = details[pk]
        entry.environments = detail["environments"]
        entry.daily = [
            detail["by_day"].get(window.start + timedelta(days=n), 0) for n in range(window.days)
        ]
        entry.p50_ms = histogram_percentile(detail["histogram"], 0.5)
        entry.p95_ms = histogram_percentile(detail["histogram"], 0.95)
    totals = [e for _, e in entries]
    return UsageReport(
        window_days=since_days,
        start=window.start,
        end=window.end,
        previous_start=window.previous_start,
        source=source,
        uses=sum(e.uses for e in totals),
        successes=sum(e.successes for e in totals),
        previous_uses=sum(e.previous_uses for e in totals),
        top=[e for _, e in used],
        falling=[e for _, e in falling],
        query_ms=round(query_ms, 1),
        days=[window.start + timedelta(days=i) for i in range(since_days)],
    )


def _artifact_usage(s: Mapping[str, Any]) -> ArtifactUsage:
    """One artifact's row of window_stats as a report entry (details filled in later)."""
    rate = _rate(s["successes"], s["uses"])
    previous_rate = _rate(s["previous_successes"], s["previous_uses"])
    return ArtifactUsage(
        artifact_type=s["artifact_type"],
        artifact_id=s["artifact_id"],
        version=s["version"],
        uses=s["uses"],
        successes=s["successes"],
        success_rate=rate,
        previous_uses=s["previous_uses"],
        previous_success_rate=previous_rate,
        uses_change=round((s["uses"] - s["previous_uses"]) / s["previous_uses"], 4)
        if s["previous_uses"]
        else None,
        rate_change=round(rate - previous_rate, 4)
        if rate is not None and previous_rate is not None
        else None,
        lifetime_uses=s["lifetime_uses"],
        lifetime_success_rate=None
        if s["lifetime_success_rate"] is None
        else round(s["lifetime_success_rate"], 4),
        p50_ms=None,
        p95_ms=None,
        environments={},
        daily=[],
        last_used_at=s["last_used_at"],
    )


def _falling(entry: ArtifactUsage) -> bool:
    """A success rate FALLING_BY lower than in the previous window, on enough uses in both."""
    return (
        entry.rate_change is not None
        and entry.rate_change <= -FALLING_BY
        and entry.uses >= FALLING_MIN_USES
        and entry.previous_uses >= FALLING_MIN_USES
    )


SPARKS = "▁▂▃▄▅▆▇█"


def buckets(values: Sequence[int], count: int) -> list[int]:
    """`values` summed into at most `count` consecutive groups of equal size (the last one may
    be shorter): a 90-day series fits a 30-character sparkline."""
    if count < 1 or len(values) <= count:
        return list(values)
    size = -(-len(values) // count)
    return [sum(values[i : i + size]) for i in range(0, len(values), size)]


def sparkline(values: Sequence[int]) -> str:
    """One character per value, scaled to the largest."""
    high = max(values, default=0)
    if not high:
        return SPARKS[0] * len(values)
    return "".join(
        SPARKS[min(len(SPARKS) - 1, (v * (len(SPARKS) - 1) + high - 1) // high)] if v else " "
        for v in values
    )


# --- keeping the rollup and the raw events ---------------------------------------------------


@dataclass
class RefreshResult:
    """What `usage refresh` rebuilt."""

    first_day: date | None
    last_day: date | None
    days: int
    rows: int


def refresh_rollup(conn: psycopg.Connection, *, since_days: int | None = None) -> RefreshResult:
    """Rebuild the rollup from the raw events (after events were written around the toolkit,
    e.g. by hand or by an old restore). Only days the raw events still cover are rebuilt:
    days whose raw events were pruned (wholly, or partly: the rollup counts more than the raw
    events hold) keep their rollup rows."""
    with conn.transaction():
        oldest = conn.execute("SELECT min(used_at) FROM artifact_usage").fetchone()[0]  # type: ignore[index]
        today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]  # type: ignore[index]
        if oldest is None:
            return RefreshResult(None, None, 0, 0)
        first = oldest.astimezone(UTC).date()
        raw_first, rolled_first = conn.execute(
            "SELECT (SELECT count(*) FROM artifact_usage WHERE used_at >= %(d)s::date::timestamp"
            " AT TIME ZONE 'UTC' AND used_at < (%(d)s::date + 1)::timestamp AT TIME ZONE 'UTC'),"
            " (SELECT coalesce(sum(uses), 0)::bigint FROM artifact_usage_daily WHERE day = %(d)s)",
            {"d": first},
        ).fetchone()  # type: ignore[misc]
        if raw_first < rolled_first:
            first += timedelta(days=1)  # pruned part way through: the rollup knows more of it
        if since_days is not None:
            first = max(first, today - timedelta(days=since_days - 1))
        if first > today:
            return RefreshResult(None, None, 0, 0)
        conn.execute("DELETE FROM artifact_usage_daily WHERE day >= %s", (first,))
        rows = conn.execute(
            "INSERT INTO artifact_usage_daily (day, artifact_pk, environment, uses, successes, timed,"
            " duration_ms_sum, duration_histogram, last_used_at)"
            " SELECT (used_at AT TIME ZONE 'UTC')::date, artifact_pk, environment, count(*),"
            " count(*) FILTER (WHERE success), count(duration_ms), coalesce(sum(duration_ms), 0),"
            " knowledge_histogram(array_agg(knowledge_duration_bucket(duration_ms)),"
            " array_fill(1::bigint, ARRAY[count(*)::int])), max(used_at)"
            " FROM artifact_usage WHERE used_at >= %s::date::timestamp AT TIME ZONE 'UTC'"
            " GROUP BY 1, 2, 3",
            (first,),
        ).rowcount
    return RefreshResult(first, today, (today - first).days + 1, rows)


@dataclass
class PruneResult:
    """What `usage prune` removed."""

    older_than_days: int
    events: int
    chunks: int
    dry_run: bool


def prune_raw_events(
    conn: psycopg.Connection, older_than_days: int, *, dry_run: bool = False
) -> PruneResult:
    """Drop raw events older than N days. Counters, the rollup and the idempotency keys stay:
    reports and exports keep every day, and re-ingesting old logs still counts nothing twice.
    A hypertable loses whole chunks (drop_chunks), a plain table the rows."""
    if older_than_days < 1:
        raise ConfigError(f"--older-than must be at least 1 day, got {older_than_days}")
    cutoff = sql.Literal(f"{older_than_days} days")
    hypertable = (
        relation_exists(conn, "timescaledb_information.hypertables")
        and conn.execute(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'artifact_usage')"
        ).fetchone()[0]
    )  # type: ignore[index]
    with conn.transaction():
        if hypertable:
            chunks = [
                r[0]
                for r in conn.execute(
                    sql.SQL(
                        "SELECT show_chunks('artifact_usage', older_than => {}::interval)"
                    ).format(cutoff)
                )
            ]
            events = 0
            for chunk in chunks:
                events += conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(chunk))
                ).fetchone()[0]  # type: ignore[index]
            if not dry_run and chunks:
                conn.execute(
                    sql.SQL(
                        "SELECT drop_chunks('artifact_usage', older_than => {}::interval)"
                    ).format(cutoff)
                )
            return PruneResult(older_than_days, events, len(chunks), dry_run)
        where = sql.SQL("used_at < now() - {}::interval").format(cutoff)
        if dry_run:
            events = conn.execute(
                sql.SQL("SELECT count(*) FROM artifact_usage WHERE {}").format(where)
            ).fetchone()[0]  # type: ignore[index]
        else:
            events = conn.execute(
                sql.SQL("DELETE FROM artifact_usage WHERE {}").format(where)
            ).rowcount
    return PruneResult(older_than_days, events, 0, dry_run)


@dataclass(frozen=True)
class UsageStatus:
    """The usage part of `status`."""

    last_event_at: datetime | None
    events_last_24h: int
    rollup_up_to_date: bool
    rollup_missing_events: int  # raw events of today and yesterday the rollup does not count


def usage_status(conn: psycopg.Connection) -> UsageStatus:
    """Last event, events in the last 24 h, and whether the rollup counts every recent event."""
    row = conn.execute(
        """
        SELECT (SELECT max(used_at) FROM artifact_usage),
               (SELECT count(*) FROM artifact_usage WHERE used_at > now() - interval '24 hours'),
               (SELECT count(*) FROM artifact_usage
                 WHERE used_at >= ((now() AT TIME ZONE 'UTC')::date - 1)::timestamp AT TIME ZONE 'UTC'),
               (SELECT coalesce(sum(uses), 0)::bigint FROM artifact_usage_daily
                 WHERE day >= (now() AT TIME ZONE 'UTC')::date - 1)
        """
    ).fetchone()
    assert row is not None
    last, recent, raw, rolled = row
    return UsageStatus(last, recent, raw == rolled, max(raw - rolled, 0))
