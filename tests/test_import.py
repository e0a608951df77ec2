"""import against the real database: strictness, no-op re-import, metrics kept, prune, atomicity."""

import json

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config
from corpus_fixtures import messy_tree, write

from singularity_ops.corpus import scan
from singularity_ops.db import connect
from singularity_ops.importer import InvalidArtifacts, import_artifacts
from singularity_ops.usage_ingest import record_usage


def do_import(settings, root, **kwargs):
    include_learned = kwargs.pop("include_learned", False)
    with connect(settings, autocommit=True) as conn:
        return import_artifacts(
            conn,
            scan(root, include_learned=include_learned),
            include_learned=include_learned,
            **kwargs,
        )


def rows(settings):
    with psycopg.connect(**settings.conninfo()) as conn:
        return {
            (t, i, v): (raw, h, path, source, uses)
            for t, i, v, raw, h, path, source, uses in conn.execute(
                "SELECT artifact_type, artifact_id, version, content_raw, content_hash, source_path,"
                " source, usage_count FROM knowledge_artifacts"
            )
        }


def table_fingerprint(settings):
    with psycopg.connect(**settings.conninfo()) as conn:
        return conn.execute(
            "SELECT md5(coalesce(string_agg(k::text, '|' ORDER BY k.id), '')) FROM knowledge_artifacts k"
        ).fetchone()[0]


def test_imports_the_messy_tree_then_reimport_is_a_no_op(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    first = do_import(kb_settings, root)
    assert (first.inserted, first.updated, first.unchanged, first.skipped, first.invalid) == (
        10,
        0,
        0,
        8,
        0,
    )
    stored = rows(kb_settings)
    assert (
        stored[("patterns", "nats_consumer", "2.0.0")][0]
        == (root / "patterns/with_id.json").read_text()
    )
    before = table_fingerprint(kb_settings)
    second = do_import(kb_settings, root)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 10)
    assert table_fingerprint(kb_settings) == before, (
        "an unchanged tree must not write (updated_at included)"
    )


def test_strict_import_writes_nothing_when_any_file_is_invalid(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    write(root, "patterns/broken.json", '{"id": "broken",}')
    write(root, "patterns/dupe_a.json", {"id": "dupe"})
    write(root, "patterns/dupe_b.json", {"id": "dupe"})
    with pytest.raises(InvalidArtifacts) as info:
        do_import(kb_settings, root)
    message = str(info.value)
    assert "3 invalid file(s)" in message and "nothing was imported" in message
    assert "patterns/broken.json:1:17: invalid JSON" in message
    assert "patterns/dupe_a.json: resolves to the same artifact as patterns/dupe_b.json" in message
    assert rows(kb_settings) == {}


def test_skip_invalid_imports_the_rest_and_exits_1(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    write(root, "patterns/broken.json", "{not json")
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(root)}})
    out = cli_in_process(
        "--config", str(config), "import", "--skip-invalid", "--json", cwd=tmp_path
    )
    assert out.returncode == 1, "the exit code still says something was skipped"
    result = json.loads(out.stdout)
    assert (result["inserted"], result["invalid"]) == (10, 1)
    assert result["problems"][0].startswith("patterns/broken.json:1:2: invalid JSON")
    assert len(rows(kb_settings)) == 10
    strict = cli_in_process("--config", str(config), "import", cwd=tmp_path)
    assert strict.returncode == 1 and "patterns/broken.json:1:2" in strict.stderr


def test_dry_run_reports_and_writes_nothing(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(root)}})
    out = cli_in_process("--config", str(config), "import", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "dry run: 10 inserted, 0 updated, 0 unchanged, 8 skipped, 0 invalid"
    )
    assert rows(kb_settings) == {}


def test_changed_file_keeps_metrics_and_marks_the_embedding_stale(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    do_import(kb_settings, root)
    with connect(kb_settings, autocommit=True) as conn:
        for ok in (True, True, False):
            record_usage(conn, "patterns", "nats_consumer", success=ok)
        conn.execute(
            "UPDATE knowledge_artifacts SET embedding = '[1,2,3]', embedding_model = 'm',"
            " embedded_hash = embedding_source_hash WHERE artifact_id = 'nats_consumer'"
        )
    write(
        root,
        "patterns/with_id.json",
        {"id": "nats_consumer", "version": "2.0.0", "name": "changed"},
    )
    result = do_import(kb_settings, root)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 9)
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        uses, successes, stale, name = conn.execute(
            "SELECT usage_count, success_count, embedded_hash <> embedding_source_hash, content->>'name'"
            " FROM knowledge_artifacts WHERE artifact_id = 'nats_consumer'"
        ).fetchone()
    assert (uses, successes, stale, name) == (3, 2, True, "changed")


def test_prune_removes_rows_whose_file_is_gone_and_only_in_scope(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    do_import(kb_settings, root)
    (root / "patterns/neither.json").unlink()
    (root / "code/explicit.json").unlink()
    reported = do_import(kb_settings, root)
    assert reported.orphaned == 2 and reported.pruned == 0
    assert ("patterns", "neither", "1.0.0") in rows(kb_settings)
    # Importing one folder only prunes inside that folder.
    with connect(kb_settings, autocommit=True) as conn:
        partial = import_artifacts(conn, scan(root, [root / "patterns"]), prune=True)
    assert partial.pruned == 1
    assert ("snippet", "explicit", "1.0.0") in rows(kb_settings)
    everything = do_import(kb_settings, root, prune=True)
    assert everything.pruned == 1
    assert ("snippet", "explicit", "1.0.0") not in rows(kb_settings)


def test_a_broken_file_is_not_pruned_as_if_deleted(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    do_import(kb_settings, root)
    write(root, "patterns/neither.json", "{oops")
    result = do_import(kb_settings, root, prune=True, skip_invalid=True)
    assert result.pruned == 0 and result.invalid == 1
    assert ("patterns", "neither", "1.0.0") in rows(kb_settings)


def test_failure_during_the_merge_rolls_back_everything(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.artifact_id = 'summarize' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON knowledge_artifacts FOR EACH ROW EXECUTE FUNCTION poison()"
        )
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(root)}})
    out = cli_in_process("--config", str(config), "import", cwd=tmp_path)
    assert out.returncode == 1
    assert "import failed and was rolled back, nothing was written: poisoned row" in out.stderr
    assert rows(kb_settings) == {}


def test_learned_files_are_imported_only_when_asked(kb_settings, tmp_path):
    root = messy_tree(tmp_path / "td")
    do_import(kb_settings, root)
    assert ("patterns", "proven", "1.0.0") not in rows(kb_settings)
    do_import(kb_settings, root, include_learned=True)
    assert rows(kb_settings)[("patterns", "proven", "1.0.0")][3] == "learned"


def test_known_sources_skip_parsing_but_never_hide_a_type_map_change(
    kb_settings, tmp_path, monkeypatch
):
    from singularity_ops import corpus
    from singularity_ops.importer import known_sources

    root = messy_tree(tmp_path / "td")
    do_import(kb_settings, root)
    with connect(kb_settings) as conn:
        known = known_sources(conn)
    plain = scan(root)
    parsed = []
    real_parse = corpus._parse
    monkeypatch.setattr(corpus, "_parse", lambda raw: parsed.append(raw) or real_parse(raw))
    fast = scan(root, known=known)
    assert len(parsed) == 5, "only the non-artifact JSON files (not in the database) are parsed"
    assert {a.key: (a.content_raw, a.source) for a in fast.artifacts} == {
        a.key: (a.content_raw, a.source) for a in plain.artifacts
    }
    renamed = scan(root, type_map={"patterns": "pattern"}, known=known)
    assert {a.artifact_type for a in renamed.artifacts} == {"pattern", "code", "snippet", "prompts"}
    write(root, "patterns/with_id.json", {"id": "nats_consumer", "version": "3.0.0"})
    changed = scan(root, known=known)
    assert ("patterns", "nats_consumer", "3.0.0") in {a.key for a in changed.artifacts}


def test_hostile_files_never_hang_or_stop_a_skip_invalid_import(kb_settings, tmp_path):
    import os

    root = messy_tree(tmp_path / "td")
    os.mkfifo(root / "patterns" / "fifo.json")
    (root / "patterns" / "zero.json").symlink_to("/dev/zero")
    write(root, "patterns/deep.json", "[" * 100_000 + "]" * 100_000)
    outside = write(tmp_path, "secret/creds.json", {"id": "creds", "password": "hunter2"})
    (root / "patterns" / "creds.json").symlink_to(outside)
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(root)}})
    validate = cli_in_process("--config", str(config), "validate", cwd=tmp_path, timeout=30)
    assert validate.returncode == 1
    for name in ("fifo.json: is not a regular file", "zero.json: resolves to /dev/zero"):
        assert f"patterns/{name}" in validate.stderr
    assert "patterns/deep.json: is nested deeper than 100 levels" in validate.stderr
    assert "patterns/creds.json: resolves to" in validate.stderr
    out = cli_in_process(
        "--config", str(config), "import", "--skip-invalid", "--json", cwd=tmp_path, timeout=30
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    result = json.loads(out.stdout)
    assert (result["inserted"], result["invalid"]) == (10, 4)
    assert all("hunter2" not in raw for raw, *_ in rows(kb_settings).values())


def test_templates_names_another_corpus_and_a_path_outside_the_root_says_so(kb_settings, tmp_path):
    other = tmp_path / "other"
    write(other, "prompt/p.json", {"id": "p", "type": "prompt", "content": {"x": 1}})
    config = write_cli_config(tmp_path, kb_settings)  # import.root: templates_data, absent
    outside = cli_in_process("--config", str(config), "import", str(other), cwd=tmp_path)
    assert outside.returncode == 2
    assert f"{other} is outside the import root" in outside.stderr
    assert f"pass --templates {other}" in outside.stderr
    assert rows(kb_settings) == {}
    checked = cli_in_process(
        "--config", str(config), "validate", "--templates", str(other), cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stderr
    out = cli_in_process("--config", str(config), "import", "--templates", str(other), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [key[:2] for key in rows(kb_settings)] == [("prompt", "p")]


def test_a_second_corpus_never_prunes_the_first_and_a_big_prune_needs_force(kb_settings, tmp_path):
    main = tmp_path / "templates_data"
    for n in range(8):
        write(main, f"patterns/p{n}.json", {"id": f"p{n}", "name": f"P{n}"})
    other = tmp_path / "other_corpus"
    write(other, "patterns/x.json", {"id": "x", "name": "X"})
    do_import(kb_settings, main)
    with connect(kb_settings, autocommit=True) as conn:
        record_usage(conn, "patterns", "p1", success=True)
    config = write_cli_config(tmp_path, kb_settings, **{"import": {"root": str(main)}})
    dry = cli_in_process("--config", str(config), "import", "--templates", str(other), "--prune",
                  "--dry-run", "--json", cwd=tmp_path)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["pruned_rows"] == [], "the first corpus is not this import's"
    assert planned["changes"] == ["inserted patterns/x@1.0.0 (patterns/x.json)"]
    cli_in_process(
        "--config", str(config), "import", "--templates", str(other), "--prune", cwd=tmp_path
    )
    assert {k[1] for k in rows(kb_settings)} == {f"p{n}" for n in range(8)} | {"x"}
    with psycopg.connect(**kb_settings.conninfo()) as conn:
        corpora = dict(conn.execute("SELECT artifact_id, corpus FROM knowledge_artifacts"))
    assert corpora["x"] == "other_corpus" and corpora["p1"] == "templates_data"
    for n in range(7):  # 7 of 8 files gone: a wrong checkout, say
        (main / f"patterns/p{n}.json").unlink()
    refused = cli_in_process("--config", str(config), "import", "--prune", cwd=tmp_path)
    assert refused.returncode == 1
    assert "--prune would delete 7 of the 8 artifacts of corpus 'templates_data'" in refused.stderr
    assert "--force" in refused.stderr and len(rows(kb_settings)) == 9
    forced = cli_in_process("--config", str(config), "import", "--prune", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert {k[1] for k in rows(kb_settings)} == {"p7", "x"}


def notes(settings):
    with psycopg.connect(**settings.conninfo()) as conn:
        return dict(
            conn.execute(
                "SELECT artifact_id, glossary_note FROM knowledge_artifacts"
                " WHERE glossary_digest IS NOT NULL"
            ).fetchall()
        )


def text_hits(settings, query):
    from embed_fixtures import LOCAL, UnusedProvider

    from singularity_ops.search import SearchQuery, search

    with connect(settings) as conn:
        found = search(conn, UnusedProvider(), LOCAL, query, SearchQuery(mode="text"))
    return [h.artifact_id for h in found.hits]


def test_import_writes_the_glossary_line_text_search_finds_thin_artifacts_by(kb_settings, tmp_path):
    from singularity_ops.glossary import describe, note_digest

    root = tmp_path / "td"
    write(root, "detectors/falco.json", {"id": "falco", "name": "Falco", "category": "security"})
    write(root, "detectors/own.json", {"id": "jaeger", "description": "Our tracing fork."})
    write(root, "detectors/unknown.json", {"id": "zorblax", "name": "Zorblax"})
    assert do_import(kb_settings, root).glossary_notes == 0  # written with the rows, not after
    # A curator's description wins; an unknown name gets no line.
    assert notes(kb_settings) == {"falco": describe("falco"), "jaeger": None, "zorblax": None}
    assert text_hits(kb_settings, "runtime security monitoring of containers") == ["falco"]

    # A changed file brings its own line (here none: it has a description now).
    write(root, "detectors/falco.json", {"id": "falco", "description": "Syscall rules."})
    assert do_import(kb_settings, root).updated == 1
    assert notes(kb_settings)["falco"] is None
    assert text_hits(kb_settings, "runtime security monitoring of containers") == []

    # A file the scan did not parse (the same bytes) but import writes (another corpus now):
    # its line comes from import's own pass.
    from singularity_ops.importer import known_sources

    with connect(kb_settings, autocommit=True) as conn:
        found = scan(root, known=known_sources(conn))
        assert not any(a.glossary_checked for a in found.artifacts)
        result = import_artifacts(conn, found, corpus="moved")
    assert (result.updated, result.glossary_notes) == (3, 3)
    assert notes(kb_settings) == {"falco": None, "jaeger": None, "zorblax": None}

    # Rows of an older glossary, of a newer one (another checkout's code) or of a database from
    # before migration 0012 (no digest) are redone: each sorts on another side of the current.
    for other in ("n0-old", "zz-newer", None):
        with psycopg.connect(**kb_settings.conninfo()) as conn:
            conn.execute(
                "UPDATE knowledge_artifacts SET glossary_digest = %s, glossary_note = 'x'",
                (other,),
            )
        assert do_import(kb_settings, root, corpus="moved").glossary_notes == 3, other
        with psycopg.connect(**kb_settings.conninfo()) as conn:
            assert conn.execute(
                "SELECT DISTINCT glossary_digest FROM knowledge_artifacts"
            ).fetchall() == [(note_digest(),)]
        assert set(notes(kb_settings).values()) == {None}


def test_finding_stale_glossary_lines_reads_the_index_not_the_table(kb_settings):
    from singularity_ops.glossary import note_digest
    from singularity_ops.importer import STALE_GLOSSARY_SQL

    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content,"
            " glossary_digest)"
            " SELECT 'bulk', 'a' || g, '{}', '{}', %s FROM generate_series(1, 10000) g",
            (note_digest(),),
        )
        conn.execute("ANALYZE knowledge_artifacts")
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN " + STALE_GLOSSARY_SQL, {"digest": note_digest()})
        )
    assert "Seq Scan" not in plan and "knowledge_artifacts_glossary_digest" in plan, plan


def test_a_dry_run_writes_no_glossary_line(kb_settings, tmp_path):
    root = tmp_path / "td"
    write(root, "detectors/falco.json", {"id": "falco", "name": "Falco"})
    assert do_import(kb_settings, root, dry_run=True).inserted == 1
    assert rows(kb_settings) == {}


def test_a_database_from_before_0012_is_told_to_migrate_then_gets_its_notes(ext_settings, tmp_path):
    import shutil

    from conftest import MIGRATIONS
    from embed_fixtures import LOCAL, UnusedProvider

    from singularity_ops.errors import SearchUnavailable
    from singularity_ops.migrate import migrate
    from singularity_ops.search import SearchQuery, search

    older = tmp_path / "migrations"
    older.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0012":
            shutil.copy(path, older / path.name)
    root = tmp_path / "td"
    raw = write(root, "detectors/falco.json", {"id": "falco", "name": "Falco"}).read_text()
    with connect(ext_settings, autocommit=True) as conn:
        migrate(conn, older)
        conn.execute(  # what an import of the old code wrote
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content,"
            " source_path, corpus) VALUES ('detectors', 'falco', %s, %s::jsonb,"
            " 'detectors/falco.json', 'td')",
            (raw, raw),
        )
        with pytest.raises(
            SearchUnavailable, match=r"lacks migration 0012.*singularity-ops migrate"
        ):
            search(conn, UnusedProvider(), LOCAL, "falco", SearchQuery(mode="text"))
        migrate(conn, MIGRATIONS)
    # The next import writes the glossary's line of every row whose digest is not today's.
    assert notes(ext_settings) == {}
    result = do_import(ext_settings, root)
    assert (result.unchanged, result.glossary_notes) == (1, 1)
    assert text_hits(ext_settings, "runtime security monitoring of containers") == ["falco"]
