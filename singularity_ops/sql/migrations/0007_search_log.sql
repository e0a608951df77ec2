-- The search log: every search the toolkit answers (CLI, --stdin, the Python API, the server),
-- so an outcome recorded later can name the search and the rank that led to it
-- (record-usage --search-id, or "search_id" in a usage log line), and `usage eval` can tell
-- from real traffic whether ranking gets better.
CREATE TABLE search_log (
    searched_at  timestamptz NOT NULL DEFAULT now(),
    search_id    uuid NOT NULL,
    query        text NOT NULL,
    mode         text NOT NULL,
    rank_by      text NOT NULL DEFAULT 'relevance',
    filters      jsonb NOT NULL DEFAULT '{}'::jsonb,
    top_k        integer NOT NULL,
    artifact_pks uuid[] NOT NULL,  -- the results, best first: rank = array_position()
    environment  text NOT NULL DEFAULT 'dev',
    duration_ms  real
);

COMMENT ON TABLE search_log IS
    'One row per search: query, mode, ranking, filters and the artifacts returned in order';

CREATE INDEX search_log_search_id ON search_log (search_id);

ALTER TABLE artifact_usage
    ADD COLUMN search_id uuid,
    ADD COLUMN search_rank integer CHECK (search_rank >= 1);

COMMENT ON COLUMN artifact_usage.search_rank IS
    'Position of the artifact in the results of search_id (1 = first), when the use came from a search';

CREATE INDEX artifact_usage_search ON artifact_usage (search_id) WHERE search_id IS NOT NULL;

-- Time-partitioned like artifact_usage; old searches go by retention (90 days by default,
-- drop_chunks being Apache-licensed TimescaleDB: see README "The search log" to change it).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('search_log', by_range('searched_at', INTERVAL '7 days'));
    ELSE
        RAISE NOTICE 'timescaledb is not installed: search_log stays a plain table';
        CREATE INDEX search_log_time ON search_log (searched_at DESC);
    END IF;
END
$$;
