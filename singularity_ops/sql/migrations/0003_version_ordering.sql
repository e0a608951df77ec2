-- Version ordering for "latest": 1.10.0 sorts after 1.9.0 (numeric parts compared as numbers).
-- Non-numeric versions compare by their numeric parts first, then as text (see the queries).
CREATE FUNCTION knowledge_version_key(version text) RETURNS numeric[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(array_agg(m[1]::numeric ORDER BY ord), '{}'::numeric[])
    FROM regexp_matches(version, '(\d+)', 'g') WITH ORDINALITY AS t(m, ord);
END;

CREATE INDEX knowledge_artifacts_latest
    ON knowledge_artifacts (artifact_type, artifact_id, knowledge_version_key(version) DESC, version DESC);
