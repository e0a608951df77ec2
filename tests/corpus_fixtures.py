"""Messy templates_data trees for the tests: every shape a real corpus has."""

import json
from pathlib import Path


def write(root: Path, rel: str, content) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def messy_tree(root: Path) -> Path:
    """A valid but messy corpus: non-JSON files, schemas, manifests, all identity shapes."""
    write(
        root,
        "patterns/with_id.json",
        {"id": "nats_consumer", "version": "2.0.0", "name": "NATS consumer", "tags": ["nats"]},
    )
    write(
        root,
        "patterns/with_metadata_id.json",
        {"metadata": {"id": "circuit_breaker", "version": "1.1.0", "language": "go"}},
    )
    write(root, "patterns/neither.json", {"name": "no id at all"})
    for lang in ("elixir", "go", "rust", "python"):
        write(
            root,
            f"code/languages/{lang}/best_practices.json",
            {"language": lang, "rules": [f"{lang} rule"]},
        )
    write(root, "code/explicit.json", {"artifact_type": "snippet", "id": "explicit", "code": "x"})
    write(root, "code/numeric_version.json", {"id": "numeric", "version": 3})
    write(root, "prompts/header.hbs", "{{header}}")
    write(root, "prompts/hook.lua", "return 1")
    write(root, "prompts/README.md", "# readme")
    write(root, "prompts/ci.yml", "a: 1")
    write(root, "prompts/prompt.schema.json", {"type": "object"})
    write(
        root,
        "prompts/definition.json",
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {},
        },
    )
    write(root, "prompts/meta.json", {"_metadata_type": "schema", "fields": []})
    write(root, "prompts/manifest.json", {"files": ["a.json"]})
    write(
        root,
        "prompts/summarize.json",
        {"id": "summarize", "$schema": "./prompt.schema.json", "prompt": "Summarize {{x}}"},
    )
    write(root, "learned/patterns/proven.json", {"id": "proven", "artifact_type": "patterns"})
    write(root, ".hidden/ignored.json", {"id": "hidden"})
    return root
