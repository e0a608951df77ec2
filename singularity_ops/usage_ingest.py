"""Recording usage: one event (record_usage), a batch from an agent (record_events) or a whole
log (ingest_usage, idempotent). Reports over the history are in usage_report.py.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg

from .artifacts import LATEST, ArtifactNotFound, _lookup, _not_found
from .config import ENVIRONMENTS
from .db import advisory_lock, lock_key
from .errors import ConfigError, SingularityOpsError, UsageError
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
# How long a usage writer waits for another (a big ingest: 100,000 events take ~3 s) before
# it gives up with Busy (exit 75); retrying is safe, event ids make it idempotent.
WRITER_WAIT_SECONDS = 300.0


def writer_lock(conn: psycopg.Connection) -> AbstractContextManager[None]:
    """The usage writers' lock, for the caller's transaction."""
    return advisory_lock(conn, WRITER_LOCK, "usage writer", wait=WRITER_WAIT_SECONDS)


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
    hand_over = _HandOver(batches, stop)
    lines = _valid_copy_lines(
        stream, name, now, environment, identities, result, max_problems, unkeyed
    )
    try:
        buffer: list[str] = []
        for copy_line in lines:
            buffer.append(copy_line)
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


class _HandOver:
    """Puts onto the bounded queue, waiting while it is full, until `stop` is set."""

    def __init__(self, batches: queue.Queue, stop: threading.Event) -> None:
        self.batches, self.stop = batches, stop

    def __call__(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped


def _valid_copy_lines(
    stream: Iterable[str],
    name: str,
    now: datetime,
    environment: str,
    identities: tuple[dict, dict],
    result: IngestResult,
    max_problems: int,
    unkeyed: str,
) -> Iterator[str]:
    """The COPY text of each valid, first-seen event; counts lines and records problems."""
    exact, latest = identities
    seen: set[str] = set()
    for number, line in _numbered_lines(stream):
        if isinstance(line, str) and not line.strip():
            continue
        result.lines += 1
        try:
            e, pk = _resolve_line(line, now, environment, unkeyed, exact, latest)
        except ValueError as exc:
            result.invalid += 1
            if len(result.problems) < max_problems:
                result.problems.append(f"{name}:{number}: {exc}")
            continue
        if e.key in seen:  # the same event twice in this input: the first one counts
            continue
        seen.add(e.key)
        yield _copy_line(e, pk)


def _resolve_line(
    line: str | BadLine, now: datetime, environment: str, unkeyed: str, exact: dict, latest: dict
) -> tuple[ParsedEvent, str]:
    """One input line -> its event and the artifact's key, or ValueError saying what is wrong."""
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
    return e, pk


def _copy_line(e: ParsedEvent, pk: str) -> str:
    """One event as a line of COPY text, in the column order of _INGEST_BATCH."""
    bucket = None if e.duration_ms is None else str(bisect_right(DURATION_BOUNDS, e.duration_ms))
    fields = (
        NULL if e.used_at is None else e.used_at,
        pk,
        "t" if e.success else "f",
        e.environment,
        NULL if e.duration_ms is None else str(e.duration_ms),
        _copy_text(e.metadata),
        NULL if e.event_id is None else _copy_text(e.event_id),
        e.key,
        e.day,
        NULL if bucket is None else bucket,
        NULL if e.search_id is None else e.search_id,
    )
    return "\t".join(fields) + "\n"


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
    # One usage writer at a time (record_usage takes the same lock): batches lock artifacts,
    # keys and rollup rows in no global order, so writers must not interleave.
    with conn.transaction(), writer_lock(conn):
        now = conn.execute(
            "SELECT now(), set_config('work_mem', '64MB', true), set_config('temp_buffers', '128MB', true)"
        ).fetchone()[0]  # type: ignore[index]
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


@dataclass(frozen=True)
class UsageResult:
    """The counters of an artifact after record-usage."""

    artifact_type: str
    artifact_id: str
    version: str
    success: bool
    usage_count: int
    success_count: int
    success_rate: float | None
    used_at: datetime | None
    recorded: bool = True  # False: this event_id was recorded before, nothing changed
    event_id: str | None = None
    environment: str | None = None
    duration_ms: int | None = None
    search_id: str | None = None


def record_usage(
    conn: psycopg.Connection,
    artifact_type: str,
    artifact_id: str,
    *,
    success: bool,
    version: str = LATEST,
    duration_ms: int | None = None,
    environment: str = "dev",
    metadata: Mapping[str, Any] | None = None,
    used_at: datetime | None = None,
    event_id: str | None = None,
    search_id: str | None = None,
) -> UsageResult:
    """Record one use: the event, its day in the rollup and the counters, in one statement.

    `used_at` back-dates the event (default: now). With `event_id`, recording the same id again
    changes nothing (`recorded` is False): retries are safe. With `search_id` (a search's id
    from the search log), the event records the artifact's rank in that search; an unknown
    search, or an artifact it did not return, is refused (SearchNotFound). For many events use
    ingest_usage, which does the same for a whole log in one transaction.
    """
    if duration_ms is not None and duration_ms < 0:
        raise SingularityOpsError(f"duration must be zero or more milliseconds, got {duration_ms}")
    clause, params, label = _lookup(artifact_type, artifact_id, version)
    key = (
        event_key(event_id, {"artifact_type": artifact_type, "artifact_id": artifact_id})
        if event_id is not None
        else None
    )
    with conn.transaction(), writer_lock(conn):
        row = conn.execute(
            f"SELECT id, version FROM knowledge_artifacts {clause}", params
        ).fetchone()
        if row is None:
            raise ArtifactNotFound(
                _not_found(
                    conn,
                    label,
                    artifact_type,
                    "check the spelling or import it first (artifacts are looked up by type and id)",
                )
            )
        pk, found_version = row
        rank = None
        if search_id is not None:
            from .search_log import search_rank

            rank = search_rank(conn, search_id, pk, label)
        keys = (
            "new_keys AS (INSERT INTO usage_event_keys (event_key) VALUES (%(key)s)"
            " ON CONFLICT DO NOTHING RETURNING event_key), "
            if key is not None
            else "new_keys AS (SELECT NULL::uuid AS event_key), "
        )
        counts = conn.execute(
            "WITH "
            + keys
            + write_events_sql(
                "SELECT coalesce(%(used_at)s, now()) AS used_at, %(pk)s::uuid AS artifact_pk,"
                " %(success)s AS success, %(environment)s AS environment,"
                " %(duration)s::int AS duration_ms, %(metadata)s::jsonb AS metadata,"
                " %(event_id)s AS event_id, %(key)s::uuid AS event_key,"
                " %(search_id)s::uuid AS search_id, %(rank)s::int AS search_rank,"
                " (coalesce(%(used_at)s, now()) AT TIME ZONE 'UTC')::date AS day,"
                " knowledge_duration_bucket(%(duration)s) AS bucket FROM new_keys"
            )
            + "SELECT c.usage_count, c.success_count, c.success_rate, e.used_at"
            " FROM counted c, events e",
            {
                "key": key,
                "used_at": used_at,
                "pk": pk,
                "success": success,
                "environment": environment,
                "duration": duration_ms,
                "metadata": json.dumps(dict(metadata or {})),
                "event_id": event_id,
                "search_id": search_id,
                "rank": rank,
            },
        ).fetchone()
        if counts is None:  # the event_id was recorded before
            current = conn.execute(
                "SELECT usage_count, success_count, success_rate, last_used_at"
                " FROM knowledge_artifacts WHERE id = %s",
                (pk,),
            ).fetchone()
            assert current is not None
            return UsageResult(
                artifact_type, artifact_id, found_version, success, *current, False,
                event_id, environment, duration_ms, search_id,
            )  # fmt: skip
    return UsageResult(
        artifact_type, artifact_id, found_version, success, *counts, True,
        event_id, environment, duration_ms, search_id,
    )  # fmt: skip
