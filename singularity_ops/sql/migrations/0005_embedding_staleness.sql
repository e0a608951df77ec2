-- An embedding goes stale when what it was computed from changes, not when any byte of the
-- file does. embed.embedding_text() never reads the `_learning` block that export adds, nor the
-- identity fields export makes explicit (artifact_type, id, version: the row's own columns),
-- so promoting an exported file changes content_hash but not embedding_source_hash.
-- jsonb's text form is canonical (key order, spacing), as is the dict embed reads it into.
-- convert_to() is only STABLE because conversions between encodings could change; the
-- database is UTF8 (0001 checks it), so this is the identity conversion and IMMUTABLE holds.
CREATE FUNCTION knowledge_embedding_source_hash(content jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN encode(sha256(convert_to(
        (content - ARRAY['_learning', 'artifact_type', 'id', 'version'])::text, 'UTF8')), 'hex');

ALTER TABLE knowledge_artifacts
    ADD COLUMN embedding_source_hash text NOT NULL
        GENERATED ALWAYS AS (knowledge_embedding_source_hash(content)) STORED;

-- Embeddings that were current stay current; stale ones stay stale.
UPDATE knowledge_artifacts SET embedded_hash = embedding_source_hash
WHERE embedded_hash = content_hash;

COMMENT ON COLUMN knowledge_artifacts.embedded_hash IS
    'embedding_source_hash the embedding was computed from: stale when it differs from embedding_source_hash';
