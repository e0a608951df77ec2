"""The Python API's facade, api.KnowledgeBase: the whole loop through one object, and the
same checks and errors as the CLI (which, like the agent server, goes through it)."""

from dataclasses import replace

import pytest
from embed_fixtures import UnusedProvider, small_corpus

from singularity_ops.api import KnowledgeBase
from singularity_ops.errors import ConfigError, DatabaseUnavailable, InvalidArtifacts
from singularity_ops.search import SearchUnavailable
from singularity_ops.server import Knowledge


@pytest.fixture
def kb(kb_settings, tmp_path):
    root = small_corpus(tmp_path / "td")
    settings = replace(kb_settings, templates_dir=root, type_map={"prompts": "prompt"})
    return KnowledgeBase(settings)


def test_the_loop_reads_like_the_cli(kb, tmp_path):
    imported = kb.import_()
    assert (imported.inserted, imported.invalid) == (5, 0)
    assert kb.import_().unchanged == 5
    assert kb.embed().embedded == 5
    assert kb.embed().up_to_date == 5  # nothing to do the second time

    notes: list[str] = []
    found = kb.search("worker that retries queue messages", limit=3, types=["prompts"], notes=notes)
    assert [h.artifact_type for h in found.hits] == ["prompt", "prompt"]
    assert found.hits[0].artifact_id == "queue_worker"
    assert found.search_id is not None
    assert notes == ["'prompts' is the folder of artifact type 'prompt'; using that"]

    used = kb.record("prompt", "queue_worker", success=True, search_id=found.search_id)
    assert (used.usage_count, used.success_count, used.recorded) == (1, 1, True)
    report = kb.report("30d")
    assert [(r.artifact_id, r.uses) for r in report.top] == [("queue_worker", 1)]

    view = kb.artifact("prompt", "queue_worker")
    assert view.usage_count == 1 and '"queue_worker"' in view.content_raw

    many = list(kb.search_many(["css grid", "pancakes"], limit=1, mode="text"))
    assert [r.hits[0].artifact_id for r in many] == ["css_grid", "pancakes"]

    made = kb.backup(tmp_path / "backups")
    assert made.path.exists() and made.manifest.exists()


def test_the_model_loads_only_after_the_database_checks_pass(kb):
    kb.import_()
    kb.provider = UnusedProvider()  # nothing is embedded yet: vector search must not embed
    with pytest.raises(SearchUnavailable, match="embed"):
        kb.search("queue worker", mode="vector")
    hits = kb.search("queue worker", mode="text").hits  # text needs no model at all
    assert hits[0].artifact_id == "queue_worker"


def test_bad_arguments_fail_before_any_connection(kb_settings):
    nowhere = KnowledgeBase(replace(kb_settings, port=1))
    with pytest.raises(ConfigError, match="--top-k must be at least 1"):
        nowhere.search("x", limit=0)
    with pytest.raises(ConfigError, match="--mode must be one of"):
        list(nowhere.search_many(["x"], mode="fuzzy"))
    with pytest.raises(DatabaseUnavailable):
        nowhere.search("x", mode="text")


def test_an_unknown_type_lists_the_types_there_are(kb):
    kb.import_()
    with pytest.raises(ConfigError, match=r"no artifact has type 'nosuch' \(types: code, prompt\)"):
        kb.search("x", types=["nosuch"], mode="text")


def test_read_only_records_nothing(kb):
    kb.import_()
    kb.read_only = True
    with pytest.raises(ConfigError, match="read-only"):
        kb.record("prompt", "queue_worker", success=True)
    with pytest.raises(ConfigError, match="read-only"):
        kb.record_batch([{"artifact_type": "prompt", "artifact_id": "queue_worker"}])
    assert kb.artifact("prompt", "queue_worker").usage_count == 0


def test_the_agent_server_is_the_same_object_over_a_pool(kb):
    kb.import_()
    kb.embed()
    with Knowledge.open(kb.settings, pool_size=2, warm=False) as served:
        assert isinstance(served, KnowledgeBase)
        ours = kb.search("css layout for phones", mode="hybrid")
        theirs = served.search("css layout for phones", mode="hybrid")
    assert [h.artifact_id for h in theirs.hits] == [h.artifact_id for h in ours.hits]
    assert theirs.search_id != ours.search_id  # each search logged on its own


def test_import_reads_the_corpus_settings_as_the_cli_does(kb, tmp_path):
    kb.settings = replace(kb.settings, corpus="shared", max_file_bytes=200)
    with pytest.raises(InvalidArtifacts, match=r"(?s)3 invalid file.*over the limit of 200"):
        kb.import_()  # three of the five files are over the configured bound
    kb.settings = replace(kb.settings, max_file_bytes=1024 * 1024)
    assert kb.import_().inserted == 5
    with kb.session() as conn:
        corpora = {r[0] for r in conn.execute("SELECT DISTINCT corpus FROM knowledge_artifacts")}
    assert corpora == {"shared"}
    # another root is a corpus of its own (named after it), as with `import --templates`:
    # the same five identities now belong to it
    other = small_corpus(tmp_path / "elsewhere")
    assert kb.import_(other).unchanged == 0
    with kb.session() as conn:
        corpora = {r[0] for r in conn.execute("SELECT DISTINCT corpus FROM knowledge_artifacts")}
    assert corpora == {"elsewhere"}


def test_the_facade_defaults_are_the_library_defaults():
    # api.py spells them out so that `import singularity_ops.api` need not load artifacts.py
    import inspect

    from singularity_ops import artifacts

    for method in (KnowledgeBase.artifact, KnowledgeBase.record):
        params = inspect.signature(method).parameters
        assert params["version"].default == artifacts.LATEST
    view = inspect.signature(KnowledgeBase.artifact).parameters
    assert view["max_chars"].default == artifacts.VIEW_MAX_CHARS
