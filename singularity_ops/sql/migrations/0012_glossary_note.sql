-- Text search sees the glossary's line too. A third of a real knowledge base are thin
-- technology detectors (a name, a category, code signatures, no description), and people ask
-- for what the technology does. embed already embeds the glossary's line for such an artifact
-- (singularity_ops/glossary.py); full text now indexes the same line at the name's weight
-- (A): it is all such an artifact says about itself. On bench/relevance_eval.py's tune half,
-- text mode MRR@10 went from 0.487 to 0.769 (at weight B 0.720, C 0.662, D 0.629).
-- The glossary is Python, so import writes the line (glossary.note_for) and the digest of the
-- table and rule it came from; a row whose digest is not the running code's is written again.
ALTER TABLE knowledge_artifacts
    ADD COLUMN glossary_note text,
    ADD COLUMN glossary_digest text;

COMMENT ON COLUMN knowledge_artifacts.glossary_note IS
    'the glossary''s line for an artifact with no description (written by import), indexed by search_document';

CREATE FUNCTION knowledge_search_document(artifact_id text, content jsonb, glossary_note text)
    RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN knowledge_search_document(artifact_id, content)
        || setweight(to_tsvector('english'::regconfig, coalesce(glossary_note, '')), 'A');

ALTER TABLE knowledge_artifacts ALTER COLUMN search_document
    SET EXPRESSION AS (knowledge_search_document(artifact_id, content, glossary_note));
