-- Which artifacts search cannot rank by meaning (no vector of the configured model) is asked
-- on every search: a count over the whole table cost 56-117 ms at 100,000 artifacts, on
-- every CLI search and every request to the server. With this index the count reads only
-- the entries that are not the configured model (normally none):
--   embedding_model IS NULL OR embedding_model < key OR embedding_model > key
CREATE INDEX knowledge_artifacts_embedding_model ON knowledge_artifacts (embedding_model);
