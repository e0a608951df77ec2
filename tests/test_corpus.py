"""Reading templates_data: identity rules and every kind of bad file (no database)."""

from pathlib import Path

from corpus_fixtures import messy_tree, write

from singularity_ops.corpus import scan


def keys(result):
    return {(a.artifact_type, a.artifact_id, a.version): a.source_path for a in result.artifacts}


def test_identity_rule_covers_every_shape(tmp_path):
    result = scan(messy_tree(tmp_path))
    assert result.ok, result.problems
    assert keys(result) == {
        ("patterns", "nats_consumer", "2.0.0"): "patterns/with_id.json",
        ("patterns", "circuit_breaker", "1.1.0"): "patterns/with_metadata_id.json",
        ("patterns", "neither", "1.0.0"): "patterns/neither.json",
        (
            "code",
            "languages/elixir/best_practices",
            "1.0.0",
        ): "code/languages/elixir/best_practices.json",
        ("code", "languages/go/best_practices", "1.0.0"): "code/languages/go/best_practices.json",
        (
            "code",
            "languages/rust/best_practices",
            "1.0.0",
        ): "code/languages/rust/best_practices.json",
        (
            "code",
            "languages/python/best_practices",
            "1.0.0",
        ): "code/languages/python/best_practices.json",
        ("snippet", "explicit", "1.0.0"): "code/explicit.json",
        ("code", "numeric", "3"): "code/numeric_version.json",
        ("prompts", "summarize", "1.0.0"): "prompts/summarize.json",
    }
    assert sorted(result.skipped) == sorted(
        [
            "prompts/header.hbs",
            "prompts/hook.lua",
            "prompts/README.md",
            "prompts/ci.yml",
            "prompts/prompt.schema.json",
            "prompts/definition.json",
            "prompts/meta.json",
            "prompts/manifest.json",
        ]
    )


def test_type_map_renames_folders_but_explicit_type_wins(tmp_path):
    result = scan(messy_tree(tmp_path), type_map={"patterns": "pattern", "code": "code_generation"})
    types = {a.artifact_type for a in result.artifacts}
    assert types == {"pattern", "code_generation", "snippet", "prompts"}


def test_learned_is_excluded_unless_asked_for(tmp_path):
    root = messy_tree(tmp_path)
    assert all(a.source == "git" for a in scan(root).artifacts)
    with_learned = scan(root, include_learned=True)
    learned = [a for a in with_learned.artifacts if a.source == "learned"]
    assert [(a.artifact_type, a.artifact_id) for a in learned] == [("patterns", "proven")]


def test_content_raw_is_the_file_text_exactly(tmp_path):
    text = '{"id":"x",   "b":  [1,2],\n "a": "ü"}'
    write(tmp_path, "t/x.json", text)
    [artifact] = scan(tmp_path).artifacts
    assert artifact.content_raw == text
    import hashlib

    assert artifact.content_hash == hashlib.sha256(text.encode()).hexdigest()


def problems(root: Path, **kwargs) -> list[str]:
    return [str(p) for p in scan(root, **kwargs).problems]


def test_syntax_error_reports_file_line_and_column(tmp_path):
    write(tmp_path, "t/broken.json", '{\n  "id": "x",\n  "name": oops\n}')
    assert problems(tmp_path) == ["t/broken.json:3:11: invalid JSON: Expecting value"]


def test_bad_files_each_get_a_clear_problem(tmp_path):
    write(tmp_path, "t/array.json", [1, 2])
    write(tmp_path, "t/latin1.json", b'{"name": "caf\xe9"}')
    write(tmp_path, "t/bom.json", b'\xef\xbb\xbf{"id": "bom"}')
    write(tmp_path, "t/nan.json", '{"x": NaN}')
    write(tmp_path, "t/nul.json", '{"x": "a\\u0000b"}')
    write(tmp_path, "t/surrogate.json", '{"x": "\\ud800"}')
    write(tmp_path, "t/bad_id.json", {"id": ["not", "a", "string"]})
    write(tmp_path, "t/empty_version.json", {"id": "v", "version": " "})
    write(tmp_path, "t/big.json", {"id": "big", "blob": "x" * 2000})
    write(tmp_path, "top_level.json", {"id": "nowhere"})
    found = "\n".join(problems(tmp_path, max_file_bytes=1000))
    assert "t/array.json: is a JSON list, but an artifact must be a JSON object" in found
    assert "t/latin1.json:1:14: invalid UTF-8 (byte 0xe9)" in found
    assert "t/bom.json: starts with a UTF-8 byte order mark" in found
    assert "t/nan.json: NaN is not valid JSON" in found
    assert "t/nul.json: contains \\u0000" in found
    assert "t/surrogate.json: contains an unpaired UTF-16 surrogate" in found
    assert 't/bad_id.json: "id" must be a string' in found
    assert 't/empty_version.json: "version" must not be empty' in found
    assert "t/big.json: is " in found and "over the limit of 1000 (import.max_file_bytes" in found
    assert "top_level.json: is not inside a type folder" in found


def test_two_files_claiming_one_identity_are_both_reported_and_neither_kept(tmp_path):
    write(tmp_path, "t/a.json", {"id": "same"})
    write(tmp_path, "t/sub/b.json", {"id": "same"})
    result = scan(tmp_path)
    assert result.artifacts == []
    assert sorted(str(p) for p in result.problems) == [
        "t/a.json: resolves to the same artifact as t/sub/b.json (type 't', id 'same', version '1.0.0'); give one of them another id or version",
        "t/sub/b.json: resolves to the same artifact as t/a.json (type 't', id 'same', version '1.0.0'); give one of them another id or version",
    ]


def test_same_id_with_different_versions_is_fine(tmp_path):
    write(tmp_path, "t/a.json", {"id": "same", "version": "1.0.0"})
    write(tmp_path, "t/b.json", {"id": "same", "version": "1.1.0"})
    assert len(scan(tmp_path).artifacts) == 2


def test_paths_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    write(root, "t/a.json", {"id": "a"})
    outside = write(tmp_path, "elsewhere/x.json", {"id": "x"})
    assert problems(root, paths=[outside]) == [
        f"{outside}: resolves to {outside}, outside the import root {root}; only files inside "
        "it are read (a symlink may point only inside the root)"
    ]


def test_a_symlink_out_of_the_root_is_refused_in_the_walk_and_as_a_path(tmp_path):
    root = tmp_path / "root"
    write(root, "t/a.json", {"id": "a"})
    secret = write(tmp_path, "elsewhere/secret.json", {"id": "secret", "token": "s3cr3t"})
    (root / "t" / "link.json").symlink_to(secret)
    write(root, "t/inner/target.txt", '{"id": "inner"}')  # not JSON by name: skipped itself
    (root / "t" / "inside_link.json").symlink_to(root / "t" / "inner" / "target.txt")
    result = scan(root)
    assert [str(p) for p in result.problems] == [
        f"t/link.json: resolves to {secret}, outside the import root {root}; only files inside "
        "it are read (a symlink may point only inside the root)"
    ]
    assert all("s3cr3t" not in a.content_raw for a in result.artifacts)
    as_path = scan(root, [root / "t" / "link.json"])
    assert as_path.artifacts == [] and "outside the import root" in str(as_path.problems[0])
    # a symlink that stays inside the root is an ordinary file
    assert {a.source_path for a in result.artifacts} == {"t/a.json", "t/inside_link.json"}


def test_fifos_and_devices_are_never_read(tmp_path):
    import os

    root = tmp_path / "root"
    write(root, "t/a.json", {"id": "a"})
    os.mkfifo(root / "t" / "fifo.json")
    (root / "t" / "zero.json").symlink_to("/dev/zero")
    found = problems(root)
    assert found == [
        "t/fifo.json: is not a regular file (a FIFO, device or socket); it was not read",
        "t/zero.json: resolves to /dev/zero, outside the import root "
        f"{root}; only files inside it are read (a symlink may point only inside the root)",
    ]
    (root / "t" / "zero.json").unlink()
    (root / "t" / "fifo.json").unlink()
    os.mknod(root / "t" / "dev.json", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero's twin
    assert problems(root) == [
        "t/dev.json: is not a regular file (a FIFO, device or socket); it was not read"
    ]


def test_absurd_nesting_is_one_invalid_file_with_its_path(tmp_path):
    write(tmp_path, "t/ok.json", {"id": "ok"})
    for depth in (150, 5_000, 100_000):
        write(tmp_path, f"t/deep{depth}.json", "[" * depth + "]" * depth)
    write(tmp_path, "t/deep_object.json", '{"a": ' * 5000 + "1" + "}" * 5000)
    result = scan(tmp_path)
    assert sorted(str(p) for p in result.problems) == [
        "t/deep100000.json: is nested deeper than 100 levels",
        "t/deep150.json: is nested deeper than 100 levels",
        "t/deep5000.json: is nested deeper than 100 levels",
        "t/deep_object.json: is nested deeper than 100 levels",
    ]
    assert [a.source_path for a in result.artifacts] == ["t/ok.json"]


def test_an_escaped_backslash_before_u0000_is_text_not_nul(tmp_path):
    write(tmp_path, "t/literal.json", '{"id": "literal", "doc": "write \\\\u0000 for NUL"}')
    write(tmp_path, "t/real.json", '{"id": "real", "doc": "a\\u0000b"}')
    write(tmp_path, "t/key.json", '{"id": "key", "a\\u0000": 1}')
    result = scan(tmp_path)
    assert [a.artifact_id for a in result.artifacts] == ["literal"]
    assert sorted(str(p) for p in result.problems) == [
        "t/key.json: contains \\u0000, which PostgreSQL jsonb cannot store",
        "t/real.json: contains \\u0000, which PostgreSQL jsonb cannot store",
    ]


def test_identities_longer_than_the_index_holds_are_invalid_at_validate(tmp_path):
    write(tmp_path, "patterns/long.json", {"id": "x" * 4000})
    write(tmp_path, "patterns/fine.json", {"id": "fine"})
    result = scan(tmp_path)
    assert [a.artifact_id for a in result.artifacts] == ["fine"]
    [problem] = result.problems
    assert "patterns/long.json" in str(problem) and "4,000 bytes long; at most 500" in str(problem)


def test_a_symlink_swapped_during_the_scan_never_leads_outside_the_root(tmp_path):
    """The outside check is made on the opened descriptor: a link flipped between an in-root
    file and an outside one, as fast as it can, never gets the outside file's content in."""
    import os
    import threading

    root = tmp_path / "root"
    write(root, "patterns/inside.json", {"id": "inside", "name": "Inside"})
    outside = tmp_path / "secret.json"
    outside.write_text('{"id": "stolen", "name": "outside the root"}')
    link = root / "patterns" / "flip.json"
    stop = threading.Event()

    def flip():
        n = 0
        while not stop.is_set():
            n += 1
            tmp = link.with_name(f".flip{n % 2}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(outside if n % 2 else root / "patterns" / "inside.json")
            os.replace(tmp, link)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        stolen = 0
        for _ in range(200):
            result = scan(root)
            stolen += sum("outside the root" in a.content_raw for a in result.artifacts)
    finally:
        stop.set()
        flipper.join()
    assert stolen == 0


def test_fields_search_reads_must_have_the_types_it_reads_them_as(tmp_path):
    root = tmp_path / "td"
    write(root, "patterns/ok.json", {"id": "ok", "tags": ["a"], "metadata": {"tags": ["b"]}})
    write(root, "patterns/tags.json", {"id": "tags", "tags": "not-a-list"})
    write(root, "patterns/mixed.json", {"id": "mixed", "tags": ["a", 1]})
    write(root, "patterns/name.json", {"id": "name", "name": {"en": "x"}})
    write(root, "patterns/meta.json", {"id": "meta", "metadata": {"description": 5}})
    result = scan(root)
    assert [a.artifact_id for a in result.artifacts] == ["ok"]
    problems = {p.location.rsplit("/", 1)[-1]: p.message for p in result.problems}
    assert '"tags" must be a list of strings, got "not-a-list"' in problems["tags.json"]
    assert '"tags" must be a list of strings' in problems["mixed.json"]
    assert '"name" must be a string' in problems["name.json"]
    assert '"metadata.description" must be a string' in problems["meta.json"]


def test_artifacts_must_match_the_json_schema_beside_them(tmp_path):
    root = tmp_path / "td"
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name", "description"],
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
    }
    write(root, "checks/check.schema.json", schema)
    write(root, "checks/good.json", {"name": "Good", "description": "complete"})
    write(root, "checks/sub/thin.json", {"name": "Thin"})  # the nearest schema is its parent's
    write(root, "learned/checks/copy.json", {"name": "Copy"})  # its curated folder's schema
    write(root, "other/free.json", {"id": "free"})  # no schema there: anything goes
    write(root, "broken/x.schema.json", {"type": 12})
    write(root, "broken/y.json", {"id": "y"})
    result = scan(root, include_learned=True)
    assert sorted(a.artifact_id for a in result.artifacts) == ["free", "good", "y"]
    problems = {p.location: p.message for p in result.problems}
    assert problems["checks/sub/thin.json"] == (
        "does not match checks/check.schema.json: 'description' is a required property"
    )
    assert "does not match checks/check.schema.json" in problems["learned/checks/copy.json"]
    assert problems["broken/x.schema.json"].startswith("is not a usable JSON Schema")
