-- Usage history the learning loop can read: idempotent bulk ingest and a daily rollup.
--
-- artifact_usage.event_id is the application's own id for an event (optional); event_key is
-- the idempotency key bulk ingest derives from it (or from the event's content) and
-- usage_event_keys remembers every key ever ingested, so ingesting the same log twice, even
-- after old raw events were pruned, counts each event once. A plain table with a primary key:
-- a unique index on the hypertable would have to include used_at.
ALTER TABLE artifact_usage ADD COLUMN event_id text, ADD COLUMN event_key uuid;

CREATE TABLE usage_event_keys (
    event_key   uuid PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Durations are counted in log-spaced buckets, ten per decade (1 ms .. 1000 s, rounded to
-- whole milliseconds): a histogram per day that adds up across days, from which reports read
-- p50/p95 (interpolated inside a bucket, so within a few percent). Bucket i holds durations in
-- [bound[i], bound[i+1]); bucket 0 is below 1 ms, the last one 1000 s and more.
CREATE FUNCTION knowledge_duration_bounds() RETURNS integer[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ARRAY[1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 100, 126, 158, 200, 251,
                 316, 398, 501, 631, 794, 1000, 1259, 1585, 1995, 2512, 3162, 3981,
                 5012, 6310, 7943, 10000, 12589, 15849, 19953, 25119, 31623, 39811,
                 50119, 63096, 79433, 100000, 125893, 158489, 199526, 251189, 316228,
                 398107, 501187, 630957, 794328, 1000000];

CREATE FUNCTION knowledge_duration_bucket(duration_ms integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN width_bucket(duration_ms, knowledge_duration_bounds());

-- A histogram array (one count per bucket) from parallel arrays of bucket numbers and counts;
-- NULL buckets (events without a duration) are left out.
CREATE FUNCTION knowledge_histogram(buckets integer[], counts bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT array_agg(coalesce(c.n, 0) ORDER BY g.b)
    FROM generate_series(0, array_length(knowledge_duration_bounds(), 1)) AS g(b)
    LEFT JOIN (SELECT u.b, sum(u.n)::bigint AS n FROM unnest(buckets, counts) AS u(b, n)
               WHERE u.b IS NOT NULL GROUP BY u.b) AS c ON c.b = g.b;
END;

CREATE FUNCTION knowledge_histogram_merge(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
           ELSE (SELECT array_agg(x + y ORDER BY i) FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i))
           END;
END;

-- One row per artifact, UTC day and environment. Maintained in the same transaction as the
-- events by every toolkit write path (record-usage, bulk ingest), so it is never behind them;
-- `usage refresh` rebuilds days from the raw events, and `usage prune` drops raw events
-- without ever touching it (or the counters in knowledge_artifacts).
CREATE TABLE artifact_usage_daily (
    day                 date NOT NULL,
    artifact_pk         uuid NOT NULL REFERENCES knowledge_artifacts (id) ON DELETE CASCADE,
    environment         text NOT NULL,
    uses                bigint NOT NULL CHECK (uses > 0),
    successes           bigint NOT NULL CHECK (successes >= 0 AND successes <= uses),
    timed               bigint NOT NULL,  -- uses that recorded a duration
    duration_ms_sum     bigint NOT NULL,
    duration_histogram  bigint[] NOT NULL,
    last_used_at        timestamptz NOT NULL,
    PRIMARY KEY (artifact_pk, day, environment)
);

CREATE INDEX artifact_usage_daily_day ON artifact_usage_daily (day);

COMMENT ON TABLE artifact_usage_daily IS
    'Daily rollup of artifact_usage per artifact and environment; kept by singularity-ops';

INSERT INTO artifact_usage_daily
SELECT (used_at AT TIME ZONE 'UTC')::date, artifact_pk, environment, count(*),
       count(*) FILTER (WHERE success), count(duration_ms), coalesce(sum(duration_ms), 0),
       knowledge_histogram(array_agg(knowledge_duration_bucket(duration_ms)),
                           array_fill(1::bigint, ARRAY[count(*)::int])),
       max(used_at)
FROM artifact_usage
GROUP BY 1, 2, 3;
