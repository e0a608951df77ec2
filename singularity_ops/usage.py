"""Usage history: idempotent bulk ingest, the daily rollup, reports over time, refresh, prune.

Every toolkit write path (record_usage, ingest_usage) inserts the raw events into
artifact_usage, adds them to the daily rollup artifact_usage_daily and bumps the lifetime
counters of knowledge_artifacts in one transaction: the three never disagree. Reports read the rollup (a few hundred rows a day at most, whatever the number of
events); the same report can be computed from the raw events (source="raw"), which is how the
tests prove the rollup right, and what works for any day the rollup was not kept for.

Why not a TimescaleDB continuous aggregate: continuous aggregates, compression and retention
policies are TimescaleDB's TSL features, which neither Debian's postgresql-17-timescaledb nor
nixpkgs' timescaledb-apache ship (`timescaledb.license` is `apache`). The rollup is maintained
by the write paths instead, which also makes it exact and never behind. Retention of raw
events uses drop_chunks (Apache-licensed) on the hypertable, or DELETE on a plain table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import re
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any

import psycopg
from psycopg import sql

from .config import ENVIRONMENTS
from .db import lock_key, relation_exists
from .errors import ConfigError, SingularityOpsError
from .lines import MAX_LINE_BYTES, BadLine, read_lines

# knowledge_duration_bounds() in migration 0006: ten log-spaced buckets per decade, in ms.
DURATION_BOUNDS = tuple(sorted({round(10 ** (i / 10)) for i in range(61)}))
MAX_PROBLEMS_SHOWN = 50
EVENT_FIELDS = {
    "artifact_type",
    "artifact_id",
    "version",
    "success",
    "duration_ms",
    "used_at",
    "environment",
    "metadata",
    "event_id",
    "search_id",
}
FALLING_BY = 0.10  # a success rate this much lower than in the previous window is "falling"
FALLING_MIN_USES = 5  # ... with at least this many uses in both windows

# What every write path runs after its own WITH: `events` (a query yielding the artifact_usage
# columns of the new events, plus each one's UTC `day` and duration `bucket`, as
# knowledge_duration_bucket() computes it) is inserted (_INSERT_EVENTS), then rolled up per
# artifact, UTC day and environment (durations binned first, so each day's histogram is built
# from a few rows) and counted in the artifacts' lifetime counters (_ROLL_UP). Both read
# `events`, not the rows the INSERT returns: the same rows, not materialised a second time.
_INSERT_EVENTS = """
events AS MATERIALIZED ({events}),
inserted AS (
    INSERT INTO artifact_usage (used_at, artifact_pk, success, environment, duration_ms,
                                metadata, event_id, event_key, search_id, search_rank)
    SELECT used_at, artifact_pk, success, environment, duration_ms, metadata, event_id, event_key,
           search_id, search_rank
    FROM events
),
"""
_ROLL_UP = """
binned AS (
    SELECT day, artifact_pk, environment, bucket, count(*) AS uses,
           count(*) FILTER (WHERE success) AS successes, count(duration_ms) AS timed,
           coalesce(sum(duration_ms), 0) AS duration_ms_sum, max(used_at) AS last_used_at
    FROM events GROUP BY 1, 2, 3, 4
),
rolled AS (
    INSERT INTO artifact_usage_daily AS d (day, artifact_pk, environment, uses, successes, timed,
                                           duration_ms_sum, duration_histogram, last_used_at)
    SELECT day, artifact_pk, environment, sum(uses), sum(successes), sum(timed),
           sum(duration_ms_sum), knowledge_histogram(array_agg(bucket), array_agg(uses)),
           max(last_used_at)
    FROM binned GROUP BY 1, 2, 3
    ON CONFLICT (artifact_pk, day, environment) DO UPDATE SET
        uses = d.uses + EXCLUDED.uses,
        successes = d.successes + EXCLUDED.successes,
        timed = d.timed + EXCLUDED.timed,
        duration_ms_sum = d.duration_ms_sum + EXCLUDED.duration_ms_sum,
        duration_histogram = knowledge_histogram_merge(d.duration_histogram, EXCLUDED.duration_histogram),
        last_used_at = greatest(d.last_used_at, EXCLUDED.last_used_at)
),
per_artifact AS (
    SELECT artifact_pk, sum(uses)::bigint AS uses, sum(successes)::bigint AS successes,
           max(last_used_at) AS last_used_at
    FROM binned GROUP BY 1
),
counted AS (
    UPDATE knowledge_artifacts k SET
        usage_count = k.usage_count + c.uses,
        success_count = k.success_count + c.successes,
        last_used_at = greatest(k.last_used_at, c.last_used_at)
    FROM per_artifact c
    WHERE k.id = c.artifact_pk
    RETURNING k.id, k.usage_count, k.success_count, k.success_rate
)
"""


def write_events_sql(events: str) -> str:
    """The CTEs record_usage runs after its own WITH: insert, roll up and count the events
    `events` selects (used_at, artifact_pk, success, environment, duration_ms, metadata,
    event_id, event_key, day, bucket). Bulk ingest runs the same two halves apart: the
    inserts batch by batch, the roll-up once for the whole input."""
    return _INSERT_EVENTS.format(events=events) + _ROLL_UP


WRITER_LOCK = lock_key("usage-writer")


class UsageError(SingularityOpsError):
    """Usage events were refused (bad lines, unknown artifacts); nothing was recorded."""


def event_key(event_id: str | None, event: Mapping[str, Any]) -> str:
    """The idempotency key of an event (a uuid, as 32 hex digits): from its event_id and the
    artifact (type and id) when it has one, so one request that used two artifacts records
    both (migration 0008's knowledge_event_key() computes the same in SQL); else from its
    content (every field as given, keys sorted), so the same line ingested twice counts once."""
    if event_id is not None:
        material = b"\0".join(
            (
                b"event_id",
                event_id.encode("utf-8"),
                str(event.get("artifact_type", "")).encode("utf-8"),
                str(event.get("artifact_id", "")).encode("utf-8"),
            )
        )
    else:
        canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        material = b"content\0" + canonical.encode("utf-8")
    return hashlib.sha256(material).digest()[:16].hex()


# --- bulk ingest ---------------------------------------------------------------------------

# One batch: keys in order (a btree fills page after page), new events in time order (chunk
# after chunk), then the rollup and the counters; returns (artifact, events recorded).
_INGEST_BATCH = (
    "WITH new_keys AS (INSERT INTO usage_event_keys (event_key)"
    " SELECT event_key FROM usage_staging ORDER BY event_key"
    " ON CONFLICT DO NOTHING RETURNING event_key), "
    + _INSERT_EVENTS.format(
        events="SELECT coalesce(s.used_at, now()) AS used_at, s.artifact_pk, s.success,"
        " s.environment, s.duration_ms, s.metadata, s.event_id, s.event_key, s.day, s.bucket,"
        " s.search_id, (SELECT array_position(l.artifact_pks, s.artifact_pk) FROM search_log l"
        "  WHERE l.search_id = s.search_id LIMIT 1) AS search_rank"
        " FROM usage_staging s JOIN new_keys USING (event_key) ORDER BY s.used_at"
    )
    + "noted AS (INSERT INTO usage_new SELECT used_at, artifact_pk, success, environment,"
    " duration_ms, day, bucket FROM events) SELECT count(*) FROM events"
)
# After the last batch, once for the whole input: each day touched is rolled up once.
_INGEST_ROLL_UP = (
    "WITH events AS (SELECT * FROM usage_new), " + _ROLL_UP + ("SELECT count(*) FROM per_artifact")
)


@dataclass
class IngestResult:
    """What ingest_usage did."""

    source: str
    lines: int = 0  # non-blank lines read
    recorded: int = 0
    duplicates: int = 0  # ingested before (same event_key), or repeated in this input
    invalid: int = 0
    artifacts: int = 0  # artifacts whose counters changed
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS_SHOWN
    seconds: float = 0.0


def _identity_map(conn: psycopg.Connection) -> tuple[dict, dict]:
    """(type, id, version) -> pk, and (type, id) -> pk of the latest version (pks as text,
    the form COPY wants)."""
    exact: dict[tuple[str, str, str], str] = {}
    latest: dict[tuple[str, str], str] = {}
    rows = conn.execute(
        "SELECT artifact_type, artifact_id, version, id::text FROM knowledge_artifacts"
        " ORDER BY artifact_type, artifact_id, knowledge_version_key(version) DESC, version DESC"
    )
    for artifact_type, artifact_id, version, pk in rows:
        exact[(artifact_type, artifact_id, version)] = pk
        latest.setdefault((artifact_type, artifact_id), pk)
    return exact, latest


def _text(event: Mapping[str, Any], name: str, allow_int: bool = False) -> str | None:
    value = event.get(name)
    if value is None:
        return None
    if type(value) is str:
        text = value.strip()
    elif allow_int and type(value) is int:
        text = str(value)
    else:
        raise ValueError(f'"{name}" must be a string, got {json.dumps(value)[:40]}')
    if not text:
        raise ValueError(f'"{name}" must not be empty')
    return text


@dataclass(frozen=True)
class ParsedEvent:
    """One valid usage event, as parse_event reads it."""

    artifact_type: str
    artifact_id: str
    version: str | None
    success: bool
    used_at: str | None  # ISO 8601 with an offset, as given (checked, passed on verbatim)
    environment: str
    duration_ms: int | None
    metadata: str  # JSON text
    event_id: str | None
    search_id: str | None  # a search_log id (its rank is looked up on write; unknown: no rank)
    key: str  # event_key()
    day: str  # the UTC day it falls on (of `now` when it has no used_at), ISO format


# What PostgreSQL takes as a timestamptz from a log: RFC 3339 (a date, T or a space, a time,
# Z or an offset). Python's fromisoformat also takes ISO week dates and ordinal dates, which
# PostgreSQL rejects; PostgreSQL rejects offsets beyond 15:59 too.
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-](\d{2})(:?\d{2})?)$",
    re.IGNORECASE,
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (PostgreSQL's jsonb refuses it)")


def _text_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """Why PostgreSQL would refuse a JSON value's strings (NUL, lone surrogates), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where} contains a NUL character (\\u0000), which PostgreSQL text refuses"
        if any("\ud800" <= c <= "\udfff" for c in value):
            return f"{where} contains an unpaired surrogate (\\ud800-\\udfff), which is not Unicode"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _text_problem(key, where, depth + 1) or _text_problem(item, where, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = _text_problem(item, where, depth + 1)
            if problem:
                return problem
    return None


def _parse_used_at(used_at: Any, now: datetime) -> str:
    """The UTC day of a used_at PostgreSQL will take; ValueError otherwise."""
    if type(used_at) is not str:
        raise ValueError('"used_at" must be an ISO 8601 string, e.g. "2026-11-26T09:30:00Z"')
    shown = used_at[:40]
    match = _TIMESTAMP.match(used_at)
    if not match:
        raise ValueError(
            f'"used_at" must be like 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00 '
            f"(a time zone is required), got {shown!r}"
        )
    if match.group(4) is not None and int(match.group(4)) > 15:
        raise ValueError(f'"used_at" has a UTC offset beyond 15:59: {shown!r}')
    try:
        when = datetime.fromisoformat(used_at.replace(" ", "T", 1).upper().replace("Z", "+00:00"))
        utc = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f'"used_at" is not a valid time: {shown!r}') from None
    if utc.year < 1970:
        raise ValueError(f'"used_at" is before 1970: {shown!r}')
    if when > now + timedelta(minutes=5):
        raise ValueError(f'"used_at" is in the future: {shown!r}')
    return utc.date().isoformat()


UNKEYED_HINT = (
    'has neither "event_id" nor "used_at", so it is keyed on its content: the same use '
    "reported again later (a second run of the same job, say) would count once only. Add "
    'an "event_id" (your id for this use) or a "used_at" time, or pass --unkeyed-now to '
    "record each such line as a use at the time of ingest"
)


def _load_event(line: str) -> dict:
    """The line as a JSON object with known fields only; ValueError otherwise."""
    try:
        event = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if type(event) is not dict:
        raise ValueError(f"must be a JSON object, got a {type(event).__name__}")
    if not event.keys() <= EVENT_FIELDS:
        unknown = sorted(set(event) - EVENT_FIELDS)
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
            f"{', '.join(sorted(EVENT_FIELDS))}"
        )
    return event


def _checked_values(event: dict) -> tuple[str, str, bool, int | None]:
    """(artifact_type, artifact_id, success, duration_ms) of an event whose fields PostgreSQL
    will take as they are; ValueError names the first one it would not."""
    artifact_type, artifact_id = _text(event, "artifact_type"), _text(event, "artifact_id")
    success = event.get("success")
    for name, value in (
        ("artifact_type", artifact_type),
        ("artifact_id", artifact_id),
        ("success", success),
    ):
        if value is None:
            raise ValueError(f'"{name}" is missing')
    if type(success) is not bool:
        raise ValueError(f'"success" must be true or false, got {json.dumps(success)[:40]}')
    duration = event.get("duration_ms")
    if duration is not None and (type(duration) is not int or not 0 <= duration < 2**31):
        raise ValueError(
            f'"duration_ms" must be a whole number of milliseconds >= 0, got {json.dumps(duration)[:40]}'
        )
    for name in ("artifact_type", "artifact_id", "version", "event_id", "environment"):
        problem = _text_problem(event.get(name), f'"{name}"')
        if problem:
            raise ValueError(problem)
    try:
        problem = _text_problem(event.get("metadata"), '"metadata"')
    except RecursionError:
        raise ValueError('"metadata" is nested too deeply') from None
    if problem:
        raise ValueError(problem)
    return artifact_type, artifact_id, success, duration  # type: ignore[return-value]


def parse_event(
    line: str, now: datetime, default_environment: str, unkeyed: str = "refuse"
) -> ParsedEvent:
    """One JSON line of a usage log; ValueError says what is wrong with it. Whatever passes is
    taken by PostgreSQL as it is (no NUL, NaN, week dates or offsets it would refuse).

    unkeyed: a line with neither event_id nor used_at is refused ("refuse"), or recorded as a
    use at `now` ("now"; ingesting it again records it again)."""
    event = _load_event(line)
    artifact_type, artifact_id, success, duration = _checked_values(event)
    used_at = event.get("used_at")
    if used_at is None and event.get("event_id") is None:
        if unkeyed != "now":
            raise ValueError(UNKEYED_HINT)
        used_at = now.isoformat()
        event = {**event, "used_at": used_at}  # the key differs from one ingest to the next
    if used_at is not None:
        day = _parse_used_at(used_at, now)
    else:
        day = now.astimezone(UTC).date().isoformat()
    environment = event.get("environment", default_environment)
    if environment not in ENVIRONMENTS:
        raise ValueError(
            f'"environment" must be one of {", ".join(ENVIRONMENTS)}, got {json.dumps(environment)[:40]}'
        )
    metadata = event.get("metadata")
    if metadata is not None and type(metadata) is not dict:
        raise ValueError('"metadata" must be a JSON object')
    event_id = _text(event, "event_id", allow_int=True)
    if event_id is not None and len(event_id) > 200:
        raise ValueError('"event_id" must be at most 200 characters')
    search_id = event.get("search_id")
    if search_id is not None:
        try:
            search_id = str(uuid.UUID(search_id)) if type(search_id) is str else None
        except ValueError:
            search_id = None
        if search_id is None:
            raise ValueError('"search_id" must be the search_id a search returned (a UUID)')
    return ParsedEvent(
        artifact_type,  # type: ignore[arg-type]
        artifact_id,  # type: ignore[arg-type]
        _text(event, "version", allow_int=True),
        success,
        used_at,
        environment,
        duration,
        json.dumps(metadata, ensure_ascii=False) if metadata else "{}",
        event_id,
        search_id,
        event_key(event_id, event),
        day,
    )


NULL = "\\N"  # NULL in COPY's text format
BATCH_LINES = 20_000


def _copy_text(value: str) -> str:
    """A text field of COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def _parse_batches(
    stream: Iterable[str],
    name: str,
    now: datetime,
    environment: str,
    identities: tuple[dict, dict],
    result: IngestResult,
    batches: queue.Queue,
    stop: threading.Event,
    max_problems: int = MAX_PROBLEMS_SHOWN,
    unkeyed: str = "refuse",
) -> None:
    """The parser thread: lines -> COPY text of valid events, BATCH_LINES at a time, onto the
    queue (None at the end, an exception if reading failed). Gives up when `stop` is set: the
    writer failed and reads no more."""
    exact, latest = identities
    buffer: list[str] = []
    seen: set[str] = set()

    def hand_over(item: Any) -> None:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    try:
        for number, line in _numbered_lines(stream):
            if isinstance(line, str) and not line.strip():
                continue
            result.lines += 1
            try:
                if isinstance(line, BadLine):
                    raise ValueError(line.reason)
                if len(line) > MAX_LINE_BYTES:
                    raise ValueError(f"longer than {MAX_LINE_BYTES:,} bytes")
                e = parse_event(line, now, environment, unkeyed)
                pk = (
                    exact.get((e.artifact_type, e.artifact_id, e.version))
                    if e.version is not None
                    else latest.get((e.artifact_type, e.artifact_id))
                )
                if pk is None:
                    label = f"{e.artifact_type}/{e.artifact_id}" + (
                        f" version {e.version}" if e.version else ""
                    )
                    raise ValueError(
                        f"no artifact {label} (artifacts are looked up by type and id); "
                        "check the spelling or import it first"
                    )
            except ValueError as exc:
                result.invalid += 1
                if len(result.problems) < max_problems:
                    result.problems.append(f"{name}:{number}: {exc}")
                continue
            if e.key in seen:  # the same event twice in this input: the first one counts
                continue
            seen.add(e.key)
            buffer.append(
                "\t".join(
                    (
                        NULL if e.used_at is None else e.used_at,
                        pk,
                        "t" if e.success else "f",
                        e.environment,
                        NULL if e.duration_ms is None else str(e.duration_ms),
                        _copy_text(e.metadata),
                        NULL if e.event_id is None else _copy_text(e.event_id),
                        e.key,
                        e.day,
                        NULL
                        if e.duration_ms is None
                        else str(bisect_right(DURATION_BOUNDS, e.duration_ms)),
                        NULL if e.search_id is None else e.search_id,
                    )
                )
                + "\n"
            )
            if len(buffer) >= BATCH_LINES:
                hand_over("".join(buffer))
                buffer.clear()
        if buffer:
            hand_over("".join(buffer))
        hand_over(None)
    except _Stopped:
        return
    except BaseException as exc:  # handed to the writer, which raises it
        with contextlib.suppress(_Stopped):
            hand_over(exc)


def _numbered_lines(stream: Any) -> Iterable[tuple[int, str | BadLine]]:
    """A binary stream is read in bounded memory (lines.read_lines); text lines (a list, a
    text file) are taken as they come."""
    if hasattr(stream, "readline") and isinstance(stream.read(0), bytes):
        return read_lines(stream, MAX_LINE_BYTES)
    return enumerate(stream, 1)


class _Stopped(Exception):
    """The writer stopped reading batches."""


def ingest_usage(
    conn: psycopg.Connection,
    stream: IO[str] | IO[bytes] | Iterable[str],
    *,
    name: str = "-",
    skip_invalid: bool = False,
    environment: str = "dev",
    max_problems: int = MAX_PROBLEMS_SHOWN,
    unkeyed: str = "refuse",
) -> IngestResult:
    """Record usage events from JSON lines in one transaction: a thread parses while the
    database writes, batch by batch: a COPY into a staging table, then one statement that
    inserts the new events, rolls them up and bumps each artifact's counters once.

    Strict unless skip_invalid: a bad line (its file:line and what is wrong, or an artifact
    that does not exist) means nothing is recorded. A line with neither event_id nor used_at
    is refused unless unkeyed="now" (parse_event). Events already ingested (same event_key)
    are counted as duplicates and skipped, so ingesting the same log twice changes nothing.
    """
    started = time.monotonic()
    result = IngestResult(source=name)
    with conn.transaction():
        now = conn.execute(
            "SELECT now(), set_config('work_mem', '64MB', true), set_config('temp_buffers', '128MB', true)"
        ).fetchone()[0]  # type: ignore[index]
        # One usage writer at a time (record_usage takes the same lock): batches lock
        # artifacts, keys and rollup rows in no global order, so writers must not interleave.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
        identities = _identity_map(conn)
        conn.execute(
            "CREATE TEMP TABLE usage_staging (used_at timestamptz, artifact_pk uuid,"
            " success bool, environment text, duration_ms int, metadata jsonb, event_id text,"
            " event_key uuid, day date, bucket int, search_id uuid) ON COMMIT DROP"
        )
        conn.execute(
            "CREATE TEMP TABLE usage_new (used_at timestamptz, artifact_pk uuid, success bool,"
            " environment text, duration_ms int, day date, bucket int) ON COMMIT DROP"
        )
        batches: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        parser = threading.Thread(
            target=_parse_batches,
            args=(
                stream,
                name,
                now,
                environment,
                identities,
                result,
                batches,
                stop,
                max_problems,
                unkeyed,
            ),
            daemon=True,
        )
        parser.start()
        try:
            while (batch := batches.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                if result.invalid and not skip_invalid:
                    continue  # all of it will be rolled back: just finish reading the problems
                with conn.cursor().copy(
                    "COPY usage_staging (used_at, artifact_pk, success, environment, duration_ms,"
                    " metadata, event_id, event_key, day, bucket, search_id) FROM STDIN"
                ) as copy:
                    copy.write(batch)
                result.recorded += conn.execute(_INGEST_BATCH).fetchone()[0]  # type: ignore[index]
                conn.execute("TRUNCATE usage_staging")
        finally:
            stop.set()  # a failing writer must not leave the parser blocked on a full queue
            parser.join()
        if result.recorded:
            result.artifacts = conn.execute(_INGEST_ROLL_UP).fetchone()[0]  # type: ignore[index]
        if result.invalid and not skip_invalid:
            shown = "\n".join(f"  {p}" for p in result.problems)
            more = result.invalid - len(result.problems)
            raise UsageError(
                f"{result.invalid} invalid line(s) in {name}; nothing was recorded (fix them, "
                f"or pass --skip-invalid to record the rest):\n{shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
            )
    result.duplicates = result.lines - result.invalid - result.recorded
    result.seconds = time.monotonic() - started
    return result


MAX_BATCH_EVENTS = 500


@dataclass(frozen=True)
class EventError:
    """Why one event of a batch was not recorded (index: its 0-based position)."""

    index: int
    error: str


@dataclass(frozen=True)
class BatchResult:
    """What record_events did: the valid events are recorded, the others listed."""

    received: int
    recorded: int
    duplicates: int  # recorded before (same event_id or content), or repeated in the batch
    errors: list[EventError]


def record_events(
    conn: psycopg.Connection,
    events: Sequence[Any],
    *,
    environment: str = "dev",
    reported_by: str | None = None,
) -> BatchResult:
    """Record up to MAX_BATCH_EVENTS usage events (dicts shaped like `record-usage --from`
    lines, validated the same way); the invalid ones are reported one by one and the rest
    recorded. `reported_by` (the caller's identity) goes into each event's metadata,
    replacing anything the event says there."""
    if len(events) > MAX_BATCH_EVENTS:
        raise ConfigError(
            f"{len(events)} events in one batch, more than {MAX_BATCH_EVENTS}; send them in parts"
        )
    lines: list[str] = []  # one per event: line N is event N-1 (ingest skips blank lines)
    errors: list[EventError] = []
    for index, event in enumerate(events):
        if isinstance(event, Mapping) and reported_by is not None:
            event = {**event, "metadata": with_reporter(event.get("metadata"), reported_by)}
        try:  # anything but an object is refused by the ingest's own check, with the rest
            lines.append(json.dumps(event, allow_nan=False))
        except (TypeError, ValueError) as exc:
            errors.append(EventError(index, f"not JSON: {exc}"))
            lines.append("")
    result = ingest_usage(
        conn,
        lines,
        name="event",
        skip_invalid=True,
        environment=environment,
        max_problems=MAX_BATCH_EVENTS,
        unkeyed="now",  # an agent reports as it goes: like record_usage called once per event
    )
    for problem in result.problems:  # "event:N: message", N the 1-based line
        _name, number, message = problem.split(":", 2)
        errors.append(EventError(int(number) - 1, message.strip()))
    errors.sort(key=lambda e: e.index)
    return BatchResult(len(events), result.recorded, result.duplicates, errors)


def with_reporter(metadata: Any, reported_by: str) -> dict:
    """An event's metadata with the caller's identity as `reported_by`, replacing whatever
    the event said there (a metadata that is not an object is replaced as a whole)."""
    return {**(metadata if isinstance(metadata, Mapping) else {}), "reported_by": reported_by}


# --- windows and reports -------------------------------------------------------------------

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
    entries = []
    for s in stats:
        rate = _rate(s["successes"], s["uses"])
        previous_rate = _rate(s["previous_successes"], s["previous_uses"])
        entries.append(
            (
                s["pk"],
                ArtifactUsage(
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
                ),
            )
        )
    used = sorted(
        (e for e in entries if e[1].uses),
        key=lambda e: (-e[1].uses, e[1].artifact_type, e[1].artifact_id, e[1].version),
    )[:top]
    falling = sorted(
        (
            e
            for e in entries
            if e[1].rate_change is not None
            and e[1].rate_change <= -FALLING_BY
            and e[1].uses >= FALLING_MIN_USES
            and e[1].previous_uses >= FALLING_MIN_USES
        ),
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
