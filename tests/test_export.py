"""export of proven patterns: thresholds, deterministic bytes, path safety, the round trip."""

import json
import os

import psycopg
import pytest
from conftest import cli_in_process, write_cli_config
from corpus_fixtures import write

from singularity_ops.corpus import scan
from singularity_ops.db import connect
from singularity_ops.export import export_proven, safe_relative_path
from singularity_ops.importer import import_artifacts
from singularity_ops.usage_ingest import record_usage


def use(conn, artifact_type, artifact_id, successes, failures):
    for ok in [True] * successes + [False] * failures:
        record_usage(conn, artifact_type, artifact_id, success=ok)


@pytest.fixture
def learned_db(kb_settings, tmp_path):
    root = tmp_path / "td"
    write(root, "patterns/proven.json", '{"name": "Proven", "zeta": 1, "alpha": [1, 2]}\n')
    write(root, "patterns/flaky.json", {"id": "flaky"})
    write(root, "patterns/rare.json", {"id": "rare"})
    with connect(kb_settings, autocommit=True) as conn:
        import_artifacts(conn, scan(root))
        use(conn, "patterns", "proven", 10, 0)
        use(conn, "patterns", "flaky", 8, 4)
        use(conn, "patterns", "rare", 3, 0)
    return kb_settings, root


def test_exports_only_artifacts_meeting_both_thresholds(learned_db, tmp_path):
    settings, _root = learned_db
    out = tmp_path / "learned"
    with connect(settings) as conn:
        result = export_proven(conn, out, min_usage=10, min_success_rate=0.9)
    assert result.written == ["patterns/proven.json"]
    document = json.loads((out / "patterns/proven.json").read_text())
    assert list(document) == [
        "name",
        "zeta",
        "alpha",
        "artifact_type",
        "id",
        "version",
        "_learning",
    ]
    assert (
        document["_learning"]["usage_count"] == 10 and document["_learning"]["success_rate"] == 1.0
    )
    with connect(settings) as conn:
        looser = export_proven(conn, out, min_usage=3, min_success_rate=0.6)
    assert sorted(looser.written) == ["patterns/flaky.json", "patterns/rare.json"]
    assert looser.unchanged == ["patterns/proven.json"]


def test_second_export_changes_no_byte_and_no_mtime(learned_db, tmp_path):
    settings, _root = learned_db
    config = write_cli_config(tmp_path, settings, export={"out": str(tmp_path / "learned")})
    first = cli_in_process("--config", str(config), "export", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    target = tmp_path / "learned/patterns/proven.json"
    before = (target.read_bytes(), os.stat(target).st_mtime_ns)
    second = cli_in_process("--config", str(config), "export", "--json", cwd=tmp_path)
    assert json.loads(second.stdout)["written"] == []
    assert (target.read_bytes(), os.stat(target).st_mtime_ns) == before
    assert oct(target.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    "artifact_id",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "..",
        "c:\\windows\\x",
        ".hidden/x",
        "nul\x00byte",
    ],
)
def test_hostile_ids_never_leave_the_output_directory(artifact_id, tmp_path):
    relative = safe_relative_path("patterns", artifact_id)
    resolved = (tmp_path / relative).resolve()
    assert tmp_path in resolved.parents
    assert ".." not in relative.parts and not relative.is_absolute()


def test_plain_nested_ids_become_folders_and_long_names_are_shortened():
    assert (
        safe_relative_path("code", "languages/go/best_practices").as_posix()
        == "code/languages/go/best_practices.json"
    )
    long_name = safe_relative_path("t", "x" * 400)
    assert len(long_name.name.encode()) <= 210


def test_hostile_id_in_the_database_is_written_inside_out(kb_settings, tmp_path):
    with psycopg.connect(**kb_settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO knowledge_artifacts (artifact_type, artifact_id, content_raw, content, usage_count, success_count)"
            " VALUES ('../up', '../../escape', '{}', '{}', 20, 20)"
        )
    with connect(kb_settings) as conn:
        result = export_proven(conn, tmp_path / "out")
    [written] = result.written
    assert (tmp_path / "out" / written).is_file()
    assert not (tmp_path / "escape.json").exists()


def test_round_trip_export_promote_import_keeps_identity_and_metrics(learned_db, tmp_path):
    settings, root = learned_db
    with connect(settings) as conn:
        export_proven(conn, root / "learned")
    # A reviewer promotes the file: it replaces the curated one, under another name even.
    (root / "patterns/proven.json").unlink()
    (root / "learned/patterns/proven.json").rename(root / "patterns/proven_reviewed.json")
    with connect(settings, autocommit=True) as conn:
        result = import_artifacts(conn, scan(root), prune=True)
        assert (result.inserted, result.updated, result.pruned) == (0, 1, 0)
        row = conn.execute(
            "SELECT count(*), max(usage_count), max(source_path) FROM knowledge_artifacts WHERE artifact_id = 'proven'"
        ).fetchone()
    assert row == (1, 10, "patterns/proven_reviewed.json")


def test_export_keeps_the_original_text_and_adds_only_identity_and_learning(kb_settings, tmp_path):
    root = tmp_path / "td"
    original = (
        '{\n  "id": "tidy",\n  "name": "Tidy",\n  "tags": ["a", "b", "c"],\n'
        '  "steps": [{"do": "x"}, {"do": "y"}],\n  "note": "caf\\u00e9 \\u2014 kept as written"\n}\n'
    )
    write(root, "patterns/tidy.json", original)
    with connect(kb_settings, autocommit=True) as conn:
        import_artifacts(conn, scan(root))
        use(conn, "patterns", "tidy", 10, 0)
        result = export_proven(conn, tmp_path / "out")
    exported = (tmp_path / "out" / result.written[0]).read_text()
    head = original.rstrip()[:-1].rstrip()  # everything up to the last member, unchanged
    assert exported.startswith(head)
    added = exported[len(head) :]
    assert added.startswith(
        ',\n  "artifact_type": "patterns",\n  "version": "1.0.0",\n  "_learning": {\n'
    )
    assert '    "usage_count": 10,' in added and added.endswith("\n  }\n}\n")
    assert json.loads(exported)["note"] == "café — kept as written"


def test_a_promoted_artifact_is_neither_re_embedded_nor_exported_again(learned_db, tmp_path):
    settings, root = learned_db
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            "UPDATE knowledge_artifacts SET embedding = '[1,2,3]', embedding_model = 'm',"
            " embedded_hash = embedding_source_hash"
        )
    out = root / "learned"
    with connect(settings) as conn:
        first = export_proven(conn, out)
    assert first.written == ["patterns/proven.json"]
    # promotion: the reviewed file replaces the curated one
    (out / "patterns/proven.json").replace(root / "patterns/proven.json")
    with connect(settings, autocommit=True) as conn:
        assert import_artifacts(conn, scan(root)).updated == 1
        stale = conn.execute(
            "SELECT count(*) FROM knowledge_artifacts WHERE embedded_hash <> embedding_source_hash"
        ).fetchone()[0]
    assert stale == 0, "only _learning and explicit identity changed: nothing to re-embed"
    with connect(settings, autocommit=True) as conn:
        use(conn, "patterns", "proven", 2, 0)  # new metrics since the promotion
        again = export_proven(conn, out)
    # the same path in learned/ and in the corpus: said once
    assert again.written == [] and again.curated == ["patterns/proven.json"]
    assert not (out / "patterns/proven.json").exists()
    with connect(settings, autocommit=True) as conn:
        result = import_artifacts(conn, scan(root, include_learned=True), include_learned=True)
    assert result.invalid == 0, result.problems


def test_a_stale_copy_of_a_promoted_artifact_is_removed_but_an_edited_one_is_kept(
    learned_db, tmp_path
):
    settings, root = learned_db
    out = tmp_path / "learned"
    with connect(settings) as conn:
        export_proven(conn, out)
    promoted = out / "patterns/proven.json"
    (root / "patterns/proven.json").write_bytes(promoted.read_bytes())  # copied, not moved
    with connect(settings, autocommit=True) as conn:
        import_artifacts(conn, scan(root))
        result = export_proven(conn, out)
    assert result.removed == ["patterns/proven.json"] and not promoted.exists()
    edited = json.loads((root / "patterns/proven.json").read_text())
    edited["name"] = "Proven, edited by a reviewer in learned/"
    promoted.write_text(json.dumps(edited))
    with connect(settings) as conn:
        result = export_proven(conn, out)
    assert result.removed == [] and promoted.exists()


def test_exports_that_no_longer_qualify_are_listed_and_pruned_and_dry_run_touches_nothing(
    learned_db, tmp_path
):
    settings, _root = learned_db
    out = tmp_path / "learned"
    with connect(settings) as conn:
        loose = export_proven(conn, out, min_usage=3, min_success_rate=0.6)
    assert len(loose.written) == 3
    (out / "patterns" / "notes.json").write_text('{"by": "a reviewer"}')  # not an export: kept
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    with connect(settings) as conn:
        dry = export_proven(conn, out, min_usage=10, min_success_rate=0.9, dry_run=True, prune=True)
    assert dry.no_longer_qualifying == ["patterns/flaky.json", "patterns/rare.json"]
    assert dry.pruned == dry.no_longer_qualifying
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before, "a dry run writes nothing"
    with connect(settings) as conn:
        listed = export_proven(conn, out, min_usage=10, min_success_rate=0.9)
        assert listed.no_longer_qualifying == dry.no_longer_qualifying and not listed.pruned
        pruned = export_proven(conn, out, min_usage=10, min_success_rate=0.9, prune=True)
    assert pruned.pruned == dry.no_longer_qualifying
    assert sorted(p.name for p in out.rglob("*.json")) == ["notes.json", "proven.json"]


def test_when_nothing_qualifies_the_near_misses_say_which_threshold_they_miss(learned_db, tmp_path):
    settings, _root = learned_db
    config = write_cli_config(tmp_path, settings)
    out = cli_in_process("--config", str(config), "export", "--min-usage", "50", "--out",
                  str(tmp_path / "x"), "--dry-run", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "near miss: patterns/flaky@1.0.0: uses 12 < 50, success rate 0.67 < 0.90" in out.stdout
    assert "near miss: patterns/proven@1.0.0: uses 10 < 50" in out.stdout
    assert not (tmp_path / "x").exists()


def test_import_include_learned_right_after_an_export_keeps_the_curated_file(learned_db, tmp_path):
    settings, root = learned_db
    with connect(settings) as conn:
        exported = export_proven(conn, root / "learned", min_usage=3, min_success_rate=0.6)
    assert len(exported.written) == 3
    config = write_cli_config(tmp_path, settings, **{"import": {"root": str(root)}})
    out = cli_in_process("--config", str(config), "import", "--include-learned", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "note: learned/patterns/proven.json: an export of patterns/proven.json" in out.stderr
    assert "the curated file wins" in out.stderr and "another id or version" not in out.stderr
    with psycopg.connect(**settings.conninfo()) as conn:
        sources = conn.execute("SELECT DISTINCT source FROM knowledge_artifacts").fetchall()
    assert sources == [("git",)]


def test_refresh_curated_brings_a_promoted_files_learning_up_to_date(learned_db, tmp_path):
    settings, root = learned_db
    out = root / "learned"
    with connect(settings) as conn:
        export_proven(conn, out)
    (out / "patterns/proven.json").replace(root / "patterns/proven.json")  # promoted
    with connect(settings, autocommit=True) as conn:
        import_artifacts(conn, scan(root))
        use(conn, "patterns", "proven", 2, 0)
        skipped = export_proven(conn, out)
        assert skipped.curated == ["patterns/proven.json"] and not skipped.refreshed
        learning = json.loads((root / "patterns/proven.json").read_text())["_learning"]
        assert learning["usage_count"] == 10, "untouched without --refresh-curated"
        dry = export_proven(conn, out, refresh_curated=root, dry_run=True)
        assert dry.refreshed == ["patterns/proven.json"]
        assert json.loads((root / "patterns/proven.json").read_text())["_learning"] == learning
        done = export_proven(conn, out, refresh_curated=root)
    assert done.refreshed == ["patterns/proven.json"] and done.written == []
    text = (root / "patterns/proven.json").read_text()
    assert json.loads(text)["_learning"]["usage_count"] == 12
    assert text.startswith('{"name": "Proven", "zeta": 1'), "the file's own layout stays"
    with connect(settings, autocommit=True) as conn:
        assert import_artifacts(conn, scan(root)).updated == 1
        again = export_proven(conn, out, refresh_curated=root)
    assert again.refreshed == [], "a second run changes nothing"
