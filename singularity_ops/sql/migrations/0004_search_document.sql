-- The full-text side of search (`search --mode text|hybrid`): a weighted tsvector per artifact.
--   A: the name (or title) and the id with its _ / - as spaces (nats_consumer_go -> nats consumer go)
--   B: the description (or summary) and the tags
--   D: every string value of the content (keys and numbers are left out)
-- It replaces the index on to_tsvector(content_raw), which no query used.
CREATE FUNCTION knowledge_search_document(artifact_id text, content jsonb) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT setweight(to_tsvector('english'::regconfig,
               coalesce(content ->> 'name', content -> 'metadata' ->> 'name',
                        content ->> 'title', content -> 'metadata' ->> 'title', '')
               || ' ' || translate(artifact_id, '_/-', '   ')), 'A')
        || setweight(to_tsvector('english'::regconfig,
               coalesce(content ->> 'description', content -> 'metadata' ->> 'description',
                        content ->> 'summary', content -> 'metadata' ->> 'summary', '')), 'B')
        || setweight(jsonb_to_tsvector('english'::regconfig,
               coalesce(content -> 'tags', content -> 'metadata' -> 'tags', '[]'::jsonb),
               '["string"]'), 'B')
        || jsonb_to_tsvector('english'::regconfig, content, '["string"]');
END;

ALTER TABLE knowledge_artifacts
    ADD COLUMN search_document tsvector NOT NULL
        GENERATED ALWAYS AS (knowledge_search_document(artifact_id, content)) STORED;

CREATE INDEX knowledge_artifacts_search_document ON knowledge_artifacts USING gin (search_document);
DROP INDEX knowledge_artifacts_fulltext;
