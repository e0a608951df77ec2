-- knowledge_artifacts: one row per artifact version, stored raw and as JSONB.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        RAISE EXCEPTION 'the vector extension is not installed in this database'
            USING HINT = 'run `singularity-ops create-extensions` before `singularity-ops migrate`';
    END IF;
    IF pg_char_to_encoding('UTF8') <> (SELECT encoding FROM pg_database WHERE datname = current_database()) THEN
        RAISE EXCEPTION 'database % is not UTF8', current_database()
            USING HINT = 'create it with ENCODING ''UTF8'' (ensure-db on the local cluster does)';
    END IF;
END
$$;

-- sha256 of the text's UTF-8 bytes. convert_to() is only STABLE because conversions between
-- encodings could change; the database is UTF8 (checked above), so this is the identity
-- conversion and IMMUTABLE is true, which a generated column requires.
CREATE FUNCTION knowledge_content_hash(content_raw text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN encode(sha256(convert_to(content_raw, 'UTF8')), 'hex');

-- Tags: top-level "tags", else metadata.tags; an array of strings (other elements as text).
CREATE FUNCTION knowledge_tags(content jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN jsonb_typeof(content -> 'tags') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(content -> 'tags'))
        WHEN jsonb_typeof(content -> 'metadata' -> 'tags') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(content -> 'metadata' -> 'tags'))
        ELSE '{}'::text[]
    END;
END;

CREATE TABLE knowledge_artifacts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    artifact_type   text NOT NULL CHECK (artifact_type <> ''),
    artifact_id     text NOT NULL CHECK (artifact_id <> ''),
    version         text NOT NULL DEFAULT '1.0.0' CHECK (version <> ''),

    content_raw     text NOT NULL,
    content         jsonb NOT NULL,
    content_hash    text NOT NULL GENERATED ALWAYS AS (knowledge_content_hash(content_raw)) STORED,
    source_path     text,
    source          text NOT NULL DEFAULT 'git' CHECK (source IN ('git', 'learned', 'runtime')),

    -- Untyped vector: the dimension follows the configured model. Each model gets its own
    -- expression index (embedding::vector(N)) restricted to its rows, as pgvector documents.
    embedding       vector,
    embedding_model text,
    embedded_hash   text,
    embedded_at     timestamptz,

    language        text GENERATED ALWAYS AS
                        (coalesce(content ->> 'language', content -> 'metadata' ->> 'language')) STORED,
    tags            text[] NOT NULL GENERATED ALWAYS AS (knowledge_tags(content)) STORED,

    usage_count     bigint NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    success_count   bigint NOT NULL DEFAULT 0,
    success_rate    double precision GENERATED ALWAYS AS
                        (CASE WHEN usage_count > 0 THEN success_count::double precision / usage_count END) STORED,
    last_used_at    timestamptz,

    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT knowledge_artifacts_identity UNIQUE (artifact_type, artifact_id, version),
    CONSTRAINT knowledge_artifacts_content_matches_raw CHECK (content_raw::jsonb = content),
    CONSTRAINT knowledge_artifacts_content_is_object CHECK (jsonb_typeof(content) = 'object'),
    CONSTRAINT knowledge_artifacts_success_within_usage
        CHECK (success_count >= 0 AND success_count <= usage_count),
    CONSTRAINT knowledge_artifacts_embedding_has_model
        CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);

COMMENT ON TABLE knowledge_artifacts IS
    'Curated JSON artifacts (patterns, templates, prompts), one row per version; managed by singularity-ops';
COMMENT ON COLUMN knowledge_artifacts.embedded_hash IS
    'content_hash the embedding was computed from: embedding is stale when it differs from content_hash';

CREATE FUNCTION knowledge_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER knowledge_artifacts_updated_at
    BEFORE UPDATE ON knowledge_artifacts
    FOR EACH ROW EXECUTE FUNCTION knowledge_touch_updated_at();

CREATE INDEX knowledge_artifacts_content_gin ON knowledge_artifacts USING gin (content jsonb_path_ops);
CREATE INDEX knowledge_artifacts_tags_gin ON knowledge_artifacts USING gin (tags);
CREATE INDEX knowledge_artifacts_type_language ON knowledge_artifacts (artifact_type, language);
CREATE INDEX knowledge_artifacts_fulltext ON knowledge_artifacts
    USING gin (to_tsvector('english'::regconfig, content_raw));
