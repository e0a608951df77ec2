-- An event_id is the application's id for one use of one artifact: a request that used two
-- artifacts under one request id (the README's jq recipe maps event_id to request_id) must
-- record both. The idempotency key becomes sha256("event_id" NUL event_id NUL type NUL id),
-- first 16 bytes, exactly as usage_ingest.event_key() computes it in Python.
CREATE FUNCTION knowledge_event_key(event_id text, artifact_type text, artifact_id text)
    RETURNS uuid LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN encode(substr(sha256(
        '\x6576656e745f696400'::bytea || convert_to(event_id, 'UTF8') || '\x00'::bytea
        || convert_to(artifact_type, 'UTF8') || '\x00'::bytea || convert_to(artifact_id, 'UTF8')
    ), 1, 16), 'hex')::uuid;

-- Raw events still held get their scoped key, remembered like every key. The keys of events
-- pruned before this migration stay as they were (unscoped): a log that old, re-ingested,
-- would count again; see the README, "Usage history".
UPDATE artifact_usage u
SET event_key = knowledge_event_key(u.event_id, a.artifact_type, a.artifact_id)
FROM knowledge_artifacts a
WHERE a.id = u.artifact_pk AND u.event_id IS NOT NULL;

INSERT INTO usage_event_keys (event_key, recorded_at)
SELECT event_key, min(used_at) FROM artifact_usage WHERE event_id IS NOT NULL GROUP BY 1
ON CONFLICT (event_key) DO NOTHING;
