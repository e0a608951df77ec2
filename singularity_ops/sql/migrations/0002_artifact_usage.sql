-- artifact_usage: the usage history behind the counters in knowledge_artifacts.
-- A TimescaleDB hypertable when timescaledb is installed, a plain table otherwise.
CREATE TABLE artifact_usage (
    used_at      timestamptz NOT NULL DEFAULT now(),
    artifact_pk  uuid NOT NULL REFERENCES knowledge_artifacts (id) ON DELETE CASCADE,
    success      boolean NOT NULL,
    environment  text NOT NULL DEFAULT 'dev' CHECK (environment IN ('dev', 'test', 'prod')),
    duration_ms  integer CHECK (duration_ms >= 0),
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE artifact_usage IS
    'One row per use of a knowledge artifact; record-usage writes it and the counters together';

CREATE INDEX artifact_usage_artifact_time ON artifact_usage (artifact_pk, used_at DESC);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('artifact_usage', by_range('used_at', INTERVAL '7 days'));
    ELSE
        RAISE NOTICE 'timescaledb is not installed: artifact_usage stays a plain table';
        CREATE INDEX artifact_usage_time ON artifact_usage (used_at DESC);
    END IF;
END
$$;
