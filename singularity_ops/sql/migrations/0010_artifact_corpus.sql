-- Which corpus a row was imported from: `import --prune` removes only rows of the corpus it
-- reads, so importing a second corpus into the shared database and pruning cannot delete the
-- first one with its usage history. The name is the import root's directory name
-- (templates_data), the same from every checkout and machine, or import.corpus.
ALTER TABLE knowledge_artifacts ADD COLUMN corpus text;

-- Rows imported before this migration came from the default corpus as far as anyone can
-- tell; rows that did not are then never pruned by another corpus's import (the safe side).
UPDATE knowledge_artifacts SET corpus = 'templates_data' WHERE source IN ('git', 'learned');

COMMENT ON COLUMN knowledge_artifacts.corpus IS
    'the corpus (import root name or import.corpus) a row from git was imported from; import --prune stays inside it';
